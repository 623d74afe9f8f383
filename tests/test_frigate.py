"""Frigate's `zmq` detector protocol, spoken by a raw pyzmq REQ socket as Frigate's plugin does
(frigate/detectors/plugins/zmq_ipc.py), against a running inferd."""

import json
import time

import numpy as np
import pytest
import zmq

from tests.conftest import constant_model
from tests.daemon_harness import DaemonProcess

# Frigate's request_timeout_ms, on both sides (the endpoint's timeout_ms drops a request still
# queued after it; the client's RCVTIMEO gives up): generous, so a loaded machine is slower, never
# wrong. The client's is the shorter: an answer within it never waited for the request to expire.
TIMEOUT_MS = 60_000
CLIENT_TIMEOUT_MS = 30_000

# x1, y1, x2, y2 (input pixels of a 64x64 model), score, class: what an end2end export gives
ROWS = np.array([[8, 16, 24, 48, 0.6, 1], [32, 0, 64, 32, 0.9, 0], [0, 0, 4, 4, 0.1, 2]], np.float32)


def build_detector(path):
    """A real ONNX model whose end2end output is ROWS (0 * mean(input) + constant)."""
    return constant_model(path, ROWS[None], "det")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("frigate")
    model = build_detector(tmp / "det.onnx")
    d = DaemonProcess(tmp, f"""
models:
  - name: detector
    path: {model}
    postprocess: {{type: detect, format: end2end, score_threshold: 0.3}}
endpoints:
  - {{type: frigate, bind: "ipc://{tmp}/frigate.sock", model: detector, timeout_ms: {TIMEOUT_MS}}}
metrics:
  listen: "{{metrics}}"
""")  # fmt: skip
    d.frigate = f"ipc://{tmp}/frigate.sock"
    yield d
    assert d.stop() == 0, d.logs()


def frigate_socket(d, timeout_ms=CLIENT_TIMEOUT_MS):
    """Frigate's client: REQ with RCVTIMEO/SNDTIMEO = request_timeout_ms and LINGER 0."""
    s = d.ctx.socket(zmq.REQ)
    s.setsockopt(zmq.RCVTIMEO, timeout_ms)
    s.setsockopt(zmq.SNDTIMEO, timeout_ms)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(d.frigate)
    return s


def ask(sock, tensor, model_type="yologeneric"):
    head = {"shape": list(tensor.shape), "dtype": tensor.dtype.name, "model_type": model_type}
    sock.send_multipart([json.dumps(head).encode(), memoryview(tensor.tobytes(order="C"))])
    head, body = sock.recv_multipart()
    return json.loads(head), np.frombuffer(body, np.float32).reshape(json.loads(head)["shape"])


EXPECTED = np.zeros((20, 6), np.float32)
EXPECTED[0] = [0, 0.9, 0 / 64, 32 / 64, 32 / 64, 64 / 64]  # class, score, y_min, x_min, y_max, x_max
EXPECTED[1] = [1, 0.6, 16 / 64, 8 / 64, 48 / 64, 24 / 64]


def test_both_tensor_layouts_get_frigates_rows(daemon):
    sock = frigate_socket(daemon)
    nhwc = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    head, rows = ask(sock, nhwc)
    assert head == {"shape": [20, 6], "dtype": "float32"}
    np.testing.assert_allclose(rows, EXPECTED, atol=1e-6)
    nchw = np.random.default_rng(1).random((1, 3, 64, 64), dtype=np.float32)  # passes through
    np.testing.assert_allclose(ask(sock, nchw)[1], EXPECTED, atol=1e-6)
    for _ in range(50):  # one request at a time, as Frigate sends them
        np.testing.assert_allclose(ask(sock, nhwc)[1], EXPECTED, atol=1e-6)
    sock.close()


def test_a_malformed_request_gets_a_zero_result_with_the_error_at_once(daemon):
    """At once: answered by the parser with its reason, before the request could expire (not left
    for Frigate's timeout, and not a `deadline` drop)."""
    sock = frigate_socket(daemon)
    bad = np.zeros((1, 64, 64, 3), np.uint8)
    head = {"shape": [1, 64, 64, 3], "dtype": "uint8", "model_type": "ssd"}
    sock.send_multipart([json.dumps(head).encode(), bad.tobytes()[:-10]])
    head, body = sock.recv_multipart()  # within the client's timeout, shorter than the endpoint's
    reply = json.loads(head)
    assert reply["shape"] == [20, 6] and reply["reason"] == "size" and "needs 12288" in reply["error"]
    assert np.frombuffer(body, np.float32).sum() == 0
    sock.send_multipart([b"not json", b""])
    assert json.loads(sock.recv_multipart()[0])["reason"] == "header"
    sock.send_multipart([json.dumps({"shape": [1, 8, 8, 3], "dtype": "int16"}).encode(), b"\0" * 384])
    assert json.loads(sock.recv_multipart()[0])["reason"] == "dtype"
    assert daemon.metric("inferd_frames_rejected_total", source="frigate", reason="size") >= 1
    assert daemon.metric("inferd_frames_received_total", source="frigate") >= 3
    sock.close()


def received(d) -> float:
    return d.metric("inferd_frames_received_total", source="frigate")


def test_a_client_that_timed_out_and_reconnected_gets_its_own_answers(daemon):
    tensor = np.zeros((1, 64, 64, 3), np.uint8)
    for _ in range(3):  # Frigate gave up on these and threw the socket away before the answer
        late = frigate_socket(daemon)
        head = {"shape": [1, 64, 64, 3], "dtype": "uint8", "model_type": "yologeneric"}
        count = received(daemon)
        late.send_multipart([json.dumps(head).encode(), tensor.tobytes()])
        end = time.monotonic() + 30  # LINGER 0 discards what is unsent: close once inferd has it
        while received(daemon) == count:
            assert time.monotonic() < end, "precondition not met: inferd never received the request"
            time.sleep(0.02)
        late.close()
    fresh = frigate_socket(daemon)
    for _ in range(5):  # queued behind the late ones: those were answered (into the void) first
        np.testing.assert_allclose(ask(fresh, tensor)[1], EXPECTED, atol=1e-6)
    fresh.close()
    assert daemon.proc.poll() is None


def test_a_model_type_that_disagrees_is_served_and_warned_about_once(daemon):
    sock = frigate_socket(daemon)
    tensor = np.zeros((1, 64, 64, 3), np.uint8)
    for _ in range(3):
        np.testing.assert_allclose(ask(sock, tensor, model_type="ssd")[1], EXPECTED, atol=1e-6)
    sock.close()
    assert (
        daemon.logs().count("Frigate says model_type ssd but model detector decodes as format end2end") == 1
    )


@pytest.mark.parametrize("detector", ["blazeface", "yolov8"])
def test_real_detectors_answer_frigate_in_its_tensors_coordinates(tmp_path, detector):
    """MediaPipe's BlazeFace (anchors, weighted NMS) and an Ultralytics YOLOv8n export (NudeNet's,
    letterboxed) behind the frigate endpoint, on a real photograph sent as Frigate sends it
    ([1, H, W, 3] uint8 RGB): the rows equal inferd's own detections of the same frame,
    normalized to the tensor, best first."""
    from PIL import Image

    from inferd.config import parse_config
    from inferd.engine.models import load_model
    from tests.backends.test_pretrained import packaged
    from tests.postprocess.test_anchors import blazeface_entry
    from tests.postprocess.test_yolo_real import entry as yolo_entry

    entry, model_type = (
        (blazeface_entry(), "ssd") if detector == "blazeface" else (yolo_entry(), "yologeneric")
    )
    name = parse_config("models:" + entry).models[0].name
    photo = np.asarray(Image.open(packaged("matplotlib", "grace_hopper.jpg")).convert("RGB"))
    model = load_model(parse_config("models:" + entry).models[0], tmp_path)
    dets = model.predict([photo], "ref")[1]["detections"]
    model.close()
    assert dets
    d = DaemonProcess(
        tmp_path,
        f"models:{entry}endpoints:\n"
        f'  - {{type: frigate, bind: "ipc://{tmp_path}/f.sock", model: {name}, timeout_ms: {TIMEOUT_MS}}}\n',
    )
    try:
        d.frigate = f"ipc://{tmp_path}/f.sock"
        sock = frigate_socket(d)
        head, rows = ask(sock, photo[None], model_type=model_type)
        sock.close()
    finally:
        assert d.stop() == 0
    for row, det in zip(rows, dets, strict=False):
        x1, y1, x2, y2 = det["box_norm"]
        np.testing.assert_allclose(row, [det["class"], det["score"], y1, x1, y2, x2], atol=1e-4)
    assert (rows[len(dets) :] == 0).all() and "error" not in head
