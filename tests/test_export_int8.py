"""int8 export on awkward data: calibration splits that are not a multiple of the batch (48 images in batches of
32, 5 images, 1 image) for every ONNX Runtime calibrator and for ExecuTorch's PT2E; failures as one line naming the
format with no file left behind; no random calibration unless asked for; formats worse than PyTorch flagged."""

from __future__ import annotations

import importlib.util
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image

from toolkit.errors import ConfigError, DataError, ExportError
from toolkit.formats.executorch import export_executorch
from toolkit.formats.onnx import export_onnx, quantize_onnx, quantized_nodes
from toolkit.modes.export_report import format_export_report, quality_warnings
from toolkit.run import run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUICK = ["export.latency_repeats=2", "export.batch_size=2"]
TINY = ["backbone.alpha=0.25", "data.resolution=32", "data.image_size=32"]  # data=shapes
FOLDER = ["backbone.alpha=0.25", "data.resolution=32", "data=folder"]
#: calibration splits as the loader gives them: 48 images in batches of 32, 5 images, 1 image
SPLITS = {"48_in_batches_of_32": [32, 16], "5_images": [5], "1_image": [1]}
needs_executorch = pytest.mark.skipif(importlib.util.find_spec("executorch") is None, reason="needs the [mobile] extra")


def tiny_classifier() -> torch.nn.Module:
    from toolkit.heads import build_classifier

    torch.manual_seed(0)
    return build_classifier({"name": "mobilenet_v1", "alpha": 0.25}, 3).eval()


def batches(sizes: list[int], resolution: int = 32) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(n, 3, resolution, resolution, generator=generator) for n in sizes]


@pytest.fixture(scope="module")
def fp32_classifier(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fp32")
    return export_onnx(tiny_classifier(), batches([2])[0], folder / "model.onnx", 18, ["logits"], "dynamo")


@pytest.mark.parametrize("method", ["percentile", "minmax", "entropy"])
@pytest.mark.parametrize("split", list(SPLITS))
def test_onnx_int8_calibrates_on_any_split(fp32_classifier, tmp_path, monkeypatch, method, split):
    """Batches of unequal size, a split smaller than one batch, one image: every calibrator gives a file that runs
    at batch 1 and larger, and only that file is left (no `_prep.onnx`, no temporary files anywhere)."""
    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))  # the quantiser's own scratch files land here
    out = tmp_path / "out"
    out.mkdir()
    path = quantize_onnx(fp32_classifier, out / "model_int8.onnx", batches(SPLITS[split]), method)
    assert sorted(p.name for p in out.iterdir()) == ["model_int8.onnx"] and not any(work.iterdir())
    graph = onnx.load(str(path)).graph
    assert any(node.op_type == "QuantizeLinear" for node in graph.node)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        (logits,) = session.run(None, {"image": np.zeros((n, 3, 32, 32), np.float32)})
        assert logits.shape == (n, 3) and np.isfinite(logits).all()


@needs_executorch
@pytest.mark.parametrize("split", ["5_images", "1_image"])  # 48 in batches of 32: the mode=export test below
def test_executorch_int8_calibrates_on_any_split(tmp_path, split):
    from toolkit.deploy.runtime import ExecuTorchModel

    path = export_executorch(tiny_classifier(), batches([1])[0], tmp_path / "model_int8.pte", batches(SPLITS[split]),
                             dynamic_batch=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_int8.pte"]
    logits = ExecuTorchModel(path, ["logits"]).run(np.zeros((2, 3, 32, 32), np.float32))["logits"]
    assert logits.shape == (2, 3) and np.isfinite(logits).all()


def test_export_mode_int8_on_48_images_in_batches_of_32(make_cfg, tmp_path):
    """The issue's case end to end: 48 training images, batch 32, the default percentile ranges; every image
    calibrates, the files are verified, export.json says per format whether it is worse than PyTorch."""
    formats = ["onnx_int8"] + (["executorch_int8"] if importlib.util.find_spec("executorch") else [])
    result = run(make_cfg([*TINY, "data.n_train=48", "data.n_val=12", "data.batch_size=32", "mode=export",
                           f"export.formats=[{','.join(formats)}]", *QUICK]))
    report = json.loads(Path(result["export_file"]).read_text())
    assert report["calibration_images"] == 48 and report["calibration"].endswith("train split") and report["verified"]
    out = Path(result["output_dir"])
    files = {p.name for p in out.iterdir() if p.is_file()}
    assert {"model.onnx", "model_int8.onnx"} <= files and not any("prep" in f or f.endswith(".tmp") for f in files)
    for fmt in formats:
        entry = report["formats"][fmt]
        assert isinstance(entry["warnings"], list) and entry["val/top1"] is not None, fmt
    assert "uint8 activations" in onnx_quantization(out / "model_int8.onnx")


def onnx_quantization(path: Path) -> str:
    return json.loads({p.key: p.value for p in onnx.load(str(path)).metadata_props}["quantization"])


def class_folder(root: Path, counts: dict[str, dict[str, int]], size: int = 40) -> Path:
    """`counts`: {split: {class: images}} of random photos."""
    for split, classes in counts.items():
        for name, n in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.random.default_rng(i).integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def test_export_mode_int8_from_a_class_folder_smaller_than_one_batch(make_cfg, tmp_path):
    """3 training images, batch 32, entropy ranges: one short batch calibrates the file."""
    root = class_folder(tmp_path / "photos", {"train": {"cat": 2, "dog": 1}, "val": {"cat": 1, "dog": 1}})
    result = run(make_cfg([*FOLDER, f"data.root={root}", "data.batch_size=32", "mode=export",
                           "export.formats=[onnx_int8]", "export.calibration_method=entropy", *QUICK]))
    report = result["export"]
    assert report["calibration_images"] == 3
    assert report["formats"]["onnx_int8"]["val/top1"] is not None and "warnings" in report["formats"]["onnx_int8"]


def test_quantiser_failure_is_one_line_naming_the_format_and_leaves_no_file(make_cfg, tmp_path, monkeypatch):
    import onnxruntime.quantization as ort_quantization

    def broken(*args, **kwargs):
        Path(args[1]).write_bytes(b"partial")  # a quantiser that dies half way through writing its file
        raise ValueError("setting an array element with a sequence.\nThe requested array has an inhomogeneous shape")

    monkeypatch.setattr(ort_quantization, "quantize_static", broken)
    cfg = make_cfg([*TINY, "data.n_train=12", "data.n_val=6", "data.batch_size=8", "mode=export",
                    "export.formats=[onnx_int8]", *QUICK])
    with pytest.raises(ExportError) as caught:
        run(cfg)
    message = str(caught.value)
    assert message.startswith("onnx_int8: ") and "ValueError: setting an array element with a sequence." in message
    assert "\n" not in message and "inhomogeneous" not in message  # the first meaningful line only
    out = tmp_path / "run"
    assert not [p.name for p in out.iterdir() if p.name.startswith(("model_int8", ".model_int8")) or "prep" in p.name]


@needs_executorch
def test_executorch_failure_is_one_line_naming_the_format_and_leaves_no_file(make_cfg, tmp_path, monkeypatch):
    import executorch.exir

    def broken(*args, **kwargs):
        raise RuntimeError("XNNPACK lowering failed\nfor node 7")

    monkeypatch.setattr(executorch.exir, "to_edge_transform_and_lower", broken)
    cfg = make_cfg([*TINY, "data.n_train=12", "data.n_val=6", "data.batch_size=8", "mode=export",
                    "export.formats=[executorch_int8]", *QUICK])
    with pytest.raises(ExportError, match=r"^executorch_int8: export failed: RuntimeError: XNNPACK lowering failed$"):
        run(cfg)
    assert not [p.name for p in (tmp_path / "run").iterdir() if "model_int8" in p.name]


# ---- data that cannot be read -----------------------------------------------------------------------------
MISSING_COCO = ["task=detection_ssd", "data=coco", "backbone.alpha=0.25", "data.resolution=64"]


def test_int8_without_data_stops_naming_everything_it_looked_for(make_cfg, tmp_path):
    """No random calibration behind the user's back: one line with the datamodule's whole message (every file it
    looked for, not a first line cut at "looked for:") and both fixes."""
    cfg = make_cfg([*MISSING_COCO, f"paths.data_dir={tmp_path / 'nothing'}", "mode=export", "export.formats=[onnx_int8]"])
    with pytest.raises(DataError) as caught:
        run(cfg)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("export: onnx_int8 needs calibration images")
    assert "looked for: " in message and "instances_train2017.json  (annotation file)" in message
    assert "val2017/  (image folder)" in message and "export.calibration=random" in message
    assert not list((tmp_path / "run").glob("*.onnx"))


def test_fp32_export_without_data_says_it_is_not_verified(make_cfg, tmp_path, caplog):
    root = tmp_path / "missing"
    cfg = make_cfg([*FOLDER, f"data.root={root}", "task.num_classes=3", "mode=export",
                    "export.formats=[onnx]", *QUICK])
    with caplog.at_level(logging.WARNING, logger="toolkit.modes.export"):
        report = run(cfg)["export"]
    assert report["verified"] is False and str(root) in report["not_verified"]
    assert report["formats"]["onnx"]["warnings"] == [] and "val/top1" not in report["formats"]["onnx"]
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{root / 'train'}: dataset folder not found. Expected <root>/<class name>/<images>; set the data root" in warning
    assert "verification skipped" in warning and "data.root" in warning


def test_random_calibration_only_when_asked_for(make_cfg, tmp_path, caplog):
    cfg = make_cfg([*FOLDER, f"data.root={tmp_path / 'missing'}", "task.num_classes=3",
                    "mode=export", "export.formats=[onnx_int8]", "export.calibration=random", "export.verify=false",
                    *QUICK])
    with caplog.at_level(logging.WARNING, logger="toolkit.modes.export"):
        report = run(cfg)["export"]
    assert report["calibration"] == "random images" and "onnx_int8" in report["formats"]
    assert any("calibrated on random images (export.calibration=random" in r.getMessage() for r in caplog.records)


def test_int8_activation_setting_is_checked(make_cfg):
    with pytest.raises(ConfigError, match="export.int8_activations"):
        run(make_cfg(["mode=export", "export.int8_activations=int16"]))


# ---- formats worse than PyTorch ---------------------------------------------------------------------------
PYTORCH_ROW = {"val/map": 0.40, "val/map_50": 0.62, "latency_ms_batch1": 20.0}


def report_with(entry: dict) -> dict:
    return {"task_class": "SSDTask", "resolution": 300, "calibration": "train split", "calibration_images": 64,
            "threads": 2, "batch_size": 8, "pytorch": PYTORCH_ROW, "skipped": {}, "verified": True,
            "formats": {"onnx_int8": {"file": "model_int8.onnx", "size_mb": 7.0, "latency_ms_batch1": 10.0,
                                      "images_per_s_batch8": None, **entry}}}


def test_a_format_that_loses_accuracy_is_flagged():
    entry = {"val/map": 0.35, "val/map_50": 0.615, "agreement": {"box_match_iou0.9": 0.5, "images": 10}}
    warnings = quality_warnings(entry, PYTORCH_ROW, ["val/map", "val/map_50"], "max")
    assert warnings == ["loses 5.0 points of val/map vs pytorch (0.3500 vs 0.4000)",
                        "agrees with pytorch on 50.0% of boxes (same class, IoU >= 0.9) (< 90%)"]
    table = format_export_report(report_with({**entry, "warnings": warnings}), ["val/map", "val/map_50"])
    header, _, row = table.splitlines()[1:4]
    assert header.split()[-1] == "!" and row.startswith("onnx_int8") and row.split()[-1] == "LOW"


def test_a_format_within_tolerance_is_not_flagged():
    entry = {"val/map": 0.395, "val/map_50": 0.63, "agreement": {"box_match_iou0.9": 0.95, "images": 10}}
    assert quality_warnings(entry, PYTORCH_ROW, ["val/map", "val/map_50"], "max") == []
    table = format_export_report(report_with({**entry, "warnings": []}), ["val/map", "val/map_50"])
    assert "LOW" not in table


def test_lower_is_better_metrics_and_embeddings_are_judged_their_way():
    # val/loss: a smaller value is better; a loss 0.05 lower is no warning, 0.05 higher is one
    assert quality_warnings({"val/loss": 0.45}, {"val/loss": 0.5}, ["val/loss"], "min") == []
    assert quality_warnings({"val/loss": 0.55}, {"val/loss": 0.5}, ["val/loss"], "min") == [
        "raises val/loss by 0.05 (lower is better) vs pytorch (0.5500 vs 0.5000)"]
    # embeddings: no decision to agree on; the mean cosine must reach 0.99
    assert quality_warnings({"agreement": {"mean_cosine": 0.995}}, {}, [], "max") == []
    assert quality_warnings({"agreement": {"mean_cosine": 0.97}}, {}, [], "max") == [
        "mean cosine to pytorch's embeddings 0.9700 (< 0.99)"]


def test_ssd_int8_keeps_heads_decoding_and_nms_in_float(tmp_path):
    """In the int8 SSD graph only the backbone and extra layers run in int8: the prediction heads keep float
    weights and no box decoding, top-k or NMS node reads a quantised tensor."""
    from toolkit.detection.export import SSDWholeDetector
    from toolkit.detection.ssd import build_ssd
    from toolkit.formats.onnx import prediction_layers

    torch.manual_seed(0)
    ssd = build_ssd({"name": "mobilenet_v1", "alpha": 0.25}, 3).eval()
    fp32 = export_onnx(SSDWholeDetector(ssd).eval(), torch.rand(1, 3, 64, 64), tmp_path / "ssd.onnx", 17,
                       ["boxes", "scores", "labels", "count"], "torchscript")
    heads = prediction_layers(fp32)
    assert len(heads) == 12  # a classification and a regression conv on each of the 6 feature maps
    int8 = quantize_onnx(fp32, tmp_path / "ssd_int8.onnx", [torch.rand(1, 3, 64, 64) for _ in range(3)], exclude=heads)
    graph = onnx.load(str(int8)).graph
    readers = quantized_nodes(graph)
    assert any(name.startswith("Conv:") for name in readers)
    assert {name.split(":")[0] for name in readers} <= {"Conv", "Relu", "Clip"}, readers
    weights = {i.name for i in graph.initializer}
    head_convs = [node for node in graph.node if node.name in heads]
    assert len(head_convs) == 12 and all(node.input[1] in weights for node in head_convs)  # float weights


def test_an_empty_calibration_split_stops_int8(make_cfg):
    """Data that loads but whose calibration split holds no image: int8 stops (no silent random ranges), fp32
    formats only need an example input."""
    from types import SimpleNamespace

    from torch.utils.data import default_collate

    from toolkit.modes.export_data import calibration_inputs

    empty = SimpleNamespace(train_dataset=[], val_dataset=[], batch_size=4, collate_fn=lambda: default_collate)
    with pytest.raises(DataError, match=r"the train split of SimpleNamespace has no images to calibrate onnx_int8 on"):
        calibration_inputs(make_cfg([*TINY, "mode=export", "export.formats=[onnx,onnx_int8]"]), empty)
    example, source = calibration_inputs(make_cfg([*TINY, "mode=export", "export.formats=[onnx]"]), empty)
    assert source == "random images" and example[0].shape[1:] == (3, 32, 32)
