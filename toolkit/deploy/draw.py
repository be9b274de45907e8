"""Boxes drawn on a photo with Pillow alone (the torch-free predictor): the same drawing as `mode=predict`
(`toolkit.visualize.draw_boxes`: labels "name 0.88" inside the image, not overlapping where avoidable)."""

from __future__ import annotations

from toolkit.visualize import PALETTE, draw_boxes

__all__ = ["PALETTE", "draw_boxes"]
