"""Detection augmentation presets (`augment=paper|finetune|none`) and the flip switch (`data.hflip`): boxes follow the
pixels under every preset, each data config's default, a training run with flips off, and the one-line refusals."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
from conftest import FAST, assert_one_line_error, run_cli

from toolkit.data.coco import CocoDetectionDataModule
from toolkit.data.detection_transforms import DETECTION_TRANSFORMS, SSDRandomCrop, detection_transforms
from toolkit.data.shapes_detection import generate_shapes_detection
from toolkit.errors import ConfigError
from toolkit.modes.common import build_datamodule
from toolkit.run import run

MEAN = STD = (0.5, 0.5, 0.5)
#: a bright rectangle on the left of a dark 96x64 image (not square: keep_aspect keeps the aspect ratio), with a red
#: stripe along its left edge: a mirror puts the stripe on the right, wherever a crop moved the rectangle
WIDTH, HEIGHT, BOX, STRIPE = 96, 64, (10.0, 20.0, 40.0, 44.0), 6
PIPELINES = [("ssd", 64, (64, 64)), ("keep_aspect", 48, (48, 72))]  # name, resolution, output (h, w)


def rectangle_image() -> np.ndarray:
    image = np.full((HEIGHT, WIDTH, 3), 20, np.uint8)
    x1, y1, x2, y2 = (int(v) for v in BOX)
    image[y1:y2, x1:x2] = 230
    image[y1:y2, x1:x1 + STRIPE] = (230, 20, 20)
    return image


def bright_box(image: torch.Tensor) -> np.ndarray | None:
    """xyxy box around the pixels brighter than halfway between the image's darkest and brightest (what was drawn)."""
    value = image.max(0).values.numpy()
    mask = value > (value.min() + value.max()) / 2
    if not mask.any() or value.max() - value.min() < 0.2:
        return None
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def mirrored(image: torch.Tensor, box: np.ndarray) -> bool | None:
    """Whether the red stripe is on the box's right edge (flipped), left edge (not), or cannot be told (cut off)."""
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    redness = (image[0] - image[1])[y1 + 1:y2 - 1, x1 + 1:x2 - 1].numpy()  # inside the box: no blended edge pixels
    left, right = bool(redness[:, :2].mean() > 0.4), bool(redness[:, -2:].mean() > 0.4)  # the stripe: red above green
    return None if left == right else right


def draws(name: str, resolution: int, augment: str, hflip: bool, n: int = 24) -> list[tuple[torch.Tensor, np.ndarray]]:
    torch.manual_seed(0)  # SeededCompose takes its seed from torch's generator
    train, _ = detection_transforms(name, resolution, MEAN, STD, augment=augment, hflip=hflip)
    out = []
    for _ in range(n):
        sample = train(image=rectangle_image(), bboxes=np.array([BOX], np.float32), labels=np.array([1]))
        out.append((sample["image"], np.asarray(sample["bboxes"], np.float32).reshape(-1, 4)))
    return out


@pytest.mark.parametrize(("name", "resolution", "size"), PIPELINES)
@pytest.mark.parametrize(("augment", "hflip"), [("paper", True), ("paper", False), ("finetune", True),
                                                ("finetune", False), ("none", False), ("none", True)])
def test_boxes_follow_the_pixels_under_every_preset(name, resolution, size, augment, hflip):
    flips, kept = 0, 0
    for image, boxes in draws(name, resolution, augment, hflip):
        assert tuple(image.shape[-2:]) == size
        if not len(boxes):  # SSD's crop left the rectangle's centre out: its box goes with it
            assert name == "ssd" and augment == "paper"
            continue
        seen = bright_box(image)
        assert seen is not None
        np.testing.assert_allclose(boxes[0], seen, atol=2.0)  # the box still frames the drawn rectangle
        side = mirrored(image, boxes[0])
        assert side is not None or (name == "ssd" and augment == "paper")  # only a crop cuts the stripe off
        flips += side is True
        kept += side is False
    if hflip:
        assert flips > 0 and kept > 0  # a flip half the time
    else:
        assert flips == 0 and kept > 0


@pytest.mark.parametrize(("name", "resolution", "size"), PIPELINES)
def test_none_leaves_the_box_where_the_resize_puts_it(name, resolution, size):
    scale = np.array([size[1] / WIDTH, size[0] / HEIGHT] * 2, np.float32)
    for _, boxes in draws(name, resolution, "none", False, n=4):
        np.testing.assert_allclose(boxes, [np.array(BOX, np.float32) * scale], rtol=1e-5)


def transforms_of(compose: A.Compose) -> set[type]:
    return {type(t) for t in compose.transforms}


def test_presets_pick_the_pipelines_steps():
    paper, _ = detection_transforms("ssd", 64, MEAN, STD)  # the default: the paper's SSD policy, as before
    assert {SSDRandomCrop, A.HorizontalFlip, A.ColorJitter} <= transforms_of(paper)
    finetune, _ = detection_transforms("ssd", 64, MEAN, STD, augment="finetune")
    assert SSDRandomCrop not in transforms_of(finetune) and A.HorizontalFlip in transforms_of(finetune)
    jitter = next(t for t in finetune.transforms if isinstance(t, A.ColorJitter))
    assert tuple(jitter.contrast) == (0.9, 1.1)  # milder than the paper's 0.5-1.5
    no_flip, _ = detection_transforms("ssd", 64, MEAN, STD, augment="finetune", hflip=False)
    assert A.HorizontalFlip not in transforms_of(no_flip)
    frcnn, _ = detection_transforms("keep_aspect", 64, MEAN, STD, augment="none", hflip=False)
    assert transforms_of(frcnn) & {A.HorizontalFlip, A.ColorJitter, SSDRandomCrop} == set()


def test_a_preset_a_pipeline_lacks_is_refused(monkeypatch):
    presets, evaluate = DETECTION_TRANSFORMS["ssd"]
    monkeypatch.setitem(DETECTION_TRANSFORMS, "paper_only", ({"paper": presets["paper"]}, evaluate))
    with pytest.raises(ConfigError, match=r"augment='finetune'.*data\.transform=paper_only has the presets paper"):
        detection_transforms("paper_only", 64, MEAN, STD, augment="finetune")
    with pytest.raises(ConfigError, match=r"augment='strong'.*paper, finetune, none"):
        CocoDetectionDataModule(train_ann="a.json", train_images="a", val_ann="b.json", val_images="b", augment="strong")


@pytest.mark.parametrize(("overrides", "augment"), [
    (["task=detection_ssd"], "paper"),                                  # COCO: the paper's experiments
    (["task=detection_frcnn"], "paper"),
    (["task=detection_ssd", "data=coco_custom"], "finetune"),           # your own COCO files
    (["task=detection_frcnn", "data=coco_custom"], "finetune"),
    (["task=detection_ssd", "data=shapes"], "paper"),                   # generated: as the benchmarks measured it
    (["task=detection_ssd", "augment=finetune"], "finetune"),           # the command line wins
    (["task=detection_ssd", "data=coco_custom", "augment=none"], "none"),
])
def test_each_detection_data_configs_default_preset(make_cfg, overrides, augment):
    cfg = make_cfg(overrides)
    assert cfg.data.augment == augment and cfg.data.hflip == (augment != "none")
    steps = transforms_of(build_datamodule(cfg).train_tf)  # the datamodule's pipeline follows (no file is read yet)
    assert (A.HorizontalFlip in steps) == (augment != "none")
    assert (SSDRandomCrop in steps) == (cfg.data.transform == "ssd" and augment == "paper")


def write_coco(root) -> list[str]:
    generate_shapes_detection(root, n_train=6, n_val=2, image_size=64, seed=1)
    return ["data=coco_custom", f"data.train_ann={root}/annotations/instances_train.json", f"data.train_images={root}/train",
            f"data.val_ann={root}/annotations/instances_val.json", f"data.val_images={root}/val"]


def test_finetune_without_flips_trains_a_detector(make_cfg, tmp_path):
    cfg = make_cfg(["task=detection_ssd", *write_coco(tmp_path / "coco"), "augment=finetune", "data.hflip=false",
                    "backbone.alpha=0.25", "data.resolution=64", "data.batch_size=3", "trainer.max_epochs=1"])
    datamodule = build_datamodule(cfg)
    assert transforms_of(datamodule.train_tf) & {A.HorizontalFlip, SSDRandomCrop} == set()
    result = run(cfg)
    losses = {k: v for k, v in result["metrics"].items() if "loss" in k}
    assert losses and all(np.isfinite(v) for v in losses.values()), result["metrics"]


def test_a_preset_the_data_cannot_honour_is_one_line(tmp_path):
    """data=shapes' classification images keep their generator's crops: another preset is refused, not ignored."""
    proc = run_cli([*FAST, "task=classification", "data=shapes", "augment=finetune"], cwd=tmp_path)
    assert_one_line_error(proc, "augment='finetune'", "data=shapes' classification images", "data=folder")
    proc = run_cli([*FAST, "task=detection_ssd", "data=coco_custom", "augment=strong"], cwd=tmp_path)
    assert_one_line_error(proc, "augment='strong'", "finetune, none, paper")
