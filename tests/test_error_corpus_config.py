"""The error corpus, config mistakes: each case runs `python -m toolkit ...` as a user would and must end in one
`error:` line naming the key and the fix, exit code 2, no traceback (conftest.assert_one_line_error).

Cases: mistyped keys (plain, `+`-added, in a sweep, in a section an experiment adds), checkpoint hyper-parameters
this version does not know, values bounded by the machine's memory before any work, trainer values, and the
user-settable values that used to raise a plain ValueError."""

from __future__ import annotations

import lightning
import pytest
import torch
from conftest import FAST, assert_one_line_error, run_cli

from toolkit.errors import ConfigError

TINY = [*FAST, "backbone.alpha=0.25", "data.resolution=32", "trainer.max_epochs=1"]
SHAPES_SIZES = ["data.n_train=8", "data.n_val=6", "data.image_size=32"]  # data=shapes, the default data


def tiny(args: list[str]) -> list[str]:
    """TINY, with data=shapes' sizes unless the case picks other data (a task's config may pick its own)."""
    other_data = any(a.startswith(("data=", "task=")) for a in args) and "data=shapes" not in args
    return [*TINY, *([] if other_data else SHAPES_SIZES), *args]
QUICK_PROFILE = ["mode=profile", "profile.latency=false", "backbone.alpha=0.25"]  # builds the task, reads no data


def no_work_done(proc) -> None:
    """Refused before any data was generated or read."""
    assert "generating" not in proc.stderr + proc.stdout, proc.stderr[-2000:]


MISTYPED_KEYS = [
    (["backbone.alpah=0.5"], ["backbone.alpah", "did you mean backbone.alpha?", "keys of backbone: name, alpha"]),
    (["model.alpha=0.5"], ["model.alpha", "no such key", "backbone.alpha"]),  # the key's section mistyped
    (["trainer.max_epoch=1"], ["trainer.max_epoch", "did you mean trainer.max_epochs"]),
    (["seeed=1"], ["seeed", "did you mean seed?"]),
    (["task=detection_ssd", "task.model.tapz=[conv11,conv13]"], ["task.model.tapz", "did you mean task.model.taps?"]),
    (["experiment=mobilenet_v1_025_224", "data.resolutoin=128"], ["data.resolutoin", "did you mean data.resolution?"]),
    (["-m", "backbone=mobilenet_v1,mobilenet_v2", "backbone.alpah=0.5,1.0"], ["backbone.alpah", "backbone.alpha"]),
    (["--cfg", "job", "backbone.alpah=0.5"], ["backbone.alpah", "backbone.alpha"]),
]


@pytest.mark.parametrize(("args", "fragments"), MISTYPED_KEYS, ids=[" ".join(a) for a, _ in MISTYPED_KEYS])
def test_mistyped_key_is_one_line_with_the_closest_keys(tmp_path, args, fragments):
    proc = run_cli(args, cwd=tmp_path)
    assert_one_line_error(proc, *fragments)
    assert "+backbone" not in proc.stderr  # not Hydra's advice to add the key


def test_keys_that_exist_in_some_composition_pass(tmp_path):
    """Valid keys, keys an experiment or a `+` adds, a key of only one swept task: the check lets Hydra run."""
    from toolkit.__main__ import check_override_keys

    check_override_keys(["task=detection_ssd", "task.model.taps=[conv11,conv13]", "trainer.max_epochs=1"])
    check_override_keys(["experiment=imagenet_paper_recipe", "data.resolution=128"])
    check_override_keys(["+backbone.extra=1", "backbone.extra=2", "~backbone.act"])
    check_override_keys(["-m", "task=classification,detection_ssd", "task.model.taps=[conv11,conv13]"])
    check_override_keys(["hydra.job.chdir=false", "hydra.run.dir=x"])  # Hydra's own keys: Hydra's to check
    with pytest.raises(ConfigError, match="backbone.act"):
        check_override_keys(["~backbone.act", "backbone.act=relu"])


ADDED_KEYS = [
    (["+backbone.alpah=0.5"], ["backbone.alpah", "backbone mobilenet_v1 takes no such setting", "did you mean backbone.alpha?"]),
    (["backbone=mobilenet_v2", "+backbone.act=relu"], ["backbone.act", "backbone mobilenet_v2 takes no such setting"]),
    (["+task.labl_smoothing=0.1"], ["task.labl_smoothing", "ClassificationTask", "did you mean task.label_smoothing?"]),
    (["+trainer.max_epoch=1"], ["trainer.max_epoch", "did you mean trainer.max_epochs"]),
    (["data=folder", "data.root=nowhere", "+data.n_trian=5"], ["data.n_trian", "ClassFolderDataModule"]),
    (["+data.n_trian=5"], ["data.n_trian", "takes no such setting", "did you mean data.n_train"]),  # data=shapes
]


@pytest.mark.parametrize(("args", "fragments"), ADDED_KEYS, ids=[" ".join(a) for a, _ in ADDED_KEYS])
def test_key_added_with_plus_that_nothing_takes_is_one_line(tmp_path, args, fragments):
    proc = run_cli(tiny(args), cwd=tmp_path)
    assert_one_line_error(proc, *fragments)
    no_work_done(proc)


def test_model_key_the_builder_does_not_take_is_one_line(tmp_path):
    proc = run_cli([*QUICK_PROFILE, "+task.model.dropuot=0.1"], cwd=tmp_path)
    assert_one_line_error(proc, "task.model.dropuot", "build_classifier", "did you mean task.model.dropout?")


# ---- checkpoints written by another version ---------------------------------------------------------------------

def tiny_checkpoint(path, *, hparams: dict | None = None, model: dict | None = None, backbone: dict | None = None):
    """A classification checkpoint as the toolkit writes it, its hyper-parameters changed as another version's."""
    from toolkit.tasks.classification import ClassificationTask

    task = ClassificationTask(backbone={"name": "mobilenet_v1", "alpha": 0.25}, num_classes=3)
    stored = dict(task.hparams)
    stored.update(hparams or {})
    stored["model"] = {**(stored.get("model") or {}), **(model or {})}
    stored["backbone"] = {**stored["backbone"], **(backbone or {})}
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": stored,
                "task_class": "toolkit.tasks.classification.ClassificationTask",
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


CHECKPOINTS = [
    ({"hparams": {"new_setting": 1}}, "task.new_setting"),
    ({"model": {"dropuot": 0.1}}, "task.model.dropuot"),
    ({"backbone": {"width": 2}}, "backbone.width"),
]


@pytest.mark.parametrize(("change", "key"), CHECKPOINTS, ids=[k for _, k in CHECKPOINTS])
def test_checkpoint_with_hyper_parameters_this_version_does_not_know(tmp_path, change, key):
    ckpt = tiny_checkpoint(tmp_path / "other_version.ckpt", **change)
    proc = run_cli(tiny(["mode=eval", f"ckpt_path={ckpt}"]), cwd=tmp_path)
    assert_one_line_error(proc, "other_version.ckpt", "written by another version of the toolkit", key)
    no_work_done(proc)


# ---- bounds before any work --------------------------------------------------------------------------------------

BOUNDS = [
    (["backbone.alpha=inf"], ["backbone.alpha", "inf", "> 0"]),
    (["backbone.alpha=nan"], ["backbone.alpha", "nan", "> 0"]),
    (["backbone.alpha=1e9"], ["backbone.alpha", "larger than any memory"]),
    (["backbone.alpha=200"], ["backbone.alpha", "M parameters need about", "more than this machine's", "at most about alpha="]),
    (["data.resolution=100000"], ["data.resolution", "100000", "more than this machine's", "at most about"]),
    (["mode=eval", "data.resolution=100000"], ["data.resolution", "100000", "more than this machine's"]),
    (["trainer.max_epochs=-5"], ["trainer.max_epochs", "-5", ">= -1"]),
    (["trainer.max_steps=-2"], ["trainer.max_steps", ">= -1"]),
    (["trainer.limit_train_batches=1.5"], ["trainer.limit_train_batches", "fraction"]),
    (["trainer.limit_val_batches=-1"], ["trainer.limit_val_batches", "fraction"]),
    (["trainer.devices=0"], ["trainer.devices", "a count >= 1"]),
    (["trainer.accumulate_grad_batches=0"], ["trainer.accumulate_grad_batches", ">= 1"]),
    (["trainer.precision=fp8"], ["trainer.precision", "allowed:", "bf16-mixed"]),
    (["trainer.check_val_every_n_epoch=0"], ["trainer.check_val_every_n_epoch", ">= 1"]),
    (["trainer.log_every_n_steps=0"], ["trainer.log_every_n_steps", ">= 1"]),
    (["trainer.gradient_clip_val=-1"], ["trainer.gradient_clip_val", ">= 0"]),
    (["trainer.gradient_clip_val=inf"], ["trainer.gradient_clip_val", "finite"]),
]


@pytest.mark.parametrize(("args", "fragments"), BOUNDS, ids=[" ".join(a) for a, _ in BOUNDS])
def test_value_out_of_bounds_is_refused_before_any_work(tmp_path, args, fragments):
    base = [a for a in tiny([]) if not a.startswith(("backbone.alpha=", "data.resolution="))]
    proc = run_cli([*base, *args], cwd=tmp_path)
    assert_one_line_error(proc, *fragments)
    no_work_done(proc)


# ---- values that raised a plain ValueError -----------------------------------------------------------------------

VALUES = [
    (["task=detection_ssd", "data=shapes", "task.eval_backend=cocoapi"], ["task.eval_backend", "cocoapi", "pycocotools"]),
    ([*QUICK_PROFILE, "task=detection_ssd", "task.model.taps=[conv99,conv13]"], ["task.model.taps", "conv99", "its taps: conv"]),
    (["task=geolocation", "data=geo_synthetic", "data.n_cities=0"], ["data.n_cities", "from 1 to"]),
    (["task=fine_grained", "data=stanford_dogs_synthetic", "data.n_breeds=1"], ["data.n_breeds", "from 2 to"]),
    ([*QUICK_PROFILE, "task=face_attributes", "task.temperature=0"], ["task.temperature", "> 0"]),
]


@pytest.mark.parametrize(("args", "fragments"), VALUES, ids=[a[-1] for a, _ in VALUES])
def test_invalid_value_is_a_config_error(tmp_path, args, fragments):
    proc = run_cli(tiny(args), cwd=tmp_path)
    assert_one_line_error(proc, *fragments)
    no_work_done(proc)


def test_library_functions_name_the_config_key():
    """Reachable from configs only through the checks above, the library functions still name the key."""
    from toolkit.data.decode import read_rgb
    from toolkit.distill.losses import attribute_distillation_loss

    with pytest.raises(ConfigError, match="data.decoder"):
        read_rgb("x.jpg", decoder="opencv")
    with pytest.raises(ConfigError, match="task.temperature"):
        attribute_distillation_loss(torch.zeros(1, 2), torch.zeros(1, 2), temperature=0.0)


def test_memory_bound_is_the_containers_limit_where_lower(tmp_path, monkeypatch):
    import toolkit.run as run_module

    limit = tmp_path / "memory.max"
    monkeypatch.setattr(run_module, "CGROUP_LIMITS", (str(tmp_path / "absent"), str(limit)))
    limit.write_text("max\n")  # cgroup v2 without a limit: the machine's RAM
    ram = run_module.machine_memory_bytes()
    assert ram > 2**28
    limit.write_text(f"{2**30}\n")
    assert run_module.machine_memory_bytes() == min(ram, 2**30)
