"""Train/serve parity: `toolkit.deploy` on an exported file predicts what `mode=predict` predicts on the checkpoint.

Both decode, resize and normalise through the same functions (`toolkit.data.eval_preprocess`, the JPEG draft rule
of the predict loader); these tests check the functions against albumentations (the pipelines training used before
them), the eval transforms against the deploy preprocessing on photo-like files (fine texture, shrunk several
times: where Pillow's antialiased resize used to differ), and the predictions end to end for a classifier and SSD.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.optim.swa_utils import update_bn

from toolkit.data import eval_preprocess
from toolkit.data.detection_transforms import detection_transforms
from toolkit.data.face_transforms import face_eval_transform
from toolkit.data.transforms import classification_eval_transform
from toolkit.deploy import predict_files
from toolkit.deploy.preprocess import preprocess
from toolkit.modes.common import build_datamodule, build_task
from toolkit.run import run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: (width, height): larger than the inputs (shrunk 2-10x, where antialiasing matters), odd, portrait, smaller
PHOTO_SIZES = [(640, 480), (517, 333), (300, 420), (97, 131)]


def photo_like(width: int, height: int, seed: int) -> np.ndarray:
    """Fine stripes at several frequencies and angles plus pixel noise: what a shrinking resize aliases."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = []
    for c in range(3):
        fx, fy = rng.uniform(0.5, 2.5, 2)
        wave = 70 * np.sin(fx * x + fy * y + c) + 40 * np.cos(0.05 * x * (c + 1)) * np.sin(0.9 * y)
        channels.append(128 + wave + rng.normal(0, 25, (height, width)))
    return np.clip(np.stack(channels, -1), 0, 255).astype(np.uint8)


def write_photos(folder: Path) -> list[Path]:
    """The photo-like images as PNG and JPEG (JPEGs large enough are decoded reduced by the predict loader)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate(PHOTO_SIZES):
        image = Image.fromarray(photo_like(w, h, i))
        paths += [folder / f"photo{i}.png", folder / f"photo{i}.jpg"]
        image.save(paths[-2])
        image.save(paths[-1], quality=90)
    return paths


# ---- the functions against albumentations ------------------------------------------------------------------------
@pytest.mark.parametrize("resolution, crop_fraction", [(64, 0.875), (224, 0.875), (32, 1.0), (96, 0.9)])
def test_center_crop_rule_gives_albumentations_pixels(resolution, crop_fraction):
    """SmallestMaxSize + CenterCrop (what training's eval transform ran) and the shared resize: the same pixels."""
    rule = eval_preprocess.center_crop_rule(resolution, crop_fraction)
    reference = A.Compose([A.SmallestMaxSize(max_size=round(resolution / crop_fraction)),
                           A.CenterCrop(height=resolution, width=resolution)])
    for w, h in [*PHOTO_SIZES, (resolution, resolution), (481, 37 + resolution), (1001, 999)]:
        image = photo_like(w, h, w)
        assert np.array_equal(eval_preprocess.resize(image, rule), reference(image=image)["image"]), (w, h)


def test_square_and_shorter_side_rules_give_albumentations_pixels():
    image_sizes = [*PHOTO_SIZES, (64, 64), (1001, 999)]
    for w, h in image_sizes:
        image = photo_like(w, h, h)
        assert np.array_equal(eval_preprocess.resize(image, eval_preprocess.square_rule(64)),
                              A.Resize(64, 64)(image=image)["image"])
        rule = eval_preprocess.shorter_side_rule(96, 160)
        scale = min(96 / min(h, w), 160 / max(h, w))
        expected = (max(1, round(h * scale)), max(1, round(w * scale)))
        assert eval_preprocess.resize(image, rule).shape[:2] == expected


def test_normalize_is_albumentations_normalize_bit_for_bit():
    image = photo_like(123, 77, 0)
    for mean, std in [(MEAN, STD), ((0.5,) * 3, (0.5,) * 3)]:
        ours = eval_preprocess.normalize(image, mean, std)
        assert ours.dtype == np.float32
        assert np.array_equal(ours, A.Normalize(mean=mean, std=std)(image=image)["image"])
        textbook = (image / 255.0 - np.asarray(mean)) / np.asarray(std)
        assert np.abs(ours - textbook).max() < 1e-5


# ---- the eval transforms against the deploy preprocessing, on files -------------------------------------------------
def test_every_eval_transform_gives_the_deploy_input(tmp_path):
    """Classification, face and both detection eval pipelines, applied to a decoded file, give exactly the array
    `toolkit.deploy.preprocess` makes from the file with the rule those pipelines are recorded by."""
    from toolkit.data.images import load_rgb

    pipelines = [
        (classification_eval_transform(64, MEAN, STD), eval_preprocess.center_crop_rule(64, 0.875), {}),
        (face_eval_transform(48, MEAN, STD), eval_preprocess.center_crop_rule(48, 1.0), {}),
        (detection_transforms("ssd", 64, MEAN, STD)[1], eval_preprocess.square_rule(64), {"bboxes": [], "labels": []}),
        (detection_transforms("keep_aspect", 64, MEAN, STD)[1], eval_preprocess.shorter_side_rule(64, 106),
         {"bboxes": [], "labels": []}),
    ]
    for path in write_photos(tmp_path):
        for transform, rule, extra in pipelines:
            expected = transform(image=load_rgb(path), **extra)["image"].numpy()
            metadata = {"resize": rule, "resolution": 64, "mean": list(MEAN), "std": list(STD)}
            array, _ = preprocess(path, metadata)
            assert array.dtype == np.float32 and np.array_equal(array, expected), (path.name, rule["mode"])


def test_deploy_preprocessing_stays_torch_free(tmp_path):
    (path,) = write_photos(tmp_path)[:1]
    code = ("import sys; sys.modules['torch'] = None; from toolkit.deploy.preprocess import preprocess; "
            f"a, size = preprocess({str(path)!r}, {{'resize': {{'mode': 'center_crop', 'crop_fraction': 0.875}}, "
            "'resolution': 64, 'mean': [0.5] * 3, 'std': [0.5] * 3}); assert a.shape == (3, 64, 64), a.shape")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


# ---- end to end: mode=predict on the checkpoint against toolkit.deploy on the exported file -------------------------
def estimate_batchnorm(model: nn.Module, images: list[torch.Tensor]) -> None:
    """BatchNorm statistics of these inputs (fresh statistics make a random model's output input-independent)."""
    update_bn(images, model)
    model.eval()


def save_checkpoint(task, path: Path) -> Path:
    import lightning

    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "pytorch-lightning_version": lightning.__version__}, path)
    return path


CLASSIFIER = ["backbone.alpha=0.25", "data.resolution=64", "data.image_size=64", "data.n_train=12", "data.n_val=6",
              "data.batch_size=6"]
SSD = ["task=detection_ssd", "data=shapes", "backbone.alpha=0.25", "data.resolution=64", "data.image_size=64",
       "data.n_train=4", "data.n_val=2", "data.batch_size=2", "task.predict_score_thresh=0.05"]


def checkpoint_and_onnx(make_cfg, overrides: list[str], tmp_path: Path, detector: bool) -> tuple[Path, Path]:
    """A fixed-seed model whose outputs depend on the image (BatchNorm statistics of photo-like inputs; a detector's
    heads scaled down so its scores spread), saved as a checkpoint and exported by mode=export."""
    cfg = make_cfg(overrides)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    torch.manual_seed(0)
    task = build_task(cfg, datamodule)
    images = [torch.from_numpy(eval_preprocess.network_input(photo_like(64, 64, s), eval_preprocess.square_rule(64),
                                                             MEAN, STD))[None] for s in range(8)]
    model = task.model
    if detector:
        trunk = model.features
        estimate_batchnorm(model, [])
        model.train()
        with torch.no_grad():
            trunk(torch.cat(images))  # one batch: the 64-pixel SSD's last maps are 1x1
            for name, param in model.named_parameters():
                if name.startswith("head."):
                    param.mul_(0.1)
    else:
        estimate_batchnorm(model, [torch.cat(images)])
    task.eval()
    ckpt = save_checkpoint(task, tmp_path / "model.ckpt")
    exported = run(make_cfg([*overrides, "mode=export", f"ckpt_path={ckpt}", "export.formats=[onnx]",
                             "export.verify=false", "export.latency_repeats=1", "export.batch_size=2",
                             "export.calibration_batches=1"]))
    return ckpt, Path(exported["export"]["formats"]["onnx"]["file"])


def records(output_dir: str | Path) -> dict[str, dict]:
    return {Path(r["path"]).name: r for r in json.loads((Path(output_dir) / "predictions.json").read_text())}


@pytest.mark.slow
def test_classifier_file_predicts_what_the_checkpoint_predicts(make_cfg, tmp_path):
    """Same top class, every top-k score within 1e-4, on PNGs and JPEGs of photo-like texture shrunk 2-10x."""
    ckpt, onnx_file = checkpoint_and_onnx(make_cfg, CLASSIFIER, tmp_path, detector=False)
    photos = write_photos(tmp_path / "photos")
    predicted = run(make_cfg([*CLASSIFIER, "mode=predict", f"ckpt_path={ckpt}", f"predict.input={tmp_path / 'photos'}"]))
    deployed = predict_files(onnx_file, photos, tmp_path / "deployed")
    ours, theirs = records(predicted["output_dir"]), records(deployed["output_dir"])
    assert set(ours) == set(theirs) == {p.name for p in photos}
    spread = []
    for name, record in ours.items():
        expected, got = record["top_k"], theirs[name]["top_k"]
        assert expected[0]["label"] == got[0]["label"], name
        by_label = {t["label"]: t["score"] for t in got}
        for entry in expected:
            assert by_label[entry["label"]] == pytest.approx(entry["score"], abs=1e-4), name
        spread.append(expected[0]["score"])
    assert max(spread) - min(spread) > 1e-3  # the model's scores depend on the image: a comparison that can fail
    meta = deployed["metadata"]
    assert meta["resize"]["interpolation"] == "cv2.INTER_LINEAR" and meta["resize"]["shorter_side"] == 73
    assert meta["decode"]["jpeg_draft_min_side"] == 128  # the predict loader's reduced JPEG decoding, recorded


@pytest.mark.slow
def test_ssd_file_predicts_the_checkpoints_boxes(make_cfg, tmp_path):
    """The same detections per photo: the network input is the predict loader's, bit for bit; the ONNX file's boxes
    are PyTorch's within 1e-3 px, scores within 1e-4; and the written records agree to their rounding."""
    ckpt, onnx_file = checkpoint_and_onnx(make_cfg, SSD, tmp_path, detector=True)
    photos = write_photos(tmp_path / "photos")
    predicted = run(make_cfg([*SSD, "mode=predict", f"ckpt_path={ckpt}", f"predict.input={tmp_path / 'photos'}"]))
    deployed = predict_files(onnx_file, photos, tmp_path / "deployed")
    meta = deployed["metadata"]
    assert meta["resize"] == eval_preprocess.square_rule(64) and meta["decode"]["jpeg_draft_min_side"] is None

    # the unrounded path: predict loader's tensor and PyTorch's detections against deploy's array and the file's
    from toolkit.deploy.predict import detections
    from toolkit.deploy.runtime import open_model
    from toolkit.modes.common import load_task

    task = load_task(make_cfg([*SSD, "mode=predict", f"ckpt_path={ckpt}"])).eval()
    datamodule = build_datamodule(make_cfg(SSD), task)
    dataset = datamodule.predict_dataset(photos)
    runner, _ = open_model(onnx_file)
    found = 0
    for i, path in enumerate(photos):
        array, _ = preprocess(path, meta)
        tensor = dataset[i]["image"]
        assert np.array_equal(tensor.numpy(), array), path.name
        with torch.no_grad():
            ref = task.model([tensor])[0]
        boxes, scores, labels = detections(runner.run(array[None]), meta)
        assert len(boxes) == len(ref["boxes"]), path.name
        order = np.lexsort((labels, -scores))  # equal scores may come in either order
        ref_order = np.lexsort((ref["labels"].numpy(), -ref["scores"].numpy()))
        assert np.abs(boxes[order] - ref["boxes"].numpy()[ref_order]).max(initial=0) < 1e-3, path.name
        assert np.abs(scores[order] - ref["scores"].numpy()[ref_order]).max(initial=0) < 1e-4, path.name
        found += len(boxes)
    assert found > 0

    ours, theirs = records(predicted["output_dir"]), records(deployed["output_dir"])
    assert set(ours) == set(theirs) == {p.name for p in photos}
    for name, record in ours.items():
        expected, got = record["detections"], theirs[name]["detections"]
        assert (record["width"], record["height"]) == (theirs[name]["width"], theirs[name]["height"])
        assert len(expected) == len(got), name
        for a, b in zip(sorted(expected, key=lambda d: (-d["score"], d["label"])),
                        sorted(got, key=lambda d: (-d["score"], d["label"])), strict=True):
            assert a["label"] == b["label"] and abs(a["score"] - b["score"]) <= 1.01e-4, name  # 4-decimal rounding
            assert np.abs(np.subtract(a["box_xyxy"], b["box_xyxy"])).max() <= 0.0101, name  # 2-decimal rounding
