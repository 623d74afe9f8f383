"""Results out: replies on the ingest sockets and the results socket, and the sinks (MQTT, Home Assistant)."""
