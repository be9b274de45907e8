"""Generated detection data: several coloured shapes per JPEG, written as a real COCO instances file.

`data=shapes` with a detection task lands here (`SHAPES_VARIANTS["detection"]`). Images hold 0-4 shapes
of random size, colour and rotation (about 1 in 10 is empty); categories use deliberately non-contiguous
ids (`SHAPE_CATEGORY_IDS`) so the id <-> label mapping is exercised on every run. The files are read back
through `CocoDetectionDataModule`, the same code path as COCO itself.

Layout under `<cache_dir>/shapes_det_<size>px_<n_train>_<n_val>_seed<seed>/`:
`annotations/instances_{train,val}.json`, `train/*.jpg`, `val/*.jpg`, `manifest.json`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import ImageDraw

from toolkit.data.coco import CocoDetectionDataModule
from toolkit.data.generated import ensure_generated
from toolkit.data.shapes import (
    SHAPE_NAMES,
    draw_shape,
    random_background,
    random_color,
    shape_polygon,
)

#: file category id of each shape (non-contiguous on purpose)
SHAPE_CATEGORY_IDS = {name: 10 * (i + 1) + i for i, name in enumerate(SHAPE_NAMES)}  # 10, 21, 32, ...


def shape_box(shape: str, cx: float, cy: float, r: float, angle: float) -> tuple[float, float, float, float]:
    """Tight xyxy box of a drawn shape."""
    poly = shape_polygon(shape, cx, cy, r, angle)
    if poly is None:  # circle, ring
        return cx - r, cy - r, cx + r, cy + r
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    return min(xs), min(ys), max(xs), max(ys)


def _overlap(a, b) -> float:
    """Intersection over the smaller box: placements that hide another shape are resampled."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / max(smaller, 1e-9)


def generate_shapes_detection(root: Path, n_train: int, n_val: int, image_size: int, seed: int,
                              max_shapes: int = 4, empty_fraction: float = 0.1) -> None:
    rng = np.random.default_rng(seed)
    categories = [{"id": SHAPE_CATEGORY_IDS[n], "name": n, "supercategory": "shape"} for n in SHAPE_NAMES]
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    ann_id = 1
    for split, count in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            img = random_background(rng, image_size)
            draw = ImageDraw.Draw(img)
            n = 0 if rng.random() < empty_fraction else int(rng.integers(1, max_shapes + 1))
            placed: list[tuple[float, float, float, float]] = []
            for _ in range(n):
                for _attempt in range(20):
                    shape = SHAPE_NAMES[int(rng.integers(len(SHAPE_NAMES)))]
                    r = rng.uniform(0.06, 0.3) * image_size
                    cx, cy = rng.uniform(r, image_size - r, size=2)
                    angle = rng.uniform(0, 2 * math.pi)
                    box = shape_box(shape, cx, cy, r, angle)
                    if all(_overlap(box, other) < 0.3 for other in placed):
                        break
                else:
                    continue
                draw_shape(draw, shape, cx, cy, r, angle, random_color(rng, img))
                placed.append(box)
                x1, y1 = max(0.0, box[0]), max(0.0, box[1])
                x2, y2 = min(float(image_size), box[2]), min(float(image_size), box[3])
                annotations.append({"id": ann_id, "image_id": i + 1, "category_id": SHAPE_CATEGORY_IDS[shape],
                                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                                    "area": round((x2 - x1) * (y2 - y1), 2), "iscrowd": 0})
                ann_id += 1
            name = f"{i:05d}.jpg"
            img.save(root / split / name, quality=92)
            images.append({"id": i + 1, "file_name": name, "width": image_size, "height": image_size})
        payload = {"info": {"description": f"generated shapes ({split})"}, "images": images,
                   "annotations": annotations, "categories": categories}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(payload))


class ShapesDetectionDataModule(CocoDetectionDataModule):
    """Generated shapes as COCO JSON + JPEGs under `cache_dir`, then read like any COCO-format dataset."""

    def __init__(self, cache_dir: str, n_train: int = 1200, n_val: int = 300, image_size: int = 96, seed: int = 0,
                 **kwargs):
        self.spec = {"kind": "shapes_detection", "n_train": n_train, "n_val": n_val, "image_size": image_size, "seed": seed}
        self.data_root = Path(cache_dir).expanduser() / f"shapes_det_{image_size}px_{n_train}_{n_val}_seed{seed}"
        ann = self.data_root / "annotations"
        super().__init__(train_ann=str(ann / "instances_train.json"), train_images=str(self.data_root / "train"),
                         val_ann=str(ann / "instances_val.json"), val_images=str(self.data_root / "val"), **kwargs)

    def prepare_data(self) -> None:
        s = self.spec
        ensure_generated(self.data_root, s, lambda: generate_shapes_detection(
            self.data_root, s["n_train"], s["n_val"], s["image_size"], s["seed"]))

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()  # idempotent; covers callers that skip prepare_data (tests, eval)
        super().setup(stage)
