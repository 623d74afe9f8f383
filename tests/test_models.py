"""Loading models: file checks, sha256 pinning, runtime errors, required vs optional, log routing."""

import hashlib
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inferd.config import load_config, parse_config
from inferd.engine.models import load_model, load_models
from inferd.errors import ModelLoadError


def tiny_onnx(path: Path, *, custom_op: bool = False, unused_initializer: bool = False) -> Path:
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "W")
    inits = [w]
    if unused_initializer:
        inits.append(numpy_helper.from_array(np.ones(3, np.float32), "never_used"))
    node = (
        helper.make_node("FancyOp", ["x"], ["y"], domain="com.example")
        if custom_op
        else helper.make_node("MatMul", ["x", "W"], ["y"])
    )
    graph = helper.make_graph(
        [node],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.example", 1)] if custom_op else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.save(model, path)
    return path


def entry(text: str):
    return parse_config("models:\n" + text).models[0]


def test_loads_runs_and_describes(tmp_path):
    tiny_onnx(tmp_path / "t.onnx")
    model = load_model(entry("  - {name: t, path: t.onnx, warmup: 2}"), tmp_path)
    x = np.array([[1, 2, 3]], np.float32)
    (y,) = model.predict([x])[0]
    np.testing.assert_array_equal(y, x @ np.arange(12, dtype=np.float32).reshape(3, 4))
    info = model.describe()
    assert info["runtime"] == "onnx" and info["quantized"] is False
    assert info["inputs"] == [{"name": "x", "shape": [-1, 3], "dtype": "float32", "quantization": None}]
    assert info["sha256"] == hashlib.sha256((tmp_path / "t.onnx").read_bytes()).hexdigest()
    assert info["warm_latency_ms"] > 0


def load_error(text: str, tmp_path: Path) -> str:
    with pytest.raises(ModelLoadError) as e:
        load_model(entry(text), tmp_path)
    return str(e.value)


def test_missing_empty_truncated_and_wrong_runtime_files(tmp_path):
    assert "nope.onnx not found: looked in the config file's folder" in load_error(
        "  - {name: m, path: nope.onnx}", tmp_path
    )
    (tmp_path / "empty.onnx").write_bytes(b"")
    assert "is empty" in load_error("  - {name: m, path: empty.onnx}", tmp_path)
    data = tiny_onnx(tmp_path / "t.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 2])
    msg = load_error("  - {name: m, path: cut.onnx}", tmp_path)
    assert "onnxruntime cannot load" in msg and "model 'm'" in msg
    (tmp_path / "junk.tflite").write_bytes(b"\x00" * 64)
    assert "cannot load" in load_error("  - {name: m, path: junk.tflite}", tmp_path)
    (tmp_path / "t.tflite").write_bytes(data)
    msg = load_error("  - {name: m, path: t.tflite}", tmp_path)
    assert "looks like a onnx model but the config says runtime: tflite" in msg
    assert "is not a file" in load_error("  - {name: m, path: ., runtime: onnx}", tmp_path)


def test_custom_op_is_explained(tmp_path):
    tiny_onnx(tmp_path / "c.onnx", custom_op=True)
    msg = load_error("  - {name: m, path: c.onnx}", tmp_path)
    assert "FancyOp" in msg or "com.example" in msg
    assert "custom op" in msg


def test_sha256_pin(tmp_path):
    path = tiny_onnx(tmp_path / "t.onnx")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    load_model(entry(f"  - {{name: m, path: t.onnx, sha256: {digest.upper()}}}"), tmp_path).close()
    zeros = "0" * 64
    msg = load_error(f"  - {{name: m, path: t.onnx, sha256: '{zeros}'}}", tmp_path)
    assert f"sha256 of {path} is {digest}" in msg and "refusing to load" in msg


def test_required_and_optional_failures(tmp_path, write_config):
    tiny_onnx(tmp_path / "t.onnx")
    cfg, base = load_config(
        write_config(
            """
            models:
              - {name: good, path: t.onnx}
              - {name: extra, path: missing.onnx, required: false}
            """
        )
    )
    loaded, failed = load_models(cfg, base)
    assert list(loaded) == ["good"] and list(failed) == ["extra"]
    assert "missing.onnx not found" in str(failed["extra"])


def test_runtime_messages_go_through_logging(tmp_path, caplog, capfd):
    tiny_onnx(tmp_path / "u.onnx", unused_initializer=True)
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG, logger="inferd.runtime"):
        load_model(entry("  - {name: m, path: u.onnx}"), tmp_path, runtime_level="error")
        quiet = [
            r for r in caplog.records if r.name.startswith("inferd.runtime") and r.levelno >= logging.INFO
        ]
        caplog.clear()
        load_model(entry("  - {name: m, path: u.onnx}"), tmp_path, runtime_level="warning")
        warned = [r for r in caplog.records if r.name == "inferd.runtime.onnxruntime"]
    assert quiet == []
    assert [r.levelno for r in warned if "never_used" in r.getMessage()] == [logging.WARNING]
    assert "\x1b[" not in warned[0].getMessage() and "onnxruntime:" not in warned[0].getMessage()
    assert "never_used" not in capfd.readouterr().err  # nothing leaked past the logger


def test_instances_share_an_onnx_session_and_get_their_own_tflite_interpreters(tmp_path):
    from inferd.engine.models import load_instances

    models = Path(__file__).resolve().parent.parent / "examples" / "models"
    cfg = parse_config(
        f"models:\n  - {{name: o, path: {models / 'classifier_int8.onnx'}, instances: 3}}\n"
        f"  - {{name: t, path: {models / 'classifier_int8.tflite'}, instances: 2}}\n"
    )
    onnx_models = load_instances(cfg.models[0], tmp_path)
    assert len(onnx_models) == 3 and len({id(m) for m in onnx_models}) == 1  # one thread-safe session
    tflite_models = load_instances(cfg.models[1], tmp_path)
    assert len(tflite_models) == 2 and tflite_models[0].backend is not tflite_models[1].backend
    frame = np.zeros((1, 64, 64, 3), np.int8)
    a, b = (m.infer([frame])[0] for m in tflite_models)
    np.testing.assert_array_equal(a, b)
    for m in [onnx_models[0], *tflite_models]:
        m.close()


def test_labels_from_an_exports_metadata_only_when_they_are_plain_class_names():
    from inferd.engine.models import metadata_labels

    assert metadata_labels({"names": "{0: 'person', 1: 'car'}"}) == ["person", "car"]  # Ultralytics
    assert metadata_labels({"names": "['a', 'b']"}) == ["a", "b"]
    # a broken or hostile file: no labels, and no list of 10**9 entries built from one key
    for text in ("{1000000000: 'x'}", "{0: 'a', 2: 'c'}", "{-1: 'a'}", "__import__('os')", "{0:", ""):
        assert metadata_labels({"names": text}) is None, text
    assert metadata_labels({}) is None
