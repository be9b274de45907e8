"""Generated `shapes` data written to disk in real formats, so every path runs without a download.

`data=shapes` generates the variant of the kind of data the task reads (`data.variant: null` is filled with the
task's `data_kind` by `toolkit.modes.common.build_datamodule`): class folders of JPEGs for classification; each
other variant names its generator in `SHAPES_VARIANTS`.
"""

from __future__ import annotations

import importlib
import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from toolkit.data.base import BaseDataModule
from toolkit.data.folder import ClassFolderDataModule
from toolkit.data.generated import ensure_generated
from toolkit.errors import ConfigError

log = logging.getLogger(__name__)

SHAPE_NAMES = ("circle", "square", "triangle", "cross", "ring", "diamond")

#: variant -> "module:DataModule" generating it. A variant is named after the kind of data it gives, except
#: fine_grained (classification records: dog breeds, which conf/task_data/fine_grained_shapes.yaml picks)
SHAPES_VARIANTS = {
    "classification": "toolkit.data.shapes:ShapesClassificationDataModule",
    "detection": "toolkit.data.shapes_detection:ShapesDetectionDataModule",
    "fine_grained": "toolkit.data.stanford_dogs_synthetic:StanfordDogsSyntheticDataModule",
    "geolocation": "toolkit.data.geo_synthetic:GeoSyntheticDataModule",
}


def shapes_datamodule(variant: str, augment: str = "paper", hflip: bool = True, **kwargs) -> BaseDataModule:
    """Hydra target of `data=shapes`: the generated dataset of that variant.

    The detection variant takes the `augment=` preset (`paper`, the default under `data=shapes`: SSD's crops, as the
    detection benchmarks measured it) and the flip switch; the classification-like variants take the flip switch and
    keep their generator's own crops, so any other preset is refused rather than ignored."""
    cls = variant_class(variant)
    if cls.kind == "detection":
        return cls(augment=augment, hflip=hflip, **kwargs)
    if augment != "paper":
        raise ConfigError("augment", augment, f"data=shapes' {variant} images keep their generator's crops (only "
                          "data.hflip applies); augment presets: data=folder (your images), stanford_dogs_synthetic, "
                          "geo_synthetic, coco_custom, or data=shapes with a detection task")
    return cls(hflip=hflip, **kwargs)


def variant_class(variant: str) -> type[BaseDataModule]:
    if variant not in SHAPES_VARIANTS:
        raise ConfigError("data.variant", variant, f"allowed: {', '.join(SHAPES_VARIANTS)}")
    module, name = SHAPES_VARIANTS[variant].split(":")
    return getattr(importlib.import_module(module), name)


def shapes_kinds() -> frozenset[str]:
    """The kinds of records `data=shapes` can give (its variants' datamodules' kinds)."""
    return frozenset(variant_class(variant).kind for variant in SHAPES_VARIANTS)


def shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]] | None:
    """Vertices of a polygonal shape centred at (cx, cy) with radius r, or None for round shapes."""

    def rot(points):
        c, s = math.cos(angle), math.sin(angle)
        return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]

    if shape == "square":
        return rot([(-r, -r), (r, -r), (r, r), (-r, r)])
    if shape == "diamond":
        return rot([(0, -r), (0.6 * r, 0), (0, r), (-0.6 * r, 0)])
    if shape == "triangle":
        return rot([(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)])
    if shape == "cross":
        w = r / 3
        return rot([(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w)])
    return None


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float, color) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=color)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=color, width=max(2, int(r / 3)))
    else:
        draw.polygon(shape_polygon(shape, cx, cy, r, angle), fill=color)


def random_background(rng: np.random.Generator, size: int) -> Image.Image:
    base = rng.integers(0, 256, size=3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def random_color(rng: np.random.Generator, background: Image.Image) -> tuple[int, int, int]:
    """A colour far enough from the background's mean to be visible."""
    bg = np.asarray(background).reshape(-1, 3).mean(0)
    while True:
        color = rng.integers(0, 256, size=3)
        if np.abs(color - bg).sum() > 150:
            return tuple(int(c) for c in color)


def dark_background(rng: np.random.Generator, size: int) -> Image.Image:
    """A dark noisy background of a random colour (every channel below 100)."""
    base = rng.integers(0, 100, size=3)
    noise = rng.normal(0, 12, size=(size, size, 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def bright_color(rng: np.random.Generator) -> tuple[int, int, int]:
    """A light colour of a random hue (every channel 150 or more): always brighter than `dark_background`."""
    return tuple(int(c) for c in rng.integers(150, 256, size=3))


def generate_shapes_classification(root: Path, n_train: int, n_val: int, image_size: int, seed: int,
                                   radius: tuple[float, float] = (0.25, 0.45)) -> None:
    """Write `root/{train,val}/<shape>/<i>.jpg`: one shape per image, random size, position, colour.

    `radius` is the range of shape radii as a fraction of the image side. Shapes of 0.15-0.4 stayed at
    chance for 14 epochs even for a plain 4-layer CNN. Colours: a light shape of random hue on a dark
    noisy background. With both colours free (`random_background`/`random_color`, as detection uses), an
    edge can have any colour direction and either polarity, and networks learn that invariance slowly: a
    4-layer CNN stayed near chance (train 0.3) for 20 epochs of 600 images with or without rotation, while
    the same CNN on the colour-free shape mask reached 0.95 in 3 epochs; light-on-dark keeps the colour
    variety but gives every shape the same polarity.
    """
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("val", n_val)):
        for name in SHAPE_NAMES:
            (root / split / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = SHAPE_NAMES[i % len(SHAPE_NAMES)]
            img = dark_background(rng, image_size)
            r = rng.uniform(*radius) * image_size
            cx, cy = rng.uniform(r, image_size - r, size=2)
            draw_shape(ImageDraw.Draw(img), shape, cx, cy, r, rng.uniform(0, 2 * math.pi), bright_color(rng))
            img.save(root / split / shape / f"{i:05d}.jpg", quality=90)


class ShapesClassificationDataModule(ClassFolderDataModule):
    """Six shape classes as real class folders of JPEGs under `cache_dir`, then read like any folder dataset.

    The random-resized crop keeps at least `crop_scale[0]` of the image (0.7): a shape may sit at the
    border, and ImageNet's smaller crops would often cut it out and leave a wrong label.
    """

    def __init__(self, cache_dir: str, n_train: int = 1200, n_val: int = 300, image_size: int = 96, seed: int = 0,
                 radius: tuple[float, float] = (0.25, 0.45), crop_scale: tuple[float, float] = (0.7, 1.0), **kwargs):
        self.spec = {"kind": "shapes_classification", "n_train": n_train, "n_val": n_val, "image_size": image_size,
                     "seed": seed, "radius": list(radius), "colours": "light_on_dark"}
        root = Path(cache_dir).expanduser() / f"shapes_cls_{image_size}px_{n_train}_{n_val}_seed{seed}"
        super().__init__(root=str(root), crop_scale=crop_scale, **kwargs)

    def prepare_data(self) -> None:
        s = self.spec
        ensure_generated(self.root, s, lambda: generate_shapes_classification(
            self.root, s["n_train"], s["n_val"], s["image_size"], s["seed"], tuple(s["radius"])))

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()  # idempotent; also covers callers that skip prepare_data (tests, predict)
        super().setup(stage)
