"""export.postprocess=none: SSD's raw head (box regression, class logits) with its anchors and decoding rule in the
metadata, decoded by toolkit.deploy; loaded by OpenCV 4.x's cv2.dnn like the classifier file; every detector file
says how to read its boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from torch import nn

from toolkit.deploy.metadata import read_metadata
from toolkit.errors import ConfigError
from toolkit.modes.common import build_datamodule, build_task
from toolkit.run import run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SSD = ["task=detection_ssd", "data=shapes", "backbone.alpha=0.25", "data.resolution=64", "data.image_size=64",
       "data.n_train=4", "data.n_val=4", "data.batch_size=2"]
CLASSIFIER = ["backbone.alpha=0.25", "data.resolution=64", "data.image_size=64", "data.n_train=12", "data.n_val=6",
              "data.batch_size=6"]
QUICK = ["export.latency_repeats=1", "export.batch_size=2", "export.calibration_batches=1"]


def opencv4():
    cv2 = pytest.importorskip("cv2")
    if not cv2.__version__.startswith("4."):
        pytest.skip(f"OpenCV {cv2.__version__}: this checks OpenCV 4.x (pip install 'opencv-python-headless<5', the dev extra)")
    return cv2


def fresh_batchnorm(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None


def save_checkpoint(task, path: Path) -> Path:
    import lightning

    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


def fixed_seed_checkpoint(make_cfg, overrides: list[str], path: Path, detector: bool) -> tuple[Path, object]:
    """A model whose outputs depend on the image (BatchNorm statistics of random inputs; detector heads scaled down
    so scores spread and boxes stay inside the image), saved as a checkpoint."""
    cfg = make_cfg(overrides)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    torch.manual_seed(0)
    task = build_task(cfg, datamodule)
    model = task.model
    fresh_batchnorm(model)
    model.train()
    with torch.no_grad():
        (model.features if detector else model)(torch.randn(8, 3, 64, 64))
        if detector:
            for name, param in model.named_parameters():
                if name.startswith("head."):
                    param.mul_(0.1)
    task.eval()
    return save_checkpoint(task, path), task


def compose_in(run_dir: Path, overrides: list[str]):
    """The config `python -m toolkit debug=cpu OVERRIDES` runs, with outputs in `run_dir` (for a module fixture)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="toolkit.conf", version_base="1.3"):
        cfg = compose("config", overrides=["debug=cpu", *overrides], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    GlobalHydra.instance().clear()
    return cfg


def export_raw_ssd(root: Path, formats: list[str]) -> dict:
    """One SSD checkpoint exported with export.postprocess=none, each file scored by mode=export's verification."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TOOLKIT_CACHE_DIR", str(root / "cache"))
        env.setenv("TOOLKIT_LOG_DIR", str(root / "logs"))
        ckpt, task = fixed_seed_checkpoint(lambda o: compose_in(root / "build", ["trainer.precision=32-true", *o]),
                                           SSD, root / "ssd.ckpt", detector=True)
        report = run(compose_in(root / "export", ["trainer.precision=32-true", *SSD, "mode=export", f"ckpt_path={ckpt}",
                                                  f"export.formats=[{','.join(formats)}]", "export.postprocess=none",
                                                  *QUICK]))["export"]
    return {"report": report, "task": task}


@pytest.fixture(scope="module")
def raw_ssd(tmp_path_factory):
    return export_raw_ssd(tmp_path_factory.mktemp("raw_ssd"), ["onnx"])


def test_raw_head_file_holds_the_network_only_and_its_decoding_rule(raw_ssd):
    entry = raw_ssd["report"]["formats"]["onnx"]
    graph = onnx.load(entry["file"]).graph
    ops = {node.op_type for node in graph.node}
    assert not ops & {"NonMaxSuppression", "NonZero", "TopK", "If", "Loop"}, ops
    meta = read_metadata(entry["file"])
    assert meta["outputs"] == ["bbox_regression", "cls_logits"] and not meta["nms"]["in_graph"]
    raw = meta["raw_head"]
    session = onnxruntime.InferenceSession(entry["file"], providers=["CPUExecutionProvider"])
    regression, logits = session.run(None, {"image": np.zeros((1, 3, 64, 64), np.float32)})
    assert regression.shape == (1, len(raw["anchors"]), 4) and logits.shape == (1, len(raw["anchors"]), 7)
    assert raw["box_coder"]["weights"] == [10.0, 10.0, 5.0, 5.0] and raw["background_index"] == 0
    assert "softmax" in raw["score"] and raw["iou_thresh"] == 0.6 and raw["detections_per_img"] == 100
    conventions = meta["detections"]
    assert conventions["label_base"] == 1 and conventions["batch"] == 1 and "xyxy" in conventions["box_format"]


def test_raw_head_onnx_scores_like_pytorch_through_deploys_decoding(raw_ssd):
    """mode=export's verification runs the raw-head file through toolkit.deploy's numpy decoding and NMS: PyTorch's
    mAP and every PyTorch box matched."""
    report = raw_ssd["report"]
    entry = report["formats"]["onnx"]
    assert entry["agreement"]["box_match_iou0.9"] == 1.0
    assert entry["val/map"] == pytest.approx(report["pytorch"]["val/map"], abs=0.002)


@pytest.mark.slow
def test_raw_head_pte_scores_like_pytorch(tmp_path):
    """The same raw head as an ExecuTorch .pte (XNNPACK), decoded after the runtime by toolkit.deploy."""
    pytest.importorskip("executorch")
    exported = export_raw_ssd(tmp_path, ["executorch"])
    report, entry = exported["report"], exported["report"]["formats"]["executorch"]
    assert read_metadata(entry["file"])["outputs"] == ["bbox_regression", "cls_logits"]
    assert entry["agreement"]["box_match_iou0.9"] == 1.0
    assert entry["val/map"] == pytest.approx(report["pytorch"]["val/map"], abs=0.002)


def test_raw_head_decodes_to_the_checkpoints_boxes(raw_ssd):
    """toolkit.deploy's decoding of the raw head gives torchvision's SSD post-processing: same count, boxes within
    1e-3 px, scores within 1e-4."""
    from toolkit.deploy.predict import detections
    from toolkit.deploy.runtime import open_model

    task = raw_ssd["task"]
    runner, meta = open_model(raw_ssd["report"]["formats"]["onnx"]["file"])
    found = 0
    for seed in range(3):
        image = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            ref = task.model([image])[0]
        boxes, scores, labels = detections(runner.run(image[None].numpy()), meta)
        assert len(boxes) == len(ref["boxes"])
        order, ref_order = np.lexsort((labels, -scores)), np.lexsort((ref["labels"].numpy(), -ref["scores"].numpy()))
        assert np.abs(boxes[order] - ref["boxes"].numpy()[ref_order]).max() < 1e-3
        assert np.abs(scores[order] - ref["scores"].numpy()[ref_order]).max() < 1e-4
        assert np.array_equal(labels[order], ref["labels"].numpy()[ref_order])
        found += len(boxes)
    assert found > 0


def test_opencv4_runs_the_raw_ssd_file(raw_ssd):
    cv2 = opencv4()
    path = raw_ssd["report"]["formats"]["onnx"]["file"]
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    net = cv2.dnn.readNetFromONNX(path)
    for seed in range(2):
        image = np.random.default_rng(seed).standard_normal((1, 3, 64, 64)).astype(np.float32)
        expected = session.run(None, {"image": image})
        net.setInput(image)
        got = net.forward(["bbox_regression", "cls_logits"])
        for a, b in zip(got, expected, strict=True):
            assert np.abs(a.reshape(b.shape) - b).max() < 1e-4
        assert np.abs(expected[1]).max() > 1e-3  # outputs that are not all zero: a comparison that can fail


def test_opencv4_runs_the_classifier_file(make_cfg, tmp_path):
    cv2 = opencv4()
    ckpt, _ = fixed_seed_checkpoint(make_cfg, CLASSIFIER, tmp_path / "cls.ckpt", detector=False)
    report = run(make_cfg([*CLASSIFIER, "mode=export", f"ckpt_path={ckpt}", "export.formats=[onnx]", "export.verify=false",
                           *QUICK]))["export"]
    path = report["formats"]["onnx"]["file"]
    batch = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    expected = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, {"image": batch})[0]
    net = cv2.dnn.readNetFromONNX(path)
    net.setInput(batch)
    got = net.forward()
    assert got.shape == expected.shape and np.abs(got - expected).max() < 1e-4
    assert np.ptp(expected, axis=0).max() > 1e-3  # the logits differ between images


def test_whole_detector_file_says_how_to_read_its_rows(make_cfg, tmp_path):
    """The default (NMS in the graph): `count` rows, not padded, and the metadata says so; boxes in input pixels."""
    ckpt, _ = fixed_seed_checkpoint(make_cfg, SSD, tmp_path / "ssd.ckpt", detector=True)
    report = run(make_cfg([*SSD, "mode=export", f"ckpt_path={ckpt}", "export.formats=[onnx]", "export.verify=false",
                           *QUICK]))["export"]
    path = report["formats"]["onnx"]["file"]
    meta = read_metadata(path)
    assert meta["nms"]["in_graph"] and "not padded" in meta["detections"]["rows"]
    assert meta["detections"]["label_base"] == 1 and "input" in meta["detections"]["coordinate_frame"]
    assert meta["resize"]["mode"] == "square" and meta["resize"]["interpolation"] == "cv2.INTER_LINEAR"
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    boxes, scores, labels, count = session.run(None, {"image": np.random.default_rng(0).standard_normal((1, 3, 64, 64),
                                                                                                         dtype=np.float32)})
    assert len(boxes) == len(scores) == len(labels) == int(count[0]) <= meta["nms"]["detections_per_img"]
    assert labels.min(initial=1) >= 1 and boxes.max(initial=0) <= 64


def test_faster_rcnn_refuses_a_raw_head_in_one_line(make_cfg, tmp_path):
    """Refused before any work by the config check, and by the exporter for a checkpoint whatever the config says."""
    from toolkit.errors import ExportError

    overrides = ["task=detection_frcnn", "data=shapes", "backbone.alpha=0.25", "data.resolution=64",
                 "data.image_size=64", "data.n_train=4", "data.n_val=2", "data.batch_size=2"]
    with pytest.raises(ConfigError, match="export.postprocess.*RPN and RoI stages"):
        run(make_cfg([*overrides, "mode=export", "export.formats=[onnx]", "export.postprocess=none", *QUICK]))
    cfg = make_cfg(overrides)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    with pytest.raises(ExportError, match="export.postprocess=none: .*RPN and RoI stages") as error:
        build_task(cfg, datamodule).inference().module("onnx", postprocess="none")
    assert "\n" not in str(error.value)


def test_postprocess_setting_is_checked(make_cfg):
    with pytest.raises(ConfigError, match="export.postprocess"):
        run(make_cfg(["mode=export", "export.postprocess=raw"]))
