"""The eval pipelines' resize and normalisation: one implementation (numpy + OpenCV, no torch) for training's eval
transform, `mode=predict`, export verification and `toolkit.deploy`, described by a rule an exported file carries.

A rule is a JSON-able dict (the `resize` key of an exported file's metadata):

- `{"mode": "center_crop", "shorter_side": S, "crop": [R, R], "crop_fraction": f}` (classifiers, faces,
  geolocation): scale = S / min(H, W); resize to (max(1, round(H * scale)), max(1, round(W * scale))); keep the
  R x R window at top = (new H - R) // 2, left = (new W - R) // 2. S = round(R / f).
- `{"mode": "square", "size": [R, R]}` (SSD): resize to R x R whatever the aspect.
- `{"mode": "shorter_side", "min_size": m, "max_size": M}` (Faster R-CNN, `keep_aspect`): scale =
  min(m / min(H, W), M / max(H, W)), sizes rounded as above (torchvision's GeneralizedRCNNTransform rule).

`round` is Python's (half to even), as albumentations' SmallestMaxSize rounds; every resize is
`cv2.resize(..., interpolation=cv2.INTER_LINEAR)` on the uint8 image, as albumentations' Resize and
SmallestMaxSize call it (no antialiasing: Pillow's bilinear filter antialiases when it shrinks and gives other
pixels). `normalize` is albumentations' Normalize arithmetic on uint8 images, bit for bit.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

INTERPOLATION = "cv2.INTER_LINEAR"
ROUNDING = "Python round (half to even), at least 1"
#: each rule's sizes in words, written into exported files' metadata beside the numbers
SIZE_RULES = {
    "center_crop": "scale = shorter_side / min(H, W); resize to (max(1, round(H * scale)), max(1, round(W * scale))); "
                   "keep crop[0] x crop[1] from top = (new H - crop[0]) // 2, left = (new W - crop[1]) // 2",
    "square": "resize to size[0] x size[1] whatever the aspect ratio",
    "shorter_side": "scale = min(min_size / min(H, W), max_size / max(H, W)); resize to (max(1, round(H * scale)), "
                    "max(1, round(W * scale)))",
}
NORMALIZE_RULE = ("float32: (x - float32(mean) * 255) * float32(1 / (float32(std) * 255)) on the uint8 RGB values "
                  "(albumentations Normalize, max_pixel_value 255)")


def center_crop_rule(resolution: int, crop_fraction: float) -> dict[str, Any]:
    """Shorter side to round(resolution / crop_fraction), then the central resolution x resolution window."""
    return {"mode": "center_crop", "shorter_side": round(resolution / crop_fraction), "crop": [resolution, resolution],
            "crop_fraction": float(crop_fraction), "interpolation": INTERPOLATION, "rounding": ROUNDING,
            "size_rule": SIZE_RULES["center_crop"]}


def square_rule(resolution: int) -> dict[str, Any]:
    return {"mode": "square", "size": [resolution, resolution], "interpolation": INTERPOLATION,
            "size_rule": SIZE_RULES["square"]}


def shorter_side_rule(min_size: int, max_size: int) -> dict[str, Any]:
    return {"mode": "shorter_side", "min_size": int(min_size), "max_size": int(max_size), "interpolation": INTERPOLATION,
            "rounding": ROUNDING, "size_rule": SIZE_RULES["shorter_side"]}


def rule_from_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """The full rule of an exported file's metadata; files written before the rule named its sizes give
    `resize.mode` and `resolution` only, from which the same sizes follow."""
    resize, resolution = dict(metadata["resize"]), int(metadata["resolution"])
    mode = resize.get("mode")
    if mode == "center_crop":
        return {**center_crop_rule(resolution, float(resize.get("crop_fraction", 1.0))), **resize}
    if mode == "square":
        return {**square_rule(resolution), **resize}
    if mode == "shorter_side":
        return {**shorter_side_rule(resize.get("min_size", resolution), resize["max_size"]), **resize}
    raise ValueError(f"unknown resize mode {mode!r} in the model's metadata")


def resized_shape(height: int, width: int, rule: dict[str, Any]) -> tuple[int, int]:
    """(H, W) an image of `height` x `width` is resized to, before any crop."""
    mode = rule["mode"]
    if mode == "square":
        size = rule["size"]
        return int(size[0]), int(size[1])
    if mode == "center_crop":  # albumentations SmallestMaxSize(max_size=shorter_side)
        scale = rule["shorter_side"] / min(height, width)
    elif mode == "shorter_side":
        scale = min(rule["min_size"] / min(height, width), rule["max_size"] / max(height, width))
    else:
        raise ValueError(f"unknown resize mode {mode!r}")
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(image: np.ndarray, rule: dict[str, Any]) -> np.ndarray:
    """An HxWxC uint8 image resized (and centre-cropped) by `rule`: the network input's pixels before normalising."""
    height, width = image.shape[:2]
    new_h, new_w = resized_shape(height, width, rule)
    if (new_h, new_w) != (height, width):  # albumentations returns the image itself at its own size
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if rule["mode"] == "center_crop":
        crop_h, crop_w = (int(v) for v in rule["crop"])
        if crop_h > new_h or crop_w > new_w:
            raise ValueError(f"a {crop_h}x{crop_w} crop of a {new_h}x{new_w} image: crop_fraction must be at most 1")
        top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2  # albumentations' get_center_crop_coords
        image = image[top:top + crop_h, left:left + crop_w]
    return image


def normalize(image: np.ndarray, mean, std) -> np.ndarray:
    """HxWx3 uint8 RGB -> float32 (x/255 - mean) / std, computed as albumentations' Normalize computes it for
    uint8 images (a per-channel lookup table of (v - mean * 255) * (1 / (std * 255)) in float32), so training's
    eval transform and a deployed file's input agree bit for bit."""
    if image.dtype != np.uint8:
        raise ValueError(f"normalize takes uint8 images (got {image.dtype})")
    mean_255 = np.asarray(mean, dtype=np.float32) * 255.0
    denominator = np.reciprocal(np.asarray(std, dtype=np.float32) * 255.0)
    tables = (np.arange(256, dtype=np.float32)[None, :] - mean_255[:, None]) * denominator[:, None]  # channel x value
    return np.stack([tables[c][image[..., c]] for c in range(image.shape[-1])], axis=-1)


def network_input(image: np.ndarray, rule: dict[str, Any], mean, std) -> np.ndarray:
    """HxWx3 uint8 RGB -> the 3 x h x w float32 array the exported file takes (one image of its batch)."""
    return np.ascontiguousarray(normalize(resize(image, rule), mean, std).transpose(2, 0, 1))
