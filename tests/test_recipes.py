"""Fine-tuning recipes: the optimizer= / scheduler= / augment= presets, each task's defaults, the one-line errors."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import albumentations as A
import pytest
import torch
from conftest import assert_one_line_error, run_cli
from test_tune import write_split_folders

from toolkit.conf import CONF_DIR
from toolkit.errors import ConfigError
from toolkit.modes.common import build_datamodule, build_task
from toolkit.run import run
from toolkit.schedulers import WarmupCosineLR

TASKS = sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml"))
SMALL = ["backbone.alpha=0.25"]

#: each task's optimiser and schedule before the presets existed: the defaults must not move
DEFAULTS = {
    "classification": ({"_target_": "timm.optim.RMSpropTF", "lr": 0.045, "alpha": 0.9, "momentum": 0.9, "eps": 1.0,
                        "weight_decay": 4e-5},
                       {"_target_": "torch.optim.lr_scheduler.ExponentialLR", "gamma": 0.9755, "interval": "epoch"}),
    "detection_ssd": ({"_target_": "torch.optim.RMSprop", "lr": 0.004, "alpha": 0.9, "momentum": 0.9, "eps": 1.0,
                       "weight_decay": 4e-5}, None),
    "detection_frcnn": ({"_target_": "torch.optim.SGD", "lr": 0.02, "momentum": 0.9, "nesterov": False, "weight_decay": 1e-4},
                        {"_target_": "toolkit.schedulers.WarmupMultiStepLR", "milestones": [16, 22], "gamma": 0.1,
                         "warmup_steps": 1000, "warmup_factor": 0.001, "schedule_epochs": 26, "max_epochs": 8,
                         "steps_per_epoch": None, "interval": "step"}),
    "face_attributes": ({"_target_": "torch.optim.AdamW", "lr": 0.002, "weight_decay": 0.0}, "cosine_epoch"),
    "face_embedding": ({"_target_": "torch.optim.AdamW", "lr": 0.002, "weight_decay": 0.0}, "cosine_epoch"),
    "fine_grained": ({"_target_": "torch.optim.AdamW", "lr": 0.001, "weight_decay": 4e-5}, "cosine_epoch"),
    "geolocation": ({"_target_": "torch.optim.AdamW", "lr": 0.002, "weight_decay": 4e-5}, "cosine_epoch"),
}
COSINE_EPOCH = {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "T_max": 8, "interval": "epoch"}


def plain(node) -> dict | None:
    from omegaconf import OmegaConf

    return None if node is None else OmegaConf.to_container(node, resolve=True)


@pytest.mark.parametrize("task", TASKS)
def test_each_tasks_default_optimiser_and_schedule_are_unchanged(make_cfg, task):
    cfg = make_cfg([f"task={task}"], fast=False)
    optimizer, scheduler = DEFAULTS[task]
    expected = {"betas": [0.9, 0.999], "eps": 1e-8, **optimizer} if optimizer["_target_"].endswith("AdamW") else optimizer
    assert plain(cfg.task.optimizer) == expected
    assert plain(cfg.task.scheduler) == (COSINE_EPOCH if scheduler == "cosine_epoch" else scheduler)


@pytest.mark.parametrize("task", TASKS)
def test_adamw_with_cosine_replaces_the_whole_node_for_every_task(make_cfg, task):
    cfg = make_cfg([f"task={task}", "optimizer=adamw", "scheduler=cosine", *SMALL])
    assert set(cfg.task.optimizer) == {"_target_", "lr", "betas", "eps", "weight_decay"}  # nothing of RMSprop/SGD left
    assert set(cfg.task.scheduler) == {"_target_", "warmup_epochs", "warmup_factor", "min_lr_ratio", "max_epochs",
                                       "steps_per_epoch", "interval"}
    task_ = build_task(cfg)
    config = task_.configure_optimizers()
    assert isinstance(config["optimizer"], torch.optim.AdamW)
    assert isinstance(config["lr_scheduler"]["scheduler"], WarmupCosineLR) and config["lr_scheduler"]["interval"] == "step"
    expected_lr = 0.001 if task == "fine_grained" else 0.002  # fine_grained: optimizer_lr.adamw
    head_lrs = {g["lr"] for g in config["optimizer"].param_groups}
    if task == "detection_frcnn":  # linear scaling from 16 images to the batch
        expected_lr *= cfg.data.batch_size / 16
    assert max(head_lrs) == pytest.approx(expected_lr * config["lr_scheduler"]["scheduler"].warmup_factor)


def test_a_presets_lr_is_its_own_not_the_tasks_other_optimisers(make_cfg):
    """fine_grained starts AdamW at 0.001; its lr does not follow the user to another optimiser."""
    assert make_cfg(["task=fine_grained"]).task.optimizer.lr == 0.001
    assert make_cfg(["task=fine_grained", "optimizer=rmsprop_tf"]).task.optimizer.lr == 0.045
    assert make_cfg(["task=classification", "optimizer=sgd", "task.optimizer.lr=0.1"]).task.optimizer.lr == 0.1
    cfg = make_cfg(["task=face_attributes", "optimizer=sgd"])  # the task's weight decay stays (the paper: none)
    assert cfg.task.optimizer._target_ == "torch.optim.SGD" and cfg.task.optimizer.weight_decay == 0.0


def test_scheduler_constant_trains_without_a_scheduler(make_cfg):
    cfg = make_cfg(["task=classification", "scheduler=constant", *SMALL])
    assert cfg.task.scheduler is None
    assert isinstance(build_task(cfg).configure_optimizers(), torch.optim.Optimizer)


def test_a_key_left_from_another_optimiser_names_the_allowed_ones(make_cfg):
    """The old trap: an AdamW node merged into the RMSprop one keeps `alpha`."""
    cfg = make_cfg(["task=classification", "task.optimizer._target_=torch.optim.AdamW", *SMALL])
    with pytest.raises(ConfigError, match=r"task\.optimizer\.alpha=0\.9.*AdamW takes .*betas.*optimizer=<preset>"):
        build_task(cfg).configure_optimizers()
    cfg = make_cfg(["task=classification", "+task.scheduler.T_max=3", *SMALL])
    with pytest.raises(ConfigError, match=r"task\.scheduler\.T_max=3.*ExponentialLR takes .*gamma"):
        build_task(cfg).configure_optimizers()


def test_unknown_preset_is_one_line_naming_the_options(tmp_path):
    for group, value, options in (("optimizer", "adam", "adamw, rmsprop, rmsprop_tf, sgd"),
                                  ("scheduler", "cos", "constant, cosine, cosine_epoch, exponential, multistep"),
                                  ("augment", "strong", "finetune, none, paper")):
        assert_one_line_error(run_cli([f"{group}={value}"], cwd=tmp_path), f"{group}='{value}'", options)


def test_warmup_cosine_factors():
    params = [torch.nn.Parameter(torch.zeros(1))]
    schedule = WarmupCosineLR(torch.optim.SGD(params, lr=1.0), max_epochs=10, warmup_epochs=2, warmup_factor=0.1,
                              min_lr_ratio=0.05, steps_per_epoch=5)
    factors = [schedule.factor(step) for step in range(50)]
    assert factors[0] == pytest.approx(0.1) and factors[5] == pytest.approx(0.1 + 0.9 * 5 / 10)  # linear warm-up
    assert factors[10] == pytest.approx(1.0)  # the peak at the warm-up's end
    assert factors[30] == pytest.approx(0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 20 / 40)))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False)) and factors[-1] > 0.05
    assert schedule.factor(50) == pytest.approx(0.05)
    short = WarmupCosineLR(torch.optim.SGD(params, lr=1.0), max_epochs=2, warmup_epochs=5, steps_per_epoch=4)
    assert short.warmup_epochs == 1.0  # never more than half the run


def test_cosine_counts_steps_from_the_trainer_in_a_real_run(make_cfg, tmp_path):
    root = write_split_folders(tmp_path / "photos", per_class=8)
    cfg = make_cfg(["task=classification", "data=folder", f"data.root={root}", "data.num_workers=0", "data.batch_size=4",
                    "data.resolution=32", "trainer.max_epochs=2", "optimizer=adamw", "scheduler=cosine",
                    "callbacks.lr_monitor.logging_interval=step", "trainer.log_every_n_steps=1", *SMALL])
    result = run(cfg)
    with (Path(result["output_dir"]) / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    key = next(k for k in rows[0] if k.startswith("lr-"))
    lrs = [float(r[key]) for r in rows if r.get(key)]
    assert len(lrs) == 8  # 16 images / 4 per step x 2 epochs
    assert lrs[0] == pytest.approx(0.002 * 0.01)  # warm-up start
    assert max(lrs) == pytest.approx(lrs[4], rel=1e-6) and lrs[4] == pytest.approx(0.002 * 0.5 * (1 + math.cos(0.0)))
    assert lrs[-1] < 0.002 * 0.2  # decayed over the run's 8 steps, not over 8 x steps


# ---- augmentation presets ---------------------------------------------------------------------------------
AUGMENT_KEYS = ("crop_scale", "crop_fraction", "hflip")
PAPER = {"crop_scale": [0.35, 1.0], "crop_fraction": 0.875, "hflip": True}
FINETUNE = {"crop_scale": [0.8, 1.0], "crop_fraction": 1.0, "hflip": True}


def augment_of(cfg) -> dict:
    return {k: plain(cfg.data)[k] for k in AUGMENT_KEYS if k in cfg.data}


@pytest.mark.parametrize(("data", "expected"), [("folder", FINETUNE), ("geo", FINETUNE), ("imagenet", PAPER),
                                                ("stanford_dogs", PAPER), ("stanford_dogs_synthetic", PAPER),
                                                ("geo_synthetic", PAPER)])
def test_custom_data_fine_tunes_and_the_papers_data_keeps_its_policy(make_cfg, data, expected):
    assert augment_of(make_cfg([f"data={data}"])) == expected


def test_face_data_takes_the_presets_crops_and_flips(make_cfg):
    assert augment_of(make_cfg(["data=celeba"])) == {"crop_scale": [0.8, 1.0], "hflip": True}  # as before
    assert augment_of(make_cfg(["data=faces_folder", "augment=none"])) == {"crop_scale": [1.0, 1.0], "hflip": False}


def test_the_papers_experiments_keep_the_papers_policy(make_cfg):
    for experiment in ("mobilenet_v1_100_224", "stanford_dogs_mobilenet_v1_075_192"):
        assert augment_of(make_cfg([f"experiment={experiment}"])) == PAPER


def test_augment_and_flip_switches_reach_the_transforms(make_cfg, tmp_path):
    root = write_split_folders(tmp_path / "photos", per_class=2)
    folder = ["data=folder", f"data.root={root}", "data.resolution=32"]
    cfg = make_cfg([*folder, "augment=paper", "data.hflip=false"])
    assert augment_of(cfg) == {**PAPER, "hflip": False}  # the command line's key beats the preset's
    dm = build_datamodule(cfg)
    train = dm.train_transform()
    assert not any(isinstance(t, A.HorizontalFlip) for t in train.transforms)
    crop = next(t for t in train.transforms if isinstance(t, A.RandomResizedCrop))
    assert tuple(crop.scale) == (0.35, 1.0)
    dm = build_datamodule(make_cfg(folder))  # the default for a class folder
    assert any(isinstance(t, A.HorizontalFlip) for t in dm.train_transform().transforms)
    assert dm.eval_transform().transforms[0].rule["crop_fraction"] == 1.0  # the whole image, no centre crop


def test_help_shows_the_presets_and_the_flip_switch(tmp_path):
    proc = run_cli(["--help"], cwd=tmp_path)
    assert proc.returncode == 0
    for text in ("optimizer=rmsprop_tf|rmsprop|sgd|adamw", "scheduler=exponential|cosine", "augment=paper|finetune|none",
                 "data.hflip=false", "arrows", "docs/fine-tuning.md", "mode=train|eval|predict|profile|export|tune"):
        assert text in proc.stdout, text


def test_presets_compose_together(make_cfg):
    cfg = make_cfg(["augment=none", "optimizer=sgd", "scheduler=multistep", "data=folder", "data.root=/x"])
    assert cfg.task.optimizer._target_ == "torch.optim.SGD" and cfg.task.scheduler.milestones == [16, 22]
    assert augment_of(cfg) == {"crop_scale": [1.0, 1.0], "crop_fraction": 1.0, "hflip": False}
