"""Home Assistant MQTT discovery for inferd's results (https://www.home-assistant.io/integrations/mqtt/).

One device per board; per classify model and source a sensor (the top label, with its score and
the top-k as attributes); per detect model and source a count sensor, and a binary sensor for
each configured label of interest ("person detected", turning off `off_delay` after the last
sighting). Entities appear when a source first sends a result, are announced again on every
reconnection (retained), and are removed (an empty retained config) when a reload drops the model.
"""

from __future__ import annotations

import json
import re
import threading

from inferd import __version__
from inferd.config.mqtt import MqttConfig


def _id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


class Discovery:
    def __init__(self, client, cfg: MqttConfig, status_topic: str) -> None:
        self.client, self.cfg, self.status_topic = client, cfg, status_topic
        self.ha = cfg.home_assistant
        self.announced: dict[str, dict[str, str]] = {}  # model -> {config topic: payload}
        self._lock = threading.Lock()

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
        prefix = f"{self.ha.discovery_prefix}"
        node = f"inferd_{dev}"
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
            for label in self.ha.labels:
                sensor = {
                    **common, "name": f"{label} detected ({source})", "unique_id": f"{base_id}_{_id(label)}",
                    "value_template": "{{ 'ON' if value_json.detections | selectattr('label', 'equalto', "
                    f"{json.dumps(label)}) | list | count > 0 else 'OFF' }}}}",
                    "payload_on": "ON", "payload_off": "OFF", "off_delay": self.ha.off_delay_s,
                }  # fmt: skip
                if label == "person":
                    sensor["device_class"] = "occupancy"
                out[f"{prefix}/binary_sensor/{node}/{_id(model)}_{_id(source)}_{_id(label)}/config"] = sensor
        return out

    def seen(self, model: str, source: str, result: dict) -> None:
        """Announce a model/source's entities the first time it has a result."""
        new = {
            t: p
            for t, p in self.entities(model, source, result).items()
            if t not in self.announced.get(model, {})
        }
        if not new:
            return
        with self._lock:
            for topic, payload in new.items():
                text = json.dumps(payload, separators=(",", ":"))
                self.announced.setdefault(model, {})[topic] = text
                self.client.publish(topic, text, qos=1, retain=True)

    def connected(self) -> None:
        """Announce again after a (re)connection: the broker may have lost retained messages."""
        with self._lock:
            for entities in self.announced.values():
                for topic, text in entities.items():
                    self.client.publish(topic, text, qos=1, retain=True)

    def remove(self, models: set[str]) -> None:
        """Entities of models a reload removed: an empty retained config deletes them in HA."""
        with self._lock:
            for model in models:
                for topic in self.announced.pop(model, {}):
                    self.client.publish(topic, "", qos=1, retain=True)
