"""task.compile: torch.compile'd forward, one-warning eager fallback, checkpoints without `_orig_mod.`."""

from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch
from torch import nn

from toolkit.compilation import COMPILE_PAYS_AFTER_IMAGES, compile_module, should_compile
from toolkit.errors import ConfigError
from toolkit.io import load_torch_file
from toolkit.run import run


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))


def failing_compile(fn, **kwargs):
    """What torch.compile gives where inductor cannot build (no C++ compiler): a function that raises when called."""

    def compiled(*args, **kw):
        raise RuntimeError("InductorError: no working C++ compiler found\n(traceback...)")

    return compiled


def test_policy():
    assert should_compile(True, "train") and not should_compile(False, "eval", 10**6)
    assert not should_compile("auto", "train", 10**6)  # training stays eager unless asked
    assert should_compile("auto", "eval", COMPILE_PAYS_AFTER_IMAGES) and should_compile("auto", "predict", 10**5)
    assert not should_compile("auto", "eval", 100) and not should_compile("auto", "predict", None)
    with pytest.raises(ConfigError, match="task.compile"):
        should_compile("yes", "train")


def test_fallback_warns_once_and_runs_eagerly(monkeypatch):
    monkeypatch.setattr(torch, "compile", failing_compile)
    model, reference = tiny_net().eval(), tiny_net().eval()
    compile_module(model)
    x = torch.randn(2, 3, 8, 8)
    with pytest.warns(RuntimeWarning, match="torch.compile failed for Sequential, running it eagerly") as caught:
        torch.testing.assert_close(model(x), reference(x))
        torch.testing.assert_close(model(x), reference(x))
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1 and model.forward.failed
    assert "no working C++ compiler found" in str(caught[0].message) and "traceback" not in str(caught[0].message)


def test_model_errors_still_surface(monkeypatch):
    """A wrong input fails in the eager retry too: the fallback hides compiler failures, not bugs."""
    monkeypatch.setattr(torch, "compile", failing_compile)
    model = compile_module(tiny_net())
    with warnings.catch_warnings(), pytest.raises(RuntimeError, match="channels"):
        warnings.simplefilter("ignore")
        model(torch.randn(2, 5, 8, 8))


def test_real_compile_keeps_outputs_state_dict_and_copies():
    """torch.compile with the aot_eager backend (dynamo and AOTAutograd, no C++ build): same outputs and gradients,
    the same state_dict keys, and a deep copy runs eagerly on its own weights."""
    model, reference = tiny_net(), tiny_net()
    keys = list(model.state_dict())
    compile_module(model, backend="aot_eager")
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model(x), reference(x))
    model(x).sum().backward()
    reference(x).sum().backward()
    torch.testing.assert_close(model[0].weight.grad, reference[0].weight.grad)
    assert not model.forward.failed and list(model.state_dict()) == keys
    clone = copy.deepcopy(model)
    assert clone.forward.__self__ is clone  # the copy's own eager forward, not the original's compiled one
    with torch.no_grad():
        clone[-1].bias.add_(1.0)
    torch.testing.assert_close(clone(x), model(x) + 1.0)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("TOOLKIT_TEST_INDUCTOR") != "1",
                    reason="inductor's first C++ compilation takes ~50 s on the 2-core CI machine; TOOLKIT_TEST_INDUCTOR=1")
def test_inductor_compile():
    model, reference = tiny_net().eval(), tiny_net().eval()
    compile_module(model)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model(x), reference(x))
    assert not model.forward.failed


@pytest.mark.slow
def test_training_with_task_compile_falls_back_and_checkpoints_plain_keys(make_cfg, monkeypatch, one_torch_thread):
    monkeypatch.setattr(torch, "compile", failing_compile)
    cfg = make_cfg(["task.compile=true", "backbone.alpha=0.25", "data.resolution=32", "data.batch_size=8",
                    "data.n_train=12", "data.n_val=12", "data.image_size=40", "trainer.max_epochs=1"])
    with pytest.warns(RuntimeWarning, match="torch.compile failed") as caught:
        result = run(cfg)
    assert len([w for w in caught if "torch.compile failed" in str(w.message)]) == 1
    state = load_torch_file(result["best_checkpoint"])["state_dict"]
    assert state and not [k for k in state if "_orig_mod" in k]
    assert "compile" not in load_torch_file(result["best_checkpoint"])["hyper_parameters"]  # a run setting


def test_task_compile_is_validated(make_cfg):
    with pytest.raises(ConfigError, match="task.compile"):
        run(make_cfg(["task.compile=sometimes"]))
