"""Dynamic batching: frames from several sources in one runtime call, results split back exactly."""

import json

import numpy as np
import pytest
import zmq

from inferd.config import parse_config
from inferd.engine.models import load_model
from inferd.errors import ModelLoadError
from tests.conftest import MODELS, bare_session
from tests.daemon_harness import DaemonProcess, raw_header

# a batch waits (up to a minute) until it is full: 24 frames are 3 batches of 8 on any machine,
# however the IO thread and the worker take turns
CONFIG = """
models:
  - name: batched
    path: {models}/classifier_int8.onnx
    threads: 1
    batching: {max_batch: 8, max_delay_ms: 60000}
endpoints:
  - {type: router, bind: "{router}"}
metrics:
  listen: "{metrics}"
sources:
  - {match: "*", policy: fifo, queue_size: 64}
"""


def test_batched_results_equal_single_frame_results(tmp_path):
    rng = np.random.default_rng(3)
    frames = [rng.standard_normal((1, 3, 64, 64)).astype(np.float32) for _ in range(24)]
    sess = bare_session(str(MODELS / "classifier_int8.onnx"))
    expected = [sess.run(None, {"input": f})[0] for f in frames]
    d = DaemonProcess(tmp_path, CONFIG)
    try:
        dealer = d.socket(zmq.DEALER, d.router)
        for i, f in enumerate(frames):  # a burst from 4 sources, batched together
            dealer.send_multipart([b"", raw_header(f, source=f"cam{i % 4}", id=str(i)), f])
        got = {}
        while len(got) < len(frames) and dealer.poll(30000):
            _, head, *parts = dealer.recv_multipart()
            h = json.loads(head)
            assert h["status"] == "ok", h
            got[int(h["id"])] = np.frombuffer(parts[0], np.float32).reshape(h["outputs"][0]["shape"])
        dealer.close()
        assert sorted(got) == list(range(len(frames)))
        for i, e in enumerate(expected):
            # batched int8 kernels may round differently from batch 1 in the last bits
            np.testing.assert_allclose(got[i], e, rtol=1e-5, atol=1e-5)
        assert d.metric("inferd_batch_size_sum", model="batched") == 24
        assert d.metric("inferd_batch_size_count", model="batched") == 3  # frames shared runtime calls
        assert d.metric("inferd_inferences_total", model="batched", status="ok") == 24
    finally:
        assert d.stop() == 0


def test_infer_batch_splits_rows_and_pads_a_fixed_batch(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    # a model with a fixed batch of 4: y = x * 2
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])], "fixed4",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])],
    )  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, tmp_path / "fixed4.onnx")
    cfg = parse_config("models:\n  - {name: f, path: fixed4.onnx, batching: {max_batch: 4}}\n").models[0]
    model = load_model(cfg, tmp_path)
    assert model.fixed_batch == 4
    rows = [np.full((1, 3), i, np.float32) for i in range(6)]
    out = model.infer_batch([[r] for r in rows])  # 6 frames: a batch of 4, then 2 padded to 4
    assert [o[0].tolist() for o in out] == [[[2.0 * i] * 3] for i in range(6)]
    (single,) = model.predict([np.ones((1, 3), np.float32)])[0]  # one row, padded
    assert single.shape == (1, 3) and single.tolist() == [[2.0, 2.0, 2.0]]


def test_batching_a_model_without_a_batch_dimension_is_refused():
    cfg = parse_config(
        f"models:\n  - {{name: t, path: {MODELS / 'classifier_int8.tflite'}, batching: {{max_batch: 4}}}}\n"
    ).models[0]
    with pytest.raises(ModelLoadError, match=r"needs a batch dimension.*fixed batch of 1"):
        load_model(cfg, MODELS)


def test_a_dynamically_quantized_model_warns_that_batch_mates_change_results(tmp_path, caplog):
    import make_models

    path = tmp_path / "dynamic.onnx"
    make_models.quantize_dynamic(MODELS / "classifier_float.onnx", path)
    entry = f"models:\n  - {{name: dyn, path: {path}, batching: {{max_batch: 4}}}}"
    with caplog.at_level("WARNING", logger="inferd.models"):
        model = load_model(parse_config(entry).models[0], tmp_path)
    assert "dynamically quantized" in caplog.text and "batch" in caplog.text
    # the warning is real: the same frame, alone and beside a very different one
    rng = np.random.default_rng(5)
    a = rng.standard_normal((1, 3, 64, 64)).astype(np.float32)
    loud = 40 * rng.standard_normal((1, 3, 64, 64)).astype(np.float32)
    alone = model.infer([a])[0]
    beside = model.infer_batch([[a], [loud]])[0][0]
    assert not np.allclose(alone, beside, rtol=1e-4, atol=1e-4)
    model.close()
    caplog.clear()
    with caplog.at_level("WARNING", logger="inferd.models"):
        load_model(parse_config(entry.replace("max_batch: 4", "max_batch: 1")).models[0], tmp_path).close()
    assert "dynamically quantized" not in caplog.text
