"""Results to MQTT, against a real Mosquitto (Debian's) and real MQTT clients (paho, mosquitto_sub)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from inferd.client import FramePublisher, InferClient
from inferd.config import MqttConfig
from inferd.outputs.homeassistant import Discovery
from tests.conftest import MODELS
from tests.daemon_harness import DaemonProcess
from tests.mqtt_broker import Broker, Listener, make_certs
from tests.test_frigate import build_detector

if shutil.which("mosquitto") is None:
    if os.environ.get("INFERD_CI"):
        raise RuntimeError("CI needs mosquitto (make test installs it as root)")
    pytest.skip("needs mosquitto (make test installs it as root)", allow_module_level=True)
pytest.importorskip("paho.mqtt.client")

TENSOR = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
ZEROS = np.zeros((1, 3, 64, 64), np.float32)
PERSON = "homeassistant/binary_sensor/inferd_board1/det_door_person/config"
COUNT = "homeassistant/sensor/inferd_board1/det_door_count/config"
SENSOR = "homeassistant/sensor/inferd_board1/cls_cam0/config"
SYNC = "homeassistant/inferd_tests/sync"  # Listener.sync's marker: no entity's topic
STATE_SYNC = "inferd/board1/tests/sync"  # the same among the state topics (inferd/board1/+/+)


# every frame queued, none dropped (the sender waits instead): a test that counts messages
# offers the sink exactly the frames it sent, whatever the machine's speed
FIFO = 'sources:\n  - {match: "*", policy: fifo, queue_size: 64}\n'


def daemon_config(
    broker, labels_dir, detector=None, publish="{mode: every}", extra="", prefix="inferd", fifo=False
) -> str:
    """cls (classify) for cam*, and with a detector det (detect) for door*; `broker` is a port or
    the broker's lines of the mqtt section; `fifo`: the FIFO sources policy."""
    if isinstance(broker, int):
        broker = f'broker: "mqtt://127.0.0.1:{broker}"'
    det_model = f"""
  - name: det
    path: {detector}
    labels: {labels_dir}/det_labels.txt
    postprocess: {{type: detect, format: end2end, score_threshold: 0.3}}"""
    return f"""
models:
  - name: cls
    path: {MODELS}/classifier_int8.onnx
    labels: {MODELS}/labels.txt
    postprocess: {{type: classify, top_k: 2}}{det_model if detector else ""}
endpoints:
  - {{type: pull, bind: "{{pull}}"}}
  - {{type: router, bind: "{{router}}"}}
routes:
  - {{sources: ["cam*"], models: [cls]}}{
        '''
  - {sources: ["door*"], models: [det]}'''
        if detector
        else ""
    }
metrics: {{listen: "{{metrics}}"}}
mqtt:
  {broker}
  topic_prefix: {prefix}
  device_id: board1
  publish: {publish}
  home_assistant: {{labels: [person]}}
{extra}{FIFO if fifo else ""}"""


def wait_for(test, what: str, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not test():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def healthz(d: DaemonProcess) -> dict:
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{d.metrics_port}/healthz", timeout=5).read())


def secret(path, text: str, mode: int = 0o600):
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


@pytest.fixture
def setup(tmp_path):
    broker = Broker(tmp_path)
    (tmp_path / "det_labels.txt").write_text("person\ncar\ndog\n")
    detector = build_detector(tmp_path / "det.onnx")
    yield broker, tmp_path, detector
    broker.kill()


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A TLS listener (a CA's certificate for 127.0.0.1) with passwords and no anonymous clients."""
    tmp = tmp_path_factory.mktemp("mqtt-tls")
    certs = make_certs(tmp / "certs")
    broker = Broker(tmp, certs=certs, users={"inferd": "s3cret", "reader": "r3ader"})
    yield broker, certs
    broker.kill()


def test_results_availability_and_discovery_reach_real_clients(setup):
    broker, tmp, detector = setup
    listener = Listener(broker.port, "inferd/#", "homeassistant/#")
    d = DaemonProcess(tmp, daemon_config(broker.port, tmp, detector))
    try:
        listener.wait(lambda m: m[0] == "inferd/board1/status" and m[1] == "online")
        late = Listener(broker.port, "inferd/board1/status")  # a client that comes later: retained
        late.wait(lambda m: m[1] == "online" and m[2])
        late.close()
        with FramePublisher(d.pull, source="cam0") as cam, FramePublisher(d.pull, source="door") as door:
            for i in range(3):  # a `latest` queue may drop an older one, never seq 2, the newest
                cam.send(TENSOR, seq=i)
                door.send(ZEROS, seq=i)
        listener.wait(lambda m: m[0] == "inferd/board1/det/door" and json.loads(m[1])["seq"] == 2)
        listener.wait(lambda m: m[0] == "inferd/board1/cls/cam0" and json.loads(m[1])["seq"] == 2)
        cls = listener.results("inferd/board1/cls/cam0")[0]
        with InferClient(d.router, timeout=30) as client:  # the same frame by request: the same answer
            expected = client.infer(TENSOR, model="cls").classes
        assert cls["model"] == "cls" and cls["source"] == "cam0" and cls["classes"] == expected
        det = listener.results("inferd/board1/det/door")[0]
        assert [x["label"] for x in det["detections"]] == ["person", "car"] and det["frame"] == {
            "width": 64,
            "height": 64,
        }

        sensor = json.loads(listener.wait(lambda m: m[0] == SENSOR)[0][1])
        count = json.loads(listener.wait(lambda m: m[0] == COUNT)[0][1])
        person = json.loads(listener.wait(lambda m: m[0] == PERSON)[0][1])
        check_discovery_schema(sensor, "sensor")
        check_discovery_schema(count, "sensor")
        check_discovery_schema(person, "binary_sensor")
        assert count["state_class"] == "measurement"
        assert person["device_class"] == "occupancy" and person["off_delay"] == 5
        jinja2 = pytest.importorskip("jinja2")  # Home Assistant's template language: render them
        env = jinja2.Environment()
        assert env.from_string(sensor["value_template"]).render(value_json=cls) == expected[0]["label"]
        attributes = json.loads(env.from_string(sensor["json_attributes_template"]).render(value_json=cls))
        assert attributes == {"score": expected[0]["score"], "top_k": expected}
        assert env.from_string(count["value_template"]).render(value_json=det) == "2"
        assert env.from_string(person["value_template"]).render(value_json=det) == "ON"
        # `every` publishes each frame: no person says nothing (Home Assistant ignores an empty
        # state), and off_delay turns the sensor off 5 s after the last sighting
        assert env.from_string(person["value_template"]).render(value_json={"detections": []}) == ""
    finally:
        d.proc.send_signal(signal.SIGKILL)  # a crash: the broker says it, through the Last Will
        d.proc.wait(10)
        listener.wait(lambda m: m[0] == "inferd/board1/status" and m[1] == "offline")
        d.stop()
        listener.close()


def check_discovery_schema(entity: dict, component: str) -> None:
    """What Home Assistant's MQTT discovery requires and how it reads it
    (https://www.home-assistant.io/integrations/mqtt/, sensor.mqtt, binary_sensor.mqtt): a state
    topic; a unique_id and a device with identifiers (else no device registry entry); one
    availability topic with its payloads; off_delay and expire_after are integers of seconds."""
    assert isinstance(entity["state_topic"], str) and entity["state_topic"].startswith("inferd/board1/")
    assert entity["unique_id"].startswith("inferd_board1_") and entity["name"]
    device = entity["device"]
    assert device["identifiers"] == ["inferd_board1"] and device["name"] == "inferd board1"
    assert {"manufacturer", "model", "sw_version"} <= device.keys()
    assert set(device) <= {"identifiers", "connections", "name", "manufacturer", "model", "model_id",
                           "sw_version", "hw_version", "serial_number", "configuration_url",
                           "suggested_area", "via_device"}  # fmt: skip
    assert entity["availability_topic"] == "inferd/board1/status" and "availability" not in entity
    assert (entity["payload_available"], entity["payload_not_available"]) == ("online", "offline")
    for key in ("off_delay", "expire_after"):
        if key in entity:
            assert isinstance(entity[key], int) and entity[key] > 0, (key, entity[key])
    if component == "binary_sensor":
        assert (entity.get("payload_on", "ON"), entity.get("payload_off", "OFF")) == ("ON", "OFF")
        assert entity.get("device_class") in (None, "occupancy", "motion", "presence")
    elif component == "event":  # event.mqtt: its types, and a template that gives one of them
        assert entity["event_types"] and "event_type" in entity["value_template"]
    else:
        assert "off_delay" not in entity and "payload_on" not in entity
        assert entity.get("state_class") in (None, "measurement", "total_increasing")
    assert all(isinstance(entity[k], str) and "{{" in entity[k] for k in entity if k.endswith("_template"))


def test_the_person_sensor_follows_the_publish_policy():
    """`every`/`rate`: OFF is the silence after the last sighting (off_delay, at least two publish
    intervals); `change` publishes nothing while a person stands still, so it sends OFF itself."""
    jinja2 = pytest.importorskip("jinja2")
    cfg = MqttConfig.model_validate({
        "broker": "mqtt://127.0.0.1", "device_id": "board1", "publish": {"mode": "change"},
        "models": {"fast": {"mode": "every"}, "slow": {"mode": "rate", "max_per_s": 0.1}},
        "home_assistant": {"labels": ["person"]},
    })  # fmt: skip
    discovery = Discovery(None, cfg, "inferd/board1/status")

    def person(model: str) -> dict:
        (entity,) = [e for t, e in discovery.entities(model, "door", {"detections": []}).items()
                     if t.startswith("homeassistant/binary_sensor/")]  # fmt: skip
        check_discovery_schema(entity, "binary_sensor")
        return entity

    def state(entity: dict, labels: list[str]) -> str:
        value = {"detections": [{"label": label} for label in labels]}
        return jinja2.Environment().from_string(entity["value_template"]).render(value_json=value)

    change, fast, slow = person("det"), person("fast"), person("slow")
    assert "off_delay" not in change
    assert (state(change, ["car", "person"]), state(change, ["car"])) == ("ON", "OFF")
    assert fast["off_delay"] == 5 and (state(fast, ["person"]), state(fast, [])) == ("ON", "")
    assert slow["off_delay"] == 20 and state(slow, ["car"]) == ""  # two intervals of 10 s


def test_entity_ids_cannot_collide_and_tell_their_model_and_label():
    cfg = MqttConfig.model_validate({"broker": "mqtt://127.0.0.1", "device_id": "board1",
                                     "home_assistant": {"labels": ["person"]}})  # fmt: skip
    discovery = Discovery(None, cfg, "inferd/board1/status", models={"a_b", "a"})
    one = discovery.entities("a_b", "c", {"classes": []})
    other = discovery.entities("a", "b_c", {"classes": []})
    assert set(one).isdisjoint(other)
    assert {e["unique_id"] for e in one.values()}.isdisjoint(e["unique_id"] for e in other.values())
    assert not any(discovery.stale(t) for t in [*one, *other])
    dets = discovery.entities("gone", "door", {"detections": []})
    assert dets and all(discovery.stale(t) for t in dets)  # a model no longer configured
    discovery.models.add("gone")
    discovery.ha = discovery.ha.model_copy(update={"labels": ["car"]})
    assert [t for t in dets if discovery.stale(t)] == [t for t in dets if "binary_sensor" in t]


def test_the_birth_topic_follows_the_discovery_prefix():
    def discovery(**ha) -> Discovery:
        cfg = MqttConfig.model_validate({"broker": "mqtt://127.0.0.1", "home_assistant": ha})
        return Discovery(None, cfg, "inferd/board1/status")

    assert discovery().birth_topic == "homeassistant/status"  # Home Assistant's default
    assert discovery(discovery_prefix="ha").birth_topic == "ha/status"
    assert discovery(birth_topic="hass/birth").birth_topic == "hass/birth"
    with pytest.raises(ValueError, match="without MQTT wildcards"):
        discovery(birth_topic="hass/#")


def test_a_new_entitys_first_state_reaches_a_subscriber_that_comes_after_its_config(setup):
    """Home Assistant subscribes to an entity's state topic ~100 ms after its config arrives; with
    `change` and a still scene no second result comes for a minute (the heartbeat): the state the
    config announced must still reach it (retained)."""
    broker, tmp, _ = setup
    configs = Listener(broker.port, "homeassistant/#")
    d = DaemonProcess(tmp, daemon_config(broker.port, tmp, publish="{mode: change, heartbeat_s: 3600}"))
    try:
        with FramePublisher(d.pull, source="cam0") as cam:
            for i in range(3):  # a still scene: one result
                cam.send(TENSOR, seq=i)
            state_topic = json.loads(configs.wait(lambda m: m[0] == SENSOR)[0][1])["state_topic"]
            late = Listener(broker.port, state_topic)  # subscribes after seeing the config, as HA does
            (first,) = late.wait(lambda m: True, timeout=10)
        with InferClient(d.router, timeout=30) as client:
            label = client.infer(TENSOR, model="cls").classes[0]["label"]
        assert first[2] and json.loads(first[1])["classes"][0]["label"] == label  # retained
        late.close()
    finally:
        assert d.stop() == 0
        configs.close()


def test_home_assistants_birth_message_announces_configs_and_latest_states_again(setup):
    """A Home Assistant that restarts starts every MQTT entity `unknown`; once it has subscribed it
    says `online` on homeassistant/status (its birth message), and inferd answers with every
    entity's config, then every entity's latest state, though nothing changed (a still scene)."""
    broker, tmp, detector = setup
    d = DaemonProcess(tmp, daemon_config(broker.port, tmp, detector, "{mode: change, heartbeat_s: 3600}"))
    ha = Listener(broker.port, "homeassistant/+/inferd_board1/+/config", "inferd/board1/+/+", SYNC)
    try:
        with FramePublisher(d.pull, source="cam0") as cam, FramePublisher(d.pull, source="door") as door:
            for i in range(3):
                cam.send(TENSOR, seq=i)
                door.send(ZEROS, seq=i)
            for topic in (SENSOR, COUNT, PERSON, "inferd/board1/cls/cam0", "inferd/board1/det/door"):
                ha.wait(lambda m, topic=topic: m[0] == topic)
        latest = {t: p for t, p, _ in ha.messages if t.startswith("inferd/")}
        ha.client.publish("homeassistant/status", "offline", qos=1)  # Home Assistant's Last Will
        ha.sync(SYNC)
        before = len(ha.messages)
        ha.client.publish("homeassistant/status", "online", qos=1)  # its birth message (not retained)
        wait_for(lambda: len(ha.messages) >= before + 5, "three configs and two states again", 10)
        ha.sync(SYNC)
        again = ha.messages[before:]
        assert sorted(t for t, _, _ in again) == sorted([SENSOR, COUNT, PERSON, *latest]), again  # once each
        assert {t: p for t, p, _ in again if t in latest} == latest  # the latest state, as it was
        assert [t.startswith("homeassistant/") for t, _, _ in again] == [True] * 3 + [
            False
        ] * 2  # configs first
    finally:
        assert d.stop() == 0
        ha.close()


def test_publish_policies_change_and_rate(setup):
    """`change` sends a result when its label differs from the last one sent; `rate` sends at most
    max_per_s per model and source. fifo queues: the sink is offered every frame sent, so the counts
    are exact, and the rate's bound comes from the window the offers fell in, whatever its length."""
    broker, tmp, detector = setup
    interval = 2.0  # det: 0.5 per second
    extra = "  models:\n    det: {mode: rate, max_per_s: 0.5}\n"
    d = DaemonProcess(
        tmp, daemon_config(broker.port, tmp, detector, "{mode: change, heartbeat_s: 60}", extra, fifo=True)
    )
    listener = Listener(broker.port, "inferd/board1/+/+")
    try:

        def metric(name: str, **labels) -> float:
            return d.metric(name, **labels)

        def results(model: str, source: str) -> float:  # observed after the result was offered
            return metric("inferd_frame_latency_seconds_count", model=model, source=source)

        def decided() -> float:  # results the sink sent or held back
            return metric("inferd_mqtt_messages_total", result="sent") + metric(
                "inferd_mqtt_messages_total", result="skipped"
            )

        other = np.full((1, 3, 64, 64), -3, np.float32)  # "bravo" where TENSOR is "echo"
        with FramePublisher(d.pull, source="cam1") as cam:
            for frame in [TENSOR] * 5 + [other] * 5:  # one change: two messages, not ten
                cam.send(frame)
        start = time.monotonic()  # before the first door1 frame is sent: every offer comes after
        with FramePublisher(d.pull, source="door1") as door:
            for _ in range(20):
                door.send(ZEROS)
            wait_for(lambda: results("cls", "cam1") == 10 and results("det", "door1") == 20, "all 30 results")
            window = time.monotonic() - start  # every door1 result was offered within it
            wait_for(lambda: decided() == 30, "the sink to decide on every result")
            sent = metric("inferd_mqtt_messages_total", result="sent")
            wait_for(lambda: len(listener.messages) == sent, "the broker to deliver every message sent")
            with InferClient(d.router, timeout=30) as client:
                expected = [client.infer(x, model="cls").classes[0]["label"] for x in (TENSOR, other)]
            assert expected[0] != expected[1], "the test needs two frames the classifier tells apart"
            labels = [r["classes"][0]["label"] for r in listener.results("inferd/board1/cls/cam1")]
            assert labels == expected, labels
            doors = len(listener.results("inferd/board1/det/door1"))
            # the first one, then at most one per interval: offers `window` s apart at the most
            bound = 1 + int(window // interval)
            assert bound < 20, f"precondition not met: 20 frames took {window:.1f} s, the bound says nothing"
            assert 1 <= doors <= bound, (doors, window)
            assert sent == 2 + doors
            assert metric("inferd_mqtt_messages_total", result="skipped") == 8 + 20 - doors
            # a full interval after the last offer (a slower machine only waits longer): sent again
            time.sleep(interval)
            door.send(ZEROS)
            wait_for(
                lambda: len(listener.results("inferd/board1/det/door1")) == doors + 1,
                "a door1 result sent once the interval has passed",
            )
    finally:
        assert d.stop() == 0
        listener.close()


def test_only_streamed_results_are_published(setup):
    """Results of pull/sub frames go to the broker; an answer to a router request goes to the asker."""
    broker, tmp, _ = setup
    d = DaemonProcess(tmp, daemon_config(broker.port, tmp))
    listener = Listener(broker.port, "inferd/board1/+/+")
    try:
        with InferClient(d.router, timeout=30) as client:
            assert client.infer(TENSOR, model="cls", source="asked").ok
        with FramePublisher(d.pull, source="cam0") as cam:
            cam.send(TENSOR, seq=5)
            listener.wait(lambda m: m[0] == "inferd/board1/cls/cam0")  # one outbox: in order
        assert [m[0] for m in listener.messages] == ["inferd/board1/cls/cam0"]
    finally:
        assert d.stop() == 0
        listener.close()


def test_a_broker_outage_costs_no_inference(setup):
    broker, tmp, detector = setup
    d = DaemonProcess(tmp, daemon_config(broker.port, tmp, detector, extra="  outbox: 5\n", fifo=True))
    try:
        wait_for(lambda: d.metric("inferd_mqtt_connected") == 1, "the broker connection")
        broker.kill()
        # precondition: inferd knows the broker is gone, so no result below can reach it
        wait_for(lambda: d.metric("inferd_mqtt_connected") == 0, "inferd to notice the outage")
        with FramePublisher(d.pull, source="cam2") as cam, InferClient(d.router, timeout=30) as client:
            for i in range(30):
                cam.send(TENSOR, seq=i)
                assert client.infer(TENSOR, model="cls").ok  # inference goes on at full rate
        cam2 = {"model": "cls", "source": "cam2"}
        wait_for(lambda: d.metric("inferd_frame_latency_seconds_count", **cam2) == 30, "the 30 results")
        assert d.metric("inferd_mqtt_messages_total", result="dropped") == 25  # the outbox keeps 5
        assert d.metric("inferd_mqtt_connected") == 0
        mqtt = healthz(d)["mqtt"]
        assert mqtt["broker"] == f"mqtt://127.0.0.1:{broker.port}" and mqtt["connected"] is False
        wait_for(lambda: "Connection refused" in d.logs(), "the reason in the log")
        broker.start()  # the broker comes back on the same port: inferd reconnects by itself
        listener = Listener(broker.port, "inferd/board1/cls/cam3")
        # paho retries 1 to 30 s apart: the next try can come 30 s after the broker is back
        wait_for(lambda: d.metric("inferd_mqtt_connected") == 1, "the reconnection", timeout=60)
        with FramePublisher(d.pull, source="cam3") as cam:
            cam.send(TENSOR, seq=99)
            listener.wait(lambda m: json.loads(m[1])["seq"] == 99)
        listener.close()
    finally:
        assert d.stop() == 0


def tls_lines(broker: Broker, ca, password_file) -> str:
    return (
        f'broker: "mqtts://127.0.0.1:{broker.port}"\n  username: inferd\n'
        f"  password_file: {password_file}\n  tls: {{ca_file: {ca}}}"
    )


def test_tls_and_a_password_file_reach_real_clients(tls, tmp_path):
    broker, certs = tls
    password = secret(tmp_path / "mqtt.password", "s3cret")
    listener = Listener(broker.port, "inferd/#", ca=certs["ca"], auth=("reader", "r3ader"))
    d = DaemonProcess(tmp_path, daemon_config(tls_lines(broker, certs["ca"], password), tmp_path))
    try:
        listener.wait(lambda m: m[0] == "inferd/board1/status" and m[1] == "online")
        sub = subprocess.run(  # Mosquitto's own client, verifying the certificate for 127.0.0.1
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "--cafile", str(certs["ca"]),
             "-u", "reader", "-P", "r3ader", "-t", "inferd/board1/status", "-C", "1", "-W", "30"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert (sub.returncode, sub.stdout) == (0, "online\n"), sub.stderr
        with FramePublisher(d.pull, source="cam0") as cam:
            cam.send(TENSOR, seq=7)
            result = json.loads(
                listener.wait(lambda m: m[0] == "inferd/board1/cls/cam0" and '"seq":7' in m[1])[0][1]
            )
        with InferClient(d.router, timeout=30) as client:
            assert result["classes"] == client.infer(TENSOR, model="cls").classes
        assert d.metric("inferd_mqtt_connected") == 1
        assert healthz(d)["mqtt"] == {"broker": f"mqtts://127.0.0.1:{broker.port}", "connected": True}
    finally:
        assert d.stop() == 0
        listener.close()


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong password", "refused the connection: Not authorized"),
        ("untrusted CA", "cannot connect: [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"),
    ],
)
def test_a_broker_that_refuses_inferd_costs_no_inference(tls, tmp_path, case, reason):
    broker, certs = tls
    password = secret(tmp_path / "mqtt.password", "wrong" if case == "wrong password" else "s3cret")
    ca = certs["other_ca"] if case == "untrusted CA" else certs["ca"]
    before = len(broker.log.read_text())
    d = DaemonProcess(tmp_path, daemon_config(tls_lines(broker, ca, password), tmp_path))
    try:
        wait_for(lambda: reason in d.logs(), f"{reason!r} in the log")
        # the broker's own count of the attempts it refused (one line each): a retry has happened
        refusal = "not authorised" if case == "wrong password" else "alert unknown ca"
        wait_for(lambda: broker.log.read_text()[before:].count(refusal) >= 2, "a second attempt")
        assert f"broker mqtts://127.0.0.1:{broker.port}: {reason}" in d.logs()
        with FramePublisher(d.pull, source="cam0") as cam, InferClient(d.router, timeout=30) as client:
            for i in range(5):
                cam.send(TENSOR, seq=i)
            assert client.infer(TENSOR, model="cls").ok  # inference goes on
        assert d.metric("inferd_mqtt_connected") == 0
        assert healthz(d)["mqtt"]["connected"] is False
        assert d.logs().count(reason) == 1, "each new reason is logged once, not at every retry"
    finally:
        assert d.stop() == 0


def test_check_refuses_a_password_file_others_can_read(tmp_path):
    password = secret(tmp_path / "mqtt.password", "s3cret", mode=0o644)
    config = tmp_path / "inferd.yaml"
    config.write_text(
        f"models:\n  - {{name: cls, path: {MODELS}/classifier_int8.onnx}}\n"
        f'mqtt: {{broker: "mqtt://127.0.0.1:1883", username: inferd, password_file: {password}}}\n'
    )

    def check() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "inferd", "check", "-c", str(config)],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    refused = check()
    assert refused.returncode == 1
    assert (
        f"mqtt.password_file: {password} is readable by others (mode 644): chmod 600 {password}"
        in refused.stderr
    ), refused.stderr
    password.chmod(0o600)
    accepted = check()
    assert accepted.returncode == 0, accepted.stderr


def rewrite(d: DaemonProcess, config: str) -> None:
    """A new config for `d`, with the addresses DaemonProcess filled in at the start."""
    for key, value in {"router": d.router, "pull": d.pull, "metrics": f"127.0.0.1:{d.metrics_port}"}.items():
        config = config.replace("{" + key + "}", value)
    d.config_path.write_text(config)


def reload(d: DaemonProcess) -> subprocess.CompletedProcess:
    """`inferd reload` (what `systemctl reload` runs): SIGHUP, then the daemon's verdict."""
    return subprocess.run(
        [sys.executable, "-m", "inferd", "reload", "--pid", str(d.proc.pid), "--timeout", "30"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_reload_moves_publishing_removes_entities_and_refuses_a_broken_section(setup):
    broker, tmp, detector = setup
    second = Broker(tmp)
    (tmp / "run").mkdir()
    a = Listener(broker.port, "inferd/#", "homeassistant/#")
    b = Listener(second.port, "site2/#")
    d = DaemonProcess(
        tmp, daemon_config(broker.port, tmp, detector), env={"RUNTIME_DIRECTORY": str(tmp / "run")}
    )
    try:
        with FramePublisher(d.pull, source="cam0") as cam, FramePublisher(d.pull, source="door") as door:
            cam.send(TENSOR, seq=1)
            door.send(ZEROS, seq=1)
            for topic in (PERSON, COUNT, SENSOR, "inferd/board1/det/door"):
                a.wait(lambda m, topic=topic: m[0] == topic and m[1])
        loaded = d.logs().count("loaded model")

        # 1. the detector leaves the config: its Home Assistant entities go (empty retained configs)
        rewrite(d, daemon_config(broker.port, tmp))
        verdict = reload(d)
        assert verdict.returncode == 0 and "serving 1 model(s)" in verdict.stdout, verdict.stderr
        for topic in (PERSON, COUNT):
            a.wait(lambda m, topic=topic: m[0] == topic and m[1] == "")
        late = Listener(broker.port, "homeassistant/#")  # what Home Assistant sees when it restarts
        late.sync(SYNC)  # every retained config has arrived
        assert {m[0] for m in late.messages} == {SENSOR}
        late.close()
        states = Listener(broker.port, "inferd/board1/+/+")  # the retained states: the detector's emptied
        states.sync(STATE_SYNC)
        assert [m[0] for m in states.messages] == ["inferd/board1/cls/cam0"]
        states.close()
        assert d.logs().count("loaded model") == loaded, "the classifier was not loaded again"

        # 2. another broker and topic prefix: publishing moves, the models stay
        rewrite(d, daemon_config(second.port, tmp, prefix="site2"))
        verdict = reload(d)
        assert verdict.returncode == 0, verdict.stderr
        a.wait(lambda m: m[0] == "inferd/board1/status" and m[1] == "offline")  # a clean goodbye
        b.wait(lambda m: m[0] == "site2/board1/status" and m[1] == "online")
        with FramePublisher(d.pull, source="cam0") as cam:
            cam.send(TENSOR, seq=2)
            b.wait(lambda m: m[0] == "site2/board1/cls/cam0" and json.loads(m[1])["seq"] == 2)
        assert not [m for m in a.messages if m[0] == "inferd/board1/cls/cam0" and '"seq":2' in m[1]]
        assert healthz(d)["mqtt"]["broker"] == f"mqtt://127.0.0.1:{second.port}"
        assert d.metric("inferd_mqtt_connected") == 1  # the new sink's state, not the stopped one's
        assert d.logs().count("loaded model") == loaded

        # 3. a broken mqtt section is refused whole: the second broker keeps publishing
        missing = f'broker: "mqtt://127.0.0.1:{broker.port}"\n  username: u\n  password_file: {tmp}/nope'
        rewrite(d, daemon_config(missing, tmp, prefix="site3"))
        verdict = reload(d)
        assert verdict.returncode == 1
        assert f"mqtt.password_file: {tmp}/nope: no such file" in verdict.stderr, verdict.stderr
        with FramePublisher(d.pull, source="cam0") as cam:
            cam.send(TENSOR, seq=3)
            b.wait(lambda m: m[0] == "site2/board1/cls/cam0" and json.loads(m[1])["seq"] == 3)
        assert healthz(d)["mqtt"] == {"broker": f"mqtt://127.0.0.1:{second.port}", "connected": True}

        # 4. a change on the same broker (same client id, same status topic): still `online` after
        rewrite(d, daemon_config(second.port, tmp, prefix="site2", extra="  qos: 1\n"))
        assert reload(d).returncode == 0
        with FramePublisher(d.pull, source="cam0") as cam:
            cam.send(TENSOR, seq=4)
            b.wait(lambda m: m[0] == "site2/board1/cls/cam0" and json.loads(m[1])["seq"] == 4)
        late = Listener(second.port, "site2/board1/status")
        assert late.wait(lambda m: m[2])[0][1] == "online"
        late.close()
        assert d.metric("inferd_mqtt_connected") == 1
    finally:
        assert d.stop() == 0
        a.close()
        b.close()
        second.kill()


def test_entities_of_a_model_removed_while_stopped_are_deleted_at_the_next_start(setup):
    """Home Assistant keeps retained discovery configs forever: a model (or a label of interest)
    taken out of the config while inferd was stopped must not leave ghost entities."""
    broker, tmp, detector = setup
    a = Listener(broker.port, "homeassistant/#")
    d = DaemonProcess(tmp, daemon_config(broker.port, tmp, detector))
    try:
        with FramePublisher(d.pull, source="cam0") as cam, FramePublisher(d.pull, source="door") as door:
            cam.send(TENSOR, seq=1)
            door.send(ZEROS, seq=1)
            for topic in (PERSON, COUNT, SENSOR):
                a.wait(lambda m, topic=topic: m[0] == topic and m[1])
    finally:
        assert d.stop() == 0
    a.close()
    # subscribed before the daemon starts: a deletion (an empty retained message) published before
    # a subscription is never delivered to it (this listener came after the daemon, and missed it,
    # on a loaded machine)
    late = Listener(broker.port, "homeassistant/#", "inferd/board1/+/+")
    d = DaemonProcess(tmp, daemon_config(broker.port, tmp))  # the detector is gone
    try:
        gone = (PERSON, COUNT, "inferd/board1/det/door")  # its configs and its retained state
        wait_for(
            lambda: {m[0] for m in late.messages if m[1] == "" and m[0] in gone} == set(gone),
            "the detector's entities deleted",
        )
        late.close()
        again = Listener(broker.port, "homeassistant/#")  # what Home Assistant sees when it restarts
        again.sync(SYNC)  # every retained config has arrived
        assert {m[0] for m in again.messages} == {SENSOR}  # the classifier's stays: it is configured
        again.close()
        states = Listener(broker.port, "inferd/board1/+/+")
        states.sync(STATE_SYNC)
        assert [m[0] for m in states.messages] == ["inferd/board1/cls/cam0"]
        states.close()
    finally:
        assert d.stop() == 0
