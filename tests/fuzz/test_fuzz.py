"""The fuzz campaign: protocol decoder, config loader, and a running daemon's ingest sockets.

`make test` runs a short pass; `make fuzz` (FUZZ_SCALE=100) generates over 100,000 inputs:
0 crashes, 0 hangs, the daemon's RSS bounded, and a valid frame answered correctly after
every batch.
"""

import os

import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inferd.config import parse_config
from inferd.errors import ConfigError, FrameError
from inferd.protocol import decode_header, decode_payload
from tests.conftest import MODELS, bare_session
from tests.daemon_harness import DaemonProcess, raw_header
from tests.fuzz.strategies import config_docs, messages

SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
# Every daemon message goes through the same decoder in the daemon too: the long campaign spends its
# time there (a daemon message costs ~1 ms, a decoder-only example ~5 ms of Hypothesis generation).
COUNTS = {"decoder": int(200 * SCALE), "config": int(50 * SCALE), "daemon": int(25 * SCALE)}
BATCH = 20  # messages per ingest mode per daemon example
# the long campaign runs for minutes: no per-test limit then (every daemon check has its own timeout)
pytestmark = pytest.mark.timeout(0 if SCALE > 1 else 120)
TENSOR = np.random.default_rng(99).standard_normal((1, 3, 64, 64)).astype(np.float32)


def fuzz(n: int) -> settings:
    return settings(max_examples=n, deadline=None, database=None, suppress_health_check=list(HealthCheck))


@fuzz(COUNTS["decoder"])
@given(messages())
def test_decoder_accepts_or_rejects_with_a_reason(parts):
    if not parts:
        return
    try:
        header = decode_header(parts[0])
        for spec, data in zip(header.parts, parts[1:], strict=False):
            decode_payload(spec, data, max_elements=1 << 22)
    except FrameError as e:
        assert e.reason in {"header", "dtype", "encoding", "size", "too_large", "decode"}
        assert str(e)


@fuzz(COUNTS["config"])
@given(config_docs())
def test_config_loader_validates_or_explains(text):
    try:
        cfg = parse_config(text, "fuzz.yaml")
    except ConfigError as e:
        assert str(e).startswith("fuzz.yaml:")
    else:
        assert cfg.models


CONFIG = """
models:
  - {name: raw, path: "{models}/classifier_int8.onnx", threads: 1}
  - name: cls
    path: "{models}/classifier_int8.tflite"
    threads: 1
    preprocess: {resize: [64, 64], scale: 1/255, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}
    postprocess: {type: classify, top_k: 2}
endpoints:
  - {type: router, bind: "{router}", max_message_bytes: 1000000, max_elements: 300000}
  - {type: pull, bind: "{pull}", max_message_bytes: 1000000, max_elements: 300000}
  - {type: sub, connect: "{camera_pub}", max_message_bytes: 1000000, max_elements: 300000}
results:
  bind: "{results}"
metrics:
  listen: "{metrics}"
"""


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    d = DaemonProcess(tmp_path_factory.mktemp("fuzz"), CONFIG)
    expected = bare_session(str(MODELS / "classifier_int8.onnx")).run(None, {"input": TENSOR})[0]
    ctx = zmq.Context()
    socks = {
        "push": ctx.socket(zmq.PUSH), "dealer": ctx.socket(zmq.DEALER), "pub": ctx.socket(zmq.PUB),
    }  # fmt: skip
    for s in socks.values():
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 100000)
    socks["push"].connect(d.pull)
    socks["dealer"].connect(d.router)
    socks["pub"].bind(d.camera_pub)
    state = {"d": d, "expected": expected, "socks": socks, "sent": 0, "rss": [], "examples": 0}
    yield state
    for s in socks.values():
        s.close(0)
    ctx.term()
    rc = d.stop()
    print(f"\nfuzz: {state['sent']} messages to the daemon in {state['examples']} batches; "
          f"RSS {state['rss'][0] if state['rss'] else '?'} -> {max(state['rss'], default=0)} kB")  # fmt: skip
    assert rc == 0


def check_alive(state) -> None:
    d = state["d"]
    assert d.proc.poll() is None, "the daemon died:\n" + d.logs()[-3000:]
    header, parts = d.request([raw_header(TENSOR, model="raw", source="canary"), TENSOR], timeout=30)
    assert header["status"] == "ok", header
    np.testing.assert_array_equal(np.frombuffer(parts[0], np.float32).reshape(1, 10), state["expected"])


@fuzz(COUNTS["daemon"])
@given(batch=st.lists(messages(), min_size=BATCH, max_size=BATCH))
def test_the_daemon_survives_random_messages_on_every_ingest_mode(target, batch):
    socks = target["socks"]
    for parts in batch:
        if parts:
            socks["push"].send_multipart(parts)
            socks["pub"].send_multipart([b"cam", *parts])
        socks["dealer"].send_multipart([b"", *parts])
        target["sent"] += 3
    # drain replies so the router's send queue does not grow on our account
    while socks["dealer"].poll(0):
        socks["dealer"].recv_multipart()
    check_alive(target)
    target["examples"] += 1
    target["rss"].append(rss_kb(target["d"].proc.pid))
    if len(target["rss"]) > 10:  # after warm-up, memory must stay flat
        assert target["rss"][-1] - min(target["rss"][5:]) < 40_000, target["rss"]


def test_summary_counts(target):
    """Runs last in this module: the totals the campaign promises."""
    total = COUNTS["decoder"] + COUNTS["config"] + target["sent"]
    print(f"\nfuzz: {COUNTS['decoder']} decoder inputs, {COUNTS['config']} configs, {target['sent']} daemon messages "
          f"= {total} inputs")  # fmt: skip
    assert target["sent"] >= COUNTS["daemon"] * BATCH * 2
    if SCALE >= 100:
        assert total >= 100_000
    logs = target["d"].logs()
    assert "Traceback" not in logs, logs[-3000:]
