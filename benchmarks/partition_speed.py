"""Speed of PlaNet's S2 partitioning: leaf ids with numpy vs s2sphere per row, then the partition itself.

    python benchmarks/partition_speed.py [--rows 1000000] [--t-max 10000 1000] [--t-min 50 10]

Two coordinate sets: uniform on the sphere, and "clustered" (photos around 2,000 random centres with
heavy-tailed sizes and spreads, closer to real photo collections; it forces deep subdivision). s2sphere's
per-row `CellId.from_lat_lng` is timed on a sample and extrapolated to all rows.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import s2sphere

from toolkit.data.geo import read_geo_csv
from toolkit.geo.s2cells import leaf_cell_ids, partition_cells, write_cells


def uniform(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)


def clustered(n: int, rng: np.random.Generator, centres: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    c_lat, c_lon = uniform(centres, rng)
    weights = rng.pareto(1.2, centres) + 1e-3
    which = rng.choice(centres, size=n, p=weights / weights.sum())
    spread_deg = np.exp(rng.uniform(np.log(0.005), np.log(2.0), centres))[which]
    lat = np.clip(c_lat[which] + rng.normal(0, 1, n) * spread_deg, -90, 90)
    lon = (c_lon[which] + rng.normal(0, 1, n) * spread_deg + 180) % 360 - 180
    return lat, lon


def s2sphere_leaf_ids(lat: np.ndarray, lon: np.ndarray) -> list[int]:
    return [s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(a, b)).id() for a, b in zip(lat, lon, strict=True)]


def timed(fn, *args, **kwargs):
    """(value, CPU seconds): on a shared machine CPU time is what an idle one would take as wall time (numpy
    and s2sphere run single-threaded here)."""
    start = time.process_time()
    value = fn(*args, **kwargs)
    return value, time.process_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--t-max", type=int, nargs="+", default=[10000, 1000])
    parser.add_argument("--t-min", type=int, nargs="+", default=[50, 10], help="one per --t-max")
    parser.add_argument("--sample", type=int, default=20000, help="rows timed with s2sphere (then extrapolated)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print("CPU seconds (single thread)\n")
    print("| coordinates | rows | leaf ids, numpy | leaf ids, s2sphere per row (extrapolated) | t_max / t_min | "
          "partition | cells | levels | dropped photos | write cell file |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, make in (("uniform", uniform), ("clustered", clustered)):
        lat, lon = make(args.rows, rng)
        leaves, t_leaf = timed(leaf_cell_ids, lat, lon)
        k = min(args.sample, args.rows)
        ref, t_ref = timed(s2sphere_leaf_ids, lat[:k], lon[:k])
        assert ref == leaves[:k].tolist(), "numpy leaf ids differ from s2sphere"
        for t_max, t_min in zip(args.t_max, args.t_min, strict=True):
            (part, _), t_part = timed(partition_cells, lat, lon, t_max, t_min, leaf_ids=leaves)
            with tempfile.TemporaryDirectory() as tmp:
                _, t_write = timed(write_cells, part, Path(tmp) / "cells.csv")
            print(f"| {name} | {args.rows:,} | {t_leaf:.2f} | {t_ref * args.rows / k:.0f} | {t_max} / {t_min} | "
                  f"{t_part:.2f} | {len(part):,} | {part.levels.min()}-{part.levels.max()} | "
                  f"{part.meta['dropped_photos']:,} | {t_write:.2f} |")
    with tempfile.TemporaryDirectory() as tmp:  # what mode=partition reads first: the validated geo CSV
        csv_path = Path(tmp) / "train.csv"
        with csv_path.open("w") as f:
            f.write("image_path,latitude,longitude\n")
            f.writelines(f"img/{i}.jpg,{a:.6f},{b:.6f}\n" for i, (a, b) in enumerate(zip(lat, lon, strict=True)))
        records, t_csv = timed(read_geo_csv, csv_path, check_files=False)
    print(f"\nreading + validating the {len(records):,}-row geo CSV (data.check_files=false): {t_csv:.2f} CPU s")


if __name__ == "__main__":
    main()
