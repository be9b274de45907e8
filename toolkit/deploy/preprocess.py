"""An image file to the network's input, as the metadata says (numpy + Pillow; the eval pipelines' resize rules).

The training code resizes with OpenCV's bilinear filter (albumentations); Pillow's bilinear filter
antialiases when it shrinks, so pixel values differ slightly from `mode=predict` on a checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from toolkit.data.images import load_rgb


def resized_shape(height: int, width: int, metadata: dict[str, Any]) -> tuple[int, int]:
    """(H, W) an image of `height` x `width` is resized to before any crop."""
    resize, res = metadata["resize"], int(metadata["resolution"])
    mode = resize["mode"]
    if mode == "square":
        return res, res
    if mode == "shorter_side":  # torchvision GeneralizedRCNNTransform's rule, as the keep_aspect pipeline
        scale = min(res / min(height, width), resize["max_size"] / max(height, width))
    elif mode == "center_crop":  # shorter side to resolution / crop_fraction, then a centre crop
        scale = round(res / resize.get("crop_fraction", 1.0)) / min(height, width)
    else:
        raise ValueError(f"unknown resize mode {mode!r} in the model's metadata")
    return max(1, round(height * scale)), max(1, round(width * scale))


def preprocess(path: str | Path, metadata: dict[str, Any]) -> tuple[np.ndarray, tuple[int, int]]:
    """(3 x H x W float32 input, (original height, original width)) for one image file."""
    rgb = load_rgb(path)
    height, width = rgb.shape[:2]
    new_h, new_w = resized_shape(height, width, metadata)
    image = Image.fromarray(rgb)
    if (new_h, new_w) != (height, width):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.float32)
    if metadata["resize"]["mode"] == "center_crop":
        res = int(metadata["resolution"])
        top, left = (new_h - res) // 2, (new_w - res) // 2
        array = array[top:top + res, left:left + res]
    mean = np.asarray(metadata["mean"], dtype=np.float32)
    std = np.asarray(metadata["std"], dtype=np.float32)
    array = (array / 255.0 - mean) / std
    return np.ascontiguousarray(array.transpose(2, 0, 1)), (height, width)
