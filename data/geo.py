"""Geo-tagged photos from a CSV (`image path, latitude, longitude[, id]`), validated row by row, for PlaNet.

Paths are relative to `image_root` (default: the CSV's folder). A header row is optional; with one, the
columns are found by name (path/image/image_path, lat/latitude, lon/lng/longitude, id). Rows with a wrong
field count, a non-numeric, infinite or out-of-range coordinate, a relative path that leaves `image_root`
(`../`; absolute paths are taken as given) or a missing image file are rejected: each is named with its line
number and reason, counted, and either skipped (`bad_rows=skip`) or fatal (`bad_rows=error`). A row repeated
exactly is dropped and counted in the log; an image path or id listed twice with different values is always a
DataError naming both lines (which one is right cannot be guessed). A file that is not UTF-8 names its line.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from toolkit.data.base import BaseDataModule
from toolkit.data.folder import ImageListDataset
from toolkit.data.listfiles import Duplicates, path_under, read_csv_rows
from toolkit.data.transforms import classification_eval_transform, classification_train_transform
from toolkit.errors import ConfigError, DataError
from toolkit.geo.s2cells import Partition, partition_cells, read_cells

log = logging.getLogger(__name__)

COLUMN_NAMES = {
    "path": ("path", "image", "image_path", "img", "file", "filename"),
    "lat": ("lat", "latitude"),
    "lon": ("lon", "lng", "long", "longitude"),
    "id": ("id", "image_id", "photo_id", "img_id"),
}
SHOWN_REJECTIONS = 10  # rejected rows named in the log / error; all are counted


@dataclass
class GeoRecords:
    """The accepted rows of a geo CSV, and every rejected row as (line number, reason)."""

    source: Path
    paths: list[str]
    lat: np.ndarray
    lon: np.ndarray
    ids: list[str]
    rejected: list[tuple[int, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def rejection_report(self, limit: int = SHOWN_REJECTIONS) -> str:
        shown = "; ".join(f"line {line}: {why}" for line, why in self.rejected[:limit])
        more = f"; ... and {len(self.rejected) - limit} more" if len(self.rejected) > limit else ""
        return f"{self.source}: {len(self.rejected)} of {len(self.rejected) + len(self.paths)} rows rejected: {shown}{more}"


def _columns(header: list[str]) -> dict[str, int] | None:
    """Column positions from a header row, or None when the first row is data (its latitude parses)."""
    names = [h.strip().lower() for h in header]
    found = {key: next((names.index(a) for a in aliases if a in names), None) for key, aliases in COLUMN_NAMES.items()}
    if found["path"] is None and found["lat"] is None and found["lon"] is None:
        return None
    missing = [k for k in ("path", "lat", "lon") if found[k] is None]
    if missing:
        raise DataError(f"header {header} lacks column(s) {missing}; expected names like "
                        f"{', '.join(COLUMN_NAMES[m][0] for m in missing)} (or no header: path,latitude,longitude[,id])")
    return found


def read_geo_csv(path: str | Path, image_root: str | Path | None = None, check_files: bool = True,
                 bad_rows: str = "skip") -> GeoRecords:
    """Read and validate a geo CSV; see the module docstring for the format and the rejection policy."""
    if bad_rows not in ("skip", "error"):
        raise ConfigError("data.bad_rows", bad_rows, "skip (count and report bad rows) or error (stop at any)")
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: geo CSV not found. Expected rows `image path,latitude,longitude[,id]`; "
                        "set data.train_csv / data.val_csv.")
    root = Path(image_root).expanduser() if image_root else path.parent
    rows = read_csv_rows(path, "geo CSV")
    if not rows:
        raise DataError(f"{path}: empty file. Expected rows `image path,latitude,longitude[,id]` (a header is optional)")
    header_cols = _columns(rows[0]) if rows else None
    cols = header_cols or {"path": 0, "lat": 1, "lon": 2, "id": 3}
    first_line = 2 if header_cols else 1
    body = rows[1:] if header_cols else rows
    width = max(cols[k] for k in ("path", "lat", "lon")) + 1

    rejected: list[tuple[int, str]] = []
    keep_lines, paths, lat_s, lon_s, ids = [], [], [], [], []
    for line, row in enumerate(body, start=first_line):
        if not row or all(not c.strip() for c in row):
            continue  # blank lines are not records
        if len(row) < width or (header_cols is None and len(row) > 4):
            rejected.append((line, f"expected {'path,latitude,longitude[,id]' if header_cols is None else f'{len(rows[0])} fields'}, found {len(row)} field(s)"))
            continue
        image = row[cols["path"]].strip()
        if not image:
            rejected.append((line, "empty image path"))
            continue
        keep_lines.append(line)
        paths.append(image)
        lat_s.append(row[cols["lat"]].strip())
        lon_s.append(row[cols["lon"]].strip())
        ids.append(row[cols["id"]].strip() if cols.get("id") is not None and cols["id"] < len(row) else "")

    lat, lon = _to_float(lat_s), _to_float(lon_s)
    reasons = np.full(len(paths), "", dtype=object)
    checks = [
        (np.isnan(lat), lambda i: f"latitude {lat_s[i][:40]!r} is not a number"),
        (np.isnan(lon), lambda i: f"longitude {lon_s[i][:40]!r} is not a number"),
        (np.abs(lat) > 90, lambda i: f"latitude {lat[i]:g} outside [-90, 90]"),
        (np.abs(lon) > 180, lambda i: f"longitude {lon[i]:g} outside [-180, 180]"),
    ]
    for bad, why in checks:
        for i in np.flatnonzero(bad & (reasons == "")):
            reasons[i] = why(i)
    root_s = str(root)  # plain strings: building a million Path objects costs more than the whole partitioning
    full_paths = [p if os.path.isabs(p) else os.path.join(root_s, p) for p in paths]
    for i, p in enumerate(paths):  # an absolute path is a deliberate choice; a relative one stays under the root
        if reasons[i] == "" and not os.path.isabs(p) and ".." in p:
            try:
                path_under(root, p, "")
            except DataError:
                reasons[i] = f"image path {p!r} leaves the image root {root} ('..'); give an absolute path or set data.image_root"
    if check_files:
        for i, p in enumerate(full_paths):
            if reasons[i] == "" and not os.path.isfile(p):
                reasons[i] = f"image file {p} not found"
    rejected += [(keep_lines[i], reasons[i]) for i in np.flatnonzero(reasons != "")]
    rejected.sort()
    ok = reasons == ""
    ok = ok & ~_repeated_rows(path, full_paths, lat, lon, ids, keep_lines, ok)
    records = GeoRecords(path, [p for p, k in zip(full_paths, ok, strict=True) if k], lat[ok], lon[ok],
                         [x for x, k in zip(ids, ok, strict=True) if k], rejected)
    if rejected:
        if bad_rows == "error":
            raise DataError(records.rejection_report() + ". Fix or delete these rows, or set data.bad_rows=skip.")
        log.warning("%s (skipped; data.bad_rows=error makes this fatal)", records.rejection_report())
    if not len(records):
        raise DataError(f"{path}: no usable rows ({len(rejected)} rejected). Expected `image path,latitude,longitude[,id]`"
                        + (f"; {records.rejection_report()}" if rejected else ""))
    return records


def _repeated_rows(path: Path, full_paths: list[str], lat: np.ndarray, lon: np.ndarray, ids: list[str],
                   lines: list[int], ok: np.ndarray) -> np.ndarray:
    """Mask of the accepted rows that repeat an earlier row exactly (dropped, counted in the log). A repeated
    image path or id with different values is a DataError naming both lines: no row can be trusted over the other."""
    repeated = np.zeros(len(full_paths), dtype=bool)
    candidates = np.flatnonzero(ok)
    frame = pd.DataFrame({"path": [full_paths[i] for i in candidates], "id": [ids[i] for i in candidates]})
    suspects = frame["path"].duplicated(keep=False).to_numpy() | (
        (frame["id"] != "").to_numpy() & frame["id"].duplicated(keep=False).to_numpy())
    by_path, by_id = Duplicates(path, "image"), Duplicates(path, "id")
    for i in candidates[suspects]:  # rows in file order: the first listing of a key is kept
        record = (full_paths[i], float(lat[i]), float(lon[i]), ids[i])
        new_path = by_path.is_new(full_paths[i], record, lines[i])
        new_id = by_id.is_new(ids[i], record, lines[i]) if ids[i] else new_path
        repeated[i] = not (new_path and new_id)
    by_path.report(log)
    return repeated


def _to_float(values: list[str]) -> np.ndarray:
    """Parse numbers vectorised; anything else (text, empty, inf, nan) becomes NaN."""
    out = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan, copy=True)
    out[~np.isfinite(out)] = np.nan
    return out


class GeoImageDataset(ImageListDataset):
    """Images with their true (lat, lon) (NaN when unknown, e.g. for mode=predict)."""

    def __init__(self, paths: list[str] | list[Path], latlon: np.ndarray, transform, skip_corrupt: bool = False,
                 min_side: int | None = None):
        super().__init__([(p, i) for i, p in enumerate(paths)], transform, skip_corrupt, min_side)
        self.latlon = torch.as_tensor(latlon, dtype=torch.float64)

    def __getitem__(self, index: int):
        sample = super().__getitem__(index)
        if sample is None:
            return None
        del sample["label"]  # the task turns coordinates into cell labels with its own partitionings
        sample["latlon"] = self.latlon[index]
        return sample


class GeoDataModule(BaseDataModule):
    """Train/val/test geo CSVs; the cells come from `cells_file` (one or a list, coarse to fine) or, when it is
    unset, from partitioning the training CSV with `cells` = {t_max, t_min, max_level} (t_max may be a list)."""

    kind = "geolocation"

    def __init__(
        self,
        train_csv: str | None = None,
        val_csv: str | None = None,
        test_csv: str | None = None,
        image_root: str | None = None,
        cells_file: str | list[str] | None = None,
        cells: dict | None = None,
        check_files: bool = True,
        bad_rows: str = "skip",
        crop_scale: tuple[float, float] = (0.35, 1.0),
        crop_fraction: float = 0.875,
        hflip: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.csvs = {"train": train_csv, "val": val_csv, "test": test_csv}
        self.image_root = image_root
        self.cells_file = cells_file
        self.cells = {"t_max": 10000, "t_min": 50, "max_level": 30, **(cells or {})}
        self.check_files = check_files
        self.bad_rows = bad_rows
        self.crop_scale, self.crop_fraction, self.hflip = tuple(crop_scale), crop_fraction, hflip
        self.records: dict[str, GeoRecords] = {}

    def read_split(self, split: str) -> GeoRecords:
        if split not in self.records:
            csv_path = self.csvs[split]
            if not csv_path:
                raise ConfigError(f"data.{split}_csv", csv_path, "give a CSV of `image path,latitude,longitude[,id]`")
            self.records[split] = read_geo_csv(csv_path, self.image_root, self.check_files, self.bad_rows)
        return self.records[split]

    def eval_transform(self):
        return classification_eval_transform(self.resolution, self.mean, self.std, self.crop_fraction)

    def _dataset(self, records: GeoRecords, train: bool) -> GeoImageDataset:
        transform = (classification_train_transform(self.resolution, self.mean, self.std, self.crop_scale, self.hflip)
                     if train else self.eval_transform())
        # photos decode reduced to twice the resolution (see ClassFolderDataModule.decode_min_side)
        return GeoImageDataset(records.paths, np.stack([records.lat, records.lon], 1), transform, self.skip_corrupt,
                               2 * self.resolution)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.train_dataset = self._dataset(self.read_split("train"), train=True)
        if stage in (None, "fit", "validate") or (stage == "test" and not self.csvs["test"]):
            self.val_dataset = self._dataset(self.read_split("val"), train=False)
        if stage in (None, "test") and self.csvs["test"]:
            self.test_dataset = self._dataset(self.read_split("test"), train=False)
        for split, records in self.records.items():
            log.info("%s: %d %s images%s", records.source, len(records), split,
                     f" ({len(records.rejected)} rows rejected)" if records.rejected else "")

    def thresholds(self) -> list[int]:
        t_max = self.cells["t_max"]
        return sorted((list(t_max) if isinstance(t_max, list | tuple) else [t_max]), reverse=True)

    def build_partitions(self) -> list[Partition]:
        """The partitionings the task classifies over, coarse to fine (fewest cells first)."""
        files = self.cells_file if isinstance(self.cells_file, list | tuple) else [self.cells_file] if self.cells_file else []
        if files:
            parts = [read_cells(f) for f in files]
        else:
            train = self.read_split("train")
            parts = []
            for t_max in self.thresholds():
                part, _ = partition_cells(train.lat, train.lon, int(t_max), int(self.cells["t_min"]), int(self.cells["max_level"]))
                part.meta["name"] = f"tmax{t_max}_tmin{self.cells['t_min']}"
                log.info("partitioned %d training photos: %s", len(train), part.meta)
                parts.append(part)
        for p in parts:
            if len(p) == 0:
                raise DataError(f"partitioning {p.meta.get('name')} kept no cells (t_min={self.cells['t_min']} too high "
                                "for this data?); lower data.cells.t_min or data.cells.t_max")
        return sorted(parts, key=len)

    def task_kwargs(self) -> dict:
        parts = self.build_partitions()
        return {"num_cells": [len(p) for p in parts], "partitions": [p.to_plain() for p in parts]}

    def predict_dataset(self, paths: list[Path]) -> Dataset:
        latlon = np.full((len(paths), 2), np.nan)
        return GeoImageDataset(list(paths), latlon, self.eval_transform(), self.skip_corrupt, 2 * self.resolution)
