"""What a user sees: a quiet console (no third-party noise unless verbose), one metrics table per eval, progress
bars within 80 columns, the pictures of a run folder, predictions drawn readably, COCO results pycocotools reads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

from toolkit.callbacks import TrainingCurves, short_metrics
from toolkit.console import format_table, metrics_table
from toolkit.predictions import DetectionFiles, summary_line
from toolkit.profiling.sweep import overlapping_texts, sweep_figure
from toolkit.visualize import confusion_figure, draw_boxes, label_places, pr_curves_figure

#: lines the issue lists as noise (Lightning's machine report and notes, library warnings, native libraries)
NOISE = ("GPU available", "TPU available", "limit_train_batches=1.0", "limit_val_batches=1.0",
         "is not supported by the model summary", "FLOPs", "LeafSpec", "worker processes", "cpuinfo",
         "CUDA_HOME", "oneDNN", "BuildBackendWarning", "Validate metric", "epoch 0: COCO", "💡 Tip")
TINY = ["backbone.alpha=0.25", "data.resolution=64", "data.n_train=16", "data.n_val=12", "data.batch_size=8",
        "trainer.max_epochs=1"]


def _noise(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(n in line for n in NOISE)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo as a user runs it (train, eval, export onnx) on tiny generated data, through the real CLI."""
    root = tmp_path_factory.mktemp("console")
    env = {"TOOLKIT_CACHE_DIR": str(root / "cache"), "TOOLKIT_LOG_DIR": str(root / "outputs"), "COLUMNS": "80",
           "TOOLKIT_VERBOSE": ""}
    train = run_cli(TINY + ["trainer.accelerator=cpu", "data.num_workers=3"], cwd=root, env=env)
    assert train.returncode == 0, train.stderr[-3000:]
    run_dir = Path(json.loads(next((root / "outputs").glob("**/train_metrics.json")).read_text())["output_dir"])
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    evaluate = run_cli(["mode=eval", f"ckpt_path={ckpt}"], cwd=root, env=env)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    export = run_cli(["mode=export", f"ckpt_path={ckpt}", "export.formats=[onnx]", "export.latency_repeats=1",
                      "export.verify_batches=1"], cwd=root, env=env)
    assert export.returncode == 0, export.stderr[-3000:]
    return {"root": root, "env": env, "run_dir": run_dir, "ckpt": ckpt, "train": train, "eval": evaluate,
            "export": export}


@pytest.mark.slow
def test_demo_console_has_none_of_the_noise(demo):
    for step in ("train", "eval", "export"):
        proc = demo[step]
        assert _noise(proc.stdout + proc.stderr) == [], step
    bars = [line for line in demo["train"].stdout.splitlines() if line.startswith("Epoch ")]
    assert bars and all(len(line) <= 80 for line in bars)  # the bar fits an 80-column terminal, on one line
    assert re.search(r"model: ImageClassifier, [\d.]+ K parameters", demo["train"].stdout + demo["train"].stderr)


@pytest.mark.slow
def test_verbose_brings_the_filtered_lines_back(demo):
    proc = run_cli(["mode=eval", f"ckpt_path={demo['ckpt']}", "verbose=true"], cwd=demo["root"], env=demo["env"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GPU available" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_eval_prints_one_table_and_per_class_accuracy(demo):
    out = demo["eval"].stdout
    assert out.count("val/top1") == 1 and re.search(r"^val/top1\s+\d\.\d{4}$", out, re.M)  # once, 4 decimals
    assert "skipped_samples" not in out  # zero: left out of the printed table
    header = next(line for line in out.splitlines() if line.startswith("class "))
    assert header.split() == ["class", "images", "correct", "top1", "top5"]  # 6 shape classes: top-5 < 6
    rows = out.split(header)[1].splitlines()[2:8]
    assert len(rows) == 6 and all(row.split()[0] in {"circle", "square", "triangle", "cross", "ring", "diamond"} for row in rows)
    metrics_dir = sorted((demo["root"] / "outputs").glob("**/confusion_matrix.png"))[-1].parent
    assert (metrics_dir / "per_class_accuracy.csv").is_file()
    assert Image.open(metrics_dir / "confusion_matrix.png").size[0] > 300


@pytest.mark.slow
def test_training_run_folder_has_curves_and_validation_mosaic(demo):
    curves, mosaic = demo["run_dir"] / "training_curves.png", demo["run_dir"] / "val_predictions.png"
    assert curves.read_bytes()[:4] == b"\x89PNG" and mosaic.read_bytes()[:4] == b"\x89PNG"
    assert Image.open(mosaic).size == (4 * 160, 3 * (160 + 18))  # 12 validation images, 4 columns


def test_curves_figure_has_loss_metric_and_learning_rate_panels():
    curves = TrainingCurves()
    curves.history = {"train/loss": [(0, 2.0), (1, 1.5)], "val/loss": [(0, 2.1), (1, 1.7)],
                      "val/top1": [(0, 0.3), (1, 0.5)], "lr": [(0, 0.1), (1, 0.05)]}
    fig = curves.figure()
    assert [ax.get_title() for ax in fig.axes] == ["loss", "val/top1", "learning rate"]
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["train/loss", "val/loss"]
    assert overlapping_texts(fig) == []


def test_progress_bar_metrics_fit_their_room():
    metrics = {"train/loss_step": 1.81234, "train/loss_epoch": 1.9, "val/loss": 1.79781, "val/top1": 0.15625,
               "val/top5": 0.8125, "v_num": 3, "val/skipped_samples": 0.0}
    assert short_metrics(metrics, 200) == {"loss": "1.81", "top1": "0.156", "val_loss": "1.8", "top5": "0.812"}
    fitted = short_metrics(metrics, 24)
    assert list(fitted) == ["loss", "top1"] and sum(len(k) + len(v) + 3 for k, v in fitted.items()) <= 24


def test_progress_bar_counts_epochs_from_one():
    from types import SimpleNamespace

    from toolkit.callbacks import CompactProgressBar

    bar = CompactProgressBar()
    bar._trainer = SimpleNamespace(max_epochs=8)
    assert bar._get_train_description(0).strip() == "Epoch 1/8"
    assert bar._get_train_description(7).strip() == "Epoch 8/8"


def test_metrics_table_digits_and_coco_not_applicable():
    table = metrics_table({"val/map": 0.123456789, "val/map_large": -1.0, "val/skipped_samples": 0.0})
    assert table.splitlines() == ["metric          value", "-------------  ------", "val/map        0.1235",
                                  "val/map_large     n/a"]
    assert format_table(["a", "b"], [["x", 1]]).splitlines()[2] == "x  1"


def test_labels_stay_inside_the_image_and_do_not_overlap(tmp_path):
    Image.fromarray(np.full((120, 160, 3), 200, np.uint8)).save(tmp_path / "in.png")
    detections = [{"box_xyxy": [0, 0, 80, 60], "score": 0.88, "label": 1, "name": "person"},  # at the top edge
                  {"box_xyxy": [2, 3, 70, 50], "score": 0.71, "label": 2, "name": "cup"},  # same corner
                  {"box_xyxy": [120, 20, 159, 60], "score": 0.95, "label": 4, "name": "rocket"}]  # at the right edge
    places = label_places(detections, (160, 120))
    assert [text for _, text, _ in places] == ["rocket 0.95", "person 0.88", "cup 0.71"]  # "name 0.88"
    rects = [rect for _, _, rect in places]
    assert all(x1 >= 0 and y1 >= 0 and x2 <= 160 and y2 <= 120 for x1, y1, x2, y2 in rects)
    assert not any(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
                   for i, a in enumerate(rects) for b in rects[i + 1:])
    for size in ((160, 120), (1600, 1200)):  # the font grows with the image
        Image.fromarray(np.full((size[1], size[0], 3), 200, np.uint8)).save(tmp_path / "big.png")
        scaled = [{**d, "box_xyxy": [v * size[0] / 160 for v in d["box_xyxy"]]} for d in detections]
        heights = [r[3] - r[1] for _, _, r in label_places(scaled, size)]
        assert heights[0] >= size[0] / 60
        draw_boxes(tmp_path / "big.png", scaled, tmp_path / "out.png")


def test_confusion_and_pr_figures():
    fig = confusion_figure(np.array([[5, 1], [2, 4]]), ["cat", "dog"])
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog"] and ax.get_xlabel() == "predicted"
    recall = np.linspace(0, 1, 101)
    precision = np.stack([np.linspace(1, 0.5, 101), np.full(101, -1.0)], axis=1)  # class 2: no ground truth
    fig = pr_curves_figure(recall, precision, ["cat", "dog"], [0.8, -1.0])
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["cat 0.800", "all classes 0.800"]


def _rows(score: bool, latency: bool) -> list[dict]:
    return [{"label": f"{a} mobilenet_v1-{r}", "model": "mobilenet_v1", "alpha": a, "resolution": r,
             "params": 4.2e6 * a * a, "mult_adds": 569e6 * a * a * (r / 224) ** 2,
             "latency_b1_fp32_ms": 10 * a * a * (r / 224) ** 2 if latency else None,
             "top1": 70 * a if score else None} for a in (1.0, 0.5) for r in (224, 128)]


@pytest.mark.parametrize(("score", "latency", "titles"), [
    (True, True, ["Top-1 accuracy vs mult-adds (Fig. 4)", "Top-1 accuracy vs parameters (Fig. 5)",
                  "Top-1 accuracy vs latency"]),
    (False, True, ["parameters vs mult-adds", "latency vs mult-adds"]),
    (False, False, ["parameters vs mult-adds"]),
])
def test_sweep_figure_panels_points_and_no_overlapping_titles(score, latency, titles):
    fig = sweep_figure(_rows(score, latency))
    assert [ax.get_title() for ax in fig.axes] == titles
    assert all(ax.get_xscale() == "log" for ax in fig.axes)
    for ax in fig.axes:  # one labelled point per alpha x resolution
        assert sum(len(c.get_offsets()) for c in ax.collections) == 4
        assert sorted(t.get_text() for t in ax.texts) == ["128", "128", "224", "224"]
    assert overlapping_texts(fig) == []


def test_detection_predictions_load_as_coco_results(tmp_path):
    from pycocotools.coco import COCO

    paths = []
    for i in range(2):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(paths[-1])
    files = DetectionFiles(tmp_path / "out", lambda path, dets, out: draw_boxes(path, dets, out),
                           categories={10: "circle", 21: "square"})
    files.add([{"path": str(paths[0]), "width": 60, "height": 40, "detections": [
                   {"box_xyxy": [1.0, 2.0, 11.0, 22.0], "score": 0.9, "label": 1, "category_id": 10, "name": "circle"}]},
               {"path": str(paths[1]), "width": 60, "height": 40, "detections": []}])
    written = files.close()
    out = tmp_path / "out"
    assert {out / "coco_results.json", out / "coco_images.json"} <= set(written)
    coco = COCO(str(out / "coco_images.json"))
    results = coco.loadRes(str(out / "coco_results.json"))
    (ann,) = results.loadAnns(results.getAnnIds())
    assert ann["image_id"] == 0 and ann["category_id"] == 10 and ann["bbox"] == [1.0, 2.0, 10.0, 20.0]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["circle", "square"]
    assert summary_line(images=2, files=written, output_dir=out, predictions=files.predictions, unit=files.unit) == (
        f"predicted 2 images: 1 detections; wrote predictions.json, coco_results.json, coco_images.json and 4 "
        f"per-image files (predictions/) to {out}")


def test_verbose_is_a_documented_key():
    conf = (Path(__file__).resolve().parents[1] / "conf" / "config.yaml").read_text()
    docs = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    assert re.search(r"^verbose: false", conf, re.M) and "TOOLKIT_VERBOSE" in docs


def test_native_output_is_kept_from_the_console_unless_the_call_fails(capfd):
    import os

    from toolkit.console import native_output_quieted

    with native_output_quieted(verbose=False):
        os.write(2, b"[cpuinfo_utils.cpp:71] Reading file\n")  # what a C++ library prints: below Python's sys.stderr
        os.write(1, b"native stdout\n")
    assert capfd.readouterr() == ("", "")
    with pytest.raises(RuntimeError), native_output_quieted(verbose=False):
        os.write(2, b"why it failed\n")
        raise RuntimeError("load failed")
    assert "why it failed" in capfd.readouterr().err  # replayed: nothing that explains an error is lost
    with native_output_quieted(verbose=True):
        os.write(2, b"shown\n")
    assert capfd.readouterr().err == "shown\n"


def test_validation_mosaic_spreads_over_a_class_sorted_split():
    """Validation folders are sorted by class: the mosaic's images come from the whole split, not its first class."""
    from toolkit.callbacks import spread

    samples = [(f"{c}/{i}.png", c) for c in range(6) for i in range(50)]
    picked = spread(samples, 16)
    assert len(picked) == 16 and len({label for _, label in picked}) == 6
    assert spread(samples[:5], 16) == samples[:5]
