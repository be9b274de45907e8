"""trainer.precision=auto trains in bf16 where the hardware runs it fast and evaluates in fp32; every task trains and
validates under bf16 when asked (trainer.precision=bf16-mixed)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from toolkit import precision
from toolkit.precision import (
    BF16AfterFP32Warmup,
    cpu_bf16_flags,
    fast_bf16,
    resolve_precision,
    trainer_device,
)
from toolkit.run import run

SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
SKYLAKE = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n"


def test_cpu_flags_decide_auto(tmp_path, caplog):
    fast, old = tmp_path / "spr", tmp_path / "skl"
    fast.write_text(SAPPHIRE_RAPIDS)
    old.write_text(SKYLAKE)
    assert cpu_bf16_flags(fast) == ["amx_bf16", "avx512_bf16"] and cpu_bf16_flags(old) == []
    assert cpu_bf16_flags(tmp_path / "missing") == []  # no /proc (macOS): no bf16 claim
    with caplog.at_level(logging.INFO, logger="toolkit.precision"):
        assert resolve_precision("auto", "cpu", cpuinfo=fast) == "bf16-mixed"
        assert resolve_precision("auto", "cpu", cpuinfo=old) == "32-true"
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "trainer.precision=auto -> bf16-mixed on cpu (CPU has amx_bf16, avx512_bf16)"
    assert lines[1].startswith("trainer.precision=auto -> 32-true on cpu (CPU has no AMX-bf16")


def test_explicit_precision_is_kept_and_devices_resolve():
    assert resolve_precision("16-mixed", "gpu") == "16-mixed" and resolve_precision("32-true", "cpu") == "32-true"
    assert trainer_device("cpu") == "cpu" and trainer_device("gpu") == "cuda"
    assert fast_bf16("mps")[0] is False
    if not torch.cuda.is_available():
        assert trainer_device("auto") in ("cpu", "mps")
        assert fast_bf16("cuda") == (False, "this GPU has no native bf16")


def test_default_trainer_uses_auto(make_cfg):
    from toolkit.modes.common import build_task, build_trainer

    fast = fast_bf16("cpu")[0]  # this machine's answer: training may use bf16, every other mode runs in fp32
    for mode in ("train", "eval", "predict", "export"):
        cfg = make_cfg(["backbone.alpha=0.25", "trainer.accelerator=cpu", f"mode={mode}"], fast=False)
        assert cfg.trainer.precision == "auto"
        trainer = build_trainer(cfg, build_task(cfg), logger=False)
        expected = "bf16-mixed" if fast and mode == "train" else "32-true"
        assert trainer.precision == expected, mode


def test_auto_training_warms_up_in_fp32_then_trains_in_bf16(make_cfg, monkeypatch, tmp_path, one_torch_thread):
    """The real Trainer on a bf16 machine (CPU flags faked): steps 1-2 in fp32, 3-4 under bf16 autocast, the count in
    the checkpoint; a resumed run carries on in bf16; validation (which picks best.ckpt) runs in fp32 throughout;
    eval under `auto` is fp32."""
    from toolkit.modes.common import build_task, build_trainer
    from toolkit.tasks.classification import ClassificationTask

    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda cpuinfo=None: ["avx512_bf16"])
    monkeypatch.setattr(precision, "FP32_WARMUP_STEPS", 2)
    autocast, val_autocast = [], []
    step, val_step = ClassificationTask.training_step, ClassificationTask.validation_step
    monkeypatch.setattr(ClassificationTask, "training_step",
                        lambda self, batch, i: autocast.append(torch.is_autocast_enabled("cpu")) or step(self, batch, i))
    monkeypatch.setattr(ClassificationTask, "validation_step", lambda self, batch, i: val_autocast.append(
        torch.is_autocast_enabled("cpu")) or val_step(self, batch, i))
    common = ["trainer.precision=auto", "backbone.alpha=0.25", "data.resolution=32", "data.n_train=8", "data.n_val=12",
              "data.image_size=40", "data.batch_size=2", "trainer.max_epochs=1", "trainer.limit_val_batches=1"]
    result = run(make_cfg(common))
    assert autocast == [False, False, True, True]
    assert val_autocast and not any(val_autocast)  # the sanity check and the epoch's validation: fp32
    last = Path(result["output_dir"]) / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["BF16AfterFP32Warmup"] == {"steps": 4}

    autocast.clear()  # resume for a second epoch (into another folder): no second warm-up
    resumed = make_cfg([*common, "trainer.max_epochs=2", f"ckpt_path={last}"])
    with open_dict(resumed):
        resumed.paths.output_dir = str(tmp_path / "resumed")
    run(resumed)
    assert autocast == [True] * 4 and not any(val_autocast)

    cfg = make_cfg([*common, "mode=eval"])
    trainer = build_trainer(cfg, build_task(cfg), logger=False)
    assert trainer.precision == "32-true" and not isinstance(trainer.precision_plugin, BF16AfterFP32Warmup)
    cfg = make_cfg([*common, "mode=eval", "trainer.precision=bf16-mixed"])  # asked for: bf16 evaluation
    assert build_trainer(cfg, build_task(cfg), logger=False).precision == "bf16-mixed"


BF16 = ["trainer.precision=bf16-mixed", "trainer.fast_dev_run=true", "backbone.alpha=0.25", "data.batch_size=4"]
# one training step and one validation batch of each task, on generated data at tiny sizes
TASKS = {
    "classification": ["data.resolution=32", "data.n_train=12", "data.n_val=12", "data.image_size=40"],
    "detection_ssd": ["task=detection_ssd", "data=shapes", "data.resolution=64", "data.n_train=4", "data.n_val=4",
                      "data.image_size=64"],
    "detection_frcnn": ["task=detection_frcnn", "data=shapes", "data.resolution=128", "data.n_train=4",
                        "data.n_val=4", "data.image_size=64"],
    "face_attributes": ["task=face_attributes", "data=celeba_synthetic", "teacher=none", "data.n_train=8",
                        "data.n_val=4", "data.resolution=32"],
    "face_embedding": ["task=face_embedding", "data=faces_synthetic", "teacher=none", "task.embedding_dim=16",
                       "data.n_identities=4", "data.n_test_identities=4", "data.images_per_identity=2",
                       "data.folds=2", "data.pairs_per_fold=4", "data.resolution=32"],
    "fine_grained": ["task=fine_grained", "data=stanford_dogs_synthetic", "data.n_breeds=4", "data.n_train=8",
                     "data.n_val=4", "data.image_size=40", "data.resolution=32"],
    "geolocation": ["task=geolocation", "data=geo_synthetic", "data.n_train=40", "data.n_val=8",
                    "data.image_size=32", "data.resolution=32", "data.cells.t_max=8", "data.cells.t_min=2"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_trains_and_validates_under_bf16(make_cfg, name, one_torch_thread):
    result = run(make_cfg([*BF16, *TASKS[name]]))
    assert result["global_step"] == 1
    validation = {k: v for k, v in result["metrics"].items() if k.startswith("val/")}
    assert validation, f"{name}: no validation metric under bf16"
    assert all(v == v for v in validation.values()), f"{name}: NaN under bf16: {validation}"  # NaN != NaN
