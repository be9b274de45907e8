"""mode=tune: Lightning's learning-rate finder on a class folder and on COCO-format data; its settings' checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, assert_one_line_error, run_cli
from PIL import Image

from toolkit.data.shapes_detection import generate_shapes_detection
from toolkit.errors import ConfigError
from toolkit.run import run

SEARCH = ["mode=tune", "tune.num_training=10", "tune.min_lr=1e-5", "tune.max_lr=1.0", "tune.early_stop_threshold=null"]


def write_split_folders(root: Path, per_class: int = 8, size: int = 40) -> Path:
    """`root/{train,val}/<class>/*.jpg`: two classes of noisy JPEGs, dark and bright."""
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("val", 2)):
        for c, name in enumerate(("dark", "bright")):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = np.clip(50 + 120 * c + rng.normal(0, 15, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i:03d}.jpg")
    return root


def check_search(result: dict, printed: str, lr_scale: float = 1.0) -> None:
    out = Path(result["output_dir"])
    assert (out / "lr_find.png").stat().st_size > 1000
    saved = json.loads((out / "lr_find.json").read_text())
    assert saved["steps"] == 10 and len(saved["lr"]) == 10 and len(saved["loss"]) == 10
    assert saved["lr"][0] == pytest.approx(1e-5) and saved["lr"] == sorted(saved["lr"])  # exponential growth
    assert all(loss is None or loss > 0 for loss in saved["loss"])
    value = result["suggested_lr"]
    assert value is not None and 1e-5 <= value * lr_scale <= 1.0
    assert result["lr_scale"] == pytest.approx(lr_scale)
    assert f"task.optimizer.lr={value:g}" in printed  # the override to train with, as printed


def test_tune_on_a_class_folder_saves_the_plot_and_prints_the_override(make_cfg, tmp_path, capsys):
    root = write_split_folders(tmp_path / "photos")
    cfg = make_cfg(SEARCH + ["task=classification", "data=folder", f"data.root={root}", "backbone.alpha=0.25",
                             "data.resolution=32", "data.batch_size=4", "data.num_workers=0",
                             "optimizer=adamw", "scheduler=cosine"])
    result = run(cfg)
    check_search(result, capsys.readouterr().out)
    assert result["configured_lr"] == 0.002  # the adamw preset's


def test_tune_on_coco_data_with_ssd(make_cfg, tmp_path, capsys):
    generate_shapes_detection(tmp_path / "coco", n_train=8, n_val=2, image_size=64, seed=3)
    coco = tmp_path / "coco"
    cfg = make_cfg(SEARCH + ["task=detection_ssd", "data=coco_custom", f"data.train_ann={coco}/annotations/instances_train.json",
                             f"data.train_images={coco}/train", f"data.val_ann={coco}/annotations/instances_val.json",
                             f"data.val_images={coco}/val", "backbone.alpha=0.25", "data.resolution=64",
                             "data.batch_size=2", "data.num_workers=0"])
    result = run(cfg)
    check_search(result, capsys.readouterr().out)
    assert result["configured_lr"] == 0.004  # SSD's default: the rmsprop preset


def test_faster_rcnn_suggestion_is_given_at_its_reference_batch(make_cfg):
    """Faster R-CNN scales task.optimizer.lr from lr_reference_batch (16) images to the run's batch: the override the
    tuner prints is the finder's rate scaled back, so that training reproduces the rate the finder found."""
    from toolkit.modes.common import build_task
    from toolkit.modes.tune import lr_override_scale

    task = build_task(make_cfg(["task=detection_frcnn", "backbone.alpha=0.25", "data=shapes", "data.batch_size=4"]))
    assert lr_override_scale(task) == pytest.approx(4 / 16)


@pytest.mark.parametrize(("override", "key"), [("tune.max_lr=1e-7", "tune.max_lr"), ("tune.num_training=1", "tune.num_training"),
                                               ("tune.min_lr=0", "tune.min_lr"),
                                               ("tune.early_stop_threshold=0.5", "tune.early_stop_threshold")])
def test_bad_tune_settings_stop_before_any_work(make_cfg, override, key):
    with pytest.raises(ConfigError, match=key):
        run(make_cfg(["mode=tune", override]))


def test_bad_tune_setting_is_one_line_on_the_command_line(tmp_path):
    proc = run_cli(FAST + ["mode=tune", "tune.max_lr=1e-9"], cwd=tmp_path)
    assert_one_line_error(proc, "tune.max_lr", "tune.min_lr")


# ---- the batch-size finder (tune.batch_size=true) ----------------------------------------------------------
BATCH = ["mode=tune", "tune.batch_size=true", "tune.steps_per_trial=2"]


def check_batch_search(result: dict, printed: str, sizes: list[int], limited_by: str = "cap") -> dict:
    saved = json.loads((Path(result["output_dir"]) / "batch_size.json").read_text())
    assert saved["suggested_batch_size"] == result["suggested_batch_size"] and saved["limited_by"] == limited_by
    assert [row["batch_size"] for row in saved["trials"]] == sizes  # doubling from 2, never past the cap
    assert all(row["images_per_s"] > 0 and row["steps"] >= 1 for row in saved["trials"])
    speeds = {row["batch_size"]: row["images_per_s"] for row in saved["trials"] if row["batch_size"] <= saved["suggested_batch_size"]}
    assert saved["fastest_batch_size"] == max(speeds, key=speeds.get)
    assert f"data.batch_size={result['suggested_batch_size']}" in printed
    return saved


def test_batch_size_finder_on_a_class_folder_then_the_lr_search_at_that_batch(make_cfg, tmp_path, capsys):
    root = write_split_folders(tmp_path / "photos")  # 16 training images
    cfg = make_cfg(BATCH + SEARCH[1:] + ["task=classification", "data=folder", f"data.root={root}", "backbone.alpha=0.25",
                                         "data.resolution=32", "data.batch_size=5", "data.num_workers=0",
                                         "tune.max_batch_size=12"])
    result = run(cfg)
    printed = capsys.readouterr().out
    saved = check_batch_search(result, printed, [2, 4, 8])  # 16 would pass tune.max_batch_size=12
    assert result["suggested_batch_size"] == 8 and saved["configured_batch_size"] == 5 and saved["cap"] == 12
    check_search(result, printed)
    assert json.loads((Path(result["output_dir"]) / "lr_find.json").read_text())["at_batch_size"] == 8
    assert "together: data.batch_size=8 task.optimizer.lr=" in printed


def test_batch_size_finder_on_coco_data_is_capped_by_the_training_images(make_cfg, tmp_path, capsys):
    generate_shapes_detection(tmp_path / "coco", n_train=6, n_val=2, image_size=64, seed=3)
    coco = tmp_path / "coco"
    cfg = make_cfg(BATCH + ["tune.lr=false", "task=detection_ssd", "data=coco_custom",
                            f"data.train_ann={coco}/annotations/instances_train.json", f"data.train_images={coco}/train",
                            f"data.val_ann={coco}/annotations/instances_val.json", f"data.val_images={coco}/val",
                            "backbone.alpha=0.25", "data.resolution=64", "data.batch_size=24", "data.num_workers=0"])
    result = run(cfg)
    saved = check_batch_search(result, capsys.readouterr().out, [2, 4])  # 6 images: 8 would be a partial batch
    assert result["suggested_batch_size"] == 4 and saved["cap"] == 6 and "suggested_lr" not in result
    assert not (Path(result["output_dir"]) / "lr_find.json").exists()


@pytest.mark.parametrize(("mode", "expected"), [("power", 4), ("binsearch", 3)])  # binsearch: 4 less Lightning's 5 %
def test_batch_size_finder_stops_where_memory_runs_out(make_cfg, tmp_path, monkeypatch, capsys, mode, expected):
    """The out-of-memory error PyTorch's CPU allocator raises, at batches over 4: the finder keeps 4."""
    from toolkit.tasks.classification import ClassificationTask

    step = ClassificationTask.training_step

    def short_of_memory(self, batch, batch_idx):
        if len(batch["image"]) > 4:
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                               "you tried to allocate 1000000000000 bytes.")
        return step(self, batch, batch_idx)

    monkeypatch.setattr(ClassificationTask, "training_step", short_of_memory)
    root = write_split_folders(tmp_path / "photos")
    cfg = make_cfg(BATCH + ["tune.lr=false", "task=classification", "data=folder", f"data.root={root}",
                            "backbone.alpha=0.25", "data.resolution=32", "data.num_workers=0", f"tune.batch_size_mode={mode}"])
    result = run(cfg)
    check_batch_search(result, capsys.readouterr().out, [2, 4], limited_by="memory")
    assert result["suggested_batch_size"] == expected


@pytest.mark.parametrize(("override", "key"), [("tune.batch_size_mode=linear", "tune.batch_size_mode"),
                                               ("tune.max_batch_size=0", "tune.max_batch_size"),
                                               ("tune.lr=false", "tune.lr")])
def test_bad_batch_size_settings_stop_before_any_work(make_cfg, override, key):
    with pytest.raises(ConfigError, match=key):
        run(make_cfg(["mode=tune", override]))
