"""Classification: the paper's optimiser and parameter groups, checkpoints and metrics files, data layouts
(class folders, ImageNet, the val-sorting command), bad input, fine-tuning and predict outputs."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from conftest import FAST, run_cli
from PIL import Image
from torch import nn

from toolkit.data.prepare_imagenet_val import labels_from_solution_csv, sort_val_folder
from toolkit.data.prepare_imagenet_val import main as prepare_main
from toolkit.errors import ConfigError, DataError
from toolkit.modes.common import build_datamodule, build_task, load_task, resolve_checkpoint
from toolkit.run import run

TINY = ["backbone.alpha=0.25", "data.resolution=32", "data.batch_size=8", "trainer.max_epochs=1"]
SHAPES = TINY + ["data.n_train=24", "data.n_val=12", "data.image_size=40"]


def write_class_folders(root: Path, counts: dict[str, int], size: int = 40) -> Path:
    """`root/<class>/<i>.jpg`: small noisy JPEGs, a different grey level per class."""
    rng = np.random.default_rng(0)
    for c, (name, n) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            pixels = np.clip(40 + 60 * c + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.jpg")
    return root


def read_metrics_csv(run_dir: Path) -> list[dict]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return list(csv.DictReader(f))


def folder_args(root: Path) -> list[str]:
    return TINY + ["data=folder", f"data.root={root}", "data.num_workers=0", "data.batch_size=4"]


# ---- the paper's recipe ----------------------------------------------------------------------------------
def test_default_optimiser_is_the_papers_rmsprop(make_cfg):
    task = build_task(make_cfg(["backbone.alpha=0.25"]))
    config = task.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert type(optimizer).__name__ == "RMSpropTF"  # TF semantics: eps inside the sqrt, square average from 1
    assert optimizer.defaults["alpha"] == 0.9 and optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["eps"] == 1.0
    assert isinstance(scheduler, torch.optim.lr_scheduler.ExponentialLR)
    assert scheduler.gamma ** 2.5 == pytest.approx(0.94, abs=1e-3)  # 0.94 every 2.5 epochs
    assert task.hparams.label_smoothing == 0.0


def test_weight_decay_spares_depthwise_bn_and_biases(make_cfg):
    task = build_task(make_cfg(["backbone.alpha=0.25"]))
    groups = task.configure_optimizers()["optimizer"].param_groups
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert len(decay_of) == sum(len(g["params"]) for g in groups) == len(list(task.parameters()))
    checked = {"depthwise": 0, "pointwise": 0, "bn": 0, "fc": 0}
    for module in task.modules():
        if isinstance(module, nn.Conv2d):
            kind = "depthwise" if module.groups == module.in_channels > 1 else "pointwise"
            assert decay_of[id(module.weight)] == (0.0 if kind == "depthwise" else 4e-5), module
            checked[kind] += 1
        elif isinstance(module, nn.BatchNorm2d):
            assert decay_of[id(module.weight)] == decay_of[id(module.bias)] == 0.0
            checked["bn"] += 1
        elif isinstance(module, nn.Linear):
            assert decay_of[id(module.weight)] == 4e-5 and decay_of[id(module.bias)] == 0.0
            checked["fc"] += 1
    assert checked == {"depthwise": 13, "pointwise": 14, "bn": 27, "fc": 1}  # Table 1: 13 dw, 13 pw + first conv


def test_inputs_scaled_as_the_backbone_expects(make_cfg):
    assert build_datamodule(make_cfg([])).mean == (0.5, 0.5, 0.5)  # MobileNet V1 weights: inputs in [-1, 1]
    dm = build_datamodule(make_cfg(["data.mean=[0.4,0.4,0.4]", "data.std=[0.2,0.2,0.2]"]))
    assert dm.mean == (0.4, 0.4, 0.4) and dm.std == (0.2, 0.2, 0.2)



def test_eval_normalises_inputs_for_the_checkpoints_backbone(make_cfg, caplog):
    """A MobileNetV2 checkpoint evaluated without `backbone=mobilenet_v2`: the config's backbone is V1 ([-1, 1]
    inputs), but the checkpoint's V2 expects ImageNet statistics, and those are what the data must use."""
    v2 = ["backbone=mobilenet_v2", "backbone.alpha=0.35"]
    trained = run(make_cfg(SHAPES + v2))
    task = load_task(make_cfg(SHAPES), trained["best_checkpoint"])
    with caplog.at_level(logging.INFO):
        dm = build_datamodule(make_cfg(SHAPES), task)
    assert dm.mean == pytest.approx((0.485, 0.456, 0.406)) and dm.std == pytest.approx((0.229, 0.224, 0.225))
    assert "the checkpoint's backbone mobilenet_v2 (not the config's mobilenet_v1) sets the input normalisation" in caplog.text
    assert "val/top1" in run(make_cfg(SHAPES + ["mode=eval", f"ckpt_path={trained['best_checkpoint']}"]))["metrics"]


# ---- checkpoints, metrics file, ckpt_path=last --------------------------------------------------------------
def test_train_writes_best_and_last_and_top1_top5_per_epoch(make_cfg):
    result = run(make_cfg(SHAPES + ["trainer.max_epochs=2", "callbacks.last_checkpoint.every_n_train_steps=2"]))
    run_dir = Path(result["output_dir"])
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == result["global_step"] == 6 and last["epoch"] == 1  # 24 images / 8, 2 epochs
    rows = read_metrics_csv(run_dir)
    for key in ("val/top1", "val/top5", "train/top1", "train/top5"):
        assert sorted(int(r["epoch"]) for r in rows if r.get(key)) == [0, 1], key
    assert all(0.0 <= float(r["val/top1"]) <= float(r["val/top5"]) <= 1.0 for r in rows if r.get("val/top1"))


def test_ckpt_path_last_is_the_newest_of_this_task(make_cfg, tmp_path):
    cfg = make_cfg([])
    logs = Path(cfg.paths.log_dir)
    with pytest.raises(ConfigError, match="no checkpoints/last.ckpt"):
        resolve_checkpoint(cfg, "last")
    paths = [logs / "classification/runs/a/checkpoints/last.ckpt", logs / "classification/runs/b/checkpoints/last.ckpt",
             logs / "detection_ssd/runs/c/checkpoints/last.ckpt"]
    for i, p in enumerate(paths):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x")
        os.utime(p, (1000 + i, 1000 + i))
    assert resolve_checkpoint(cfg, "last") == str(paths[1])


# ---- data layouts -------------------------------------------------------------------------------------------
def test_folder_dataset_explicit_split_and_fine_tuning_from_another_task(make_cfg, tmp_path, caplog):
    source = run(make_cfg(SHAPES))  # a 6-class shapes model to fine-tune from
    root = write_class_folders(tmp_path / "photos", {"cat": 5, "dog": 5, "owl": 5})
    (root / "val.txt").write_text("cat/000.jpg\ndog/000.jpg\nowl/000.jpg\nowl/001.jpg\n")
    cfg = make_cfg(folder_args(root) + [f"data.val_list={root / 'val.txt'}", f"init_from={source['best_checkpoint']}"])
    with caplog.at_level(logging.INFO):
        result = run(cfg)
    assert any("re-initialised" in r.message and "model.head.fc" in r.message for r in caplog.records)
    task = torch.load(result["best_checkpoint"], map_location="cpu", weights_only=False)
    assert task["hyper_parameters"]["class_names"] == ["cat", "dog", "owl"]
    dm = build_datamodule(cfg)
    dm.setup("fit")
    assert sorted(Path(p).relative_to(root).as_posix() for p, _ in dm.val_dataset.samples) == [
        "cat/000.jpg", "dog/000.jpg", "owl/000.jpg", "owl/001.jpg"]
    assert len(dm.train_dataset) == 11


def test_folder_val_fraction_splits_every_class(make_cfg, tmp_path):
    root = write_class_folders(tmp_path / "photos", {"a": 12, "b": 4})
    dm = build_datamodule(make_cfg(folder_args(root) + ["data.val_fraction=0.25"]))
    dm.setup("fit")
    val_labels = [label for _, label in dm.val_dataset.samples]
    assert sorted(val_labels) == [0, 0, 0, 1] and len(dm.train_dataset) == 12


def write_imagenet(root: Path, wnids: list[str], per_class: int = 3) -> Path:
    for split in ("train", "val"):
        write_class_folders(root / split, dict.fromkeys(wnids, per_class))
    return root


def test_imagenet_layout_names_classes_from_synset_words(make_cfg, tmp_path):
    root = write_imagenet(tmp_path / "imagenet", ["n01440764", "n01443537", "n01484850"])
    (root / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\nn01484850 great white shark, white shark\n")
    dm = build_datamodule(make_cfg(["data=imagenet", f"data.root={root}", "data.num_workers=0", "data.resolution=32"]))
    assert dm.task_kwargs() == {"num_classes": 3, "class_names": ["tench", "goldfish", "great white shark"]}
    assert dm.mean == (0.5, 0.5, 0.5) and len(dm.train_dataset) == len(dm.val_dataset) == 9


def test_imagenet_missing_or_unsorted_says_what_to_do(make_cfg, tmp_path):
    root = tmp_path / "imagenet"
    with pytest.raises(DataError) as missing:
        run(make_cfg(["data=imagenet", f"data.root={root}"]))
    assert f"{root}/train" in str(missing.value) and f"{root}/val" in str(missing.value) and "data=shapes" in str(missing.value)
    write_class_folders(root / "train", {"n01440764": 2})
    write_class_folders(root / "val", {"n01440764": 1})
    Image.new("RGB", (8, 8)).save(root / "val" / "ILSVRC2012_val_00000001.JPEG")
    with pytest.raises(DataError, match="prepare_imagenet_val"):
        run(make_cfg(["data=imagenet", f"data.root={root}"]))


def write_devkit(path: Path, wnids: list[str], truth: list[int]) -> Path:
    """An ILSVRC2012_devkit_t12.tar.gz with data/meta.mat (plus one non-leaf synset) and the ground truth."""
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height", "num_train_images"]
    rows = [(i + 1, w, f"class {i}", "", 0, np.zeros(0), 0, 1300) for i, w in enumerate(wnids)]
    rows.append((len(wnids) + 1, "n00001740", "entity", "", 2, np.array([1, 2]), 5, 0))
    synsets = np.array(rows, dtype=[(f, object) for f in fields])
    mat = io.BytesIO()
    scipy.io.savemat(mat, {"synsets": synsets})
    with tarfile.open(path, "w:gz") as tar:
        for name, data in (("meta.mat", mat.getvalue()), ("ILSVRC2012_validation_ground_truth.txt",
                                                           "".join(f"{t}\n" for t in truth).encode())):
            info = tarfile.TarInfo(f"ILSVRC2012_devkit_t12/data/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_prepare_imagenet_val_sorts_the_flat_folder(tmp_path, capsys):
    wnids = ["n01440764", "n01443537"]
    val = tmp_path / "val"
    val.mkdir()
    truth = [2, 1, 2, 1, 1]
    for i in range(1, 6):
        Image.new("RGB", (8, 8)).save(val / f"ILSVRC2012_val_{i:08d}.JPEG")
    devkit = write_devkit(tmp_path / "ILSVRC2012_devkit_t12.tar.gz", wnids, truth)
    args = ["-m", "toolkit.data.prepare_imagenet_val", str(val), "--devkit", str(devkit)]
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "moved 5 images into 2 wnid folders" in done.stdout
    assert sorted(p.name for p in (val / "n01443537").iterdir()) == ["ILSVRC2012_val_00000001.JPEG", "ILSVRC2012_val_00000003.JPEG"]
    assert len(list((val / "n01440764").iterdir())) == 3 and not list(val.glob("*.JPEG"))
    assert prepare_main([str(val), "--devkit", str(devkit)]) == 0  # a second run changes nothing
    assert "moved 0 images" in capsys.readouterr().out.splitlines()[-1]
    assert len(list((val / "n01440764").iterdir())) == 3

    solution = tmp_path / "LOC_val_solution.csv"  # Kaggle's format, checked on a fresh flat folder
    solution.write_text("ImageId,PredictionString\nimg_a,n01440764 1 2 3 4 n01440764 5 6 7 8\nimg_b,n01443537 1 1 2 2\n")
    flat = tmp_path / "val2"
    flat.mkdir()
    with pytest.raises(DataError, match="img_a.JPEG"):
        sort_val_folder(flat, labels_from_solution_csv(solution))
    for name in ("img_a", "img_b"):
        Image.new("RGB", (8, 8)).save(flat / f"{name}.JPEG")
    assert sort_val_folder(flat, labels_from_solution_csv(solution), "copy")["sorted"] == 2
    assert (flat / "n01443537" / "img_b.JPEG").is_file() and (flat / "img_b.JPEG").is_file()


# ---- bad input ----------------------------------------------------------------------------------------------
def test_missing_root_and_empty_class_name_the_folder(make_cfg, tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        run(make_cfg(folder_args(tmp_path / "nowhere")))
    root = write_class_folders(tmp_path / "photos", {"a": 3})
    (root / "empty").mkdir()
    with pytest.raises(DataError, match=f"{root / 'empty'}: class folder has no images"):
        run(make_cfg(folder_args(root) + ["data.val_fraction=0.3"]))


@pytest.fixture
def photos_with_bad_files(tmp_path) -> tuple[Path, list[Path]]:
    root = write_class_folders(tmp_path / "photos", {"a": 6, "b": 6})
    truncated = root / "a" / "truncated.jpg"
    data = (root / "a" / "000.jpg").read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    not_an_image = root / "b" / "notes.jpg"
    not_an_image.write_text("this is a text file with an image extension")
    (root / "b" / "README.txt").write_text("not a sample")
    (root / "val.txt").write_text("a/000.jpg\nb/000.jpg\n")
    return root, [truncated, not_an_image]


def test_corrupt_image_fails_naming_the_file(make_cfg, photos_with_bad_files):
    root, bad = photos_with_bad_files
    with pytest.raises(DataError) as error:
        run(make_cfg(folder_args(root) + [f"data.val_list={root / 'val.txt'}"]))
    message = str(error.value)
    assert any(str(p) in message for p in bad) and "data.skip_corrupt=true" in message


def test_skip_corrupt_counts_in_log_and_metrics_file(make_cfg, photos_with_bad_files, caplog):
    root, bad = photos_with_bad_files
    cfg = make_cfg(folder_args(root) + [f"data.val_list={root / 'val.txt'}", "data.skip_corrupt=true", "trainer.max_epochs=2"])
    with caplog.at_level(logging.INFO):
        result = run(cfg)
    messages = "\n".join(r.getMessage() for r in caplog.records)
    assert all("skipped corrupt sample" in messages and str(p) in messages for p in bad)
    assert "ignored 1 file(s) that are not readable images (no image extension, unreadable): b/README.txt" in messages
    assert "train/skipped_samples=2" in messages
    per_epoch = [float(r["train/skipped_samples"]) for r in read_metrics_csv(Path(result["output_dir"]))
                 if r.get("train/skipped_samples")]
    assert per_epoch == [2.0, 2.0]  # both bad files are training images, seen once per epoch


# ---- predict ------------------------------------------------------------------------------------------------
def test_predict_cli_writes_top_k_json_csv_and_contact_sheet(make_cfg, tmp_path):
    best = run(make_cfg(SHAPES))["best_checkpoint"]
    images = write_class_folders(tmp_path / "unlabelled", {"x": 3})
    done = run_cli(["mode=predict", f"ckpt_path={best}", f"predict.input={images}", *SHAPES, *FAST,
                    f"hydra.run.dir={tmp_path / 'pred'}"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "pred"
    records = json.loads((out / "predictions.json").read_text())
    assert [Path(r["path"]).name for r in records] == ["000.jpg", "001.jpg", "002.jpg"]
    for r in records:
        scores = [p["score"] for p in r["top_k"]]
        assert len(scores) == 5 and scores == sorted(scores, reverse=True) and sum(scores) <= 1.0 + 1e-5
        assert {p["name"] for p in r["top_k"]} <= {"circle", "square", "triangle", "cross", "ring", "diamond"}
    with (out / "predictions.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 15
    with Image.open(out / "predictions.png") as sheet:
        assert sheet.width > 0 and sheet.height > 0


# ---- the paper's table rows -----------------------------------------------------------------------------------
PAPER_ROWS = {  # experiment file -> (backbone, alpha, resolution): Tables 4, 5, 6, 7 and 9
    "mobilenet_v1_conv_100_224": ("mobilenet_v1_conv", 1.0, 224), "mobilenet_v1_100_224": ("mobilenet_v1", 1.0, 224),
    "mobilenet_v1_shallow_100_224": ("mobilenet_v1_shallow", 1.0, 224), "mobilenet_v1_075_224": ("mobilenet_v1", 0.75, 224),
    "mobilenet_v1_050_224": ("mobilenet_v1", 0.5, 224), "mobilenet_v1_025_224": ("mobilenet_v1", 0.25, 224),
    "mobilenet_v1_100_192": ("mobilenet_v1", 1.0, 192), "mobilenet_v1_100_160": ("mobilenet_v1", 1.0, 160),
    "mobilenet_v1_100_128": ("mobilenet_v1", 1.0, 128), "mobilenet_v1_050_160": ("mobilenet_v1", 0.5, 160),
}


def test_paper_row_experiments_compose_with_the_recipe(make_cfg):
    shipped = {p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("mobilenet_v1_*.yaml")}
    assert shipped == set(PAPER_ROWS)
    for name, row in PAPER_ROWS.items():
        cfg = make_cfg([f"experiment={name}"], fast=False)
        assert (cfg.backbone.name, cfg.backbone.alpha, cfg.data.resolution) == row, name
        assert cfg.data._target_ == "toolkit.data.imagenet.ImageNetDataModule" and cfg.data.batch_size == 96
        assert cfg.task.optimizer._target_ == "timm.optim.RMSpropTF" and cfg.task.optimizer.eps == 1.0
        assert cfg.task.optimizer.weight_decay == 4e-5 and cfg.task.label_smoothing == 0.0


def test_paper_row_without_imagenet_names_the_folders(make_cfg, tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path / 'nodata'}/imagenet/train"):
        run(make_cfg(["experiment=mobilenet_v1_050_160", f"paths.data_dir={tmp_path / 'nodata'}"]))
