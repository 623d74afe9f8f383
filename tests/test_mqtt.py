"""Results to MQTT, against a real Mosquitto (Debian's) and real MQTT clients (paho)."""

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import numpy as np
import pytest

from inferd.client import FramePublisher, InferClient
from tests.conftest import MODELS
from tests.daemon_harness import DaemonProcess, free_port
from tests.test_frigate import build_detector

if shutil.which("mosquitto") is None:
    if os.environ.get("INFERD_CI"):
        raise RuntimeError("CI needs mosquitto (make test installs it as root)")
    pytest.skip("needs mosquitto (make test installs it as root)", allow_module_level=True)
mqtt = pytest.importorskip("paho.mqtt.client")

TENSOR = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)


class Broker:
    def __init__(self, tmp, port=None) -> None:
        self.tmp, self.port = tmp, port or free_port()
        self.start()

    def start(self) -> None:
        conf = self.tmp / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.proc = subprocess.Popen(
            ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        end = time.monotonic() + 10
        while time.monotonic() < end:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


class Listener:
    """A real MQTT client subscribed to `topics`; keeps (topic, payload, retain) in order."""

    def __init__(self, port: int, *topics: str) -> None:
        self.messages: list[tuple[str, str, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = lambda c, u, m: self._add(m)
        self.client.on_connect = lambda c, u, f, rc, p: [c.subscribe(t, qos=1) for t in topics]
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _add(self, m) -> None:
        with self.lock:
            self.messages.append((m.topic, m.payload.decode(), m.retain))

    def wait(self, test, timeout=10.0):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                found = [m for m in self.messages if test(m)]
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no such message in {self.messages}")

    def results(self, topic: str) -> list[dict]:
        with self.lock:
            return [json.loads(p) for t, p, _ in self.messages if t == topic]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def daemon_config(port: int, labels_dir, detector, publish: str, extra: str = "") -> str:
    return f"""
models:
  - name: cls
    path: {MODELS}/classifier_int8.onnx
    labels: {MODELS}/labels.txt
    postprocess: {{type: classify, top_k: 2}}
  - name: det
    path: {detector}
    labels: {labels_dir}/det_labels.txt
    postprocess: {{type: detect, format: end2end, score_threshold: 0.3}}
endpoints:
  - {{type: pull, bind: "{{pull}}"}}
  - {{type: router, bind: "{{router}}"}}
routes:
  - {{sources: ["cam*"], models: [cls]}}
  - {{sources: ["door*"], models: [det]}}
metrics: {{listen: "{{metrics}}"}}
mqtt:
  broker: "mqtt://127.0.0.1:{port}"
  device_id: board1
  publish: {publish}
  home_assistant: {{labels: [person]}}
{extra}"""


@pytest.fixture
def setup(tmp_path):
    broker = Broker(tmp_path)
    (tmp_path / "det_labels.txt").write_text("person\ncar\ndog\n")
    detector = build_detector(tmp_path / "det.onnx")
    yield broker, tmp_path, detector
    broker.kill()


def test_results_availability_and_discovery_reach_real_clients(setup):
    broker, tmp, detector = setup
    listener = Listener(broker.port, "inferd/#", "homeassistant/#")
    d = DaemonProcess(tmp, daemon_config(broker.port, tmp, detector, "{mode: every}"))
    try:
        listener.wait(lambda m: m[0] == "inferd/board1/status" and m[1] == "online")
        late = Listener(broker.port, "inferd/board1/status")  # a client that comes later: retained
        late.wait(lambda m: m[1] == "online" and m[2])
        late.close()
        with FramePublisher(d.pull, source="cam0") as cam, FramePublisher(d.pull, source="door") as door:
            for i in range(3):
                cam.send(TENSOR, seq=i)
                door.send(np.zeros((1, 3, 64, 64), np.float32), seq=i)
                time.sleep(0.05)
        listener.wait(lambda m: m[0] == "inferd/board1/det/door" and json.loads(m[1])["seq"] == 2)
        listener.wait(lambda m: m[0] == "inferd/board1/cls/cam0" and json.loads(m[1])["seq"] == 2)
        cls = listener.results("inferd/board1/cls/cam0")[0]
        with InferClient(d.router) as client:  # the same frame by request: the same answer
            expected = client.infer(TENSOR, model="cls", source="check").classes
        assert cls["model"] == "cls" and cls["source"] == "cam0" and cls["classes"] == expected
        det = listener.results("inferd/board1/det/door")[0]
        assert [x["label"] for x in det["detections"]] == ["person", "car"] and det["frame"] == {
            "width": 64,
            "height": 64,
        }

        sensor = json.loads(
            listener.wait(lambda m: m[0] == "homeassistant/sensor/inferd_board1/cls_cam0/config")[0][1]
        )
        count = json.loads(listener.wait(lambda m: m[0].endswith("/det_door_count/config"))[0][1])
        person = json.loads(
            listener.wait(
                lambda m: m[0] == "homeassistant/binary_sensor/inferd_board1/det_door_person/config"
            )[0][1]
        )
        for entity in (sensor, count, person):  # what Home Assistant's MQTT discovery requires and uses
            assert entity["state_topic"].startswith("inferd/board1/") and entity["unique_id"].startswith(
                "inferd_board1_"
            )
            assert entity["device"]["identifiers"] == ["inferd_board1"] and entity["device"]["sw_version"]
            assert entity["availability_topic"] == "inferd/board1/status"
        jinja2 = pytest.importorskip("jinja2")  # Home Assistant's template language: render them
        env = jinja2.Environment()
        assert env.from_string(sensor["value_template"]).render(value_json=cls) == expected[0]["label"]
        assert env.from_string(count["value_template"]).render(value_json=det) == "2"
        assert env.from_string(person["value_template"]).render(value_json=det) == "ON"
        assert env.from_string(person["value_template"]).render(value_json={"detections": []}) == "OFF"
        assert person["device_class"] == "occupancy" and person["off_delay"] == 5.0
    finally:
        d.proc.send_signal(signal.SIGKILL)  # a crash: the broker says it, through the Last Will
        d.proc.wait(10)
        listener.wait(lambda m: m[0] == "inferd/board1/status" and m[1] == "offline")
        d.stop()
        listener.close()


def test_publish_policies_change_and_rate(setup):
    broker, tmp, detector = setup
    extra = "  models:\n    det: {mode: rate, max_per_s: 2}\n"
    d = DaemonProcess(
        tmp, daemon_config(broker.port, tmp, detector, "{mode: change, heartbeat_s: 60}", extra)
    )
    listener = Listener(broker.port, "inferd/board1/+/+")
    try:
        time.sleep(0.5)
        other = np.full((1, 3, 64, 64), -3, np.float32)  # "bravo" where TENSOR is "echo"
        with InferClient(d.router) as client:
            first = client.infer(TENSOR, model="cls").classes[0]["label"]
            second = client.infer(other, model="cls").classes[0]["label"]
        assert first != second, "the test needs two frames the classifier tells apart"
        with FramePublisher(d.pull, source="cam1") as cam:
            for frame in [TENSOR] * 5 + [other] * 5:  # one change: two messages, not ten
                cam.send(frame)
                time.sleep(0.03)
        with FramePublisher(d.pull, source="door1") as door:
            for _ in range(20):  # 1 s at 20 fps, at most 2 per second
                door.send(np.zeros((1, 3, 64, 64), np.float32))
                time.sleep(0.05)
        time.sleep(1.0)
        labels = [r["classes"][0]["label"] for r in listener.results("inferd/board1/cls/cam1")]
        assert labels == [first, second], labels
        assert 2 <= len(listener.results("inferd/board1/det/door1")) <= 4
        assert d.metric("inferd_mqtt_messages_total", result="skipped") >= 8 + 16
    finally:
        assert d.stop() == 0
        listener.close()


def test_a_broker_outage_costs_no_inference(setup):
    broker, tmp, detector = setup
    d = DaemonProcess(tmp, daemon_config(broker.port, tmp, detector, "{mode: every}", "  outbox: 5\n"))
    try:
        end = time.monotonic() + 5
        while d.metric("inferd_mqtt_connected") != 1 and time.monotonic() < end:
            time.sleep(0.1)
        assert d.metric("inferd_mqtt_connected") == 1
        broker.kill()
        with FramePublisher(d.pull, source="cam2") as cam, InferClient(d.router) as client:
            for i in range(30):
                cam.send(TENSOR, seq=i)
                assert client.infer(TENSOR, model="cls").ok  # inference goes on at full rate
        end = time.monotonic() + 10
        while d.metric("inferd_mqtt_messages_total", result="dropped") < 25 and time.monotonic() < end:
            time.sleep(0.1)
        assert d.metric("inferd_mqtt_connected") == 0
        assert d.metric("inferd_mqtt_messages_total", result="dropped") >= 25  # the outbox keeps 5
        health = json.loads(
            __import__("urllib.request").request.urlopen(f"http://127.0.0.1:{d.metrics_port}/healthz").read()
        )
        assert health["mqtt"] == {"broker": f"mqtt://127.0.0.1:{broker.port}", "connected": False}
        broker.start()  # the broker comes back on the same port: inferd reconnects by itself
        listener = Listener(broker.port, "inferd/board1/cls/cam3")
        end = time.monotonic() + 40
        while d.metric("inferd_mqtt_connected") != 1 and time.monotonic() < end:
            time.sleep(0.2)
        with FramePublisher(d.pull, source="cam3") as cam:
            cam.send(TENSOR, seq=99)
            time.sleep(0.2)
        listener.wait(lambda m: json.loads(m[1])["seq"] == 99, timeout=10)
        listener.close()
    finally:
        assert d.stop() == 0
