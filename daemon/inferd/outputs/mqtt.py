"""Results out to an MQTT broker: a sink beside replies.py, never in inference's way.

Workers `offer` each decoded result; the publish policy (every, rate, change + heartbeat) is
decided there in a few dict operations, and what passes goes into a bounded outbox (the oldest
is dropped and counted when it is full). paho-mqtt's network thread connects (reconnecting with
backoff) and publishes availability (`online`, retained; the Last Will says `offline`); the
`mqtt` thread drains the outbox in batches, announcing Home Assistant discovery
(homeassistant.py) on the way. A slow or absent broker costs inference nothing but dropped
messages.

With Home Assistant discovery, a result that is an entity's state is published retained (a
subscriber that comes after the discovery config, or a Home Assistant that restarts, gets the
latest at once), and Home Assistant's birth message makes the drain thread announce every config
and latest state again.

The first result into an empty outbox wakes the drain thread, which waits BATCH_S and publishes
the batch: a wake-up (GIL hand-over) per result made MQTT 29 % of the daemon's GIL time at full
speed, 17 % now (docs/performance.md). The price: up to BATCH_S more latency to the broker.
"""

from __future__ import annotations

import json
import logging
import ssl
import sys
import threading
import time
from collections import deque
from typing import Any

from inferd.config.mqtt import MqttConfig, PublishPolicy
from inferd.errors import ConfigError

log = logging.getLogger("inferd.mqtt")
BATCH_S = 0.005
_encode = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps with options builds one per call


def summary(decoded: dict | None, outputs) -> dict:
    """What goes to the broker: the decoded result, or a raw model's shapes and argmax."""
    if decoded is not None:  # zone events go out on their own topic, each once (MqttSink.offer)
        out = {k: v for k, v in decoded.items() if not k.startswith("_") and k != "events"}
        if "segmentation" in out:  # the areas, not the mask
            seg = out["segmentation"]
            out["segmentation"] = {"width": seg["width"], "height": seg["height"], "areas": seg["areas"]}
        return out
    return {
        "outputs": [{"shape": list(o.shape), "argmax": int(o.argmax()) if o.size else None} for o in outputs]
    }


def fingerprint(result: dict) -> Any:
    """What 'changed' means: the top label, the detected labels with their counts, the dominant class."""
    if "classes" in result:
        return result["classes"][0]["label"] if result["classes"] else None
    if "detections" in result:
        counts: dict = {}
        for d in result["detections"]:
            key = d["label"] if d["label"] is not None else d["class"]
            counts[key] = counts.get(key, 0) + 1
        zones = tuple(
            (z, s.get("count"), s.get("in"), s.get("out"), tuple(sorted(s.get("labels", {}).items())))
            for z, s in result.get("zones", {}).items()
        )
        return tuple(sorted(counts.items(), key=str)), zones
    if "segmentation" in result:
        areas = result["segmentation"]["areas"]
        return max(areas, key=lambda a: a["fraction"])["class"] if areas else None
    return tuple(o["argmax"] for o in result.get("outputs", []))


class MqttSink:
    def __init__(self, cfg: MqttConfig, metrics, raw_models: set[str] | None = None) -> None:
        self.cfg, self.metrics = cfg, metrics
        self._skipped = metrics.mqtt_messages.labels("skipped")  # children cached: offer runs per frame
        self._dropped = metrics.mqtt_messages.labels("dropped")
        self._sent = metrics.mqtt_messages.labels("sent")
        self.raw_models = raw_models or set()
        self.outbox: deque = deque(maxlen=cfg.outbox)  # appending to a full one drops the oldest
        self._state: dict[
            tuple[str, str], tuple[float, Any]
        ] = {}  # (model, source) -> last sent, fingerprint
        self._wake = threading.Event()  # set: the outbox has something (or we are stopping)
        self._stop = threading.Event()
        self.connected = False
        self.last_error: str | None = None  # why the broker is not connected (None once it is)
        self.discovery = None
        self._born = False  # Home Assistant said `online`: the drain thread announces it all again
        self.status_topic = f"{cfg.topic_prefix}/{cfg.device_id}/status"
        self._thread: threading.Thread | None = None
        self.client = self._client()

    # ---- the workers' side -------------------------------------------------------------------

    def policy(self, model: str) -> PublishPolicy | None:
        p = self.cfg.models.get(model)
        if p is None and model in self.raw_models:
            return None  # raw models publish only when asked
        return p or self.cfg.publish

    def offer(self, model: str, source: str, header, decoded: dict | None, outputs, latency_s: float) -> None:
        """Called by a worker for each result. Never blocks."""
        policy = self.policy(model)
        if policy is None:
            return
        if decoded is not None and decoded.get("events"):  # never skipped by the policy
            self._events(model, source, decoded["events"])
        now = time.monotonic()
        key = (model, source)
        last = self._state.get(key)
        if policy.mode == "rate" and last is not None and now - last[0] < 1.0 / policy.max_per_s:
            self._skipped.inc()  # decided before any work on the result
            return
        result = summary(decoded, outputs)
        mark = fingerprint(result) if policy.mode == "change" else None
        if (
            policy.mode == "change"
            and last is not None
            and mark == last[1]
            and now - last[0] < policy.heartbeat_s
        ):
            self._skipped.inc()
            return
        self._state[key] = (now, mark)
        payload = {"model": model, "source": source, "seq": header.seq, "ts": header.ts,
                   "latency_ms": round(latency_s * 1000, 3), **result}  # fmt: skip
        topic = f"{self.cfg.topic_prefix}/{self.cfg.device_id}/{model}/{source}"
        outbox = self.outbox
        if len(outbox) == outbox.maxlen:
            self._dropped.inc()  # the append below pushes the oldest out
        outbox.append((topic, payload, model, source, result))  # deque: thread-safe without a lock
        if not self._wake.is_set():
            self._wake.set()

    def _events(self, model: str, source: str, events: list[dict]) -> None:
        """Zone events, one message each on .../MODEL/SOURCE/events (not retained: an event happens once)."""
        topic = f"{self.cfg.topic_prefix}/{self.cfg.device_id}/{model}/{source}/events"
        for event in events:
            if len(self.outbox) == self.outbox.maxlen:
                self._dropped.inc()
            self.outbox.append((topic, event, None, source, None))
        self._wake.set()

    # ---- the client thread -------------------------------------------------------------------

    def _client(self):
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise ConfigError("mqtt: needs paho-mqtt (pip install 'inferd[mqtt]')") from None
        cfg = self.cfg
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id or f"inferd-{cfg.device_id}",
            clean_session=True,
        )
        if cfg.username is not None or cfg.password_file is not None:
            client.username_pw_set(cfg.username, read_password(cfg.password_file))
        tls = cfg.host_port[2]
        if tls or cfg.tls is not None:
            t = cfg.tls
            client.tls_set(
                ca_certs=str(t.ca_file) if t and t.ca_file else None,
                certfile=str(t.cert_file) if t and t.cert_file else None,
                keyfile=str(t.key_file) if t and t.key_file else None,
                cert_reqs=ssl.CERT_NONE if t and t.insecure else ssl.CERT_REQUIRED,
            )
            if t and t.insecure:
                client.tls_insecure_set(True)
        client.will_set(self.status_topic, "offline", qos=1, retain=True)
        client.reconnect_delay_set(1, 30)
        client.max_queued_messages_set(cfg.outbox)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        return client

    def _failed(self, reason: str) -> None:
        """The last reason is kept (state(), for /healthz); the log says each new reason once."""
        if reason != self.last_error:
            log.warning("broker %s: %s (retrying, 1 to 30 s apart)", self.cfg.broker, reason)
        self.last_error = reason

    def _on_connect_fail(self, _client, _userdata) -> None:
        error = sys.exc_info()[1]  # paho calls this inside its `except OSError:` (TLS errors too)
        self._failed(f"cannot connect: {error}" if error else "cannot connect")

    def _on_connect(self, client, _userdata, _flags, reason, _props) -> None:
        if reason.is_failure:
            self._failed(f"refused the connection: {reason}")
            return
        if not self.connected:
            log.info("connected to %s", self.cfg.broker)
        self.connected, self.last_error = True, None
        client.publish(self.status_topic, "online", qos=1, retain=True)
        if self.discovery is not None:
            self.discovery.connected()
            birth = self.discovery.birth_topic  # clean session: subscribed again at each connection
            client.message_callback_add(birth, self._on_birth)
            client.subscribe(birth, qos=1)
        self._wake.set()

    def _on_birth(self, _client, _userdata, msg) -> None:
        """paho's thread: Home Assistant's birth (or Last Will) message. The drain thread answers
        `online`, so no result of an entity goes out between its config and its latest state."""
        if msg.payload == b"online":
            self._born = True
            self._wake.set()

    def _on_disconnect(self, _client, _userdata, _flags, reason, _props) -> None:
        if self.connected and not self._stop.is_set():  # not our own disconnect() in stop()
            self.last_error = f"lost the connection: {reason}"
            log.warning(
                "lost the broker %s (%s): results are kept in the outbox, then dropped",
                self.cfg.broker,
                reason,
            )
        self.connected = False

    def state(self) -> dict:
        """The broker's state for /healthz (informative: a broker never makes inferd unhealthy)."""
        out: dict = {"broker": self.cfg.broker, "connected": self.connected}
        if not self.connected and self.last_error:
            out["last_error"] = self.last_error
        return out

    def start(self) -> None:
        # the gauge reads the sink started last (a reload stops the old one first; after a reload
        # that drops `mqtt:`, the stopped sink reads 0)
        self.metrics.mqtt_connected.set_function(lambda: 1.0 if self.connected else 0.0)
        host, port, _ = self.cfg.host_port
        self.client.connect_async(host, port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()  # paho's network thread: connects, reconnects with backoff
        self._thread = threading.Thread(target=self._drain, name="mqtt", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        outbox, publish, qos = self.outbox, self.client.publish, self.cfg.qos
        while not self._stop.is_set():
            if self._born and self.connected and self.discovery is not None:
                self._born = False
                self.discovery.born()
            if not outbox or not self.connected:
                self._wake.wait(0.5)
                self._wake.clear()  # then look again: nothing offered meanwhile is missed
                continue
            self._stop.wait(BATCH_S)  # let results gather: one wake-up per batch
            sent = dropped = 0
            discovery = self.discovery
            for _ in range(len(outbox)):  # this batch: new results wait for the next one
                if not self.connected:
                    break
                topic, payload, model, source, result = outbox.popleft()
                text = _encode(payload)  # an entity's state is retained (homeassistant.py)
                retain = (
                    discovery is not None
                    and model is not None
                    and discovery.seen(model, source, result, topic, text)
                )
                if publish(topic, text, qos=qos, retain=retain).rc == 0:
                    sent += 1
                else:
                    dropped += 1  # paho's own queue is full (QoS 1 waiting for acknowledgements)
            self._sent.inc(sent)
            self._dropped.inc(dropped)

    def stop(self) -> None:
        """A clean stop says `offline` itself (the Last Will is for crashes)."""
        self._stop.set()
        self._wake.set()  # the drain thread leaves now, not after its 0.5 s wait
        if self._thread is not None:
            self._thread.join(2)
        if self.connected:
            self.client.publish(self.status_topic, "offline", qos=1, retain=True).wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()
        self.connected = False


def read_password(path) -> str | None:
    if path is None:
        return None
    try:
        if path.stat().st_mode & 0o077:
            raise ConfigError(f"mqtt.password_file {path} is readable by others: chmod 600 {path}")
        return path.read_text().strip()
    except OSError as e:
        raise ConfigError(f"mqtt.password_file {path}: {e.strerror}") from None
