"""Around the daemon: systemd notify/watchdog, health, metrics, telemetry, logs."""
