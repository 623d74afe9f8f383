"""systemd integration in pure Python: sd_notify, the watchdog, and journald-friendly logs.

No libsystemd on the board: the notify protocol is one datagram on an AF_UNIX socket
(https://www.freedesktop.org/software/systemd/man/sd_notify.html).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger("inferd.service")


def name_os_thread(name: str) -> None:
    """The calling thread's name as `top -H`, `ps -L` and /proc show it (15 bytes; Linux only)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


class Notifier:
    """Sends sd_notify messages to $NOTIFY_SOCKET; a no-op when it is not set."""

    def __init__(self, address: str | None = None) -> None:
        address = os.environ.get("NOTIFY_SOCKET") if address is None else address
        self.address: str | bytes | None = None
        self.sock: socket.socket | None = None
        if address:
            # "@name" is an abstract socket: a leading NUL byte on the wire
            self.address = "\0" + address[1:] if address.startswith("@") else address
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def notify(self, *fields: str) -> bool:
        """Send `KEY=value` lines in one datagram. Returns False (and logs once) on failure."""
        if self.sock is None:
            return False
        try:
            self.sock.sendto("\n".join(fields).encode(), self.address)
            return True
        except OSError as e:
            log.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), e)
            return False

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def reloading(self) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading the config")

    def stopping(self, status: str = "stopping") -> bool:
        return self.notify("STOPPING=1", f"STATUS={status}")

    def extend_timeout(self, seconds: float) -> bool:
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def watchdog_interval() -> float | None:
    """Half of $WATCHDOG_USEC in seconds (when it is meant for this process), else None."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1_000_000 / 2
    except ValueError:
        return None


_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """`<N>logger: message` — journald reads the syslog priority prefix; it adds its own timestamps."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = super().format(record).replace("\n", " | ")  # one line per event
        return f"<{prio}>{record.name}: {text}"


class Watchdog:
    """Pings systemd's watchdog at half of WATCHDOG_USEC, only while `health()` says the loops
    make progress. A hung inference stops the pings, so systemd restarts the service."""

    def __init__(self, notifier: Notifier, interval: float, health) -> None:
        self.notifier, self.interval, self.health = notifier, interval, health
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)
        self._silent = False

    def start(self) -> None:
        log.info("watchdog: pinging every %.1f s while healthy", self.interval)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            ok, body = self.health()
            if ok:
                if self._silent:
                    log.warning("watchdog: healthy again, pinging systemd")
                    self._silent = False
                self.notifier.watchdog()
            elif not self._silent:
                self._silent = True
                log.error("watchdog: not pinging systemd: %s", "; ".join(body.get("problems", [])) or body)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.interval + 1)


def reload_status_path(pid: int, runtime_dir: str | None = None) -> Path:
    """Where daemon `pid` writes the verdict of each reload: $RUNTIME_DIRECTORY (/run/inferd under
    systemd, visible to `systemctl reload`'s ExecReload and to a shell) or the temp folder."""
    folder = runtime_dir if runtime_dir is not None else os.environ.get("RUNTIME_DIRECTORY")
    return Path(folder.split(":")[0] if folder else tempfile.gettempdir()) / f"inferd-{pid}.reload.json"


def write_reload_status(path: Path, started: float, ok: bool, message: str) -> None:
    """Atomically replace the verdict file (`started`: time.monotonic() when the reload began)."""
    body = {"pid": os.getpid(), "started": started, "ok": ok, "message": message}
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(body))
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot write the reload status %s: %s", path, e.strerror)


def read_reload_status(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
