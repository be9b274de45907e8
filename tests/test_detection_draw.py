"""Detection pictures: each box in its class colour on the original image, labelled "name 0.88"."""

from __future__ import annotations

import numpy as np
from PIL import Image

from toolkit.detection.draw import PALETTE, draw_detections


def test_boxes_are_drawn_in_their_class_colour(tmp_path):
    Image.fromarray(np.full((120, 160, 3), 200, np.uint8)).save(tmp_path / "in.jpg", quality=100)
    detections = [{"box_xyxy": [10.0, 30.0, 80.0, 100.0], "score": 0.9, "label": 1, "name": "circle"},
                  {"box_xyxy": [90.0, 40.0, 150.0, 110.0], "score": 0.4, "label": 2, "name": "square"}]
    out = draw_detections(tmp_path / "in.jpg", detections, tmp_path / "pred" / "in.png")
    drawn = np.asarray(Image.open(out))
    assert drawn.shape == (120, 160, 3)
    assert tuple(drawn[60, 10]) == PALETTE[1] and tuple(drawn[80, 150]) == PALETTE[2]  # left / right edges
    assert tuple(drawn[60, 45]) == (200, 200, 200)  # inside a box: the image, untouched
    label = drawn[18:30, 12:60]  # "circle 0.90" just above the box's top left, dark text on the class colour
    assert (label == PALETTE[1]).all(-1).any() and (label < 50).all(-1).any()
    assert [p.name for p in out.parent.iterdir()] == ["in.png"]  # written atomically: no temporary left


def test_no_detections_writes_the_image_as_it_is(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "in.png")
    out = draw_detections(tmp_path / "in.png", [], tmp_path / "out.png")
    assert np.array_equal(np.asarray(Image.open(out)), pixels)
