"""inferd's entities in a real Home Assistant (2024.3.3, from .venv-ha: `make ha-venv`) through a real
Mosquitto, read back through Home Assistant's REST API: a new still source's first state, every state
after a Home Assistant restart, `unavailable` after inferd dies, and the entity ids docs/mqtt.md names;
then a tracked object walking through a zone and over a line: occupancy, counts and zone events.
`make test-ha` runs it (about 30 s, most of it Home Assistant starting three times); it prints the
measured delays."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.daemon_harness import DaemonProcess, free_port
from tests.mqtt_broker import Broker, Listener

pytestmark = pytest.mark.homeassistant

HASS = ROOT / ".venv-ha" / "bin" / "hass"
DOCS = ROOT / "docs" / "mqtt.md"
USER, PASSWORD = "inferd", "inferd-test-password"
STATE_TOPICS = ("inferd/board1/cls/cam0", "inferd/board1/det/door")


@pytest.fixture(scope="module", autouse=True)
def _needs() -> None:
    """Here, not at import: a run that deselects the marker must not fail on a missing .venv-ha."""
    missing = [what for what, ok in [("mosquitto", shutil.which("mosquitto")), (".venv-ha (make ha-venv)",
               HASS.exists())] if not ok]  # fmt: skip
    if missing:
        if os.environ.get("INFERD_CI"):
            pytest.fail(f"CI needs {' and '.join(missing)}")
        pytest.skip(f"needs {' and '.join(missing)}")
    pytest.importorskip("paho.mqtt.client")


class Timed(Listener):
    """A Listener that also keeps when each message came (time.monotonic())."""

    def __init__(self, port: int, *topics: str) -> None:
        self.times: list[float] = []
        super().__init__(port, *topics)

    def _add(self, m) -> None:
        with self.lock:
            self.times.append(time.monotonic())
            self.messages.append((m.topic, m.payload.decode(), m.retain))

    def first(self, test, after: float = 0.0, timeout: float = 60.0) -> float:
        """When the first message that passes `test` and came after `after` arrived."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                for t, m in zip(self.times, self.messages, strict=True):
                    if t >= after and test(m):
                        return t
            time.sleep(0.02)
        raise AssertionError(f"no such message after {after} in {self.messages}")


class HomeAssistant:
    """`hass -c DIR --skip-pip` on 127.0.0.1 and a free port, its MQTT broker a config entry written
    before the first start (as the UI would), onboarding done, a user made with `hass --script auth`
    and an access token from the login flow."""

    def __init__(self, tmp: Path, broker_port: int) -> None:
        self.dir, self.log = tmp / "ha", tmp / "ha.log"
        storage = self.dir / ".storage"
        storage.mkdir(parents=True)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        (self.dir / "configuration.yaml").write_text(
            "homeassistant:\n  name: inferd test\n  latitude: 52.0\n  longitude: 4.0\n  elevation: 0\n"
            "  unit_system: metric\n  time_zone: UTC\n"
            f"http:\n  server_host: 127.0.0.1\n  server_port: {self.port}\napi:\n"
            "logger:\n  default: warning\n  logs:\n    homeassistant.components.mqtt: debug\n"
        )
        mqtt = {
            "entry_id": "0123456789abcdef0123456789abcdef", "version": 1, "minor_version": 1,
            "domain": "mqtt", "title": "Mosquitto", "source": "user", "unique_id": None,
            "data": {"broker": "127.0.0.1", "port": broker_port, "discovery": True}, "options": {},
            "pref_disable_new_entities": False, "pref_disable_polling": False, "disabled_by": None,
        }  # fmt: skip
        self._store(storage, "core.config_entries", {"entries": [mqtt]})
        self._store(storage, "onboarding", {"done": ["user", "core_config", "analytics", "integration"]}, 4)
        subprocess.run([HASS, "--script", "auth", "-c", self.dir, "add", USER, PASSWORD],
                       check=True, capture_output=True, timeout=180)  # fmt: skip
        self.proc: subprocess.Popen | None = None
        self.token: str | None = None

    @staticmethod
    def _store(storage: Path, key: str, data: dict, version: int = 1) -> None:
        envelope = {"version": version, "minor_version": 1, "key": key, "data": data}
        (storage / key).write_text(json.dumps(envelope))

    def start(self) -> float:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen([HASS, "-c", self.dir, "--skip-pip"], stdout=log, stderr=log)
        return time.monotonic()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _call(self, path: str, data: bytes | None = None, content_type: str = "application/json"):
        headers = {"Content-Type": content_type}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base + path, data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.loads(r.read())

    def _post(self, path: str, body: dict):
        return self._call(path, json.dumps(body).encode())

    def login(self) -> None:
        """The login flow of the web page, by hand: a flow, the password, a code for a token."""
        client = self.base + "/"
        flow = self._post("/auth/login_flow", {"client_id": client, "handler": ["homeassistant", None],
                                               "redirect_uri": client})  # fmt: skip
        done = self._post(f"/auth/login_flow/{flow['flow_id']}",
                          {"username": USER, "password": PASSWORD, "client_id": client})  # fmt: skip
        form = {"grant_type": "authorization_code", "code": done["result"], "client_id": client}
        token = self._call("/auth/token", urllib.parse.urlencode(form).encode(),
                           "application/x-www-form-urlencoded")  # fmt: skip
        self.token = token["access_token"]

    def wait_api(self, timeout: float = 180.0) -> float:
        """Until the REST API answers (logging in when the token is missing or refused): when."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hass exited {self.proc.returncode}:\n{self.log.read_text()[-5000:]}")
            try:
                if self.token is None:
                    self.login()
                self._call("/api/")
                return time.monotonic()
            except urllib.error.HTTPError as e:
                if e.code == 401:
                    self.token = None
            except (OSError, KeyError, ValueError):
                pass  # not listening yet, or the login flow not set up yet
            time.sleep(0.05)
        raise TimeoutError(
            f"Home Assistant's API did not answer in {timeout} s:\n{self.log.read_text()[-5000:]}"
        )

    def states(self, prefix: str) -> dict[str, str]:
        """entity id -> state of the entities whose ids start with `prefix`."""
        return {
            s["entity_id"]: s["state"] for s in self._call("/api/states") if s["entity_id"].startswith(prefix)
        }

    def shows(self, expected: dict[str, str]) -> bool:
        states = self.states("")
        return all(states.get(entity) == state for entity, state in expected.items())

    def state(self, entity_id: str) -> str | None:
        return (self.entity(entity_id) or {}).get("state")

    def entity(self, entity_id: str) -> dict | None:
        """The entity's state object (state, attributes), None while it is not an entity."""
        try:
            return self._call(f"/api/states/{entity_id}")
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise

    def until(self, test, what: str, timeout: float) -> float:
        """Polls (every 20 ms) until test() is true: when it was first seen true."""
        end = time.monotonic() + timeout
        while True:
            if test():
                return time.monotonic()
            if time.monotonic() > end:
                raise AssertionError(f"timed out ({timeout} s) waiting for {what}")
            time.sleep(0.02)


def documented_ids(device: str, entities: list[tuple[str, str, str]]) -> set[str]:
    """The entity ids docs/mqtt.md's table promises for `device` and (kind, model, source, label)
    tuples: each row's pattern (its second column) with the names slugified as Home Assistant does
    (lower case, every run of other characters one `_`)."""
    rows = re.findall(r"^\| *([^|]+?) *\| *`([a-z_]+\.[A-Za-z_]+)` *\|", DOCS.read_text(), re.M)
    patterns = dict(rows)
    assert len(patterns) >= 3, f"docs/mqtt.md's entity id table not found: {rows}"

    def slug(text: str) -> str:
        return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")

    out = set()
    for kind, model, source, *rest in entities:  # rest: a label, a zone, or a zone and a label
        zone, label = (rest[0], rest[-1]) if rest else ("", "")
        names = {"DEVICE": device, "MODEL": model, "SOURCE": source, "LABEL": label, "ZONE": zone}
        out.add(
            re.sub(
                r"DEVICE|MODEL|SOURCE|LABEL|ZONE",
                lambda m, names=names: slug(names[m.group()]),
                patterns[kind],
            )
        )
    return out


@pytest.mark.timeout(600)
def test_home_assistant_shows_the_current_state(tmp_path):
    from tests.test_frigate import build_detector
    from tests.test_mqtt import TENSOR, ZEROS, daemon_config

    broker = Broker(tmp_path)
    status = Timed(broker.port, "homeassistant/status", "inferd/board1/+/+")
    (tmp_path / "det_labels.txt").write_text("person\ncar\ndog\n")
    detector = build_detector(tmp_path / "det.onnx")
    ha = HomeAssistant(tmp_path, broker.port)
    d = None
    try:
        started = ha.start()
        api = ha.wait_api()
        birth = status.first(lambda m: m[0] == "homeassistant/status" and m[1] == "online", started)
        print(
            f"\nHome Assistant: API after {api - started:.1f} s, birth message after {birth - started:.1f} s"
        )

        # (a) new still sources (`change`: one result, then nothing while the scene stays) appear
        # with their state, though Home Assistant subscribes to a state topic after its config came
        publish = "{mode: change, heartbeat_s: 3600}"  # no heartbeat to hide a lost state
        d = DaemonProcess(tmp_path, daemon_config(broker.port, tmp_path, detector, publish))
        from inferd.client import FramePublisher, InferClient

        with InferClient(d.router, timeout=30) as client:
            label = client.infer(TENSOR, model="cls").classes[0]["label"]
        expected = {
            "sensor.inferd_board1_cls_cam0": label,
            "sensor.inferd_board1_det_door_objects": "2",  # ZEROS: a person and a car (test_mqtt)
            "binary_sensor.inferd_board1_person_detected_door": "on",
        }
        with FramePublisher(d.pull, source="cam0") as cam, FramePublisher(d.pull, source="door") as door:
            for i in range(5):  # the same frame: the same result, published once
                cam.send(TENSOR, seq=i)
                door.send(ZEROS, seq=i)
                time.sleep(0.1)
        first = status.first(lambda m: m[0] == "inferd/board1/cls/cam0")
        shown = ha.until(lambda: ha.state("sensor.inferd_board1_cls_cam0") == label, "the label", 30)
        all_shown = ha.until(lambda: ha.shows(expected), "every state", 30)
        door_first = status.first(lambda m: m[0] == "inferd/board1/det/door")
        print(f"(a) new entity: label in Home Assistant {shown - first:.2f} s after inferd's first result; "
              f"the door's states {all_shown - door_first:.2f} s after its first")  # fmt: skip
        assert len(status.results(STATE_TOPICS[0])) == 1, "a still scene: one result"
        assert shown - first < 3.0

        # (d) the entity ids are the ones docs/mqtt.md names, and Home Assistant made no others
        ours = ha.states("sensor.inferd_board1_") | ha.states("binary_sensor.inferd_board1_")
        assert set(ours) == set(expected), ours
        assert set(ours) == documented_ids(
            "board1", [("classify sensor", "cls", "cam0"), ("detect count sensor", "det", "door"),
                       ("detect label binary sensor", "det", "door", "person")]
        )  # fmt: skip

        # (b) Home Assistant restarts; no frame comes meanwhile (a still scene): every state is back
        ha.stop()
        assert ha.proc.returncode == 0, ha.log.read_text()[-3000:]

        def count() -> int:  # results on the two state topics (not the empty ones of (b2))
            return sum(1 for t, p, _ in status.messages if t in STATE_TOPICS and p)

        sent = count()
        started = ha.start()
        api = ha.wait_api()
        back = ha.until(lambda: ha.shows(expected), "every state after a restart", 60)
        birth = status.first(lambda m: m[0] == "homeassistant/status" and m[1] == "online", started)
        print(
            f"(b) after a restart: API after {api - started:.1f} s, birth after {birth - started:.1f} s; "
            f"every state {back - api:.2f} s after the API answered, {back - birth:+.2f} s from the birth"
        )
        assert back - api < 5.0 or back - birth < 2.0
        ha.until(lambda: count() == sent + 2, "the birth message answered: each latest state once more", 10)

        # (b2) the same, but the broker lost the retained states meanwhile (no persistence, say):
        # the birth message alone brings them back
        ha.stop()
        for topic in STATE_TOPICS:
            status.client.publish(topic, "", qos=1, retain=True).wait_for_publish(10)
        started = ha.start()
        api = ha.wait_api()
        back = ha.until(lambda: ha.shows(expected), "every state after a restart, no retained one", 60)
        birth = status.first(lambda m: m[0] == "homeassistant/status" and m[1] == "online", started)
        print(f"(b2) after a restart without retained states: every state {back - birth:.2f} s after the birth "
              f"({back - api:.2f} s after the API answered)")  # fmt: skip
        assert 0 < back - birth < 2.0

        # (c) inferd dies: its Last Will makes every entity unavailable
        killed = time.monotonic()
        d.proc.send_signal(signal.SIGKILL)
        unavailable = dict.fromkeys(expected, "unavailable")
        gone = ha.until(lambda: ha.shows(unavailable), "unavailable", 30)
        print(f"(c) SIGKILL of inferd: unavailable in Home Assistant after {gone - killed:.2f} s")
        assert gone - killed < 3.0
    finally:
        if d is not None:
            d.stop()
        ha.stop()
        status.close()
        broker.kill()


@pytest.mark.timeout(600)
def test_home_assistant_shows_zones_and_their_events(tmp_path):
    """The walk of tests/test_zones.py streamed at a real Home Assistant: the occupancy sensor and
    count follow the object into the zone and out, the line's out counter counts its crossing, and
    the event entity fires enter, dwell and cross with their attributes."""
    from inferd.client import FramePublisher
    from tests.test_zones import MQTT, ZONE_CONFIG, blob_detector, picture

    broker = Broker(tmp_path)
    (tmp_path / "labels.txt").write_text("person\ncar\n")
    model = blob_detector(tmp_path / "blobs.onnx")
    ha = HomeAssistant(tmp_path, broker.port)
    d = None

    def one(*entity: str) -> str:
        return documented_ids("board1", [entity]).pop()

    occupied = one("zone occupancy binary sensor", "det", "cam0", "left")
    count = one("zone count sensor", "det", "cam0", "left")
    people = one("zone label count sensor", "det", "cam0", "left", "person")
    crossed_in = one("line in counter", "det", "cam0", "gate")
    crossed_out = one("line out counter", "det", "cam0", "gate")
    event = one("zone event", "det", "cam0")
    objects = one("detect count sensor", "det", "cam0")

    def fired(kind: str) -> bool:
        attributes = (ha.entity(event) or {}).get("attributes", {})
        return attributes.get("event_type") == kind

    try:
        ha.start()
        ha.wait_api()
        config = ZONE_CONFIG.format(
            model=model, labels=tmp_path / "labels.txt", extra=MQTT.format(port=broker.port)
        )
        d = DaemonProcess(tmp_path, config)
        xs = [20] * 8 + list(range(20, 281, 10))  # 8 frames still in the zone, then right over the line
        t0 = time.time()
        with FramePublisher(d.pull, source="cam0") as cam:

            def send(ks: range) -> None:
                for k in ks:
                    cam.send(picture(xs[k], 240), seq=k, ts=t0 + k / 10)

            # zones' entities are announced before any frame; events are not retained, so what
            # counts is that Home Assistant has subscribed: it shows the first frame's state
            ha.until(lambda: ha.entity(event) is not None and ha.state(occupied) is not None, "entities", 30)
            send(range(1))
            ha.until(lambda: ha.state(objects) == "2", "the first state", 30)  # a person and a car
            send(range(1, 4))  # confirmed on the 3rd frame: enter
            ha.until(
                lambda: fired("enter") and ha.shows({occupied: "on", count: "1", people: "1"}), "enter", 30
            )
            send(range(4, 8))  # 0.5 s in the zone: dwell
            ha.until(lambda: fired("dwell"), "dwell", 30)
            send(range(8, len(xs)))  # out of the zone (leave), over the line: cross out
            ha.until(lambda: fired("cross"), "cross", 30)
        final = {occupied: "off", count: "0", people: "0", crossed_in: "0", crossed_out: "1"}
        ha.until(lambda: ha.shows(final), f"{final}", 30)
        attributes = ha.entity(event)["attributes"]
        assert (
            attributes["direction"] == "out" and attributes["zone"] == "gate" and attributes["track_id"] == 1
        )
        assert set(attributes["event_types"]) == {"enter", "leave", "dwell", "cross"}
        ours = ha.states("sensor.inferd_board1_") | ha.states("binary_sensor.inferd_board1_")
        ours |= ha.states("event.inferd_board1_")
        assert {occupied, count, people, crossed_in, crossed_out, event} <= set(ours), ours
    finally:
        if d is not None:
            d.stop()
        ha.stop()
        broker.kill()
