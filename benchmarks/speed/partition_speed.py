"""Speed of PlaNet's S2 partitioning: leaf ids with numpy vs s2sphere per row, then the partition itself.

    python -m benchmarks.speed.partition_speed [--rows 1000000] [--t-max 10000 1000] [--t-min 50 10]

Two coordinate sets: uniform on the sphere, and "clustered" (photos around 2,000 random centres with
heavy-tailed sizes and spreads, closer to real photo collections; it forces deep subdivision). s2sphere's
per-row `CellId.from_lat_lng` is timed on a sample and extrapolated to all rows. Writes
benchmarks/results/partition_speed.json; docs/geolocation.md quotes its tables.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import s2sphere

from benchmarks.tools.results import write_results
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


def measure(args) -> dict:
    rng = np.random.default_rng(0)
    rows = []
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
            rows.append({"coordinates": name, "rows": args.rows, "leaf_ids_numpy_s": t_leaf,
                         "leaf_ids_s2sphere_s": t_ref * args.rows / k, "t_max": t_max, "t_min": t_min,
                         "partition_s": t_part, "cells": len(part), "min_level": int(part.levels.min()),
                         "max_level": int(part.levels.max()), "dropped_photos": int(part.meta["dropped_photos"]),
                         "write_s": t_write})
            print(rows[-1], flush=True)
    with tempfile.TemporaryDirectory() as tmp:  # what mode=partition reads first: the validated geo CSV
        csv_path = Path(tmp) / "train.csv"
        with csv_path.open("w") as f:
            f.write("image_path,latitude,longitude\n")
            f.writelines(f"img/{i}.jpg,{a:.6f},{b:.6f}\n" for i, (a, b) in enumerate(zip(lat, lon, strict=True)))
        records, t_csv = timed(read_geo_csv, csv_path, check_files=False)
    return {"unit": "CPU seconds, one thread", "partitions": rows, "csv_rows": len(records), "read_csv_s": t_csv}


def tables(results: dict) -> dict[str, str]:
    """`partition`: leaf ids and partitioning per coordinate set; `read_csv`: the geo CSV check (docs/geolocation.md)."""
    partition = ["| coordinates | rows | leaf ids, numpy | leaf ids, s2sphere per row (extrapolated) | s2sphere / numpy | "
                 "t_max / t_min | partition | cells | levels | dropped photos | write cell file |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["partitions"]:
        partition.append(f"| {r['coordinates']} | {r['rows']:,} | {r['leaf_ids_numpy_s']:.2f} | {r['leaf_ids_s2sphere_s']:.0f} | "
                         f"{r['leaf_ids_s2sphere_s'] / r['leaf_ids_numpy_s']:.0f}x | {r['t_max']} / {r['t_min']} | "
                         f"{r['partition_s']:.2f} | {r['cells']:,} | {r['min_level']}-{r['max_level']} | "
                         f"{r['dropped_photos']:,} | {r['write_s']:.2f} |")
    read_csv = ["| geo CSV rows | read + validate (data.check_files=false) |", "|---|---|",
                f"| {results['csv_rows']:,} | {results['read_csv_s']:.2f} |"]
    return {"partition": "\n".join(partition), "read_csv": "\n".join(read_csv)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--t-max", type=int, nargs="+", default=[10000, 1000])
    parser.add_argument("--t-min", type=int, nargs="+", default=[50, 10], help="one per --t-max")
    parser.add_argument("--sample", type=int, default=20000, help="rows timed with s2sphere (then extrapolated)")
    args = parser.parse_args()
    results = measure(args)
    for name, table in tables(results).items():
        print(f"\n{name} (CPU seconds, single thread):\n{table}")
    write_results("partition_speed", results)


if __name__ == "__main__":
    main()
