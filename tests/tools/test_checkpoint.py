"""Checkpoints: which state dict is picked, how its keys are matched, what is refused."""

from __future__ import annotations

import argparse
import copy

import pytest

torch = pytest.importorskip("torch")

from inferd.errors import InferdError  # noqa: E402
from inferd.tools.checkpoint import (  # noqa: E402
    ExportError,
    as_state_dict,
    load_into,
    match_state_dict,
    read_checkpoint,
    select_weights,
    unwrap,
)


def net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten())


def test_export_error_is_an_inferd_error():
    assert issubclass(ExportError, InferdError)


def test_ema_keys_are_tried_in_order_and_empty_entries_skipped():
    sd = net().state_dict()
    assert select_weights({"model_ema": sd, "state_dict_ema": {}}, True, "c.pt")[0] == "model_ema"
    assert select_weights({"ema": None, "ema_model": sd}, True, "c.pt")[0] == "ema_model"
    assert select_weights({"model": sd, "ema": sd}, False, "c.pt")[0] == "model"
    assert select_weights(sd, False, "c.pt")[0] == "(top level)"


def test_no_ema_weights_lists_the_checkpoint_keys():
    sd = net().state_dict()
    with pytest.raises(ExportError) as e:
        select_weights({"epoch": 3, "state_dict": sd, "optimizer": {}}, True, "c.pt")
    assert "ema, model_ema, state_dict_ema" in str(e.value)
    assert "'epoch', 'state_dict', 'optimizer'" in str(e.value)
    with pytest.raises(ExportError, match="bare state dict"):
        select_weights(sd, True, "c.pt")
    # ultralytics' strip_optimizer moves the EMA into 'model' and sets 'ema' to None
    with pytest.raises(ExportError, match="keeps the EMA weights under 'model'"):
        select_weights({"model": sd, "ema": None}, True, "best.pt")


def test_prefixes_are_stripped_only_when_they_make_keys_match():
    model = net()
    sd = model.state_dict()
    compiled_ddp = {f"module._orig_mod.{k}": v for k, v in sd.items()}
    matched = match_state_dict(sd, compiled_ddp)
    assert matched.stripped == ["module.", "_orig_mod."]
    assert matched.state_dict.keys() == sd.keys() and not matched.missing and not matched.unexpected
    lightning = {f"model.{k}": v for k, v in sd.items()} | {"loss_fn.pos_weight": torch.ones(1)}
    matched = match_state_dict(sd, lightning)
    assert matched.stripped == ["model."] and matched.unexpected == ["loss_fn.pos_weight"]
    # a model whose own child is called "model": nothing to strip
    wrapper = torch.nn.Module()
    wrapper.model = net()
    matched = match_state_dict(wrapper.state_dict(), wrapper.state_dict())
    assert matched.stripped == [] and matched.state_dict.keys() == wrapper.state_dict().keys()


def test_partial_state_dict_reports_missing_and_unexpected_keys():
    model = net()
    sd = {k: v for k, v in net().state_dict().items() if not k.startswith("1.")}
    sd["head.weight"] = torch.zeros(2)
    matched = load_into(model, sd)
    # num_batches_tracked changes nothing at inference: not reported
    assert matched.missing == ["1.weight", "1.bias", "1.running_mean", "1.running_var"]
    assert matched.unexpected == ["head.weight"]


def test_a_shape_mismatch_names_the_key_and_both_shapes():
    sd = net().state_dict()
    sd["0.weight"] = torch.zeros(8, 3, 3, 3)
    with pytest.raises(ExportError, match=r"'0.weight' has shape \[8, 3, 3, 3\] .* but \[4, 3, 3, 3\]"):
        load_into(net(), sd)


def test_nothing_matching_is_an_error():
    with pytest.raises(ExportError, match="no key of the checkpoint matches"):
        match_state_dict(net().state_dict(), {"encoder.w": torch.zeros(1)})


def test_ema_wrappers_are_unwrapped():
    model = net()
    averaged = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.99)
    )
    assert unwrap(averaged) is averaged.module
    assert as_state_dict(averaged, "x").keys() == model.state_dict().keys()
    dp = torch.nn.DataParallel(model)
    assert unwrap(dp) is model
    holder = torch.nn.Module()  # a model with a child that happens to be called "module"
    holder.module, holder.head = net(), torch.nn.Linear(2, 2)
    assert unwrap(holder) is holder


def test_weights_only_load_accepts_argparse_args_and_maps_to_cpu(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    sd = net().state_dict()
    # Tag every storage as CUDA, as torch.save does on a GPU machine.
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1)}, path)
    monkeypatch.undo()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=False)
    ckpt = read_checkpoint(path)
    assert ckpt["args"].lr == 0.1
    assert all(t.device.type == "cpu" for t in ckpt["state_dict"].values())


def test_pickled_modules_are_refused_unless_trusted(tmp_path):
    path = tmp_path / "last.pt"
    model = net()
    torch.save({"model": model, "ema": copy.deepcopy(model)}, path)
    with pytest.raises(ExportError) as e:
        read_checkpoint(path)
    assert "torch.nn.modules.container.Sequential" in str(e.value) and "--trust-pickle" in str(e.value)
    ckpt = read_checkpoint(path, trust_pickle=True)
    assert isinstance(ckpt["ema"], torch.nn.Sequential)


def test_an_unreadable_file_is_an_export_error(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07not a torch file")
    with pytest.raises(ExportError, match=r"torch\.load cannot read it"):
        read_checkpoint(path)


def test_without_torch_the_error_says_what_to_install(monkeypatch):
    import sys

    from inferd.tools.checkpoint import import_torch

    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` raises ImportError
    with pytest.raises(ExportError, match=r"pip install 'inferd\[export\]'"):
        import_torch()


def test_trusted_pickle_whose_classes_are_gone(tmp_path, monkeypatch):
    import importlib
    import sys

    (tmp_path / "gone_arch.py").write_text("import torch\n\nclass Gone(torch.nn.Linear):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    gone = importlib.import_module("gone_arch")
    torch.save({"model": gone.Gone(2, 2)}, tmp_path / "last.pt")
    (tmp_path / "gone_arch.py").unlink()
    monkeypatch.delitem(sys.modules, "gone_arch")
    with pytest.raises(ExportError, match=r"unpickling needs the code that saved it.*gone_arch"):
        read_checkpoint(tmp_path / "last.pt", trust_pickle=True)
