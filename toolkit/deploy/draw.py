"""Boxes drawn on a photo with Pillow alone (the torch-free predictor cannot use torchvision's drawing)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from toolkit.io import save_image_atomic

PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128), (170, 110, 40))


def draw_boxes(image_path: str | Path, detections: list[dict], out: Path) -> Path:
    """`detections`: [{"box_xyxy", "score", "label", "name"}] in the photo's pixels; the most confident on top."""
    with Image.open(image_path) as img:
        img = img.convert("RGB")
    draw = ImageDraw.Draw(img)
    width = max(1, round(max(img.size) / 300))
    for det in sorted(detections, key=lambda d: d["score"]):
        color = PALETTE[det["label"] % len(PALETTE)]
        x1, y1, x2, y2 = det["box_xyxy"]
        draw.rectangle([x1, y1, x2, y2], outline=color, width=width)
        text = f"{det['name']} {det['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x1, max(0, y1 - 11)), text)
        draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=color)
        draw.text((x1, max(0, y1 - 11)), text, fill=(0, 0, 0))
    return save_image_atomic(img, out)
