"""Distillation pieces: loss values on hand-made logits, teacher caches, teacher kinds, the teacher=<file> shorthand."""

import math

import lightning
import numpy as np
import pytest
import torch
from torch import nn

from toolkit.backbones import create_backbone
from toolkit.distill.cache import TeacherCache
from toolkit.distill.losses import attribute_distillation_loss, embedding_distillation_loss, masked_label_loss
from toolkit.distill.overrides import expand_teacher_override
from toolkit.errors import ConfigError, DataError
from toolkit.io import trust_file
from toolkit.tasks.face_attributes import FaceAttributesTask
from toolkit.tasks.teachers import CachedTeacher, OnlineTeacher, build_teacher

TINY = {"name": "mobilenet_v1", "alpha": 0.25}


# ---- losses ---------------------------------------------------------------------------------------
def test_attribute_loss_values():
    ln3 = math.log(3.0)
    # equal logits 0: BCE(0.5, 0.5) = ln 2
    assert attribute_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3)).item() == pytest.approx(math.log(2))
    # student p = 0.75, teacher p = 0.5: -(0.5 ln 0.75 + 0.5 ln 0.25)
    expected = -(0.5 * math.log(0.75) + 0.5 * math.log(0.25))
    assert attribute_distillation_loss(torch.full((1, 1), ln3), torch.zeros(1, 1)).item() == pytest.approx(expected)
    # temperature 2 halves both logits and scales the loss by 4
    assert attribute_distillation_loss(torch.full((1, 1), 2 * ln3), torch.zeros(1, 1), 2.0).item() == pytest.approx(4 * expected)
    # the gradient vanishes where the student matches the teacher
    s = torch.tensor([[1.5, -0.7]], requires_grad=True)
    attribute_distillation_loss(s, torch.tensor([[1.5, -0.7]]), 3.0).backward()
    assert torch.allclose(s.grad, torch.zeros_like(s), atol=1e-7)


def test_label_and_embedding_loss_values():
    logits, labels = torch.zeros(1, 3), torch.tensor([[1.0, -1.0, 0.0]])  # -1 = unknown, ignored
    assert masked_label_loss(logits, labels).item() == pytest.approx(math.log(2))
    assert masked_label_loss(logits, -torch.ones(1, 3)).item() == 0.0
    s = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    t = torch.tensor([[0.0, 1.0], [0.6, 0.8]])
    assert embedding_distillation_loss(s, t).item() == pytest.approx(1.0)  # (2 + 0) / 2


def test_label_weight_mixes_teacher_and_labels(tmp_path):
    keys = ["a.jpg", "b.jpg"]
    teacher_logits = torch.tensor([[2.0, -1.0], [0.0, 3.0]])
    cache = TeacherCache(keys, teacher_logits, "logits").save(tmp_path / "cache.pt")
    batch = {"image": torch.zeros(2, 3, 32, 32), "key": keys, "labels": torch.tensor([[1.0, 0.0], [-1.0, 1.0]])}
    student = torch.tensor([[0.5, 0.5], [-0.5, 1.0]])
    distill = attribute_distillation_loss(student, teacher_logits, 2.0)
    labels = masked_label_loss(student, batch["labels"])
    spec = {"kind": "path", "path": str(cache)}
    for weight, expected in ((0.0, distill), (0.25, 0.75 * distill + 0.25 * labels)):
        task = FaceAttributesTask(backbone=TINY, teacher=spec, num_attributes=2, temperature=2.0, label_weight=weight)
        loss, _ = task.compute_loss(student, batch)
        assert loss.item() == pytest.approx(expected.item())
    baseline = FaceAttributesTask(backbone=TINY, teacher={"kind": "none"}, num_attributes=2)  # teacher=none: labels only
    assert baseline.compute_loss(student, batch)[0].item() == pytest.approx(labels.item())


# ---- caches -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".pt", ".npz"])
def test_cache_round_trip(tmp_path, suffix):
    outputs = torch.randn(3, 4)
    path = TeacherCache(["x/1.jpg", "x/2.jpg", "y/3.jpg"], outputs, "embedding").save(tmp_path / f"cache{suffix}")
    cache = TeacherCache.load(path)
    assert cache.output == "embedding" and cache.dim == 4
    assert torch.equal(cache.lookup(["y/3.jpg", "x/1.jpg"]), outputs[[2, 0]])
    cache.verify(["x/1.jpg", "y/3.jpg"], dim=4, outputs=("embedding",))
    teacher = build_teacher({"kind": "path", "path": str(path)}, ("embedding",))
    assert isinstance(teacher, CachedTeacher)
    assert torch.equal(teacher(torch.zeros(1, 3, 8, 8), ["x/2.jpg"]), outputs[[1]])


def test_cache_mismatches_are_named(tmp_path):
    cache = TeacherCache.load(TeacherCache(["a.jpg", "b.jpg"], torch.zeros(2, 40), "logits").save(tmp_path / "c.pt"))
    with pytest.raises(DataError, match=r"1 of the 3 images of this run are missing from it: 'c.jpg'"):
        cache.verify(["a.jpg", "b.jpg", "c.jpg"], dim=40)
    with pytest.raises(DataError, match=r"its outputs are 40-d but this task needs 128-d"):
        cache.verify(["a.jpg"], dim=128)
    with pytest.raises(DataError, match=r"it holds logits but this task needs embedding"):
        cache.verify(["a.jpg"], outputs=("embedding",))
    with pytest.raises(DataError, match=r"has no output for 'zzz.jpg'"):
        cache.lookup(["a.jpg", "zzz.jpg"])
    with pytest.raises(DataError, match=r"duplicate keys 'a.jpg'"):
        TeacherCache(["a.jpg", "a.jpg"], torch.zeros(2, 2), "logits")
    with pytest.raises(DataError, match=r"2 keys but 3 output rows"):
        TeacherCache(["a.jpg", "b.jpg"], torch.zeros(3, 2), "logits")
    with pytest.raises(DataError, match=r"non-finite outputs for 'b.jpg'"):
        TeacherCache(["a.jpg", "b.jpg"], torch.tensor([[0.0], [float("nan")]]), "logits")
    skipped = TeacherCache(["a.jpg"], torch.zeros(1, 2), "logits", skipped=["b.jpg"])  # corrupt files the run skips too
    skipped.verify(["a.jpg", "b.jpg"], dim=2)
    np.savez(tmp_path / "bad.npz", paths=np.array(["a.jpg"]), values=np.zeros((1, 2)))
    with pytest.raises(DataError, match=r"needs arrays 'keys' and 'outputs'"):
        TeacherCache.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "cut.npz", keys=np.array(["a.jpg", "b.jpg"]), outputs=np.zeros((2, 2), np.float32))
    (tmp_path / "cut.npz").write_bytes((tmp_path / "cut.npz").read_bytes()[:100])  # an interrupted copy
    with pytest.raises(DataError, match=r"cut.npz: not a readable .npz file"):
        TeacherCache.load(tmp_path / "cut.npz")


# ---- teachers -----------------------------------------------------------------------------------------
class Flatten(nn.Module):
    def forward(self, x):
        return x.flatten(1)


def test_torchscript_teacher_is_frozen_and_sees_the_students_view(tmp_path):
    path = tmp_path / "teacher.pt"
    torch.jit.save(torch.jit.script(Flatten()), path)
    with trust_file(True):  # TorchScript is code: loading it needs trust_file=true (tests/test_security.py)
        _check_torchscript_teacher(path)


def _check_torchscript_teacher(path):
    teacher = build_teacher({"kind": "path", "path": str(path), "output": "embedding", "resolution": 4})
    assert isinstance(teacher, OnlineTeacher) and teacher.output == "embedding"
    teacher.train()
    assert not teacher.training
    images = torch.rand(2, 3, 8, 8, requires_grad=True)
    out = teacher(images)
    assert out.shape == (2, 3 * 4 * 4) and not out.requires_grad  # resized to teacher.resolution, no graph
    # other input statistics: the student's normalisation is undone and the teacher's applied
    teacher = build_teacher({"kind": "path", "path": str(path), "output": "logits", "mean": [0.5] * 3, "std": [0.25] * 3})
    teacher.set_input_stats([0.0] * 3, [1.0] * 3)
    assert torch.allclose(teacher(images), ((images - 0.5) / 0.25).flatten(1))
    with pytest.raises(ConfigError, match="say what the TorchScript teacher returns"):
        build_teacher({"kind": "path", "path": str(path)})


def test_registry_teacher_needs_weights_and_gives_pooled_features(tmp_path):
    with pytest.raises(ConfigError, match="teacher.weights"):
        build_teacher({"kind": "model", "backbone": TINY})
    task = FaceAttributesTask(backbone=TINY, num_attributes=3)
    torch.save(task.state_dict(), tmp_path / "weights.pt")
    teacher = build_teacher({"kind": "model", "backbone": TINY, "weights": str(tmp_path / "weights.pt")}, ("embedding",))
    assert teacher.dim == 256
    x = torch.randn(2, 3, 32, 32)
    task.eval()
    assert torch.allclose(teacher(x), task.model.backbone(x).mean(dim=(2, 3)), atol=1e-6)
    with pytest.raises(ConfigError, match="a registry backbone gives an embedding"):
        build_teacher({"kind": "model", "backbone": TINY, "weights": str(tmp_path / "weights.pt")}, ("logits",))


def test_checkpoint_teacher_rebuilds_its_task_outside_the_student(tmp_path):
    torch.save(create_backbone(**TINY).state_dict(), tmp_path / "start.pt")
    source = FaceAttributesTask(backbone={**TINY, "pretrained": str(tmp_path / "start.pt")}, num_attributes=3,
                                attribute_names=["a", "b", "c"])
    ckpt = {"state_dict": source.state_dict(), "hyper_parameters": dict(source.hparams),
            "pytorch-lightning_version": lightning.__version__}
    source.on_save_checkpoint(ckpt)
    assert ckpt["task_class"] == "toolkit.tasks.face_attributes.FaceAttributesTask"
    torch.save(ckpt, tmp_path / "teacher.ckpt")
    (tmp_path / "start.pt").unlink()  # what the teacher's training started from: the checkpoint holds every weight
    source.eval()
    x = torch.randn(2, 3, 32, 32)
    logits = build_teacher({"kind": "path", "path": str(tmp_path / "teacher.ckpt")}, ("logits", "probabilities"))
    assert logits.dim == 3 and torch.allclose(logits(x), source(x), atol=1e-6)
    embedding = build_teacher({"kind": "path", "path": str(tmp_path / "teacher.ckpt")}, ("embedding",))
    assert embedding.output == "embedding" and embedding.dim == 256
    student = FaceAttributesTask(backbone=TINY, teacher={"kind": "path", "path": str(tmp_path / "teacher.ckpt")}, num_attributes=3)
    teacher_params = {id(p) for p in student.teacher.parameters()}
    assert teacher_params and not teacher_params & {id(p) for p in student.parameters()}  # not trained, not saved
    assert not any(k.startswith("teacher") or "_teacher" in k for k in student.state_dict())
    batch = {"image": x, "key": ["1", "2"]}
    assert torch.allclose(student.teacher_outputs(batch), source(x), atol=1e-6)
    (tmp_path / "junk.pt").write_bytes(b"not a teacher")
    with pytest.raises(DataError, match="junk.pt.: not a readable torch file"):
        build_teacher({"kind": "path", "path": str(tmp_path / "junk.pt")})
    with pytest.raises(DataError, match="missing.ckpt: not found"):
        build_teacher({"kind": "path", "path": str(tmp_path / "missing.ckpt")})


def test_teacher_file_shorthand_on_the_command_line():
    args = ["task=face_attributes", "teacher=runs/a/best.ckpt", "teacher=none", "teacher=model", "teacher=null"]
    assert expand_teacher_override(args) == ["task=face_attributes", "teacher=path", "teacher.path=runs/a/best.ckpt",
                                             "teacher=none", "teacher=model", "teacher=none"]


@pytest.mark.parametrize("row", ["face_attributes_mobilenet_v1_025_128", "face_attributes_mobilenet_v1_100_224",
                                 "face_embedding_mobilenet_v1_075_160", "face_embedding_mobilenet_v1_100_128"])
def test_paper_experiments_compose_and_require_a_teacher(make_cfg, row):
    cfg = make_cfg([f"experiment={row}"])
    task, alpha, res = row.split("_mobilenet_v1_")[0], row.split("_")[-2], row.split("_")[-1]
    assert cfg.task._target_.split(".")[-2] == task and cfg.backbone.alpha == int(alpha) / 100 and cfg.data.resolution == int(res)
    assert cfg.task.teacher.kind == "path" and cfg.task.optimizer.weight_decay == 0.0
    with pytest.raises(ConfigError, match="teacher.path"):
        build_teacher(dict(cfg.task.teacher))
    assert make_cfg([f"experiment={row}", "teacher=path", "teacher.path=t.ckpt"]).task.teacher.path == "t.ckpt"
