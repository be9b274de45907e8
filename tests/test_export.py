"""mode=export: a valid ONNX file with a dynamic batch axis, and an int8 model that agrees with fp32 on most inputs."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning
import onnx
import pytest
import torch
from torch import nn

from toolkit.backbones import create_backbone
from toolkit.data.shapes import ShapesClassificationDataModule
from toolkit.errors import DataError
from toolkit.heads import ClassifierHead
from toolkit.modes.common import build_task
from toolkit.modes.export import agreement, quantize_int8
from toolkit.run import run

SMALL = ["backbone.alpha=0.25", "data.resolution=64", "data.n_train=12", "data.n_val=40", "data.batch_size=8",
         "data.image_size=64"]


def estimate_batchnorm_statistics(model: nn.Module, batches: list[torch.Tensor]) -> nn.Module:
    """Freshly initialised BatchNorm statistics make an eval-mode MobileNet's output the same for every image;
    estimating them on images (as training does) gives outputs that depend on the input."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        for images in batches:
            model(images)
    return model.eval()


def shapes_images(tmp_path: Path, count: int) -> list[torch.Tensor]:
    dm = ShapesClassificationDataModule(cache_dir=str(tmp_path / "cache"), n_train=6, n_val=count, image_size=64,
                                        resolution=64, batch_size=16, num_workers=0)
    dm.setup("validate")
    return [batch["image"] for batch in dm.val_dataloader()]


@pytest.fixture
def checkpoint(make_cfg, tmp_path) -> Path:
    """A 6-class checkpoint whose outputs depend on the input."""
    task = build_task(make_cfg(SMALL + ["task.num_classes=6"]))
    generator = torch.Generator().manual_seed(0)
    estimate_batchnorm_statistics(task.model, [torch.randn(16, 3, 64, 64, generator=generator) for _ in range(4)])
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


def test_onnx_and_int8_from_checkpoint(make_cfg, checkpoint, capsys):
    cfg = make_cfg(SMALL + ["mode=export", f"ckpt_path={checkpoint}", "export.calibration_batches=3",
                            "export.check_batches=2"])
    report = run(cfg)["export"]
    assert report["calibration"].startswith("data (ShapesClassificationDataModule")
    assert report["calibration_images"] == 24 and report["check_images"] == 16 and not report["outputs_constant"]

    model = onnx.load(report["onnx"]["file"])
    onnx.checker.check_model(model, full_check=True)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # a named, dynamic batch axis
    import onnxruntime

    session = onnxruntime.InferenceSession(report["onnx"]["file"], providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 64, 64)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    assert logits.shape == (3, 6)
    assert report["onnx"]["onnxruntime"]["max_abs_diff"] < 1e-4
    assert report["onnx"]["onnxruntime"]["top1_agreement"] == 1.0

    int8 = report["int8"]
    # Untrained weights: quantisation noise compounds through 27 random layers, so agreement is a figure
    # here, not a check (test_int8_agrees_with_fp32 checks it where it is meaningful).
    assert 0.0 <= int8["top1_agreement"] <= 1.0 and int8["max_abs_diff"] > 0
    assert int8["size_mb"] < 0.5 * report["fp32"]["size_mb"]  # int8 weights: about 4x smaller
    with pytest.warns(FutureWarning):  # torch.jit.load is deprecated; the file is still what mobile runtimes read
        loaded = torch.jit.load(int8["file"])
    assert loaded(x).shape == (3, 6)
    assert "top-1 agreement" in capsys.readouterr().out


def test_random_calibration_when_data_is_missing(make_cfg, caplog, monkeypatch):
    """The configured data set is not on disk: calibrate on random images, say so, and flag untrained outputs."""
    import toolkit.modes.export as export_mode

    def missing(cfg, task=None):
        raise DataError("/data/imagenet/val: no such folder; download ImageNet and put it there")

    monkeypatch.setattr(export_mode, "build_datamodule", missing)
    cfg = make_cfg(SMALL + ["mode=export", "export.formats=[int8]", "task.num_classes=6",
                            "export.calibration_batches=1", "export.check_batches=1", "export.batch_size=4"])
    with caplog.at_level(logging.WARNING):
        report = run(cfg)["export"]
    assert report["calibration"] == "random" and "onnx" not in report
    assert "calibrating on random images" in caplog.text and "/data/imagenet/val: no such folder" in caplog.text
    assert report["outputs_constant"]  # random weights, fresh BN statistics
    assert "the fp32 outputs are the same for every input" in caplog.text
    assert Path(report["int8"]["file"]).is_file()


def test_backbone_target_onnx(make_cfg):
    cfg = make_cfg(SMALL + ["mode=export", "export.formats=[onnx]", "export.target=backbone",
                            "export.calibration=random", "export.calibration_batches=1", "export.check_batches=1",
                            "export.batch_size=2"])
    report = run(cfg)["export"]
    assert report["onnx"]["onnxruntime"]["top1_agreement"] is None  # feature maps, not logits
    graph = onnx.load(report["onnx"]["file"]).graph
    assert [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim][1:] == [256, 2, 2]


def test_int8_agrees_with_fp32(tmp_path):
    """Static PTQ of the first 8 MobileNet stages + classifier head, calibrated and checked on shapes images."""
    torch.manual_seed(0)
    backbone = create_backbone("mobilenet_v1", alpha=0.25)
    model = nn.Sequential(*list(backbone.stages.children())[:8], ClassifierHead(backbone.feature_info[7].channels, 6))
    images = shapes_images(tmp_path, 96)
    estimate_batchnorm_statistics(model, images)
    calibration, check = images[:3], images[3:]
    with torch.no_grad():
        reference = [model(x) for x in check]
    assert torch.cat(reference).std(0).min() > 0.01  # the decision depends on the image
    quantized = quantize_int8(model, calibration, "qnnpack")
    with torch.no_grad():
        result = agreement(reference, [quantized(x) for x in check])
    assert result["top1_agreement"] >= 0.9
    assert result["max_abs_diff"] < 0.5 * result["ref_max_abs"]
