"""compile (a top-level run setting): torch.compile'd forward, one-warning eager fallback, checkpoints without `_orig_mod.`."""

from __future__ import annotations

import copy
import os
import warnings

import pytest
import torch
from torch import nn

from toolkit.compilation import COMPILE_PAYS_AFTER_IMAGES, compile_module, quantize_int8, should_compile
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
    with pytest.raises(ConfigError, match="compile.*allowed: true, false, auto .*int8"):
        should_compile("yes", "train")
    assert should_compile("int8", "eval") and should_compile("int8", "predict", 1)
    with pytest.raises(ConfigError, match="int8 is for mode=eval|predict, not mode=train"):
        should_compile("int8", "train")


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
@pytest.mark.skipif(os.environ.get("TOOLKIT_TEST_INDUCTOR") != "1", reason="inductor C++ build; TOOLKIT_TEST_INDUCTOR=1")
def test_inductor_int8():
    """The real x86 int8 path: inductor lowers the frozen quantized graph; outputs stay close to float."""
    model = tiny_net().eval()
    g = torch.Generator().manual_seed(0)
    quantized = quantize_int8(model, [torch.rand(8, 3, 8, 8, generator=g) for _ in range(4)])
    x = torch.rand(3, 3, 8, 8, generator=g)
    with torch.no_grad():
        torch.testing.assert_close(quantized(x), model(x), atol=0.05, rtol=0.05)


@pytest.mark.slow
def test_training_with_compile_falls_back_and_checkpoints_plain_keys(make_cfg, monkeypatch, one_torch_thread):
    monkeypatch.setattr(torch, "compile", failing_compile)
    cfg = make_cfg(["compile=true", "backbone.alpha=0.25", "data.resolution=32", "data.batch_size=8",
                    "data.n_train=12", "data.n_val=12", "data.image_size=40", "trainer.max_epochs=1"])
    with pytest.warns(RuntimeWarning, match="torch.compile failed") as caught:
        result = run(cfg)
    assert len([w for w in caught if "torch.compile failed" in str(w.message)]) == 1
    state = load_torch_file(result["best_checkpoint"])["state_dict"]
    assert state and not [k for k in state if "_orig_mod" in k]
    assert "compile" not in load_torch_file(result["best_checkpoint"])["hyper_parameters"]  # a run setting


def test_compile_is_validated_listing_every_value(make_cfg):
    with pytest.raises(ConfigError, match="compile='sometimes'.*allowed: true, false, auto .*int8"):
        run(make_cfg(["compile=sometimes"]))


def test_the_old_task_compile_key_names_the_new_one(make_cfg):
    """`task.compile` moved to the top-level `compile` (a run setting, not the task's): one line saying so, from the
    command line (before Hydra's "no such key") and from a config that still carries it."""
    from toolkit.__main__ import check_moved_keys

    with pytest.raises(ConfigError, match="task.compile='int8'.*top-level key compile: compile=int8"):
        check_moved_keys(["mode=eval", "task.compile=int8"])
    with pytest.raises(ConfigError, match="task.compile=True.*compile=True"):
        run(make_cfg(["+task.compile=true"]))


def eager_compile(recorded: list):
    """torch.compile stand-in that records what it was given and returns the module itself (no C++ build)."""

    def compile_(module, **kwargs):
        recorded.append((module, kwargs))
        return module

    return compile_


def test_quantize_int8_builds_a_calibrated_int8_graph_close_to_float(monkeypatch):
    """PT2E x86 int8 of a conv net: the graph holds int8 (de)quantize steps, is compiled with weight freezing, takes
    any batch size, and stays close to the float model on the calibration distribution."""
    recorded: list = []
    monkeypatch.setattr(torch, "compile", eager_compile(recorded))
    model = tiny_net().eval()
    g = torch.Generator().manual_seed(0)
    calibration = [torch.rand(8, 3, 8, 8, generator=g) for _ in range(4)]
    quantized = quantize_int8(model, calibration)
    (graph, kwargs), = recorded
    assert kwargs == {} and quantized.compiled is graph  # FrozenCompiled: freezing around each compiled call
    assert "quantize_per_tensor" in graph.code and "dequantize_per_channel" in graph.code
    x = torch.rand(3, 3, 8, 8, generator=g)  # another batch size than the calibration's
    with torch.no_grad():
        out, reference = quantized(x), model(x)
    assert out.shape == reference.shape and not model.training
    torch.testing.assert_close(out, reference, atol=0.05, rtol=0.05)


@pytest.mark.slow
def test_eval_and_predict_with_int8(make_cfg, monkeypatch, one_torch_thread, tmp_path):
    """mode=eval|predict compile=int8 on a trained checkpoint: the model runs its int8 graph (calibrated on the
    training split / the images to predict), in float32 around it, and scores as the float model does."""
    small = ["backbone.alpha=0.25", "data.resolution=32", "data.batch_size=8", "data.n_train=24", "data.n_val=24",
             "data.image_size=40"]
    trained = run(make_cfg([*small, "trainer.max_epochs=1"]))
    ckpt = trained["best_checkpoint"]
    reference = run(make_cfg([*small, "mode=eval", f"ckpt_path={ckpt}"]))["metrics"]
    recorded: list = []
    monkeypatch.setattr(torch, "compile", eager_compile(recorded))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no fallback to eager
        metrics = run(make_cfg([*small, "mode=eval", f"ckpt_path={ckpt}", "compile=int8",
                                "trainer.precision=bf16-mixed"]))["metrics"]
    assert len(recorded) == 1 and "quantize_per_tensor" in recorded[0][0].code
    assert metrics.keys() == reference.keys()
    assert abs(metrics["val/top1"] - reference["val/top1"]) <= 0.1  # 24 images: 2 may flip at int8
    assert abs(metrics["val/loss"] - reference["val/loss"]) <= 0.05 * abs(reference["val/loss"])

    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (40, 40), (80 * i, 40, 200 - 60 * i)).save(images / f"{i}.jpg")
    predicted = run(make_cfg([*small, "mode=predict", f"ckpt_path={ckpt}", "compile=int8",
                              f"predict.input={images}"]))
    assert len(recorded) == 2 and len(predicted["files"]) >= 2


def test_int8_refuses_training_and_detectors(make_cfg):
    with pytest.raises(ConfigError, match="int8 is for mode=eval"):
        run(make_cfg(["compile=int8"]))
