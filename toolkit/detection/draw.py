"""Pictures of detections: boxes, class names and scores drawn on the original image (PNG)."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import draw_bounding_boxes

from toolkit.io import atomic_path

PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128), (170, 110, 40))


def draw_detections(image_path: str | Path, detections: list[dict], out: Path) -> Path:
    """`detections`: [{"box_xyxy", "score", "label", "name"}] in the image's pixels; writes `out` (PNG).

    One colour per class; the most confident boxes are drawn last, so they stay on top.
    """
    with Image.open(image_path) as img:
        image = pil_to_tensor(img.convert("RGB"))
    ordered = sorted(detections, key=lambda d: d["score"])
    if ordered:
        image = draw_bounding_boxes(
            image,
            torch.tensor([d["box_xyxy"] for d in ordered], dtype=torch.float32).reshape(-1, 4),
            labels=[f"{d['name']} {d['score']:.2f}" for d in ordered],
            colors=[PALETTE[d["label"] % len(PALETTE)] for d in ordered],
            width=max(1, round(max(image.shape[1:]) / 300)),
            fill_labels=True,  # black text on a box of the class colour: readable on any image
        )
    with atomic_path(out) as tmp:
        to_pil_image(image).save(tmp, format="PNG")
    return out
