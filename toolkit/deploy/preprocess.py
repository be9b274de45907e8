"""An image file to the network's input, as the metadata says: the eval pipelines' own functions.

Decoding (`toolkit.data.images.load_rgb`, with the JPEG draft reduction the file's `decode` names), resizing and
normalising (`toolkit.data.eval_preprocess`: OpenCV bilinear, albumentations' arithmetic) are the functions
training's eval transform and `mode=predict` run, so a deployed file gets the pixels the checkpoint got.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from toolkit.data.eval_preprocess import network_input, rule_from_metadata
from toolkit.data.images import SKIP_HINT, load_rgb


def decode_min_side(metadata: dict[str, Any]) -> int | None:
    """The shorter side a JPEG may decode down to (libjpeg's DCT scaling), as the task's predict loader decodes it."""
    value = (metadata.get("decode") or {}).get("jpeg_draft_min_side")
    return None if value is None else int(value)


def preprocess(path: str | Path, metadata: dict[str, Any], *,
               skip_hint: str = SKIP_HINT) -> tuple[np.ndarray, tuple[int, int]]:
    """(3 x H x W float32 input, (height, width) of the decoded image: the frame boxes map back to) for one file.
    `skip_hint`: how the user skips unreadable files, in the error that names one."""
    rgb = load_rgb(path, decode_min_side(metadata), skip_hint=skip_hint)
    array = network_input(rgb, rule_from_metadata(metadata), metadata["mean"], metadata["std"])
    return array, (int(rgb.shape[0]), int(rgb.shape[1]))
