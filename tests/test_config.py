from pathlib import Path

import pytest

from inferd.config import ClassifyPostprocess, RawPostprocess, load_config, parse_config
from inferd.errors import ConfigError


def errors_of(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(text, "site.yaml")
    return str(exc.value)


def test_minimal_config_gets_runtime_from_extension_and_defaults():
    cfg = parse_config("models:\n  - {name: a, path: m.onnx}\n  - {name: b, path: m.tflite}\n")
    assert [m.runtime.type for m in cfg.models] == ["onnx", "tflite"]
    a = cfg.models[0]
    assert a.required is True and a.warmup == 3 and a.threads is None
    assert isinstance(a.postprocess, RawPostprocess)
    assert a.runtime.graph_optimization == "all"


def test_shorthands_and_mappings():
    cfg = parse_config(
        """
models:
  - name: a
    path: weird.bin
    runtime: {type: onnx, graph_optimization: basic}
    postprocess: raw
    preprocess: {scale: 1/255}
  - name: b
    path: m.tflite
    postprocess: {type: classify, top_k: 3, smooth: {ema: 0.8}}
"""
    )
    assert cfg.models[0].runtime.graph_optimization == "basic"
    assert cfg.models[0].preprocess.scale == pytest.approx(1 / 255)
    post = cfg.models[1].postprocess
    assert isinstance(post, ClassifyPostprocess) and post.top_k == 3 and post.smooth.ema == 0.8


def test_error_names_file_key_path_and_allowed_values():
    msg = errors_of(
        """
models:
  - {name: a, path: a.onnx}
  - name: b
    path: b.onnx
    preprocess: {mean: [0.5, 0.5], color: rgba}
"""
    )
    assert msg.startswith("site.yaml:")
    assert "models[1].preprocess.mean: needs 1, 3 or 4 values" in msg
    assert "models[1].preprocess.color: Input should be 'rgb' or 'bgr'" in msg


def test_unknown_key_is_an_error_with_a_suggestion():
    msg = errors_of("models:\n  - {name: a, path: a.onnx, postprocess: {type: classify, tpo_k: 3}}\n")
    assert "models[0].postprocess: unknown key 'tpo_k' (did you mean 'top_k'?)" in msg
    assert "allowed keys:" in msg and "top_k" in msg
    msg = errors_of("models:\n  - {name: a, path: a.onnx}\nmodel_dir: /x\n")
    assert "unknown key 'model_dir'" in msg


def test_wrong_types_and_unknown_runtime():
    msg = errors_of("models:\n  - {name: a, path: a.onnx, threads: many, warmup: -1}\n")
    assert "models[0].threads: Input should be a valid integer" in msg
    assert "models[0].warmup: Input should be greater than or equal to 0" in msg
    msg = errors_of("models:\n  - {name: a, path: a.onnx, runtime: tensorrt}\n")
    assert "models[0].runtime: unknown type 'tensorrt'; allowed: 'onnx', 'tflite'" in msg
    msg = errors_of("models:\n  - {name: a, path: a.pt}\n")
    assert "cannot tell the runtime from the extension '.pt'" in msg


def test_bad_sha_duplicate_names_and_empty_models():
    assert "models[0].sha256" in errors_of("models:\n  - {name: a, path: a.onnx, sha256: abc}\n")
    assert "used twice" in errors_of("models:\n  - {name: a, path: a.onnx}\n  - {name: a, path: b.onnx}\n")
    assert "models: List should have at least 1 item" in errors_of("models: []\n")
    assert "must be a mapping" in errors_of("- just a list\n")


def test_invalid_yaml_reports_the_line():
    msg = errors_of("models:\n  - name: a\n    path: [unclosed\n")
    assert "not valid YAML at line" in msg


def test_load_config_missing_file_and_base_dir(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    path = tmp_path / "sub" / "c.yaml"
    path.parent.mkdir()
    path.write_text("models:\n  - {name: a, path: a.onnx}\n")
    cfg, base = load_config(path)
    assert base == path.parent.resolve() and cfg.models[0].name == "a"


def test_errors_at_every_depth_are_reported_together():
    """A top-level unknown key used to hide a nested typo until it was fixed."""
    text = errors_of(
        """
models:
  - name: a
    path: m.onnx
    runtime: {type: onnx, graph_optimisation: all}
    preprocess: {mean: [0.5, 0.5]}
    postprocess: {type: classify, tpo_k: 3}
sources:
  - {match: "cam*", polcy: fifo}
bogus: 1
"""
    )
    assert text.splitlines()[0] == "site.yaml: 5 error(s) in the config"
    assert "models[0].runtime: unknown key 'graph_optimisation' (did you mean 'graph_optimization'?)" in text
    assert "models[0].preprocess.mean: needs 1, 3 or 4 values" in text
    assert (
        "models[0].postprocess: unknown key 'tpo_k' (did you mean 'top_k'?); allowed keys: min_score," in text
    )
    assert "sources[0]: unknown key 'polcy' (did you mean 'policy'?)" in text
    assert "(top level): unknown key 'bogus'; allowed keys: endpoints, logging," in text


def test_mqtt_files_are_relative_to_the_config_and_checked_there(tmp_path, monkeypatch):
    monkeypatch.chdir("/")  # not the config's folder
    (tmp_path / "mqtt.password").write_text("secret\n")
    (tmp_path / "mqtt.password").chmod(0o644)
    cfg = tmp_path / "inferd.yaml"
    cfg.write_text(
        "models:\n  - {name: m, path: m.onnx}\nmqtt:\n  broker: mqtts://broker.lan\n  username: inferd\n  password_file: mqtt.password\n"
        "  tls: {ca_file: ca.pem}\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    assert f"{tmp_path / 'mqtt.password'} is readable by others" in str(e.value)
    assert "ca.pem" in str(e.value) and "tls.ca_file" in str(e.value)
    (tmp_path / "mqtt.password").chmod(0o600)
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    config, _ = load_config(cfg)
    assert config.mqtt.password_file == tmp_path / "mqtt.password"
    assert config.mqtt.tls.ca_file == tmp_path / "ca.pem"


def test_workers_auto_uses_processes_only_with_a_core_to_spare(monkeypatch):
    """`workers: auto`: worker processes when instances > 1 and the cores available exceed them
    (measured on 2 cores: two worker threads stream more than two processes there)."""
    from inferd.config import ModelConfig

    def cfg(**kw):
        return ModelConfig.model_validate({"name": "m", "path": "m.onnx", **kw})

    monkeypatch.delenv("INFERD_WORKERS", raising=False)
    for cores, instances, expected in [(2, 1, False), (2, 2, False), (4, 2, True), (4, 3, True), (4, 4, False),
                                       (16, 8, True)]:  # fmt: skip
        monkeypatch.setattr("os.sched_getaffinity", lambda pid, n=cores: set(range(n)))
        assert cfg(instances=instances).in_processes is expected, (cores, instances)
    assert cfg(instances=1, workers="processes").in_processes
    assert not cfg(instances=8, workers="threads").in_processes
    monkeypatch.setenv("INFERD_WORKERS", "processes")
    assert cfg(instances=1).in_processes and not cfg(instances=8, workers="threads").in_processes
