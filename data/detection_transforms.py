"""Albumentations pipelines for detection, chosen by name (`data.transform`: `ssd`, `keep_aspect`) and augmentation
preset (`data.augment`: `paper`, `finetune`, `none`, from `augment=`), with flips a switch of their own (`data.hflip`).

Every pipeline takes `image=HxWx3 uint8, bboxes=[N,4] pascal_voc (xyxy pixels), labels=[N]` and returns a
normalised 3xHxW float tensor with the boxes in the pixel coordinates of that tensor. Geometry that moves boxes is
albumentations' bbox-aware transforms (`HorizontalFlip`, `Resize`) or `SSDRandomCrop` (a `DualTransform`).

Contract for eval pipelines: they are pure resizes (no crop, no pad), so a box predicted on the network
input maps back to the original image by scaling alone (`toolkit.data.coco.boxes_to_original`). The augmentation
preset changes training only.

- `ssd`: a fixed square resize to `resolution` x `resolution`. Training, by preset:
  `paper` (TF OD API ssd_mobilenet_v1: SSD random crop, IoU-constrained, `SSDRandomCrop`; flip; photometric
  distortion with ssd.pytorch's ranges), `finetune` (the whole image, no crop; flip; a mild photometric
  distortion), `none` (the resize only). Eval: the square resize only.
- `keep_aspect`: Faster R-CNN style: shorter side resized to `resolution`, longer side capped at
  `resolution * 1000 / 600` (TF OD API's 600/1024 rule, torchvision's 800/1333). Training: `paper` and `finetune`
  are torchvision's detection reference policy (the resize and a flip: already mild), `none` the resize only.
  Eval: the resize only.

`hflip=False` removes the flip from every preset (turn it off for text, digits, arrows, left/right labels); the
`none` preset sets it false itself, `data.hflip=true` puts it back.

Register another pipeline with `DETECTION_TRANSFORMS[name] = ({preset: train_builder, ...}, eval_builder)`; a train
builder is `fn(resolution, mean, std, hflip) -> A.Compose`, an eval builder `fn(resolution, mean, std)`. A preset
the pipeline does not list is refused with one line (`ConfigError` on `augment`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import albumentations as A
import numpy as np
from albumentations.pytorch import ToTensorV2

from toolkit.data import eval_preprocess
from toolkit.data.transforms import EvalNormalize, EvalResize, SeededCompose
from toolkit.errors import ConfigError

#: albumentations keeps boxes partially inside a crop, clipped; this drops slivers under 1 pixel
BBOX_PARAMS = {"format": "pascal_voc", "label_fields": ["labels"], "clip": True, "min_width": 1.0, "min_height": 1.0}


class SSDRandomCrop(A.DualTransform):
    """SSD's IoU-constrained random crop (Liu et al. 2016 §2.2; TF OD API `ssd_random_crop`).

    Each call picks one option from `min_ious` (None = keep the whole image), then tries up to `trials`
    crops of area `scale` x image and aspect ratio in `aspect_ratio`; a crop is accepted when at least
    one box overlaps it with IoU >= the option and at least one box centre lies inside it. Boxes whose
    centre falls outside the accepted crop are removed; the rest are clipped to it. Images without boxes
    are left whole. Built on albumentations' public DualTransform: boxes arrive normalised to the image.
    """

    def __init__(self, min_ious: Sequence[float | None] = (None, 0.1, 0.3, 0.5, 0.7, 0.9),
                 scale: tuple[float, float] = (0.1, 1.0), aspect_ratio: tuple[float, float] = (0.5, 2.0),
                 trials: int = 50, p: float = 1.0):
        super().__init__(p=p)
        self.min_ious = list(min_ious)
        self.scale = tuple(scale)
        self.aspect_ratio = tuple(aspect_ratio)
        self.trials = trials

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        whole = {"crop_coords": (0, 0, width, height)}
        bboxes = np.asarray(data.get("bboxes", np.zeros((0, 4))))
        if len(bboxes) == 0:
            return whole
        boxes = bboxes[:, :4] * np.array([width, height, width, height], dtype=np.float32)  # normalised -> pixels
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2
        option = self.py_random.choice(self.min_ious)
        if option is None:
            return whole
        for _ in range(self.trials):
            area = self.py_random.uniform(*self.scale) * width * height
            ratio = self.py_random.uniform(*self.aspect_ratio)
            cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
            if not (0 < cw <= width and 0 < ch <= height):
                continue
            x0, y0 = self.py_random.randint(0, width - cw), self.py_random.randint(0, height - ch)
            crop = np.array([x0, y0, x0 + cw, y0 + ch], dtype=np.float32)
            inside = (centres[:, 0] > crop[0]) & (centres[:, 0] < crop[2]) & (centres[:, 1] > crop[1]) & (centres[:, 1] < crop[3])
            if inside.any() and _iou(boxes, crop).max() >= option:
                return {"crop_coords": (int(crop[0]), int(crop[1]), int(crop[2]), int(crop[3]))}
        return whole

    def apply(self, img: np.ndarray, crop_coords: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        x0, y0, x1, y1 = crop_coords
        return img[y0:y1, x0:x1]

    def apply_to_bboxes(self, bboxes: np.ndarray, crop_coords: tuple[int, int, int, int], **params: Any) -> np.ndarray:
        if not bboxes.size:
            return bboxes
        height, width = params["shape"][:2]
        x0, y0, x1, y1 = crop_coords
        pixels = bboxes[:, :4] * np.array([width, height, width, height], dtype=bboxes.dtype)
        cx, cy = (pixels[:, 0] + pixels[:, 2]) / 2, (pixels[:, 1] + pixels[:, 3]) / 2
        keep = (cx > x0) & (cx < x1) & (cy > y0) & (cy < y1)  # SSD keeps boxes centred in the crop
        cropped = bboxes[keep].copy()
        # normalised to the crop; boxes reaching outside it are clipped by BboxParams(clip=True) afterwards
        origin = np.array([x0, y0, x0, y0], dtype=bboxes.dtype)
        size = np.array([x1 - x0, y1 - y0, x1 - x0, y1 - y0], dtype=bboxes.dtype)
        cropped[:, :4] = (pixels[keep] - origin) / size
        return cropped


def _iou(boxes: np.ndarray, crop: np.ndarray) -> np.ndarray:
    lt = np.maximum(boxes[:, :2], crop[:2])
    rb = np.minimum(boxes[:, 2:], crop[2:])
    inter = np.clip(rb - lt, 0, None).prod(1)
    areas = (boxes[:, 2:] - boxes[:, :2]).prod(1)
    return inter / (areas + (crop[2:] - crop[:2]).prod() - inter + 1e-9)


def _finish(ops: list, mean, std) -> A.Compose:
    """`ops`, then normalise (`eval_preprocess.normalize`, the function toolkit.deploy calls) and make a tensor."""
    return SeededCompose([*ops, EvalNormalize(mean, std), ToTensorV2()], bbox_params=A.BboxParams(**BBOX_PARAMS))


def _flip(hflip: bool) -> list:
    """A horizontal flip half the time, or nothing where a mirror would change the label."""
    return [A.HorizontalFlip(p=0.5)] if hflip else []


def ssd_train_transform(resolution: int, mean, std, hflip: bool = True) -> A.Compose:
    """`paper`: SSD random crop, flip, photometric distortion (ssd.pytorch's ranges), square resize."""
    return _finish([
        SSDRandomCrop(),
        *_flip(hflip),
        A.ColorJitter(brightness=(0.875, 1.125), contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=(-0.05, 0.05), p=0.5),
        A.Resize(resolution, resolution),
    ], mean, std)


def ssd_finetune_transform(resolution: int, mean, std, hflip: bool = True) -> A.Compose:
    """`finetune`: the whole image (no crop: a small object in a small data set is never cut out or zoomed away),
    flip, a mild photometric distortion (+-10 % brightness, contrast, saturation), square resize."""
    return _finish([
        *_flip(hflip),
        A.ColorJitter(brightness=(0.9, 1.1), contrast=(0.9, 1.1), saturation=(0.9, 1.1), hue=(-0.02, 0.02), p=0.5),
        A.Resize(resolution, resolution),
    ], mean, std)


def ssd_plain_transform(resolution: int, mean, std, hflip: bool = False) -> A.Compose:
    """`none`: the square resize only (the `none` preset sets `hflip` false; `data.hflip=true` adds the flip)."""
    return _finish([*_flip(hflip), A.Resize(resolution, resolution)], mean, std)


def ssd_eval_transform(resolution: int, mean, std) -> A.Compose:
    """The square resize only (`eval_preprocess.square_rule`, the rule exported files carry)."""
    return _finish([EvalResize(eval_preprocess.square_rule(resolution))], mean, std)


class ResizeShorterSide(EvalResize):
    """Scale by min(min_size / shorter side, max_size / longer side): torchvision's GeneralizedRCNNTransform
    rule (albumentations' SmallestMaxSize + LongestMaxSize would also upscale the longer side to max_size).
    `eval_preprocess.shorter_side_rule`, the rule exported files carry."""

    def __init__(self, min_size: int, max_size: int, p: float = 1.0):
        super().__init__(eval_preprocess.shorter_side_rule(min_size, max_size), p=p)
        self.min_size, self.max_size = min_size, max_size


def keep_aspect_max_size(resolution: int) -> int:
    """The longer side's cap: resolution * 1000/600 (TF OD API's 600/1024, torchvision's 800/1333)."""
    return int(resolution * 1000 / 600)


def keep_aspect_size_ops(resolution: int) -> list:
    """Shorter side -> resolution, longer side capped at resolution * 1000/600 (whichever scale is smaller)."""
    return [ResizeShorterSide(resolution, keep_aspect_max_size(resolution))]


def keep_aspect_train_transform(resolution: int, mean, std, hflip: bool = True) -> A.Compose:
    """torchvision's detection reference: the resize and a flip (`paper`, `finetune`; `none`: the `none` preset sets
    `hflip` false, so the resize only)."""
    return _finish([*keep_aspect_size_ops(resolution), *_flip(hflip)], mean, std)


def keep_aspect_eval_transform(resolution: int, mean, std) -> A.Compose:
    return _finish(keep_aspect_size_ops(resolution), mean, std)


TrainBuilder = Callable[[int, Sequence[float], Sequence[float], bool], A.Compose]
EvalBuilder = Callable[[int, Sequence[float], Sequence[float]], A.Compose]

#: name -> ({augmentation preset: train builder}, eval builder)
DETECTION_TRANSFORMS: dict[str, tuple[dict[str, TrainBuilder], EvalBuilder]] = {
    "ssd": ({"paper": ssd_train_transform, "finetune": ssd_finetune_transform, "none": ssd_plain_transform},
            ssd_eval_transform),
    "keep_aspect": ({"paper": keep_aspect_train_transform, "finetune": keep_aspect_train_transform,
                     "none": keep_aspect_train_transform}, keep_aspect_eval_transform),
}


def detection_transforms(name: str, resolution: int, mean, std, *, augment: str = "paper",
                         hflip: bool = True) -> tuple[A.Compose, A.Compose]:
    """(train, eval) pipelines registered under `name`, training with the `augment` preset, flips if `hflip`."""
    if name not in DETECTION_TRANSFORMS:
        raise ConfigError("data.transform", name, f"allowed: {', '.join(DETECTION_TRANSFORMS)}")
    presets, evaluate = DETECTION_TRANSFORMS[name]
    if augment not in presets:
        raise ConfigError("augment", augment, f"data.transform={name} has the presets {', '.join(presets)}")
    if not isinstance(hflip, bool):
        raise ConfigError("data.hflip", hflip, "true or false (false for text, digits, arrows, left/right labels)")
    return presets[augment](resolution, mean, std, hflip), evaluate(resolution, mean, std)
