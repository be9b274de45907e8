"""No code from files: a pickle whose unpickling would run code is refused on every path that takes a user's file
(the payload never runs), `trust_file=true` loads a trusted pickled file, a checkpoint naming a task class outside
the toolkit's is refused, and TorchScript teachers (code by design) need `trust_file=true`."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch
from torch import nn

from toolkit.backbones import create_backbone
from toolkit.backbones.weights import read_state_dict
from toolkit.distill.cache import TeacherCache
from toolkit.errors import DataError
from toolkit.io import UnsafeFileError, trust_file
from toolkit.run import run
from toolkit.tasks.base import read_checkpoint, task_classes
from toolkit.tasks.teachers import build_teacher

TINY = ["backbone.alpha=0.25", "data.resolution=32", "data.batch_size=8", "trainer.max_epochs=1",
        "data.n_train=12", "data.n_val=6", "data.image_size=40"]


class Payload:
    """Unpickling this calls `open(marker, "w")`: the file appears only if the pickle's code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture
def evil(tmp_path):
    """(file, marker): a checkpoint-shaped dict (state_dict, hyper_parameters) with a code-running payload inside."""
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.ckpt"
    backbone = create_backbone("mobilenet_v1", alpha=0.25)
    torch.save({"state_dict": {f"model.backbone.{k}": v for k, v in backbone.state_dict().items()},
                "hyper_parameters": {"num_classes": 6, "payload": Payload(marker)}, "task_class": next(iter(task_classes())),
                "format": "mobilenet-toolkit/teacher-cache", "keys": ["a"], "outputs": torch.zeros(1, 2),
                "output": "logits"}, path)
    return path, marker


def refused(call, path: Path, marker: Path) -> str:
    with pytest.raises(UnsafeFileError) as error:
        call()
    message = str(error.value)
    assert str(path) in message and "trust_file=true" in message, message
    assert not marker.exists(), "the pickle's payload ran"
    return message


@pytest.mark.parametrize("mode", ["eval", "predict", "export", "train"])
def test_ckpt_path_of_every_mode_refuses_a_code_running_pickle(make_cfg, evil, tmp_path, mode):
    path, marker = evil
    image = tmp_path / "one.jpg"
    from PIL import Image

    Image.new("RGB", (40, 40)).save(image)
    cfg = make_cfg([*TINY, f"mode={mode}", f"ckpt_path={path}", f"predict.input={image}", "export.formats=[onnx]"])
    refused(lambda: run(cfg), path, marker)


def test_init_from_and_backbone_pretrained_refuse_a_code_running_pickle(make_cfg, evil):
    path, marker = evil
    refused(lambda: run(make_cfg([*TINY, f"init_from={path}"])), path, marker)
    refused(lambda: create_backbone("mobilenet_v1", alpha=0.25, pretrained=str(path)), path, marker)
    refused(lambda: read_checkpoint(path, mmap=True), path, marker)


def test_teacher_files_caches_and_weights_refuse_a_code_running_pickle(evil):
    path, marker = evil
    refused(lambda: build_teacher({"kind": "path", "path": str(path)}), path, marker)  # checkpoint or cache teacher
    refused(lambda: TeacherCache.load(path), path, marker)
    registry = {"kind": "model", "backbone": {"name": "mobilenet_v1", "alpha": 0.25}, "weights": str(path)}
    refused(lambda: build_teacher(registry), path, marker)


def test_trust_file_loads_a_trusted_file_that_pickles_python_objects(make_cfg, tmp_path):
    """A harmless object beyond tensors (an argparse.Namespace among the hyper-parameters): refused by default,
    loaded with trust_file=true, from the command-line key through run(cfg) down to the weights reader."""
    backbone = create_backbone("mobilenet_v1", alpha=0.25)
    path = tmp_path / "old_style.ckpt"
    torch.save({"state_dict": {f"model.backbone.{k}": v for k, v in backbone.state_dict().items()},
                "hyper_parameters": {"args": argparse.Namespace(lr=0.1)}}, path)
    with pytest.raises(UnsafeFileError, match="init_from file"):
        read_state_dict(path, what="init_from file")
    with trust_file(True):
        assert set(read_state_dict(path)) == {f"model.backbone.{k}" for k in backbone.state_dict()}
    with pytest.raises(UnsafeFileError):
        run(make_cfg([*TINY, f"init_from={path}", "trainer.max_steps=1"]))
    result = run(make_cfg([*TINY, f"init_from={path}", "trainer.max_steps=1", "trust_file=true"]))
    assert result["global_step"] == 1


def test_a_checkpoint_naming_a_foreign_task_class_is_refused(make_cfg, tmp_path):
    """The file is plain data (it loads with weights_only), but its `task_class` would import any class."""
    trained = run(make_cfg([*TINY, "data.n_train=8"]))  # one batch: one step, then the validation that saves best
    ckpt = torch.load(trained["best_checkpoint"], map_location="cpu", weights_only=True)
    ckpt["task_class"] = "subprocess.Popen"
    forged = tmp_path / "forged.ckpt"
    torch.save(ckpt, forged)
    for call in (lambda: build_teacher({"kind": "path", "path": str(forged)}),
                 lambda: run(make_cfg([*TINY, "mode=eval", f"ckpt_path={forged}"]))):
        with pytest.raises(DataError, match=r"task class 'subprocess.Popen', which is not one of the toolkit's tasks"):
            call()


class Doubler(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) * 2


def test_torchscript_teacher_needs_trust_file(tmp_path):
    path = tmp_path / "teacher.pt"
    torch.jit.save(torch.jit.script(Doubler()), str(path))
    spec = {"kind": "path", "path": str(path), "output": "embedding"}
    with pytest.raises(UnsafeFileError, match=r"TorchScript program .*trust_file=true"):
        build_teacher(spec)
    with trust_file(True):
        teacher = build_teacher(spec)
    assert teacher(torch.ones(1, 3, 8, 8)).tolist() == [[2.0, 2.0, 2.0]]
