"""A real Mosquitto (Debian's) for the MQTT tests, optionally with TLS and passwords, and a real
paho client that records what it receives. Certificates come from the `openssl` CLI."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

from tests.daemon_harness import free_port


def make_certs(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate it signed for 127.0.0.1 and localhost (SAN), and a second CA
    that signed nothing (a broker certificate the client cannot trust). EC keys: fast to make."""
    folder.mkdir(exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True, timeout=30)

    for ca in ("ca", "other_ca"):
        run("req", "-x509", *ec, "-keyout", f"{ca}.key", "-out", f"{ca}.crt", "-days", "2",
            "-subj", f"/CN=inferd test {ca}")  # fmt: skip
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost")  # fmt: skip
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-copy_extensions", "copy")  # fmt: skip
    names = {"ca": "ca.crt", "other_ca": "other_ca.crt", "server": "server.crt", "server_key": "server.key"}
    return {key: folder / name for key, name in names.items()}


class Broker:
    """`mosquitto -c FILE` on 127.0.0.1:port; with `certs` a TLS listener, with `users` passwords
    (mosquitto_passwd -b) and no anonymous clients."""

    def __init__(self, tmp: Path, port: int | None = None, certs: dict | None = None, users=None) -> None:
        self.port = port or free_port()
        self.conf = tmp / f"mosquitto-{self.port}.conf"
        self.log = tmp / f"mosquitto-{self.port}.log"
        lines = [f"listener {self.port} 127.0.0.1", "persistence false"]
        if os.geteuid() == 0:
            lines.append("user root")  # else it switches to `mosquitto`, who cannot read tmp_path
        if certs:
            lines += [
                f"cafile {certs['ca']}",
                f"certfile {certs['server']}",
                f"keyfile {certs['server_key']}",
            ]
        if users:
            passwd = tmp / f"passwd-{self.port}"
            for i, (user, password) in enumerate(users.items()):
                create = ["-c"] if i == 0 else []
                subprocess.run(["mosquitto_passwd", *create, "-b", str(passwd), user, password],
                               check=True, timeout=30)  # fmt: skip
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        self.conf.write_text("\n".join(lines) + "\n")
        self.start()

    def start(self) -> None:
        with open(self.log, "a") as log:
            before = log.tell()  # a restart appends: read only this run's lines
            self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=log, stderr=log)
        end = time.monotonic() + 30  # generous: a loaded machine starts it late, never wrongly
        while time.monotonic() < end:
            if " running" in self.log.read_text()[before:]:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not start:\n{self.log.read_text()}")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


class Listener:
    """A real MQTT client subscribed to `topics`; keeps (topic, payload, retain) in order."""

    def __init__(self, port: int, *topics: str, ca: Path | None = None, auth: tuple | None = None) -> None:
        import paho.mqtt.client as mqtt  # here: the tests skip themselves when paho is missing

        self.messages: list[tuple[str, str, bool]] = []
        self.lock = threading.Lock()
        self._marker: str | None = None  # sync()'s topic, and the event its message sets
        self._marker_seen = threading.Event()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        if ca is not None:
            self.client.tls_set(ca_certs=str(ca))
        if auth is not None:
            self.client.username_pw_set(*auth)
        self.client.on_message = lambda c, u, m: self._add(m)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(30), "the listener could not subscribe"

    def _add(self, m) -> None:
        with self.lock:
            if m.topic == self._marker:
                self._marker_seen.set()  # sync()'s own message: not one of the recorded ones
                return
            self.messages.append((m.topic, m.payload.decode(), m.retain))

    def sync(self, topic: str, timeout: float = 30.0) -> None:
        """Returns once every message the broker had for this client when called has arrived,
        the retained ones it sends after a subscription included: a marker published now on
        `topic` (one this client subscribed to) comes back after them, since the broker queues
        a client's messages in order. For "nothing else came" checks, instead of a sleep."""
        self._marker_seen = threading.Event()
        self._marker = topic
        self.client.publish(topic, "sync", qos=1)
        assert self._marker_seen.wait(timeout), f"the marker on {topic} did not come back in {timeout} s"

    def wait(self, test, timeout=30.0) -> list[tuple[str, str, bool]]:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                found = [m for m in self.messages if test(m)]
            if found:
                return found
            time.sleep(0.02)
        raise AssertionError(f"no such message in {self.messages}")

    def results(self, topic: str) -> list[dict]:
        with self.lock:
            return [json.loads(p) for t, p, _ in self.messages if t == topic]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
