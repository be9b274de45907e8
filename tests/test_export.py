"""mode=export: every task's whole model as ONNX (detectors with NMS inside), int8, ExecuTorch; each file scored in
its runtime; the torch-free predictor and `mode=predict ckpt_path=model.onnx`."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from PIL import Image
from torch import nn

from toolkit.deploy.metadata import read_metadata
from toolkit.deploy.preprocess import preprocess
from toolkit.detection.export import SSDWholeDetector, WholeDetector
from toolkit.errors import ConfigError
from toolkit.modes.common import build_datamodule, build_task
from toolkit.run import run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUICK = ["export.latency_repeats=2", "export.batch_size=2", "export.calibration_batches=2"]
SHAPES = ["backbone.alpha=0.25", "data.resolution=64", "data.image_size=64", "data.batch_size=16"]


def estimate_batchnorm_statistics(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """Fresh BatchNorm statistics make an eval-mode MobileNet's output the same for every image; estimating them
    on images (as training does) gives outputs that depend on the input."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        for images in batches:
            model(images)
    return model.eval()


def op_types(graph: onnx.GraphProto) -> set[str]:
    """Operators of a graph and of its subgraphs (torchvision's batched NMS sits inside an If)."""
    found = set()
    for node in graph.node:
        found.add(node.op_type)
        for attribute in node.attribute:
            if attribute.g.node:
                found |= op_types(attribute.g)
    return found


def onnx_props(path: str) -> dict:
    return {p.key: json.loads(p.value) for p in onnx.load(path).metadata_props}


def compose_in(run_dir: Path, overrides: list[str]):
    """The config `python -m toolkit debug=cpu OVERRIDES` runs, with outputs in `run_dir` (make_cfg for fixtures
    wider than one test)."""
    import toolkit

    return toolkit.compose(["debug=cpu", *overrides], output_dir=run_dir)


# 6 shape classes (chance 0.17); AdamW and fresh BatchNorm statistics learn them in seconds (top-1 about 0.7).
# 600 validation images: one image is 0.17 points, so the 1-point int8 target is not decided by two or three images
LEARNS = SHAPES[:-1] + ["data.batch_size=32", "data.n_train=600", "data.n_val=600", "seed=0", "callbacks.lr_monitor=null",
                        "task.optimizer._target_=torch.optim.AdamW", "~task.optimizer.alpha", "~task.optimizer.momentum",
                        "~task.optimizer.eps", "task.scheduler=null", "task.optimizer.lr=0.01"]


@pytest.fixture(scope="module")
def trained_export(tmp_path_factory) -> dict:
    """The shapes classifier trained once per session (alpha 0.25, 64 px, 10 epochs: a model whose decisions
    mean something), exported by mode=export to every classifier format; the tests below share its files."""
    root = tmp_path_factory.mktemp("trained")
    precise_bn = "+callbacks.precise_bn={_target_: toolkit.precise_bn.PreciseBN, num_batches: 8}"  # short runs: fresh BN stats
    formats = ["onnx", "onnx_int8"] + (["executorch", "executorch_int8"] if importlib.util.find_spec("executorch") else [])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as env:
            env.setenv("TOOLKIT_CACHE_DIR", str(root / "cache"))
            env.setenv("TOOLKIT_LOG_DIR", str(root / "outputs"))
            trained = run(compose_in(root / "train", LEARNS + ["trainer.max_epochs=10", precise_bn]))
            output = io.StringIO()
            with contextlib.redirect_stdout(output):
                exported = run(compose_in(root / "export", LEARNS + [
                    "mode=export", f"ckpt_path={trained['best_checkpoint']}", f"export.formats=[{','.join(formats)}]",
                    *QUICK, "export.calibration_batches=4"]))
    finally:
        torch.set_num_threads(threads)
    return {**exported, "printed": output.getvalue()}


@pytest.mark.slow
def test_trained_classifier_formats_score_like_pytorch(trained_export):
    """fp32 files score exactly PyTorch's top-1; int8 files (calibrated on the training split) lose at most 2 points
    of it and are under 0.6 of the fp32 size; the report is printed and complete. The issue's 1-point target is
    measured by benchmarks/learning/export_accuracy.py on a larger model: on this alpha-0.25 one (top-1 about 0.7) a run
    lost 1.0 (onnx_int8) and 1.7 (executorch_int8) points on the 600 images, so 1 point here is not reliable."""
    report = trained_export["export"]
    torch_top1 = report["pytorch"]["val/top1"]
    assert torch_top1 > 0.6  # learned (6 classes: chance is 0.17)
    for fp32_name in ("onnx", "executorch"):
        if fp32_name in report["formats"]:
            entry = report["formats"][fp32_name]
            assert entry["val/top1"] == torch_top1 and entry["agreement"]["top1_agreement"] == 1.0, fp32_name
    for name in ("onnx_int8", "executorch_int8"):
        if name in report["formats"]:
            int8, fp32 = report["formats"][name], report["formats"][name.removesuffix("_int8")]
            assert int8["val/top1"] >= torch_top1 - 0.02, f"{name} loses more than 2 points: {int8['val/top1']}"
            assert int8["agreement"]["top1_agreement"] >= 0.9, name
            assert int8["size_mb"] < 0.6 * fp32["size_mb"], name
    assert report["calibration"].endswith("train split") and report["calibration_images"] == 4 * 32
    onnx_entry = report["formats"]["onnx"]
    assert onnx_entry["latency_ms_batch1"] > 0 and onnx_entry["images_per_s_batch2"] > 0
    assert "onnx_int8" in trained_export["printed"]
    if "executorch" in report["formats"]:
        assert read_metadata(report["formats"]["executorch"]["file"])["task"] == "classification"  # model.pte.json


@pytest.mark.slow  # trains the module's exported classifier (trained_export)
def test_classifier_file_carries_its_preprocessing(trained_export):
    onnx_entry = trained_export["export"]["formats"]["onnx"]
    model = onnx.load(onnx_entry["file"])
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch axis
    props = onnx_props(onnx_entry["file"])
    assert props["task"] == "classification" and props["resolution"] == 64 and props["alpha"] == 0.25
    assert len(props["mean"]) == 3 and len(props["std"]) == 3
    assert len(props["class_names"]) == 6 and props["channel_order"] == "RGB"
    int8 = trained_export["export"]["formats"]["onnx_int8"]["file"]
    assert any(op.op_type == "QuantizeLinear" for op in onnx.load(int8).graph.node)
    assert "percentile" in onnx_props(int8)["quantization"]


@pytest.mark.slow
def test_predict_from_exported_file_with_and_without_torch(make_cfg, trained_export, tmp_path):
    """mode=predict and the torch-free predictor give the same predictions from the exported file."""
    onnx_file = trained_export["export"]["formats"]["onnx"]["file"]
    images = tmp_path / "photos"
    images.mkdir()
    for i, size in enumerate([(64, 64), (90, 50), (40, 120)]):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(images / f"{i}.png")
    from_file = run(make_cfg(SHAPES + ["mode=predict", f"ckpt_path={onnx_file}", f"predict.input={images}"]))
    assert {Path(f).name for f in from_file["files"]} == {"predictions.json", "predictions.csv", "predictions.png"}
    records = json.loads((Path(from_file["output_dir"]) / "predictions.json").read_text())
    assert from_file["count"] == len(records) == 3 and len(records[0]["top_k"]) == 5

    # the torch-free predictor: torch cannot even be imported in that process
    out = tmp_path / "deployed"
    code = ("import sys; sys.modules['torch'] = None; from toolkit.deploy.__main__ import main; "
            f"code = main([{onnx_file!r}, {str(images)!r}, '--out', {str(out)!r}]); "
            "assert 'torch' not in sys.modules or sys.modules['torch'] is None; sys.exit(code)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    deployed = json.loads((out / "predictions.json").read_text())
    assert [r["top_k"][0]["label"] for r in deployed] == [r["top_k"][0]["label"] for r in records]
    assert deployed[0]["top_k"][0]["score"] == pytest.approx(records[0]["top_k"][0]["score"], abs=1e-5)


@pytest.mark.parametrize("task, overrides", [
    ("fine_grained", ["data=stanford_dogs_synthetic", "data.n_breeds=4", "data.n_train=16", "data.n_val=8",
                      "data.image_size=32", "data.resolution=32", "data.batch_size=8"]),
    ("face_attributes", ["data=celeba_synthetic", "teacher=none", "data.n_train=16", "data.n_val=8",
                         "data.resolution=32", "data.batch_size=8"]),
    ("face_embedding", ["data=faces_synthetic", "teacher=none", "data.n_identities=6", "data.n_test_identities=6",
                        "data.images_per_identity=2", "data.pairs_per_fold=2", "data.folds=2",
                        "data.resolution=32", "data.batch_size=8"]),
    ("geolocation", ["data=geo_synthetic", "data.n_train=40", "data.n_val=8", "data.image_size=32",
                     "data.resolution=32", "data.batch_size=8", "data.cells.t_max=8", "data.cells.t_min=2"]),
])
def test_every_task_exports_whole_onnx_scored_like_pytorch(make_cfg, task, overrides, tmp_path):
    """A fixed-seed model of each classifier-style task: the ONNX file gives PyTorch's metric and outputs, and the
    predictor of exported files writes that task's prediction files from it."""
    report = run(make_cfg([f"task={task}", "backbone.alpha=0.25", *overrides, "mode=export", "export.formats=[onnx]",
                           *QUICK]))["export"]
    entry = report["formats"]["onnx"]
    monitor = next(k for k in entry if k.startswith("val/"))
    assert entry[monitor] == pytest.approx(report["pytorch"][monitor], abs=1e-6)
    assert entry["agreement"]["max_abs_diff"] < 1e-3
    props = onnx_props(entry["file"])
    session = onnxruntime.InferenceSession(entry["file"], providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"image": np.zeros((3, 3, 32, 32), np.float32)})
    if task == "face_embedding":
        assert props["task"] == "face_embedding" and np.allclose(np.linalg.norm(outputs[0], axis=1), 1, atol=1e-5)
    if task == "geolocation":  # the file alone gives a location: cell table inside, latitude/longitude out
        assert props["outputs"][-2:] == ["cell_log_scores", "latlon"] and outputs[-1].shape == (3, 2)
        assert len(props["cells"]["tokens"]) == outputs[-2].shape[1]
        assert list(outputs[-1][0]) == pytest.approx(props["cells"]["latlon"][int(outputs[-2][0].argmax())], abs=1e-4)
    if task == "face_attributes":
        assert props["task"] == "face_attributes" and len(props["attribute_names"]) == outputs[0].shape[1]

    from toolkit.deploy import predict_files

    photos = []
    for i in range(3):
        photos.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((40, 30 + i, 3), 60 * i, np.uint8)).save(photos[-1])
    predicted = predict_files(entry["file"], photos, tmp_path / "pred")
    expected = {"face_attributes": ["predictions.json", "predictions.csv"],
                "face_embedding": ["embeddings.npy", "embeddings_paths.txt"]}
    assert [Path(f).name for f in predicted["files"]] == expected.get(
        task, ["predictions.json", "predictions.csv", "predictions.png"]) and predicted["count"] == 3


DETECTION_DATA = ["data=shapes", "backbone.alpha=0.25", "data.resolution=128", "data.image_size=128", "data.n_train=8",
                  "data.n_val=4", "data.batch_size=4"]


def save_checkpoint(task, path: Path) -> Path:
    import lightning

    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


def fixed_seed_detector_task(make_cfg, task: str, extra: list[str]):
    """A detector with estimated BatchNorm statistics and small random heads: distinct scores, unclipped boxes."""
    cfg = make_cfg([f"task={task}", *DETECTION_DATA, *extra])
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    torch.manual_seed(0)
    built = build_task(cfg, datamodule)
    detector = built.model
    trunk = detector.features if hasattr(detector, "features") else detector.backbone
    estimate_batchnorm_statistics(detector, [])
    detector.train()
    with torch.no_grad():
        for _ in range(2):
            trunk(torch.randn(4, 3, 128, 128))  # inputs are normalised images
        for name, param in detector.named_parameters():
            if name.startswith(("head.", "roi_heads.box_predictor", "rpn.head")):
                param.mul_(0.1)  # random heads saturate: small outputs give distinct scores and unclipped boxes
    built.eval()
    return built


def fixed_seed_detector(make_cfg, task: str, extra: list[str]):
    return fixed_seed_detector_task(make_cfg, task, extra).model


def onnx_detector(detector, tmp_path: Path, dynamic_size: bool, name: str = "det") -> onnxruntime.InferenceSession:
    from toolkit.formats.onnx import export_onnx

    whole = WholeDetector(detector) if hasattr(detector, "roi_heads") else SSDWholeDetector(detector)  # as exported
    path = export_onnx(whole.eval(), torch.rand(1, 3, 128, 128), tmp_path / f"{name}.onnx", 17,
                       ["boxes", "scores", "labels", "count"], "torchscript", dynamic_size=dynamic_size)
    assert "NonMaxSuppression" in op_types(onnx.load(str(path)).graph)
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def assert_same_detections(detector, session, image: torch.Tensor) -> int:
    """The same detections (box, score, label) as PyTorch, as sets: NMS may order equal scores differently."""
    with torch.no_grad():
        ref = detector([image])[0]
    boxes, scores, labels, count = session.run(None, {"image": image[None].numpy()})
    assert int(count[0]) == len(ref["boxes"]) == len(boxes)
    for box, score, label in zip(ref["boxes"].numpy(), ref["scores"].numpy(), ref["labels"].numpy(), strict=True):
        close = (np.abs(boxes - box).max(1) < 1e-2) & (np.abs(scores - score) < 1e-5) & (labels == label)
        assert close.any(), f"PyTorch's {label} {score:.4f} {box} is missing from the ONNX output"
    return len(boxes)


def test_ssd_onnx_gives_pytorch_boxes_on_several_image_sizes_and_on_an_empty_image(make_cfg, tmp_path):
    """Anchor decoding and NMS inside the graph: photos of several sizes (resized by the file's metadata rule, as
    the predictor does) give PyTorch's boxes; a blank image gives none."""
    detector = fixed_seed_detector(make_cfg, "detection_ssd", ["task.model.score_thresh=0.2"])
    session = onnx_detector(detector, tmp_path, dynamic_size=False)
    meta = {"resize": {"mode": "square"}, "resolution": 128, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    found = 0
    for i, (w, h) in enumerate([(128, 128), (200, 90), (70, 160)]):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        array, orig = preprocess(tmp_path / f"{i}.png", meta)
        assert array.shape == (3, 128, 128) and orig == (h, w)
        found += assert_same_detections(detector, session, torch.from_numpy(array))
    assert found > 0
    detector.score_thresh = 0.99  # nothing in a blank image is that sure: an empty result through the graph
    strict = onnx_detector(detector, tmp_path, dynamic_size=False, name="strict")
    assert assert_same_detections(detector, strict, torch.zeros(3, 128, 128)) == 0


class FixedHead(nn.Module):
    """An SSD head giving the same random box codes and class logits for any input: every class has candidates
    of distinct scores all over the image (a trained head's outputs need training; a random one's are near-tied)."""

    def __init__(self, anchors: int, classes: int, background: float):
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.register_buffer("codes", torch.randn(1, anchors, 4, generator=generator) * 0.5)
        logits = torch.randn(1, anchors, classes + 1, generator=generator) * 2
        logits[..., 0] += background
        self.register_buffer("logits", logits)

    def forward(self, features: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        zero = 0 * features[0].mean()  # keeps the head in the traced graph's data flow
        return {"bbox_regression": self.codes + zero, "cls_logits": self.logits + zero}


@pytest.mark.parametrize(("score_thresh", "background"), [(1e-8, 0.0), (0.01, 4.0), (0.5, 6.0)])
def test_ssd_postprocess_without_a_class_loop_gives_torchvision_detections(tmp_path, score_thresh, background):
    """SSD's post-processing in the ONNX graph and in numpy (`.pte`, `.tflite`, IR files): one top-k over every
    class, one filter, one class-aware NMS stopping at detections_per_img, where torchvision loops over classes
    and hands NMS every candidate: the same boxes, scores and labels in the same order as torchvision's
    `SSD.postprocess_detections`, at the evaluation threshold (8000 candidates), a deployment one and one that
    leaves fewer than detections_per_img. The graph holds one TopK and one NonMaxSuppression, which stops at
    detections_per_img."""
    from toolkit.deploy.postprocess import ssd_detections
    from toolkit.detection.export import SSDDenseOutputs, ssd_anchors
    from toolkit.detection.ssd import build_ssd
    from toolkit.formats.onnx import export_onnx

    ssd = build_ssd({"name": "mobilenet_v1", "alpha": 0.25}, 40, score_thresh=score_thresh).eval()
    ssd.head = FixedHead(len(ssd_anchors(ssd, 128)), 40, background)
    image = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        ref = ssd([image[0]])[0]
        eager = SSDWholeDetector(ssd)(image)
        boxes, probs = SSDDenseOutputs(ssd)(image)
    assert 0 < len(ref["scores"]) <= 100 and (len(ref["scores"]) == 100) == (score_thresh < 0.5)
    path = export_onnx(SSDWholeDetector(ssd).eval(), image, tmp_path / "ssd.onnx", 17,
                       ["boxes", "scores", "labels", "count"], "torchscript")
    graph = onnx.load(str(path)).graph
    assert [n.op_type for n in graph.node].count("TopK") == 1 and "If" not in op_types(graph)
    (nms_node,) = [n for n in graph.node if n.op_type == "NonMaxSuppression"]
    limit = next(i for i in graph.node if i.output[0] == nms_node.input[2]).attribute[0].t
    assert onnx.numpy_helper.to_array(limit).tolist() == [100]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    graph_out = session.run(None, {"image": image.numpy()})
    numpy_out = ssd_detections(boxes[0].numpy(), probs[0].numpy(), score_thresh, ssd.nms_thresh,
                               ssd.topk_candidates, ssd.detections_per_img)
    for name, (b, s, lab) in {"eager": [t.numpy() for t in eager[:3]], "onnx": graph_out[:3],
                              "numpy": numpy_out}.items():
        assert (lab == ref["labels"].numpy()).all(), name
        np.testing.assert_allclose(b, ref["boxes"].numpy(), atol=1e-3, err_msg=name)
        np.testing.assert_allclose(s, ref["scores"].numpy(), atol=1e-6, err_msg=name)
    assert int(graph_out[3][0]) == len(ref["scores"])


def test_faster_rcnn_onnx_gives_pytorch_boxes_at_any_input_size(make_cfg, tmp_path):
    """RPN, RoIAlign and both NMS stages inside one graph that takes keep-aspect inputs of any size."""
    detector = fixed_seed_detector(make_cfg, "detection_frcnn", ["task.model.rcnn.box_score_thresh=0.05"])
    session = onnx_detector(detector, tmp_path, dynamic_size=True)
    assert "RoiAlign" in op_types(onnx.load(str(tmp_path / "det.onnx")).graph)
    found = sum(assert_same_detections(detector, session, torch.rand(3, h, w, generator=torch.Generator().manual_seed(h)))
                for h, w in [(128, 128), (128, 192), (160, 128)])
    assert found > 0
    detector.roi_heads.score_thresh = 0.99  # nothing in a blank image is that sure: an empty result through the graph
    strict = onnx_detector(detector, tmp_path, dynamic_size=True, name="strict")
    assert assert_same_detections(detector, strict, torch.zeros(3, 128, 160)) == 0


@pytest.mark.slow
def test_ssd_export_mode_scores_each_file(make_cfg, tmp_path):
    """mode=export of an SSD: whole-model ONNX and int8, each scored by COCO mAP in ONNX Runtime, and a .pte whose
    NMS runs after ExecuTorch's runtime; the predictor draws boxes from the file."""
    formats = ["onnx", "onnx_int8"] + (["executorch"] if importlib.util.find_spec("executorch") else [])
    ckpt = save_checkpoint(fixed_seed_detector_task(make_cfg, "detection_ssd", []), tmp_path / "ssd.ckpt")
    report = run(make_cfg(["task=detection_ssd", *DETECTION_DATA, "mode=export", f"ckpt_path={ckpt}",
                           f"export.formats=[{','.join(formats)}]", *QUICK]))["export"]
    entry = report["formats"]["onnx"]
    assert abs(entry["val/map"] - report["pytorch"]["val/map"]) <= 0.002
    assert entry["agreement"]["box_match_iou0.9"] == 1.0
    assert "onnx_int8" in report["formats"] and report["formats"]["onnx_int8"]["images_per_s_batch2"] is None
    meta = read_metadata(entry["file"])
    assert meta["task"] == "detection" and meta["input_size"] == [128, 128] and meta["nms"]["in_graph"]
    assert meta["nms"]["score_thresh"] == 0.01  # export.score_thresh, the deployment threshold, in file and reference
    if "executorch" in formats:
        pte = report["formats"]["executorch"]
        assert pte["agreement"]["box_match_iou0.9"] == 1.0
        assert pte["val/map"] == pytest.approx(report["pytorch"]["val/map"], abs=0.002)
        assert not read_metadata(pte["file"])["nms"]["in_graph"]
    Image.fromarray(np.full((90, 140, 3), 128, np.uint8)).save(tmp_path / "photo.jpg")
    from toolkit.deploy import predict_files

    result = predict_files(entry["file"], [tmp_path / "photo.jpg"], tmp_path / "pred", score_thresh=0.0)
    (record,) = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert result["count"] == 1 and record["width"] == 140 and any(f.endswith(".png") for f in result["files"])
    for det in record["detections"]:  # boxes in the original photo's pixels
        x1, y1, x2, y2 = det["box_xyxy"]
        assert 0 <= x1 <= x2 <= 140.01 and 0 <= y1 <= y2 <= 90.01


def test_faster_rcnn_says_why_it_has_no_executorch_file(make_cfg, capsys):
    pytest.importorskip("executorch")
    frcnn = run(make_cfg(["task=detection_frcnn", *DETECTION_DATA, "mode=export", "export.formats=[executorch]",
                          "export.verify=false", *QUICK]))["export"]
    assert "RoIAlign" in frcnn["skipped"]["executorch"] and not frcnn["formats"]
    assert "executorch skipped" in capsys.readouterr().out


@pytest.mark.slow
def test_faster_rcnn_onnx_is_verified_in_its_runtime(make_cfg):
    """Verification stands the runtime in for the model: the task's hooks must not reach for the RPN then."""
    frcnn = run(make_cfg(["task=detection_frcnn", *DETECTION_DATA, "mode=export", "export.formats=[onnx]",
                          "export.verify_batches=1", *QUICK]))["export"]
    onnx = frcnn["formats"]["onnx"]
    assert onnx["val/map"] is not None and "box_match_iou0.9" in onnx["agreement"]


def test_missing_runtime_names_the_extra(make_cfg, monkeypatch):
    import toolkit.modes.export as export_mode

    monkeypatch.setitem(sys.modules, "executorch", None)
    with pytest.raises(export_mode.ExportError, match=r"pip install 'mobilenet-toolkit\[mobile\]'"):
        run(make_cfg(SHAPES + ["mode=export", "export.formats=[executorch]"]))


def test_export_settings_are_checked(make_cfg):
    with pytest.raises(ConfigError, match="export.formats"):
        run(make_cfg(["mode=export", "export.formats=[int8]"]))
    with pytest.raises(ConfigError, match="export.calibration"):
        run(make_cfg(["mode=export", "export.calibration=data"]))
    with pytest.raises(ConfigError, match="export.calibration_method"):
        run(make_cfg(["mode=export", "export.calibration_method=kl"]))


def test_deploy_refuses_a_file_without_metadata(tmp_path):
    from toolkit.errors import DataError

    path = tmp_path / "plain.onnx"
    torch.onnx.export(nn.Conv2d(3, 2, 1), (torch.rand(1, 3, 8, 8),), str(path), dynamo=False)
    with pytest.raises(DataError, match="no toolkit metadata"):
        read_metadata(path)
