"""Pictures of detections: boxes, class names and scores drawn on the original image (PNG).

One drawing for the checkpoint and the exported-file predictors: `toolkit.visualize.draw_boxes` (Pillow; labels
"name 0.88" kept inside the image, not overlapping where avoidable, sized to the image)."""

from __future__ import annotations

from pathlib import Path

from toolkit.visualize import PALETTE, draw_boxes

__all__ = ["PALETTE", "draw_detections"]


def draw_detections(image_path: str | Path, detections: list[dict], out: Path) -> Path:
    """`detections`: [{"box_xyxy", "score", "label", "name"}] in the image's pixels; writes `out` (PNG).
    The most confident boxes are drawn last, so they stay on top."""
    return draw_boxes(image_path, detections, out)
