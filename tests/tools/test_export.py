"""`inferd export`: small modules built here, real checkpoints, the ONNX run in onnxruntime and in
inferd's own loader. The EMA weights must be the ones that come out."""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from inferd.cli import main  # noqa: E402
from inferd.config import ModelConfig  # noqa: E402
from inferd.engine.models import load_model  # noqa: E402
from inferd.tools.checkpoint import ExportError  # noqa: E402
from inferd.tools.export import export_model, parse_shape  # noqa: E402
from tests.conftest import bare_session  # noqa: E402

SHAPE = (1, 3, 32, 32)
FACTORY = "tests.tools.test_export:small_net"


class SmallNet(torch.nn.Module):
    """conv + bn + relu + pool + linear: BatchNorm running stats are weights that EMA tracks too."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.bn(self.conv(x)))), 1))


class TwoInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 3), torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(x) + self.b(y), self.a(x).relu()


class FixedBatch(SmallNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(torch.relu(self.bn(self.conv(x)))).reshape(1, 8))


class Branchy(torch.nn.Module):
    """Data-dependent control flow: torch.export cannot capture it, the tracer takes one branch."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if x.sum() > -1e9 else -self.fc(x)


def small_net() -> SmallNet:
    return SmallNet()


@pytest.fixture(scope="module")
def nets() -> tuple[SmallNet, SmallNet]:
    """The raw weights and EMA weights of one training run: same architecture, different values."""
    torch.manual_seed(0)
    raw = SmallNet().eval()
    ema = copy.deepcopy(raw)
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.5).add_(0.2)
        ema.bn.running_mean.fill_(0.3)
        ema.bn.running_var.fill_(2.0)
    return raw, ema


@pytest.fixture
def frames() -> np.ndarray:
    return np.random.default_rng(1).standard_normal((3, *SHAPE[1:])).astype(np.float32)


def run(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def run_onnx(path: Path, *arrays: np.ndarray) -> list[np.ndarray]:

    session = bare_session(str(path))
    return session.run(None, {i.name: a for i, a in zip(session.get_inputs(), arrays, strict=True)})


def assert_is(got: np.ndarray, module: torch.nn.Module, x: np.ndarray) -> None:
    np.testing.assert_allclose(got, run(module, x), rtol=1e-4, atol=1e-5)


def assert_is_not(got: np.ndarray, module: torch.nn.Module, x: np.ndarray) -> None:
    assert np.abs(got - run(module, x)).max() > 1e-2


def save_checkpoint(path: Path, nets: tuple[SmallNet, SmallNet]) -> Path:
    raw, ema = nets
    optimizer = torch.optim.SGD(raw.parameters(), lr=0.1, momentum=0.9)
    torch.save(
        {
            "epoch": 7,
            "state_dict": raw.state_dict(),
            "ema": ema.state_dict(),
            "optimizer": optimizer.state_dict(),
        },
        path,
    )
    return path


def test_ema_checkpoint_exports_the_ema_weights(tmp_path, nets, frames):
    raw, ema = nets
    ckpt = save_checkpoint(tmp_path / "last.pt", nets)
    out = tmp_path / "out" / "net.onnx"
    report = export_model(ckpt, out, [SHAPE], module=FACTORY, ema=True)
    assert report.kind == "checkpoint" and report.weights_from == f"{ckpt}['ema']" and report.ema
    assert report.exporter == "dynamo" and report.opset == 18 and report.dynamic_batch
    assert report.verify_batches == [1, 2] and report.max_abs_diff < 1e-4
    assert report.inputs[0]["name"] == "input" and report.inputs[0]["shape"][1:] == [3, 32, 32]
    assert sorted(p.name for p in out.parent.iterdir()) == ["net.onnx"]  # weights inside, no .partial
    (got,) = run_onnx(out, frames)
    assert_is(got, ema, frames)
    assert_is_not(got, raw, frames)
    # Served by inferd itself, pinned by the digest the report printed, batch of 3.
    cfg = ModelConfig.model_validate({"name": "net", "path": str(out), "sha256": report.sha256, "warmup": 1})
    model = load_model(cfg, tmp_path)
    try:
        (served,) = model.infer([frames])
    finally:
        model.close()
    assert_is(served, ema, frames)
    assert_is_not(served, raw, frames)


def test_without_ema_the_raw_weights_and_a_note(tmp_path, nets, frames):
    raw, _ = nets
    ckpt = save_checkpoint(tmp_path / "last.pt", nets)
    report = export_model(ckpt, tmp_path / "raw.onnx", [SHAPE], module=FACTORY)
    assert report.weights_from == f"{ckpt}['state_dict']" and not report.ema
    assert "EMA weights under 'ema'" in report.notes[0]
    assert_is(run_onnx(tmp_path / "raw.onnx", frames)[0], raw, frames)


def test_gpu_saved_checkpoint_file_factory_and_prefixes(tmp_path, nets, frames, monkeypatch):
    """Saved on a GPU (CUDA-tagged storages) by a DDP + torch.compile run; the architecture from a .py file."""
    _, ema = nets
    wrapped = {f"module._orig_mod.{k}": v for k, v in ema.state_dict().items()}
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    torch.save({"model_ema": wrapped}, tmp_path / "gpu.pt")
    monkeypatch.undo()
    factory = tmp_path / "arch.py"
    factory.write_text(
        "from tests.tools.test_export import SmallNet\n\ndef build():\n    return SmallNet()\n"
    )
    report = export_model(
        tmp_path / "gpu.pt", tmp_path / "m.onnx", [SHAPE], module=f"{factory}:build", ema=True
    )
    assert report.stripped_prefixes == ["module.", "_orig_mod."]
    assert report.missing_keys == [] and report.unexpected_keys == []
    assert_is(run_onnx(tmp_path / "m.onnx", frames)[0], ema, frames)


def test_torch_averaged_model_as_ema(tmp_path, nets, frames):
    """PyTorch's own EMA (AveragedModel): keys under module., plus an n_averaged counter."""
    raw, _ = nets
    averaged = torch.optim.swa_utils.AveragedModel(
        raw, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9), use_buffers=True
    )
    averaged.update_parameters(raw)  # the first update copies
    trained = copy.deepcopy(raw)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    averaged.update_parameters(trained)  # 0.9 * raw + 0.1 * trained
    torch.save(
        {"state_dict": trained.state_dict(), "ema_state_dict": averaged.state_dict()}, tmp_path / "c.pt"
    )
    report = export_model(tmp_path / "c.pt", tmp_path / "m.onnx", [SHAPE], module=FACTORY, ema=True)
    assert report.stripped_prefixes == ["module."] and report.unexpected_keys == []
    got = run_onnx(tmp_path / "m.onnx", frames)[0]
    assert_is(got, averaged.module.eval(), frames)
    assert_is_not(got, trained, frames)


def test_partial_state_dict_is_loaded_and_reported(tmp_path, nets):
    _, ema = nets
    partial = {k: v for k, v in ema.state_dict().items() if not k.startswith("fc.")}
    partial["head.weight"] = torch.zeros(5, 8)
    torch.save({"ema": partial}, tmp_path / "c.pt")
    report = export_model(tmp_path / "c.pt", tmp_path / "m.onnx", [SHAPE], module=FACTORY, ema=True)
    assert report.missing_keys == ["fc.weight", "fc.bias"] and report.unexpected_keys == ["head.weight"]


def test_shape_mismatch_is_an_error(tmp_path, nets):
    sd = nets[1].state_dict()
    sd["fc.weight"] = torch.zeros(10, 8)
    torch.save({"ema": sd}, tmp_path / "c.pt")
    with pytest.raises(ExportError, match=r"'fc.weight' has shape \[10, 8\] in the checkpoint but \[5, 8\]"):
        export_model(tmp_path / "c.pt", tmp_path / "m.onnx", [SHAPE], module=FACTORY, ema=True)
    assert not (tmp_path / "m.onnx").exists()


def test_pickled_modules_need_trust_pickle(tmp_path, nets, frames):
    """ultralytics-style: the checkpoint holds the modules themselves, the EMA one in half precision."""
    raw, ema = nets
    half = copy.deepcopy(ema).half()
    torch.save(
        {"epoch": 3, "model": copy.deepcopy(raw).half(), "ema": half, "updates": 10}, tmp_path / "last.pt"
    )
    with pytest.raises(ExportError, match="--trust-pickle"):
        export_model(tmp_path / "last.pt", tmp_path / "m.onnx", [SHAPE], ema=True)
    assert not (tmp_path / "m.onnx").exists()
    report = export_model(tmp_path / "last.pt", tmp_path / "m.onnx", [SHAPE], ema=True, trust_pickle=True)
    assert report.kind == "pickled_module" and report.weights_from.endswith("['ema']")
    assert any("float32" in n for n in report.notes)
    got = run_onnx(tmp_path / "m.onnx", frames)[0]
    assert_is(got, half.float(), frames)
    assert_is_not(got, raw, frames)


def test_state_dict_without_architecture_is_refused(tmp_path, nets):
    ckpt = save_checkpoint(tmp_path / "last.pt", nets)
    with pytest.raises(ExportError, match=r"--module pkg\.mod:factory"):
        export_model(ckpt, tmp_path / "m.onnx", [SHAPE], ema=True)
    with pytest.raises(ExportError, match="has no callable 'nope'"):
        export_model(ckpt, tmp_path / "m.onnx", [SHAPE], module="tests.tools.test_export:nope")


def test_torchscript_source_with_ema_weights(tmp_path, nets, frames):
    raw, ema = nets
    with warnings.catch_warnings():  # torch.jit is deprecated in torch 2.13, its files still exist
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(copy.deepcopy(raw)), tmp_path / "net.torchscript.pt")
    report = export_model(tmp_path / "net.torchscript.pt", tmp_path / "ts.onnx", [SHAPE])
    assert report.kind == "torchscript" and report.exporter == "torchscript" and report.dynamic_batch
    assert_is(run_onnx(tmp_path / "ts.onnx", frames)[0], raw, frames)
    ckpt = save_checkpoint(tmp_path / "last.pt", nets)
    report = export_model(
        tmp_path / "net.torchscript.pt", tmp_path / "ema.onnx", [SHAPE], weights=ckpt, ema=True
    )
    assert report.weights_from == f"{ckpt}['ema']"
    got = run_onnx(tmp_path / "ema.onnx", frames)[0]
    assert_is(got, ema, frames)
    assert_is_not(got, raw, frames)
    with pytest.raises(ExportError, match="add --weights"):
        export_model(tmp_path / "net.torchscript.pt", tmp_path / "x.onnx", [SHAPE], ema=True)


def test_exported_program_source(tmp_path, nets, frames):
    raw, ema = nets
    x = torch.randn(2, *SHAPE[1:])
    dynamic = torch.export.export(copy.deepcopy(raw), (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(dynamic, tmp_path / "dyn.pt2")
    ckpt = save_checkpoint(tmp_path / "last.pt", nets)
    report = export_model(tmp_path / "dyn.pt2", tmp_path / "ema.onnx", [SHAPE], weights=ckpt, ema=True)
    assert report.kind == "exported_program" and report.exporter == "dynamo" and report.dynamic_batch
    got = run_onnx(tmp_path / "ema.onnx", frames)[0]
    assert_is(got, ema, frames)
    assert_is_not(got, raw, frames)
    static = torch.export.export(copy.deepcopy(raw), (torch.randn(*SHAPE),))
    torch.export.save(static, tmp_path / "static.pt2")
    report = export_model(tmp_path / "static.pt2", tmp_path / "static.onnx", [SHAPE])
    assert not report.dynamic_batch and report.verify_batches == [1]
    assert any("batch size is fixed" in n for n in report.notes)
    assert_is(run_onnx(tmp_path / "static.onnx", frames[:1])[0], raw, frames[:1])


def test_multi_input_model(tmp_path):
    torch.manual_seed(0)
    model = TwoInputs().eval()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "c.pt")
    shapes = [parse_shape("1x4"), parse_shape("1x6")]
    report = export_model(
        tmp_path / "c.pt", tmp_path / "m.onnx", shapes, module="tests.tools.test_export:TwoInputs"
    )
    assert [i["name"] for i in report.inputs] == ["input_0", "input_1"]
    assert [o["name"] for o in report.outputs] == ["output_0", "output_1"]
    x, y = np.ones((2, 4), np.float32), np.ones((2, 6), np.float32)
    got = run_onnx(tmp_path / "m.onnx", x, y)
    with torch.no_grad():
        want = model(torch.from_numpy(x), torch.from_numpy(y))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-6)


def test_a_model_that_fixes_its_batch(tmp_path, frames):
    """torch.export specializes the batch (a note says so); a traced TorchScript file declares a free
    batch but hard-codes it: the check on a batch of 2 catches that, and nothing is written."""
    torch.manual_seed(0)
    model = FixedBatch().eval()
    torch.save({"state_dict": model.state_dict()}, tmp_path / "c.pt")
    report = export_model(
        tmp_path / "c.pt", tmp_path / "m.onnx", [SHAPE], module="tests.tools.test_export:FixedBatch"
    )
    assert not report.dynamic_batch and report.inputs[0]["shape"] == list(SHAPE)
    assert any("the model's code fixes it" in n for n in report.notes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, torch.randn(*SHAPE)), tmp_path / "traced.pt")
    with pytest.raises(ExportError, match=r"batch of 2.*--no-dynamic-batch"):
        export_model(tmp_path / "traced.pt", tmp_path / "t.onnx", [SHAPE])
    assert not (tmp_path / "t.onnx").exists() and not (tmp_path / "t.onnx.partial").exists()
    report = export_model(tmp_path / "traced.pt", tmp_path / "t.onnx", [SHAPE], dynamic_batch=False)
    assert not report.dynamic_batch and not report.notes
    assert_is(run_onnx(tmp_path / "t.onnx", frames[:1])[0], model, frames[:1])


def test_torch_export_failure_falls_back_to_the_tracer_and_says_so(tmp_path):
    torch.save({"state_dict": Branchy().state_dict()}, tmp_path / "c.pt")
    report = export_model(
        tmp_path / "c.pt", tmp_path / "m.onnx", [(1, 4)], module="tests.tools.test_export:Branchy"
    )
    assert report.exporter == "torchscript"
    assert any(n.startswith("torch.export failed (Could not guard on data-dependent") for n in report.notes)
    assert any(n.startswith("tracer: Converting a tensor to a Python boolean") for n in report.notes)


def test_a_wrong_export_is_caught(tmp_path, nets):
    """verify() compares against the reference: the EMA file is not the raw model."""
    from inferd.tools.export import ExportReport
    from inferd.tools.onnx_export import verify

    raw = nets[0]
    ckpt = save_checkpoint(tmp_path / "last.pt", nets)
    export_model(ckpt, tmp_path / "ema.onnx", [SHAPE], module=FACTORY, ema=True)
    report = ExportReport(ckpt, "checkpoint", tmp_path / "ema.onnx", verify_batches=[1])
    with pytest.raises(ExportError, match="onnxruntime differs from PyTorch by up to"):
        verify(raw, tmp_path / "ema.onnx", [SHAPE], report)


def test_opset_below_18_uses_the_torchscript_exporter(tmp_path, nets):
    ckpt = save_checkpoint(tmp_path / "last.pt", nets)
    report = export_model(ckpt, tmp_path / "m.onnx", [SHAPE], module=FACTORY, ema=True, opset=17)
    assert report.exporter == "torchscript" and report.opset == 17


def test_bad_input_shapes():
    assert parse_shape("1x3x224x224") == (1, 3, 224, 224)
    for bad in ("", "1x3x", "axb", "0x3"):
        with pytest.raises(ExportError, match="is not like 1x3x224x224"):
            parse_shape(bad)


@pytest.fixture
def cli(capsys):
    """inferd.cli.main as a function; it sets up logging, which is put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def call(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    yield call
    root.handlers[:], root.level = handlers, level


def test_cli_end_to_end(tmp_path, nets, frames, cli):
    raw, ema = nets
    ckpt = save_checkpoint(tmp_path / "last.pt", nets)
    out = tmp_path / "cli.onnx"
    args = ["export", str(ckpt), "--out", str(out), "--input-shape", "1x3x32x32", "--module", FACTORY]
    code, text, err = cli(*args, "--ema", "--name", "cam_net")
    assert code == 0, err
    assert f"weights: {ckpt}['ema'] (EMA)" in text
    assert "input  input        ?x3x32x32" in text and "batch free" in text
    assert "  - name: cam_net\n" in text and f"    path: {out.resolve()}\n" in text
    (got,) = run_onnx(out, frames)
    assert_is(got, ema, frames)
    sha = next(line.split()[-1] for line in text.splitlines() if "sha256:" in line)
    assert len(sha) == 64

    code, text, err = cli(*args, "--json")
    assert code == 0, err
    report = json.loads(text)  # nothing but the report on stdout
    assert report["weights_from"].endswith("['state_dict']") and report["config_entry"].startswith(
        "  - name: cli"
    )
    assert_is(run_onnx(out, frames)[0], raw, frames)


def test_cli_errors_and_warnings(tmp_path, nets, cli):
    torch.save({"model": nets[1]}, tmp_path / "pickled.pt")
    code, _, err = cli(
        "export",
        str(tmp_path / "pickled.pt"),
        "--out",
        str(tmp_path / "m.onnx"),
        "--input-shape",
        "1x3x32x32",
    )
    assert code == 1 and "inferd: error:" in err and "--trust-pickle" in err
    partial = {k: v for k, v in nets[1].state_dict().items() if not k.startswith("bn.")}
    torch.save(partial, tmp_path / "partial.pt")
    argv = [
        "export",
        str(tmp_path / "partial.pt"),
        "--out",
        str(tmp_path / "m.onnx"),
        "--input-shape",
        "1x3x32x32",
    ]
    code, text, err = cli(*argv, "--module", FACTORY)
    assert code == 0, err
    assert "WARNING: 4 missing key(s): bn.weight, bn.bias, bn.running_mean, bn.running_var" in text
    code, _, err = cli(*argv[:-1], "3x", "--module", FACTORY)
    assert code == 1 and "'3x' is not like 1x3x224x224" in err
