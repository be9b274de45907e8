"""LiteRT (.tflite), OpenVINO (IR) and Core ML (.mlpackage) exports: each file written by mode=export, run in its
runtime (Core ML: spec only, it needs Apple hardware) and scored by the task's metric through the same path as
ONNX; the torch-free predictor runs .tflite and .xml files; export.formats=all, the metric gate, int8_target."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import assert_one_line_error
from tests.test_export import (
    DETECTION_DATA,
    QUICK,
    compose_in,
    fixed_seed_detector_task,
    save_checkpoint,
)
from toolkit.errors import ConfigError, ToolkitError
from toolkit.formats.int8_target import int8_activations, machine_target
from toolkit.formats.selection import expand_formats, known_formats, metric_floor_failures
from toolkit.run import run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

litert = pytest.importorskip("litert_torch")
openvino = pytest.importorskip("openvino")
coremltools = pytest.importorskip("coremltools")

RUNTIME_FORMATS = ["litert", "litert_int8", "openvino", "openvino_int8", "coreml"]
# 6 shape classes (chance 0.17): 4 epochs of AdamW on 320 images learn them well past chance at alpha 0.25, 64 px
LEARNS = ["backbone.alpha=0.25", "data.resolution=64", "data.image_size=64", "data.batch_size=16", "data.n_train=320",
          "data.n_val=96", "seed=0", "callbacks.lr_monitor=null", "task.optimizer._target_=torch.optim.AdamW",
          "~task.optimizer.alpha", "~task.optimizer.momentum", "~task.optimizer.eps", "task.scheduler=null",
          "task.optimizer.lr=0.01"]


@pytest.fixture(scope="module")
def classifier_export(tmp_path_factory) -> dict:
    """The shapes classifier trained briefly, exported to ONNX and every new runtime format by mode=export."""
    root = tmp_path_factory.mktemp("runtimes")
    precise_bn = "+callbacks.precise_bn={_target_: toolkit.precise_bn.PreciseBN, num_batches: 4}"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("TOOLKIT_CACHE_DIR", str(root / "cache"))
            env.setenv("TOOLKIT_LOG_DIR", str(root / "outputs"))
            trained = run(compose_in(root / "train", LEARNS + ["trainer.max_epochs=4", precise_bn]))
            output = io.StringIO()
            with contextlib.redirect_stdout(output):
                exported = run(compose_in(root / "export", LEARNS + [
                    "mode=export", f"ckpt_path={trained['best_checkpoint']}",
                    f"export.formats=[onnx,{','.join(RUNTIME_FORMATS)}]", *QUICK]))
    finally:
        torch.set_num_threads(threads)
    return {**exported, "printed": output.getvalue(), "checkpoint": trained["best_checkpoint"], "root": root}


@pytest.mark.slow
def test_runtime_formats_score_like_pytorch_in_their_runtimes(classifier_export):
    """fp32 .tflite and OpenVINO IR give PyTorch's top-1 and decisions in their runtimes; their int8 files run,
    decide mostly as PyTorch and are under half the size; Core ML is written and reported as not run here."""
    report = classifier_export["export"]
    formats, torch_top1 = report["formats"], report["pytorch"]["val/top1"]
    for name in ("litert", "openvino"):
        assert formats[name]["val/top1"] == pytest.approx(torch_top1, abs=1e-6), name
        assert formats[name]["agreement"]["top1_agreement"] == 1.0 and formats[name]["agreement"]["max_abs_diff"] < 1e-3
    for name in ("litert_int8", "openvino_int8"):
        int8, fp32 = formats[name], formats[name.removesuffix("_int8")]
        # a briefly trained model has near-tied classes: int8 flips some (the 1-point target: benchmarks/deploy.py)
        assert int8["agreement"]["top1_agreement"] >= 0.8 and int8["val/top1"] >= torch_top1 - 0.1, name
        assert int8["size_mb"] < 0.6 * fp32["size_mb"] and int8["latency_ms_batch1"] > 0, name
    assert formats["coreml"]["not_run"] == "needs Apple hardware" and "val/top1" not in formats["coreml"]
    assert "coreml: not run (needs Apple hardware)" in classifier_export["printed"]


@pytest.mark.slow
def test_runtime_files_carry_their_metadata(classifier_export):
    """.tflite: the JSON beside it; OpenVINO: the IR's rt_info; Core ML: its user-defined metadata, and a spec with
    one float32 `image` input of the exported size and the `logits` output."""
    import coremltools as ct

    from toolkit.deploy.metadata import read_metadata
    from toolkit.deploy.runtime import open_model

    formats = classifier_export["export"]["formats"]
    tflite = read_metadata(formats["litert_int8"]["file"])
    assert tflite["task"] == "classification" and tflite["batch"] == 1 and "full-integer" in tflite["quantization"]
    runner, meta = open_model(formats["openvino"]["file"])
    assert meta["task"] == "classification" and meta["outputs"] == ["logits"] and runner.output_names == ["logits"]
    assert runner.run(np.zeros((3, 3, 64, 64), np.float32))["logits"].shape == (3, 6)  # any batch
    spec = ct.utils.load_spec(formats["coreml"]["file"])
    (image,) = spec.description.input
    assert image.name == "image" and list(image.type.multiArrayType.shape) == [1, 3, 64, 64]
    assert image.type.multiArrayType.dataType == ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
    assert [o.name for o in spec.description.output] == ["logits"]
    user = dict(spec.description.metadata.userDefined)
    assert json.loads(user["task"]) == "classification" and len(json.loads(user["class_names"])) == 6
    assert json.loads(user["mean"]) == meta["mean"] and "fp16" in json.loads(user["precision"])


def deploy(args: list[str]) -> subprocess.CompletedProcess:
    """`python -m toolkit.deploy ARGS` in a process where torch cannot be imported."""
    code = ("import sys; sys.modules['torch'] = None; from toolkit.deploy.__main__ import main; "
            f"code = main({[str(a) for a in args]!r}); "
            "assert sys.modules.get('torch') is None; sys.exit(code)")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_deploy_cli_predicts_from_tflite_and_openvino_files_without_torch(classifier_export, tmp_path):
    """`python -m toolkit.deploy` on .tflite and OpenVINO files, torch unimportable: the fp32 files give the ONNX
    file's classes and scores; the int8 files predict every image."""
    images = tmp_path / "photos"
    images.mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (70, 90 + i, 3), dtype=np.uint8)).save(images / f"{i}.png")
    formats = classifier_export["export"]["formats"]
    predicted = {}
    for name in ("onnx", "litert", "openvino", "litert_int8", "openvino_int8"):
        proc = deploy([formats[name]["file"], images, "--out", tmp_path / name])
        assert proc.returncode == 0, f"{name}: {proc.stderr[-2000:]}"
        predicted[name] = [r["top_k"][0] for r in json.loads((tmp_path / name / "predictions.json").read_text())]
        assert len(predicted[name]) == 3, name
    for name in ("litert", "openvino"):
        assert [p["label"] for p in predicted[name]] == [p["label"] for p in predicted["onnx"]], name
        assert [p["score"] for p in predicted[name]] == pytest.approx([p["score"] for p in predicted["onnx"]], abs=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize(("name", "damage", "fragment"), [
    ("litert", b"not a flatbuffer at all", "not a LiteRT/TFLite model"),
    ("openvino", b"<net name='x'><layers>", "OpenVINO cannot load it"),
])
def test_damaged_tflite_and_openvino_files_are_one_line_errors(classifier_export, tmp_path, name, damage, fragment):
    source = Path(classifier_export["export"]["formats"][name]["file"])
    for part in source.parent.glob(source.name + "*"):  # the file and its .json
        shutil.copy(part, tmp_path / part.name)
    if source.suffix == ".xml":
        shutil.copy(source.with_suffix(".bin"), tmp_path / source.with_suffix(".bin").name)
    (tmp_path / source.name).write_bytes(damage)
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "a.png")
    assert_one_line_error(deploy([tmp_path / source.name, tmp_path / "a.png"]), source.name, fragment)


def test_openvino_ir_without_its_weights_is_one_line_error(classifier_export, tmp_path):
    source = Path(classifier_export["export"]["formats"]["openvino"]["file"])
    shutil.copy(source, tmp_path / source.name)
    from toolkit.deploy.runtime import open_model

    with pytest.raises(ToolkitError, match=r"model_openvino.bin are not beside it"):
        open_model(tmp_path / source.name)


@pytest.mark.slow
def test_ssd_runtime_formats_give_pytorch_boxes(make_cfg, tmp_path):
    """SSD as .tflite and OpenVINO IR: decoded boxes and class probabilities in the file, NMS after the runtime
    (as the .pte); fp32 files give PyTorch's boxes and mAP; int8 files run and are scored; Core ML is written with
    its two outputs."""
    import coremltools as ct

    ckpt = save_checkpoint(fixed_seed_detector_task(make_cfg, "detection_ssd", []), tmp_path / "ssd.ckpt")
    report = run(make_cfg(["task=detection_ssd", *DETECTION_DATA, "mode=export", f"ckpt_path={ckpt}",
                           f"export.formats=[{','.join(RUNTIME_FORMATS)}]", *QUICK]))["export"]
    for name in ("litert", "openvino"):
        entry = report["formats"][name]
        assert entry["agreement"]["box_match_iou0.9"] == 1.0, name
        assert entry["val/map"] == pytest.approx(report["pytorch"]["val/map"], abs=0.002), name
    for name in ("litert_int8", "openvino_int8"):
        assert report["formats"][name]["val/map"] is not None and report["formats"][name]["latency_ms_batch1"] > 0
    spec = ct.utils.load_spec(report["formats"]["coreml"]["file"])
    assert [o.name for o in spec.description.output] == ["boxes", "scores"]
    assert json.loads(dict(spec.description.metadata.userDefined)["nms"])["in_graph"] is False


# ---- export.formats=all, the metric gate, int8_target ----------------------------------------------------------
def test_all_expands_to_every_installed_format_but_the_legacy_ones():
    formats = expand_formats(["all"])
    assert {"onnx", "onnx_int8", "litert", "litert_int8", "openvino", "openvino_int8", "coreml"} <= set(formats)
    assert not any(f.startswith("torchscript") for f in formats)
    assert expand_formats("all") == formats and expand_formats(["onnx", "all"])[0] == "onnx"
    assert expand_formats(["litert", "onnx", "litert"]) == ["litert", "onnx"]
    assert expand_formats(["all"], supported=["onnx", "no_such_runtime_format"]) == ["onnx"]
    assert "all" in known_formats() and "coreml" in known_formats()


def test_metric_gate_names_each_format_below_it():
    report = {"pytorch": {"val/top1": 0.80}, "formats": {
        "onnx": {"val/top1": 0.80}, "litert_int8": {"val/top1": 0.77}, "coreml": {"not_run": "needs Apple hardware"}}}
    assert metric_floor_failures(report, "val/top1", min_metric=0.75) == []
    (line,) = metric_floor_failures(report, "val/top1", min_metric=0.78)
    assert line.startswith("litert_int8 val/top1 0.7700 is below export.min_metric=0.78")
    (drop,) = metric_floor_failures(report, "val/top1", max_drop=0.01)
    assert drop.startswith("litert_int8") and "0.0300 worse" in drop
    assert metric_floor_failures(report, "val/top1", "min", min_metric=0.78) == ["onnx val/top1 0.8000 is above "
                                                                                  "export.min_metric=0.78"]


def test_export_fails_with_one_line_when_a_format_is_below_the_floor(make_cfg):
    """The report is written, then the command fails naming the format and its metric (exit 2 from the CLI)."""
    with pytest.raises(ToolkitError, match=r"onnx val/top1 [0-9.]+ is below export.min_metric=1\.01"):
        run(make_cfg(["backbone.alpha=0.25", "data.resolution=32", "data.image_size=32", "data.n_train=8",
                      "data.n_val=8", "data.batch_size=4", "mode=export", "export.formats=[onnx]", "export.min_metric=1.01",
                      *QUICK]))
    with pytest.raises(ConfigError, match="export.max_metric_drop"):
        run(make_cfg(["mode=export", "export.max_metric_drop=-1"]))
    with pytest.raises(ConfigError, match="export.formats"):
        run(make_cfg(["mode=export", "export.formats=[tflite]"]))


def test_int8_target_picks_the_fast_activation_type():
    assert machine_target("x86_64") == "x86" and machine_target("aarch64") == machine_target("arm64") == "arm"
    assert int8_activations({}, machine="x86_64") == "uint8" and int8_activations({}, machine="aarch64") == "int8"
    assert int8_activations({"int8_target": "arm"}, machine="x86_64") == "int8"
    assert int8_activations({"int8_target": "arm", "int8_activations": "uint8"}) == "uint8"  # explicit wins
    with pytest.raises(ConfigError, match="export.int8_target"):
        int8_activations({"int8_target": "riscv"})


@pytest.mark.slow
def test_export_formats_all_writes_and_scores_every_installed_format(make_cfg):
    """`export.formats=all` through mode=export: every installed format (the legacy TorchScript ones left out) in one
    report; a metric gate that every file passes lets the command succeed."""
    report = run(make_cfg(["backbone.alpha=0.25", "data.resolution=32", "data.image_size=32", "data.n_train=8",
                           "data.n_val=8", "data.batch_size=4", "mode=export", "export.formats=all",
                           "export.max_metric_drop=0.5", "export.calibration_batches=1", "export.latency_repeats=2",
                           "export.batch_size=2"]))["export"]
    assert set(expand_formats(["all"])) == set(report["formats"]) and not report["skipped"]
    assert not any(name.startswith("torchscript") for name in report["formats"])
    assert all("val/top1" in entry for name, entry in report["formats"].items() if name != "coreml")
