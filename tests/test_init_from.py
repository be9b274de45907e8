"""`init_from` loads a checkpoint of this backbone or refuses it: counters and biases are not evidence of a match."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import FAST, run_cli

from toolkit.errors import DataError
from toolkit.run import run
from toolkit.tasks.base import backbone_weight_keys
from toolkit.tasks.classification import ClassificationTask

TINY = ["backbone.alpha=0.25", "data.resolution=32", "data.batch_size=8", "trainer.max_epochs=1",
        "data.n_train=12", "data.n_val=6", "data.image_size=40"]


def save_checkpoint(path, *, alpha: float, num_classes: int, hyper_parameters: bool = True):
    """What a toolkit checkpoint holds for init_from: the task's state dict and its backbone hyper-parameters."""
    torch.manual_seed(int(alpha * 100) + num_classes)
    task = ClassificationTask(backbone={"name": "mobilenet_v1", "alpha": alpha}, num_classes=num_classes)
    content = {"state_dict": task.state_dict()}
    if hyper_parameters:
        content["hyper_parameters"] = {"backbone": {"name": "mobilenet_v1", "alpha": alpha, "act": "relu"},
                                       "num_classes": num_classes}
    torch.save(content, path)
    return task


def test_a_checkpoint_of_another_width_stops_the_cli_with_one_line_naming_both(tmp_path):
    path = tmp_path / "alpha05.ckpt"
    save_checkpoint(path, alpha=0.5, num_classes=6)
    proc = run_cli([*FAST, *TINY, f"init_from={path}"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    # 27 BatchNorm counters and a 6-class head bias match by name and shape; none of the 54 backbone weights do
    assert "only 0/54 of this model's backbone weights (0%) load" in err
    assert "the checkpoint is mobilenet_v1 alpha=0.5, this run is mobilenet_v1 alpha=0.25" in err
    assert "Fix: train with backbone.alpha=0.5" in err and "init_from_strict=false" in err and "alpha05.ckpt" in err
    assert "is [16, 3, 3, 3] there, [8, 3, 3, 3] here" in err  # the first conv: 32*alpha filters


def test_a_plain_state_dict_of_another_width_is_refused_and_strict_false_loads_what_matches(tmp_path, caplog):
    source = ClassificationTask(backbone={"name": "mobilenet_v1", "alpha": 0.5}, num_classes=3)
    path = tmp_path / "alpha05.pt"
    torch.save(source.model.state_dict(), path)  # no `model.` prefix, no hyper-parameters
    task = ClassificationTask(backbone={"name": "mobilenet_v1", "alpha": 0.25}, num_classes=3)
    with pytest.raises(DataError, match="records no backbone.*this run is mobilenet_v1 alpha=0.25"):
        task.load_init_weights(path)
    with caplog.at_level(logging.INFO):
        report = task.load_init_weights(path, strict=False)
    assert any(r.levelno == logging.WARNING and "init_from_strict=false" in r.message for r in caplog.records)
    # what matched (counters, the head bias, the head weight of the same class count) is loaded, nothing else
    assert not any(k in report["loaded"] for k in backbone_weight_keys(task.state_dict()))
    assert "model.head.fc.bias" in report["loaded"] and torch.equal(task.model.head.fc.bias, source.model.head.fc.bias)


def test_strict_false_from_the_config_trains_from_a_partial_start(make_cfg, tmp_path, caplog):
    path = tmp_path / "alpha05.ckpt"
    save_checkpoint(path, alpha=0.5, num_classes=6)
    with caplog.at_level(logging.INFO):
        result = run(make_cfg([*TINY, f"init_from={path}", "init_from_strict=false", "trainer.max_steps=1"]))
    assert result["global_step"] == 1
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING and "init_from" in r.message]
    assert warnings and "the checkpoint is mobilenet_v1 alpha=0.5" in warnings[0]
    with pytest.raises(Exception, match="init_from_strict"):
        run(make_cfg([*TINY, f"init_from={path}", "init_from_strict=maybe"]))


def test_same_backbone_with_another_class_count_loads_the_whole_backbone(tmp_path, caplog):
    path = tmp_path / "ten_classes.ckpt"
    source = save_checkpoint(path, alpha=0.25, num_classes=10)
    task = ClassificationTask(backbone={"name": "mobilenet_v1", "alpha": 0.25}, num_classes=3)
    fresh_head = task.model.head.fc.weight.clone()
    with caplog.at_level(logging.INFO):
        report = task.load_init_weights(path)
    assert report["shape_mismatch"] == ["model.head.fc.weight", "model.head.fc.bias"]
    backbone = {k: v for k, v in task.state_dict().items() if k.startswith("model.backbone.")}
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in backbone.items())  # running stats too
    assert torch.equal(task.model.head.fc.weight, fresh_head)
    line = next(r.message for r in caplog.records if r.message.startswith("init_from"))
    assert "backbone 100 % (54/54 weights) loaded" in line and "model.head.fc (shape differs)" in line
