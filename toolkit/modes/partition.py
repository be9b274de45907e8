"""mode=partition: PlaNet's S2-cell partitioning of a geo CSV's training photos, written as cell file(s)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig

from toolkit.errors import ConfigError
from toolkit.geo.s2cells import level_histogram, partition_cells, write_cells
from toolkit.modes.common import build_datamodule, output_dir, write_json

log = logging.getLogger(__name__)


def _targets(cfg: DictConfig, out: Path, thresholds: list[int], t_min: int) -> list[Path]:
    """Where each partitioning goes: data.cells_file (a path, or a list matching data.cells.t_max), else the run folder."""
    spec = cfg.data.get("cells_file")
    if not spec:
        return [out / f"cells_tmax{t}_tmin{t_min}.csv" for t in thresholds]
    paths = [spec] if isinstance(spec, str) else list(spec)
    if len(paths) != len(thresholds):
        raise ConfigError("data.cells_file", spec, f"give one output path per data.cells.t_max value ({len(thresholds)})")
    return [Path(p).expanduser() for p in paths]


def partition(cfg: DictConfig) -> dict:
    out = output_dir(cfg)
    datamodule = build_datamodule(cfg, check_task=False)  # the data alone: no task reads it here
    if not hasattr(datamodule, "read_split") or not hasattr(datamodule, "thresholds"):
        raise ConfigError("data", cfg.data.get("_target_"), "mode=partition needs geo data: data=geo data.train_csv=... "
                          "(or data=geo_synthetic)")
    records = datamodule.read_split("train")
    thresholds, settings = datamodule.thresholds(), datamodule.cells
    t_min, max_level = int(settings["t_min"]), int(settings["max_level"])
    targets = _targets(cfg, out, thresholds, t_min)
    existing = [str(t) for t in targets if t.exists()]
    if existing and not cfg.get("overwrite", False):
        raise ConfigError("data.cells_file", cfg.data.get("cells_file"), f"{', '.join(existing)} exists already (a "
                          "training run may read it); pass overwrite=true to replace it, or name a new file")
    written, metas = [], []
    for t_max, target in zip(thresholds, targets, strict=True):
        start = time.perf_counter()
        part, _ = partition_cells(records.lat, records.lon, int(t_max), t_min, max_level)
        seconds = time.perf_counter() - start
        part.meta.update({"name": target.stem, "source": str(records.source), "rejected_rows": len(records.rejected),
                          "seconds": round(seconds, 3), "levels": level_histogram(part)})
        written.append(write_cells(part, target))
        metas.append(part.meta)
        print(f"t_max={t_max} t_min={t_min}: {len(part)} cells (levels {min(part.meta['levels'], default='-')}-"
              f"{max(part.meta['levels'], default='-')}), {part.meta['kept_photos']} photos kept, "
              f"{part.meta['dropped_photos']} in {part.meta['dropped_cells']} dropped cells, {seconds:.2f} s -> {target}")
    if records.rejected:
        print(f"{len(records.rejected)} CSV rows rejected (see the log): {records.rejection_report(3)}")
    write_json(out / "partition.json", metas)
    return {"cells_files": [str(p) for p in written], "partitions": metas, "output_dir": str(out)}
