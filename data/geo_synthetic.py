"""Generated geo-tagged photos (`data=geo_synthetic`): images whose look depends on the city they were taken in.

Each city has its own shape and palette; photos scatter a few km around the city centre, and a small share
of training photos lie anywhere on Earth (so PlaNet's `t_min` has cells to drop). Written as a real geo CSV
plus JPEGs under the cache dir, then read exactly like user data by `GeoDataModule`.
"""

from __future__ import annotations

import colorsys
import csv
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from toolkit.data.generated import ensure_generated
from toolkit.data.geo import GeoDataModule, GeoRecords
from toolkit.data.shapes import SHAPE_NAMES, draw_shape, random_background
from toolkit.errors import ConfigError

#: (name, latitude, longitude) of the cities photos cluster around
CITIES: tuple[tuple[str, float, float], ...] = (
    ("Paris", 48.8566, 2.3522), ("New York", 40.7128, -74.0060), ("Tokyo", 35.6762, 139.6503),
    ("Sydney", -33.8688, 151.2093), ("Rio de Janeiro", -22.9068, -43.1729), ("Cairo", 30.0444, 31.2357),
    ("London", 51.5074, -0.1278), ("Moscow", 55.7558, 37.6173), ("Nairobi", -1.2921, 36.8219),
    ("Anchorage", 61.2181, -149.9003), ("Singapore", 1.3521, 103.8198), ("Buenos Aires", -34.6037, -58.3816),
)
KM_PER_DEGREE = 6371.0 * math.pi / 180
TINT = 0.7  # share of the city's colour in the background (the rest: a random colour with noise)


def jitter_km(rng: np.random.Generator, lat: float, lon: float, sigma_km: float) -> tuple[float, float]:
    """A point a Gaussian `sigma_km` away from (lat, lon), on the local tangent plane."""
    dy, dx = rng.normal(0.0, sigma_km, size=2)
    return lat + dy / KM_PER_DEGREE, (lon + dx / (KM_PER_DEGREE * math.cos(math.radians(lat))) + 180) % 360 - 180


def city_palette(k: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """(background, shape) colours of city k: hues spread around the colour wheel, shape in the opposite hue."""
    hue = (k * 0.618034) % 1.0
    bg = tuple(int(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.55, 0.8))
    fg = tuple(int(255 * c) for c in colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.9, 0.95))
    return bg, fg


def generate_geo_photos(root: Path, n_train: int, n_val: int, n_cities: int, sigma_km: float,
                        scatter_fraction: float, image_size: int, seed: int) -> None:
    """Write `root/images/{train,val}/*.jpg`, `root/{train,val}.csv` (image_path,latitude,longitude,id), cities.json."""
    rng = np.random.default_rng(seed)
    cities = CITIES[:n_cities]
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(count):
            scattered = split == "train" and rng.random() < scatter_fraction
            if scattered:  # uniform on the sphere, random look: the photos t_min should drop
                lat, lon = math.degrees(math.asin(rng.uniform(-1, 1))), rng.uniform(-180, 180)
                bg = tuple(int(c) for c in rng.integers(0, 256, 3))
                fg = tuple(int(c) for c in rng.integers(0, 256, 3))
                shape = SHAPE_NAMES[int(rng.integers(len(SHAPE_NAMES)))]
            else:
                k = i % len(cities)
                lat, lon = jitter_km(rng, cities[k][1], cities[k][2], sigma_km)
                bg, fg = city_palette(k)
                shape = SHAPE_NAMES[k % len(SHAPE_NAMES)]
            noise = np.asarray(random_background(rng, image_size), dtype=np.float32)
            img = Image.fromarray((TINT * np.array(bg, dtype=np.float32) + (1 - TINT) * noise).astype(np.uint8))
            r = rng.uniform(0.2, 0.4) * image_size
            cx, cy = rng.uniform(r, image_size - r, size=2)
            draw_shape(ImageDraw.Draw(img), shape, cx, cy, r, rng.uniform(0, 2 * math.pi), fg)
            name = f"images/{split}/{i:05d}.jpg"
            img.save(root / name, quality=90)
            rows.append((name, f"{lat:.6f}", f"{lon:.6f}", f"{split}{i:05d}"))
        with (root / f"{split}.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image_path", "latitude", "longitude", "id"])
            writer.writerows(rows)
    (root / "cities.json").write_text(json.dumps([{"name": n, "lat": a, "lon": b} for n, a, b in cities], indent=2))


class GeoSyntheticDataModule(GeoDataModule):
    """`GeoDataModule` over photos generated under `cache_dir` (see the module docstring)."""

    def __init__(self, cache_dir: str, n_train: int = 600, n_val: int = 150, image_size: int = 64, seed: int = 0,
                 n_cities: int = 6, sigma_km: float = 3.0, scatter_fraction: float = 0.03,
                 cells: dict | None = None, **kwargs):
        if not (isinstance(n_cities, int) and not isinstance(n_cities, bool) and 1 <= n_cities <= len(CITIES)):
            raise ConfigError("data.n_cities", n_cities, f"an integer from 1 to {len(CITIES)} (the cities this generator knows)")
        self.spec = {"kind": "geo_synthetic", "n_train": n_train, "n_val": n_val, "image_size": image_size, "seed": seed,
                     "n_cities": n_cities, "sigma_km": sigma_km, "scatter_fraction": scatter_fraction, "tint": TINT}
        self.root = Path(cache_dir).expanduser() / (f"geo_{n_cities}cities_{image_size}px_{n_train}_{n_val}"
                                                    f"_sigma{sigma_km:g}_scatter{scatter_fraction:g}_seed{seed}")
        kwargs.setdefault("train_csv", str(self.root / "train.csv"))
        kwargs.setdefault("val_csv", str(self.root / "val.csv"))
        super().__init__(cells=cells or {"t_max": 60, "t_min": 5}, **kwargs)

    def prepare_data(self) -> None:
        s = self.spec
        ensure_generated(self.root, s, lambda: generate_geo_photos(
            self.root, s["n_train"], s["n_val"], s["n_cities"], s["sigma_km"], s["scatter_fraction"],
            s["image_size"], s["seed"]))

    def read_split(self, split: str) -> GeoRecords:
        self.prepare_data()  # idempotent; mode=partition and task_kwargs read the CSV before setup
        return super().read_split(split)
