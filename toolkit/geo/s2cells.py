"""PlaNet's adaptive S2-cell partitioning of the globe, vectorised with numpy over 64-bit S2 cell ids.

PlaNet (Weyand et al. 2016): start from the six face cells, subdivide every cell that holds more than
`t_max` photos, then drop the cells holding fewer than `t_min`. Leaf (level-30) cell ids are computed
once per photo with numpy, bit for bit as s2sphere's `CellId.from_lat_lng` (tests check it); every
coarser cell is then pure bit arithmetic on those ids, so millions of photos partition in seconds.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import s2sphere
from s2sphere.sphere import LOOKUP_BITS, LOOKUP_POS, SWAP_MASK

from toolkit.errors import DataError
from toolkit.io import atomic_path, write_json_atomic

MAX_LEVEL = 30
_U64 = np.uint64
_LOOKUP_POS = np.array(LOOKUP_POS, dtype=np.int64)  # s2sphere's Hilbert-curve table, 4 bits of i and j per step
CELL_COLUMNS = ("token", "level", "count", "center_lat", "center_lon", "mean_lat", "mean_lon")


def latlon_to_xyz(lat_deg, lon_deg) -> np.ndarray:
    """Unit vectors (N, 3) of points given in degrees."""
    lat, lon = np.radians(np.asarray(lat_deg, dtype=np.float64)), np.radians(np.asarray(lon_deg, dtype=np.float64))
    cos_lat = np.cos(lat)
    return np.stack([np.cos(lon) * cos_lat, np.sin(lon) * cos_lat, np.sin(lat)], axis=-1)


def xyz_to_latlon(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) in degrees of vectors (N, 3); the vectors need not be unit length."""
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    return np.degrees(np.arctan2(z, np.hypot(x, y))), np.degrees(np.arctan2(y, x))


def leaf_cell_ids(lat_deg, lon_deg) -> np.ndarray:
    """Level-30 S2 cell ids (uint64) of points in degrees; s2sphere's `from_lat_lng`, vectorised."""
    p = latlon_to_xyz(lat_deg, lon_deg).reshape(-1, 3)
    a = np.abs(p)
    # s2sphere's largest_abs_component, ties included, then the negative half gets faces 3-5
    axis = np.where(a[:, 0] > a[:, 1], np.where(a[:, 0] > a[:, 2], 0, 2), np.where(a[:, 1] > a[:, 2], 1, 2))
    rows = np.arange(len(p))
    face = axis + 3 * (p[rows, axis] < 0)
    x, y, z = p[:, 0], p[:, 1], p[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.select([face == 0, face == 1, face == 2, face == 3, face == 4],
                      [y / x, -x / y, -x / z, z / x, z / y], -y / z)
        v = np.select([face == 0, face == 1, face == 2, face == 3, face == 4],
                      [z / x, z / y, -y / z, y / x, -x / y], -x / z)
    i, j = _st_to_ij(_uv_to_st(u)), _st_to_ij(_uv_to_st(v))
    return _from_face_ij(face.astype(np.int64), i, j)


def _uv_to_st(u: np.ndarray) -> np.ndarray:
    """S2's quadratic projection (s2sphere's default)."""
    return np.where(u >= 0, 0.5 * np.sqrt(1 + 3 * np.maximum(u, 0)), 1 - 0.5 * np.sqrt(1 - 3 * np.minimum(u, 0)))


def _st_to_ij(s: np.ndarray) -> np.ndarray:
    return np.clip(np.floor((1 << MAX_LEVEL) * s), 0, (1 << MAX_LEVEL) - 1).astype(np.int64)


def _from_face_ij(face: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    mask = (1 << LOOKUP_BITS) - 1
    n = face << (2 * MAX_LEVEL)  # face bits at the top of the 61-bit position, before the final shift
    bits = face & SWAP_MASK
    for k in range(7, -1, -1):
        bits = bits + (((i >> (k * LOOKUP_BITS)) & mask) << (LOOKUP_BITS + 2)) + (((j >> (k * LOOKUP_BITS)) & mask) << 2)
        bits = _LOOKUP_POS[bits]
        n = n | ((bits >> 2) << (k * 2 * LOOKUP_BITS))
        bits = bits & 3
    return n.astype(_U64) * _U64(2) + _U64(1)


def lsb_for_level(level: int) -> np.uint64:
    return _U64(1 << (2 * (MAX_LEVEL - level)))


def parent_ids(ids: np.ndarray, level: int) -> np.ndarray:
    """Ancestors at `level` of cells at that level or deeper: clear the bits below the level's lsb, set it."""
    lsb = lsb_for_level(level)
    return (ids & ~(lsb * _U64(2) - _U64(1))) | lsb


def cell_levels(ids: np.ndarray) -> np.ndarray:
    """Level of each cell id (30 = leaf, 0 = face)."""
    ids = np.asarray(ids, dtype=_U64)
    lsb = ids & (~ids + _U64(1))  # lowest set bit, two's complement on unsigned ints
    return MAX_LEVEL - np.round(np.log2(lsb.astype(np.float64))).astype(np.int64) // 2


def cell_ranges(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Smallest and largest leaf id inside each cell: a cell's descendants are one contiguous id range."""
    ids = np.asarray(ids, dtype=_U64)
    half = (ids & (~ids + _U64(1))) - _U64(1)
    return ids - half, ids + half


def ids_to_tokens(ids) -> list[str]:
    """S2 tokens (hex with trailing zeros stripped), as `CellId.to_token`."""
    return [format(int(c), "016x").rstrip("0") or "X" for c in ids]


def tokens_to_ids(tokens) -> np.ndarray:
    return np.array([0 if t == "X" else int(t.ljust(16, "0"), 16) for t in tokens], dtype=_U64)


def cell_centers(ids) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) in degrees of cell centres; one s2sphere call per cell (cells are few next to photos)."""
    points = [s2sphere.CellId(int(c)).to_lat_lng() for c in ids]
    return (np.array([p.lat().degrees for p in points], dtype=np.float64),
            np.array([p.lng().degrees for p in points], dtype=np.float64))


def assign_cells(leaf_ids: np.ndarray, cell_ids: np.ndarray) -> np.ndarray:
    """Index into sorted, disjoint `cell_ids` of the cell holding each leaf, or -1 where none does."""
    cell_ids = np.asarray(cell_ids, dtype=_U64)
    if len(cell_ids) == 0:
        return np.full(len(leaf_ids), -1, dtype=np.int64)
    lo, hi = cell_ranges(cell_ids)
    idx = np.searchsorted(lo, leaf_ids, side="right") - 1
    ok = idx >= 0
    ok[ok] = leaf_ids[ok] <= hi[idx[ok]]
    return np.where(ok, idx, -1)


@dataclass
class Partition:
    """Kept cells sorted by id, with their photo counts, centres and the mean location of their photos."""

    ids: np.ndarray
    levels: np.ndarray
    counts: np.ndarray
    center_lat: np.ndarray
    center_lon: np.ndarray
    mean_lat: np.ndarray
    mean_lon: np.ndarray
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def tokens(self) -> list[str]:
        return ids_to_tokens(self.ids)

    def assign(self, lat, lon) -> np.ndarray:
        """Cell index of each point, -1 for points outside every kept cell."""
        return assign_cells(leaf_cell_ids(lat, lon), self.ids)

    def to_plain(self) -> dict:
        """Plain lists (task hyper-parameters, JSON): tokens, centres and mean photo locations."""
        return {
            "tokens": self.tokens,
            "center": np.stack([self.center_lat, self.center_lon], 1).round(7).tolist(),
            "mean": np.stack([self.mean_lat, self.mean_lon], 1).round(7).tolist(),
            "name": self.meta.get("name", "cells"),
        }


def partition_cells(lat, lon, t_max: int, t_min: int, max_level: int = MAX_LEVEL,
                    leaf_ids: np.ndarray | None = None) -> tuple[Partition, np.ndarray]:
    """PlaNet's partitioning of the photos at (lat, lon). Returns the kept cells and each photo's cell index
    (-1: its cell held fewer than `t_min` photos and was dropped). Deterministic: depends only on the data.

    A cell at `max_level` holding more than `t_max` photos (many photos at one spot) is kept as it is.
    """
    if t_max < 1 or t_min < 0 or not 0 <= max_level <= MAX_LEVEL:
        raise ValueError(f"need t_max >= 1, t_min >= 0, 0 <= max_level <= 30; got {t_max}, {t_min}, {max_level}")
    leaves = leaf_cell_ids(lat, lon) if leaf_ids is None else np.asarray(leaf_ids, dtype=_U64)
    active = np.sort(leaves)  # sorted leaves: every cell's photos are one contiguous run at every level
    final_ids, final_levels, final_counts = [], [], []
    for level in range(max_level + 1):
        if len(active) == 0:
            break
        ids = parent_ids(active, level)
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        counts = np.diff(np.r_[starts, len(ids)])
        split = counts > t_max if level < max_level else np.zeros(len(counts), dtype=bool)
        done = ~split
        final_ids.append(ids[starts[done]])
        final_levels.append(np.full(int(done.sum()), level, dtype=np.int64))
        final_counts.append(counts[done])
        active = active[np.repeat(split, counts)]
    ids, levels, counts = (np.concatenate(a) for a in (final_ids, final_levels, final_counts))
    keep = counts >= t_min
    order = np.argsort(ids[keep], kind="stable")
    ids, levels, counts = ids[keep][order], levels[keep][order], counts[keep][order]

    photo_cell = assign_cells(leaves, ids)
    inside = photo_cell >= 0
    xyz = latlon_to_xyz(lat, lon).reshape(-1, 3)[inside]
    sums = np.stack([np.bincount(photo_cell[inside], weights=xyz[:, k], minlength=len(ids)) for k in range(3)], 1)
    mean_lat, mean_lon = xyz_to_latlon(sums)  # mean of unit vectors: right across the antimeridian too
    center_lat, center_lon = cell_centers(ids)
    meta = {"t_max": int(t_max), "t_min": int(t_min), "max_level": int(max_level), "photos": int(len(leaves)),
            "kept_photos": int(inside.sum()), "dropped_photos": int((~inside).sum()),
            "cells": int(len(ids)), "dropped_cells": int((~keep).sum())}
    return Partition(ids, levels, counts, center_lat, center_lon, mean_lat, mean_lon, meta), photo_cell


CELLS_HEADER = "# mobilenet-toolkit cell file: {rows} cells"


def write_cells(partition: Partition, path: str | Path) -> Path:
    """The cell file: a `# ... N cells` line, then CSV `token,level,count,center_lat,center_lon,mean_lat,mean_lon`;
    plus `<path>.json` (meta). Both written whole or not at all (temporary file, then renamed); the row count in
    the first line lets `read_cells` tell a file cut short at a line boundary."""
    path = Path(path)
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        f.write(CELLS_HEADER.format(rows=len(partition)) + "\n")
        writer = csv.writer(f)
        writer.writerow(CELL_COLUMNS)
        for row in zip(partition.tokens, partition.levels, partition.counts, partition.center_lat,
                       partition.center_lon, partition.mean_lat, partition.mean_lon, strict=True):
            writer.writerow([row[0], int(row[1]), int(row[2]), *(f"{v:.7f}" for v in row[3:])])
    write_json_atomic(path.with_suffix(path.suffix + ".json"), partition.meta)
    return path


def read_cells(path: str | Path) -> Partition:
    """Read a cell file written by `write_cells` (or by hand: the same columns, the count line optional).

    Every row is checked (a DataError names the file and line): all columns present, a valid token, level 0-30,
    a count >= 0, finite centres within [-90, 90] x [-180, 180]; and the row count against the file's count line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: cell file not found. Write one with `python -m toolkit mode=partition data=geo "
                        "data.train_csv=...` or leave data.cells_file unset to partition the training CSV on the fly.")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text cell file ({e}); rewrite it with mode=partition") from e
    expected, first = None, 1
    if lines and lines[0].startswith("#"):
        match = re.fullmatch(r"# mobilenet-toolkit cell file: (\d+) cells", lines[0].strip())
        if match is None:
            raise DataError(f"{path}: line 1: unrecognised count line {lines[0][:80]!r}; expected "
                            f"{CELLS_HEADER.format(rows='N')!r}")
        expected, lines, first = int(match[1]), lines[1:], 2
    reader = csv.reader(lines)
    header = next(reader, None)
    missing = [c for c in CELL_COLUMNS if c not in (header or [])]
    if missing:
        raise DataError(f"{path}: cell file lacks columns {missing}; expected header {','.join(CELL_COLUMNS)}")
    index = {c: header.index(c) for c in CELL_COLUMNS}
    rows = [(first + 1 + n, row) for n, row in enumerate(reader) if row]
    if expected is not None and len(rows) != expected:
        raise DataError(f"{path}: the file says {expected} cells but holds {len(rows)}: it was cut short or edited; "
                        "rewrite it with mode=partition")
    if not rows:
        raise DataError(f"{path}: cell file has no cells")
    tokens, values = [], []
    for line, row in rows:
        if len(row) != len(header):
            raise DataError(f"{path}: line {line}: {len(row)} fields, the header has {len(header)} (a row cut short?); "
                            "rewrite the file with mode=partition")
        tokens.append(row[index["token"]])
        values.append([_cell_value(path, line, c, row[index[c]]) for c in CELL_COLUMNS[1:]])
    try:
        ids = tokens_to_ids(tokens)
    except ValueError as e:
        raise DataError(f"{path}: malformed cell token ({e}); rewrite the file with mode=partition") from e
    cols = dict(zip(CELL_COLUMNS[1:], np.array(values, dtype=np.float64).T, strict=True))
    order = np.argsort(ids, kind="stable")
    lo, hi = cell_ranges(ids[order])
    if np.any(lo[1:] <= hi[:-1]):
        raise DataError(f"{path}: cells overlap (a cell and one of its ancestors are both listed); "
                        "a partitioning must be disjoint")
    meta_path = path.with_suffix(path.suffix + ".json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    meta.setdefault("name", path.stem)
    return Partition(ids[order], cols["level"][order].astype(np.int64), cols["count"][order].astype(np.int64),
                     cols["center_lat"][order], cols["center_lon"][order], cols["mean_lat"][order],
                     cols["mean_lon"][order], meta)


_CELL_RANGES = {"level": (0, MAX_LEVEL), "count": (0, math.inf), "center_lat": (-90, 90), "center_lon": (-180, 180),
                "mean_lat": (-90, 90), "mean_lon": (-180, 180)}


def _cell_value(path: Path, line: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{path}: line {line}: {column} {text!r} is not a number; rewrite the file with mode=partition") from None
    low, high = _CELL_RANGES[column]
    if not (math.isfinite(value) and low <= value <= high):
        raise DataError(f"{path}: line {line}: {column} {text} outside [{low}, {high}]; rewrite the file with mode=partition")
    return value


def level_histogram(partition: Partition) -> dict[int, int]:
    levels, counts = np.unique(partition.levels, return_counts=True)
    return {int(lv): int(c) for lv, c in zip(levels, counts, strict=True)}
