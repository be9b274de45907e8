"""Task constructors: keyword-only, each setting declared once (optimisation on BaseTask, model settings in the
builder's signature), every argument recorded for `load_from_checkpoint`, and `task.model.*` overrides of a
checkpoint's values on the command line."""

from __future__ import annotations

import inspect

import lightning
import pytest
import torch
from torchvision.models.detection.ssdlite import SSDLiteHead

from toolkit.modes.common import build_task, load_task
from toolkit.tasks.base import BaseTask, registered_task_class, task_classes
from toolkit.tasks.detection_ssd import SSDTask
from toolkit.tasks.distillation import DistillationTask
from toolkit.tasks.fine_grained import FineGrainedTask

TINY = {"name": "mobilenet_v1", "alpha": 0.25}
BASE_ARGUMENTS = {"backbone", "model", "optimizer", "scheduler", "backbone_lr_scale", "freeze_backbone_epochs"}
TASKS = [registered_task_class(path, "test") for path in task_classes()]


def own_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The parameters of the `__init__` a class defines itself (none when it inherits its parent's)."""
    init = cls.__dict__.get("__init__")
    return {} if init is None else dict(list(inspect.signature(init).parameters.items())[1:])


@pytest.mark.parametrize("cls", [BaseTask, DistillationTask, *TASKS], ids=lambda c: c.__name__)
def test_constructors_are_keyword_only_and_declare_shared_settings_once(cls):
    params = own_parameters(cls)
    assert all(p.kind in (p.KEYWORD_ONLY, p.VAR_KEYWORD) for p in params.values()), params
    if cls is not BaseTask:
        assert not BASE_ARGUMENTS & set(params), f"{cls.__name__} re-declares {BASE_ARGUMENTS & set(params)}"
        assert not params or "kwargs" in params  # the base's arguments are forwarded, not listed
    with pytest.raises(TypeError):
        cls(TINY)  # no positional arguments


def test_every_argument_of_the_chain_is_a_hyperparameter_and_restores(tmp_path):
    """FineGrainedTask -> ClassificationTask -> BaseTask: save_hyperparameters records each level's arguments."""
    given = {"backbone": TINY, "model": {"dropout": 0.25}, "num_classes": 3, "class_names": ["a", "b", "c"],
             "label_smoothing": 0.1, "confused_pairs": 4, "keep_pretrained_head": True, "backbone_lr_scale": 0.5,
             "freeze_backbone_epochs": 2, "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.1}}
    task = FineGrainedTask(**given)
    assert {k: task.hparams[k] for k in given} == given
    assert task.model.head.dropout.p == 0.25  # task.model reached the builder
    path = tmp_path / "task.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    restored = FineGrainedTask.restore(path)
    assert dict(restored.hparams) == dict(task.hparams)
    assert restored.class_names == ["a", "b", "c"] and restored.model.head.dropout.p == 0.25


def test_the_model_mapping_goes_to_the_builder_unread():
    task = SSDTask(backbone=TINY, num_classes=2, model={"head": "ssdlite", "score_thresh": 0.3, "extra_depths": [64, 32]})
    assert isinstance(task.model.head, SSDLiteHead) and task.model.score_thresh == 0.3
    assert [layer[1].conv.out_channels for layer in task.model.extras] == [16, 16]  # 64 and 32 x alpha 0.25, min 16
    assert SSDTask(backbone=TINY, num_classes=2).model.score_thresh == 1e-8  # the builder's default
    with pytest.raises(TypeError, match="no_such_knob"):
        SSDTask(backbone=TINY, num_classes=2, model={"no_such_knob": 1})


def save_checkpoint(task: BaseTask, path):
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "pytorch-lightning_version": lightning.__version__, "task_class": f"{type(task).__module__}.{type(task).__qualname__}"}, path)
    return path


@pytest.mark.parametrize(
    ("task", "trained_with", "command_line", "check"),
    [
        ("detection_ssd", ["task.model.nms_thresh=0.5"], ["task.model.score_thresh=0.2"],
         lambda m: (m.score_thresh, m.nms_thresh) == (0.2, 0.5)),
        ("detection_frcnn", ["task.model.rcnn.box_nms_thresh=0.5"], ["task.model.rcnn.box_score_thresh=0.05"],
         lambda m: (m.roi_heads.score_thresh, m.roi_heads.nms_thresh, m.roi_heads.detections_per_img) == (0.05, 0.5, 100)),
    ],
)
def test_command_line_model_keys_replace_only_those_of_the_checkpoint(make_cfg, tmp_path, task, trained_with,
                                                                      command_line, check):
    """`mode=eval task.model.<key>=...`: that entry of the checkpoint's `model` mapping changes, the others stay."""
    common = [f"task={task}", "backbone.alpha=0.25", "task.num_classes=2"]
    trained = build_task(make_cfg([*common, *trained_with]))
    path = save_checkpoint(trained, tmp_path / "trained.ckpt")
    restored = load_task(make_cfg([*common, "mode=eval", *command_line]), str(path))
    assert check(restored.model)
    untouched = {k: v for k, v in trained.hparams["model"].items() if k not in ("score_thresh", "rcnn")}
    assert {k: restored.hparams["model"][k] for k in untouched} == untouched
