"""Home Assistant MQTT discovery for inferd's results (https://www.home-assistant.io/integrations/mqtt/).

One device per board; per classify model and source a sensor (the top label, with its score and
the top-k as attributes); per detect model and source a count sensor, and a binary sensor for
each configured label of interest ("person detected"). How that one turns off follows the model's
publish policy: `every` and `rate` publish while the label is seen, so a result without it says
nothing and `off_delay` turns the sensor off after the last sighting (one missed frame does not
flicker it); `change` publishes nothing while the scene stays the same, so the label leaving is an
explicit OFF and there is no `off_delay` (it would turn off a person standing still). Where a
tracked model watches zones on a source: per polygon an occupancy binary sensor and a count
sensor, per line an in and an out counter, and one `event` entity firing each zone event
(docs/zones.md). Entities appear when a source first sends a result, are announced again on
every reconnection (retained), and are removed (an empty retained config) when a reload drops the
model or its zone, or, at the first connection after a start, when their model, label or zone is
no longer configured.

An entity's state is its model and source's latest result, published retained by the sink (so a
Home Assistant that subscribes after the config, ~100 ms later, or after a restart, gets it at
once); its latest payload is kept here, and Home Assistant's birth message (`online` on
DISCOVERY_PREFIX/status) makes the sink announce every config and latest state again. A removed
entity's retained state is emptied with its config (docs/mqtt.md, "Home Assistant").
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading

from inferd import __version__
from inferd.config.mqtt import MqttConfig

log = logging.getLogger("inferd.mqtt")
SWEEP_S = 3.0  # after connecting, how long retained discovery configs are read for stale ones


def _id(text: str) -> str:
    """A name as an id part: letters and digits kept, every other byte as -XX (reversible, so
    model "a_b" with source "c" and model "a" with source "b_c" never share an id)."""
    return re.sub(rb"[^A-Za-z0-9]", lambda m: b"-%02x" % m.group()[0], text.encode()).decode()


def _name(part: str) -> str:
    """The inverse of _id."""
    return re.sub(rb"-([0-9a-f]{2})", lambda m: bytes([int(m.group(1), 16)]), part.encode()).decode(
        errors="replace"
    )


class Discovery:
    def __init__(
        self, client, cfg: MqttConfig, status_topic: str, models: set[str] | None = None,
        zones: dict[tuple[str, str], dict] | None = None,
    ) -> None:  # fmt: skip
        self.client, self.cfg, self.status_topic = client, cfg, status_topic
        self.ha = cfg.home_assistant
        self.models = set(models or ())  # the configured models: others' entities are stale
        self._zones(zones or {})
        self.announced: dict[
            tuple[str, str], dict[str, str]
        ] = {}  # (model, source) -> {config topic: payload}
        self._seen: dict[tuple[str, str], bool] = {}  # (model, source) announced -> has entities
        self.states: dict[tuple[str, str], tuple[str, str]] = {}  # (model, source) -> topic, latest
        self._lock = threading.Lock()
        self._swept = False
        self.node = f"inferd_{cfg.device_id}"
        self.birth_topic = self.ha.birth_topic or f"{self.ha.discovery_prefix}/status"

    def _zones(self, layout: dict[tuple[str, str], dict]) -> None:
        """`layout`: (model, source) -> its zones (ZoneConfig) by name (daemon.zone_layout): their
        entities are known before any frame, and other zones' entities are stale."""
        self.layout = layout
        self.zones = {(model, source, zone) for (model, source), zs in layout.items() for zone in zs}

    @property
    def device(self) -> dict:
        dev = self.cfg.device_id
        return {
            "identifiers": [f"inferd_{dev}"], "name": f"inferd {dev}", "model": "inferd",
            "manufacturer": "inferd", "sw_version": __version__,
        }  # fmt: skip

    def entities(self, model: str, source: str, result: dict) -> dict[str, dict]:
        """Config topic -> payload for one model and source."""
        cfg, dev = self.cfg, self.cfg.device_id
        state = f"{cfg.topic_prefix}/{dev}/{model}/{source}"
        base_id = f"inferd_{dev}_{_id(model)}_{_id(source)}"
        common = {
            "state_topic": state, "device": self.device, "availability_topic": self.status_topic,
            "payload_available": "online", "payload_not_available": "offline",
        }  # fmt: skip
        prefix, node = self.ha.discovery_prefix, self.node
        out: dict[str, dict] = {}
        if "classes" in result:
            out[f"{prefix}/sensor/{node}/{_id(model)}_{_id(source)}/config"] = {
                **common, "name": f"{model} {source}", "unique_id": base_id, "icon": "mdi:label",
                "value_template": "{{ value_json.classes[0].label if value_json.classes else 'none' }}",
                "json_attributes_topic": state,
                "json_attributes_template": "{{ {'score': (value_json.classes[0].score if value_json.classes "
                "else 0), 'top_k': value_json.classes} | tojson }}",
            }  # fmt: skip
        elif "detections" in result:
            out[f"{prefix}/sensor/{node}/{_id(model)}_{_id(source)}_count/config"] = {
                **common, "name": f"{model} {source} objects", "unique_id": f"{base_id}_count",
                "value_template": "{{ value_json.detections | length }}", "state_class": "measurement",
                "icon": "mdi:counter",
            }  # fmt: skip
            policy = cfg.models.get(model) or cfg.publish
            off_delay = None  # `change`: the label leaving is published, as OFF
            if policy.mode != "change":  # a result per frame or per 1/max_per_s: OFF is the silence
                rate = policy.max_per_s if policy.mode == "rate" else math.inf
                off_delay = max(self.ha.off_delay_s, math.ceil(2 / rate))  # integer seconds for HA
            otherwise = "''" if off_delay else "'OFF'"  # Home Assistant ignores an empty state
            for label in self.ha.labels:
                sensor = {
                    **common, "name": f"{label} detected ({source})", "unique_id": f"{base_id}_{_id(label)}",
                    "value_template": "{{ 'ON' if value_json.detections | selectattr('label', 'equalto', "
                    f"{json.dumps(label)}) | list | count > 0 else {otherwise} }}}}",
                    "payload_on": "ON", "payload_off": "OFF",
                }  # fmt: skip
                if off_delay:
                    sensor["off_delay"] = off_delay
                if label == "person":
                    sensor["device_class"] = "occupancy"
                out[f"{prefix}/binary_sensor/{node}/{_id(model)}_{_id(source)}_{_id(label)}/config"] = sensor
            if (model, source) in self.layout:
                out.update(self._zone_entities(model, source, common))
        return out

    def _zone_entities(self, model: str, source: str, common: dict) -> dict[str, dict]:
        """A tracked model's zone entities on one source, and its event entity: per polygon its
        occupancy, its count and a count per label of interest it counts; per line in and out."""
        prefix, node, dev = self.ha.discovery_prefix, self.node, self.cfg.device_id
        base = f"{_id(model)}_{_id(source)}_zone"
        out: dict[str, dict] = {}
        for zone, cfg in self.layout[(model, source)].items():
            z, key = _id(zone), json.dumps(zone)
            uid = f"inferd_{dev}_{base}_{z}"
            if cfg.polygon is not None:
                out[f"{prefix}/binary_sensor/{node}/{base}_{z}/config"] = {
                    **common, "name": f"{zone} occupied ({source})", "unique_id": uid,
                    "device_class": "occupancy", "payload_on": "ON", "payload_off": "OFF",
                    "value_template": f"{{{{ 'ON' if value_json.zones[{key}].count > 0 else 'OFF' }}}}",
                }  # fmt: skip
                out[f"{prefix}/sensor/{node}/{base}_{z}_count/config"] = {
                    **common, "name": f"{zone} objects ({source})", "unique_id": f"{uid}_count",
                    "state_class": "measurement", "icon": "mdi:counter",
                    "value_template": f"{{{{ value_json.zones[{key}].count }}}}",
                }  # fmt: skip
                for label in self.ha.labels:
                    if cfg.labels is None or label in cfg.labels:
                        lid, name = _id(label), json.dumps(label)
                        out[f"{prefix}/sensor/{node}/{base}_{z}_label_{lid}/config"] = {
                            **common, "name": f"{zone} {label} objects ({source})",
                            "unique_id": f"{uid}_label_{lid}", "state_class": "measurement",
                            "icon": "mdi:counter",
                            "value_template": f"{{{{ value_json.zones[{key}].labels.get({name}, 0) }}}}",
                        }  # fmt: skip
            else:
                for way in ("in", "out"):
                    out[f"{prefix}/sensor/{node}/{base}_{z}_{way}/config"] = {
                        **common, "name": f"{zone} crossed {way} ({source})", "unique_id": f"{uid}_{way}",
                        "state_class": "total_increasing", "icon": "mdi:transit-transfer",
                        "value_template": f"{{{{ value_json.zones[{key}][{way!r}] }}}}",
                    }  # fmt: skip
        ids = f"{_id(model)}_{_id(source)}_events"
        out[f"{prefix}/event/{node}/{ids}/config"] = {
            **common, "name": f"{model} {source} zone event", "unique_id": f"inferd_{dev}_{ids}",
            "state_topic": f"{common['state_topic']}/events",
            "event_types": ["enter", "leave", "dwell", "cross"],
            "value_template": "{{ dict(value_json, event_type=value_json.type) | tojson }}",
        }  # fmt: skip
        return out

    def seen(self, model: str, source: str, result: dict, topic: str, text: str) -> bool:
        """The sink's thread, before it publishes `text` on `topic`: announce a model/source's
        entities the first time it has a result. True: `text` is their state (kept as the latest;
        the sink retains it); segment and raw results have no entity."""
        key = (model, source)
        stateful = self._seen.get(key)
        if stateful is None:
            with self._lock:
                stateful = self._publish(key, self.entities(model, source, result))
        if stateful:
            self.states[key] = (topic, text)
        return stateful

    def _publish(self, key: tuple[str, str], entities: dict[str, dict]) -> bool:
        """A model/source's entities announced (the lock held; what a reload removed of them
        deleted): whether it has any."""
        before = self.announced.pop(key, {})
        for config in before.keys() - entities.keys():  # a zone a reload removed
            self.client.publish(config, "", qos=1, retain=True)
        for config, payload in entities.items():
            encoded = json.dumps(payload, separators=(",", ":"))
            self.announced.setdefault(key, {})[config] = encoded
            self.client.publish(config, encoded, qos=1, retain=True)
        self._seen[key] = bool(entities)
        return bool(entities)

    def _early(self) -> None:
        """The lock held: the entities of the sources that zones are drawn on, announced before
        their first frame, so that Home Assistant has subscribed to their events by then (events
        are not retained: one published before it subscribes never reaches it)."""
        for model, source in self.layout:
            if (model, source) not in self._seen:
                self._publish((model, source), self.entities(model, source, {"detections": []}))

    def _announce(self) -> None:
        """Every config announced so far, again (the lock held)."""
        for entities in self.announced.values():
            for topic, text in entities.items():
                self.client.publish(topic, text, qos=1, retain=True)

    def born(self) -> None:
        """The sink's thread (so no newer result of an entity goes out before its latest state):
        Home Assistant said `online` (it started, or reconnected): every config, then every
        entity's latest state, again. Retained states make this a second line of defence (a
        broker that lost them, one that does not keep them); it is what Home Assistant asks."""
        with self._lock:
            self._announce()
            configs = sum(map(len, self.announced.values()))
            states = list(self.states.values())  # one C call: the sink may add a source meanwhile
        for topic, text in states:
            self.client.publish(topic, text, qos=self.cfg.qos, retain=True)
        log.info("Home Assistant is online: %d configs and %d states announced again", configs, len(states))

    def connected(self) -> None:
        """Announce again after a (re)connection: the broker may have lost retained messages. On
        the first connection, also read this board's retained configs for a few seconds and delete
        those of models (or labels) no longer configured: removed while inferd was stopped."""
        with self._lock:
            self._announce()
            self._early()
            if self._swept:
                return
            self._swept = True
        pattern = f"{self.ha.discovery_prefix}/+/{self.node}/+/config"
        self.client.message_callback_add(pattern, self._retained)
        self.client.subscribe(pattern, qos=1)

        def end() -> None:
            self.client.unsubscribe(pattern)
            self.client.message_callback_remove(pattern)

        timer = threading.Timer(SWEEP_S, end)
        timer.daemon = True
        timer.start()

    def _retained(self, client, _userdata, msg) -> None:
        """paho's thread: a config this board announced some time; empty it if it is stale, and
        if its model is gone, its retained state too (a stale label's state is a live model's)."""
        if not msg.payload or not self.stale(msg.topic):
            return
        client.publish(msg.topic, "", qos=1, retain=True)
        if _name(msg.topic.split("/")[-2].split("_")[0]) in self.models:
            return
        try:
            state = json.loads(msg.payload)["state_topic"]
            client.publish(state, "", qos=1, retain=True)
        except (ValueError, KeyError, TypeError):  # not JSON, no state topic, or not a topic
            log.warning("a stale config on %s names no state topic to empty", msg.topic)

    def stale(self, topic: str) -> bool:
        """A config topic for a model that is not configured, or a label no longer of interest."""
        parts = topic.split("/")
        component, ids = parts[-4], parts[-2].split("_")
        if _name(ids[0]) not in self.models:
            return True
        if len(ids) >= 4 and ids[2] == "zone":
            zone = self.layout.get((_name(ids[0]), _name(ids[1])), {}).get(_name(ids[3]))
            if zone is None:
                return True
            if len(ids) == 6 and ids[4] == "label":  # a label's count: still of interest, still counted
                label = _name(ids[5])
                return label not in self.ha.labels or (zone.labels is not None and label not in zone.labels)
            return False
        if component == "event":
            return not any(z[:2] == (_name(ids[0]), _name(ids[1])) for z in self.zones)
        return component == "binary_sensor" and len(ids) == 3 and _name(ids[2]) not in self.ha.labels

    def configure(
        self, models: set[str], zones: dict[tuple[str, str], dict[str, dict]], replaced: set[str]
    ) -> None:
        """After a reload: the models and zones now configured; the `replaced` models' entities are
        announced again (what is gone of them deleted) now where zones tell them, else at their
        next result."""
        with self._lock:
            self.models = models
            self._zones(zones)
            self._seen = {key: has for key, has in self._seen.items() if key[0] not in replaced}
            self._early()

    def remove(self, models: set[str]) -> None:
        """Entities of models a reload removed: an empty retained config deletes them in HA, an
        empty retained state leaves nothing of them in the broker."""
        with self._lock:
            self._seen = {key: has for key, has in self._seen.items() if key[0] not in models}
            for key in [k for k in self.announced if k[0] in models]:
                for topic in self.announced.pop(key):
                    self.client.publish(topic, "", qos=1, retain=True)
            for key in list(self.states):  # one C call: the sink may add a source meanwhile
                if key[0] in models:
                    self.client.publish(self.states.pop(key)[0], "", qos=1, retain=True)
