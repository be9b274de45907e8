"""mode=select, cost phase: every α × ρ candidate built untrained, exported to `select.runtime` and measured there
(latency at batch 1, file size), counted (mult-adds, parameters) and checked against the budgets. No training.

The candidates of one width α share their weights, so where the runtime's format takes a range of input sizes
(ONNX, ExecuTorch) and the task's network runs at any size (not detectors), one file per α is written, into
`<selection>/candidates/a<α>/`, and timed at each ρ; otherwise one file per candidate, `candidates/a<α>_r<ρ>/`.
Files are written by mode=export's pieces (the task's inference contract; random calibration images: an int8
file's speed does not depend on its activation ranges) and timed by `python -m toolkit.deploy --benchmark`'s code
(batch 1, up to the final outputs; each file in a fresh process, after every file is written, which also gives the
runtime's peak memory for it), as on a device. Measurements are cached in
`<paths.cache_dir>/select_cost.json` by (backbone, α, ρ, task and head, classes, runtime, threads, machine,
runtime version): a second selection on the same machine measures nothing again.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass, field
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from toolkit.errors import ConfigError, DataError
from toolkit.io import json_text, write_text_atomic

log = logging.getLogger(__name__)

#: the paper's grid (Tables 6-7, Figures 4-5)
PAPER_ALPHAS = (1.0, 0.75, 0.5, 0.25)
PAPER_RESOLUTIONS = (224, 192, 160, 128)
#: SSD's input sizes (SSD300 and smaller), for detectors
DETECTOR_RESOLUTIONS = (300, 256, 224, 192)
#: budget key -> the candidate's cost it bounds, and its unit
BUDGETS = {"latency_ms": ("latency_ms", "ms"), "size_mb": ("size_mb", "MB"), "madds_m": ("madds_m", "M mult-adds")}
CACHE_FILE = "select_cost.json"
#: the Python package whose version a runtime's timings depend on
RUNTIME_PACKAGES = {"onnx": "onnxruntime", "executorch": "executorch", "torchscript": "torch"}


@dataclass
class Candidate:
    """One α × ρ model of the grid and what the selection learned about it."""

    alpha: float
    resolution: int
    madds: int | None = None
    params: int | None = None
    size_mb: float | None = None
    latency_ms: float | None = None  # the latency the budget is checked against (the device table's, if given)
    local_latency_ms: float | None = None  # measured on this machine
    peak_memory_mb: float | None = None  # the runtime's peak resident memory for the file (load + runs), this machine
    file: str | None = None
    cached: bool = False
    over_budget: list[str] = field(default_factory=list)  # why it was dropped, one phrase per budget
    rungs: dict[str, dict[str, Any]] = field(default_factory=dict)  # rung index -> {epochs, metric, run_dir, ...}
    state: str = "candidate"

    @property
    def name(self) -> str:
        return f"a{self.alpha:g}_r{self.resolution}"

    @property
    def madds_m(self) -> float | None:
        return None if self.madds is None else self.madds / 1e6

    def cost_key(self) -> tuple:
        """Cheaper first: latency, then mult-adds (ties of the metric go to the cheaper candidate)."""
        return (self.latency_ms if self.latency_ms is not None else float("inf"), self.madds or 0)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "alpha": self.alpha, "resolution": self.resolution, "madds": self.madds,
                "params": self.params, "size_mb": self.size_mb, "latency_ms": self.latency_ms,
                "local_latency_ms": self.local_latency_ms, "peak_memory_mb": self.peak_memory_mb, "file": self.file,
                "cached": self.cached, "over_budget": self.over_budget, "rungs": self.rungs, "state": self.state}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Candidate:
        return cls(**{k: v for k, v in record.items() if k != "name"})


def default_grid(cfg: DictConfig) -> tuple[list[float], list[int]]:
    """`select.alphas` / `select.resolutions`, or the paper's grid (detectors: SSD's sizes)."""
    settings = cfg.select
    detector = getattr(_task_class(cfg), "data_kind", None) == "detection"
    alphas = list(settings.alphas) if settings.get("alphas") else list(PAPER_ALPHAS)
    resolutions = (list(settings.resolutions) if settings.get("resolutions")
                   else list(DETECTOR_RESOLUTIONS if detector else PAPER_RESOLUTIONS))
    return [float(a) for a in alphas], [int(r) for r in resolutions]


def _task_class(cfg: DictConfig):
    import hydra.utils

    return hydra.utils.get_class(cfg.task._target_)


def candidate_config(cfg: DictConfig, alpha: float, resolution: int, folder: Path, *, mode: str) -> DictConfig:
    """The selection's config with one candidate's α and ρ, writing into `folder`."""
    config = copy.deepcopy(cfg)
    with open_dict(config):
        config.mode = mode
        config.backbone.alpha = float(alpha)
        config.data.resolution = int(resolution)
        config.paths.output_dir = str(folder)
        config.ckpt_path = None
    return config


def machine() -> dict[str, Any]:
    """What a latency depends on besides the model: the CPU model and the cores this process may use."""
    from toolkit.deploy.benchmark import this_machine

    return {key: value for key, value in this_machine().items() if key != "machine"}


def runtime_version(runtime: str) -> str | None:
    package = RUNTIME_PACKAGES.get(runtime.split("_")[0])
    try:
        return package_metadata.version(package) if package else None
    except package_metadata.PackageNotFoundError:
        return None


def cache_key(cfg: DictConfig, candidate: Candidate, num_classes: Any) -> tuple[str, dict[str, Any]]:
    """(hash, what it hashes): the model (backbone settings, task, head, classes), the runtime and the machine."""
    backbone = OmegaConf.to_container(cfg.backbone, resolve=True)
    backbone = {k: v for k, v in backbone.items() if k not in ("alpha", "pretrained")}  # weights do not change speed
    head = OmegaConf.to_container(cfg.task.get("model") or {}, resolve=True)
    runtime = str(cfg.select.runtime)
    fields = {"backbone": backbone, "alpha": candidate.alpha, "resolution": candidate.resolution,
              "task": str(cfg.task._target_), "head": head, "num_classes": num_classes, "runtime": runtime,
              "runtime_version": runtime_version(runtime), "threads": cfg.select.get("threads"),
              "postprocess": str(cfg.export.get("postprocess", "nms")), "opset": cfg.export.get("opset"),
              "machine": machine()}
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:16], fields


class CostCache:
    """`<cache_dir>/select_cost.json`: {key: {fields, cost}}; written whole after each measurement (atomic)."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, Any] = {}
        if path.is_file():
            try:
                self.entries = json.loads(path.read_text())
            except ValueError:
                log.warning("select: the cost cache %s cannot be read (not JSON); measuring again and rewriting it", path)

    def get(self, key: str) -> dict[str, Any] | None:
        entry = self.entries.get(key)
        return entry.get("cost") if isinstance(entry, dict) else None

    def put(self, key: str, fields: dict[str, Any], cost: dict[str, Any]) -> None:
        # what other selections wrote meanwhile (two selections on one machine share the file) is kept
        with contextlib.suppress(OSError, ValueError):
            self.entries = {**json.loads(self.path.read_text()), **self.entries}
        self.entries[key] = {"fields": fields, "cost": cost}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json_text(self.entries, indent=1, default=str) + "\n")


def count(cfg: DictConfig, datamodule, candidate: Candidate) -> None:
    """Mult-adds and parameters per image of the untrained candidate (mode=profile's counting)."""
    from toolkit.modes.common import build_task
    from toolkit.profiling.counting import count_model

    config = candidate_config(cfg, candidate.alpha, candidate.resolution, Path("."), mode="profile")
    task = build_task(config, datamodule).eval()
    counted = count_model(task.model, task.example_input(candidate.resolution, 1))
    candidate.madds, candidate.params = int(counted.mult_adds), int(counted.params)


def file_config(cfg: DictConfig, alpha: float, resolutions: list[int], folder: Path) -> DictConfig:
    """mode=export's config for the file of width `alpha` taking `resolutions`, resolved (export workers run
    without Hydra's context): random calibration images (an int8 file's speed does not depend on its ranges)."""
    config = candidate_config(cfg, alpha, max(resolutions), folder, mode="export")
    with open_dict(config):
        config.export.formats = [str(cfg.select.runtime)]
        config.export.calibration = "random"
        config.export.batch_size = 1
    return OmegaConf.create(OmegaConf.to_container(config, resolve=True))


def write_file(config: DictConfig, resolutions: list[int]) -> Path:
    """Write the untrained model of `config` (`file_config`) in `select.runtime` through mode=export's pieces (the
    task's inference contract), unverified, into its output folder. With several `resolutions` the file takes
    every one (metadata `resolutions`; `ExportRequest.size_range`): the α × ρ candidates of one width share their
    weights, so one file is exported per width and timed at each ρ."""
    from toolkit.formats import FORMATS
    from toolkit.modes.export import load_model, request_for, write_format
    from toolkit.modes.export_data import calibration_inputs

    runtime = str(config.select.runtime)
    fmt = FORMATS[runtime]
    task, datamodule, _ = load_model(config)
    contract = task.inference()
    contract.check()
    contract.configure(config.export)  # what the exported files compute (detectors: export.score_thresh), as mode=export
    nms_in_graph = getattr(fmt, "graph_nms", True)
    if (why := contract.no_form(runtime, nms_in_graph=nms_in_graph)) is not None:
        raise ConfigError("select.runtime", runtime, f"this task has no {runtime} form ({why})")
    calibration, _ = calibration_inputs(config, datamodule, one_image=contract.one_image)
    request = request_for(contract, fmt, calibration, config.export, resolution=max(resolutions),
                          datamodule=datamodule, postprocess=str(config.export.get("postprocess", "nms")),
                          nms_in_graph=nms_in_graph)
    if len(resolutions) > 1:
        request = dataclasses.replace(request, dynamic_batch=False, size_range=(min(resolutions), max(resolutions)),
                                      metadata={**request.metadata, "resolutions": sorted(resolutions)})
    folder = Path(config.paths.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / fmt.file_name
    write_format(fmt, request, path)
    return path


def shares_files(cfg: DictConfig, datamodule) -> bool:
    """Whether one file per width can be timed at every resolution: the runtime's format takes a size range and
    the task's network runs at any size (detectors' anchors do not)."""
    from toolkit.formats import FORMATS
    from toolkit.modes.common import build_task

    if not getattr(FORMATS[str(cfg.select.runtime)], "size_range", False):
        return False
    return bool(getattr(build_task(cfg, datamodule).inference(), "any_size", False))


@dataclass
class FileJob:
    """The file(s) of one width: `shared` (one file for every resolution; None: one file per resolution) and
    `singles` (one config per resolution: the plan, or the fallback of a program that will not take the range)."""

    alpha: float
    resolutions: list[int]
    shared: DictConfig | None
    singles: list[DictConfig]

    def write(self) -> list[tuple[Path, float]]:
        """[(file, α)]."""
        from toolkit.errors import ExportError

        if self.shared is not None:
            try:
                return [(write_file(self.shared, self.resolutions), self.alpha)]
            except ExportError as e:
                log.warning("select: one file for every resolution of alpha %g failed (%s); one file per resolution",
                            self.alpha, e)
        return [(write_file(config, [r]), self.alpha) for config, r in zip(self.singles, self.resolutions, strict=True)]


def file_jobs(cfg: DictConfig, todo: dict[float, list[Candidate]], folder: Path, *, shared: bool) -> list[FileJob]:
    jobs = []
    for alpha, members in todo.items():
        resolutions = [c.resolution for c in members]
        singles = [file_config(cfg, alpha, [c.resolution], folder / c.name) for c in members]
        if shared and len(resolutions) > 1:
            jobs.append(FileJob(alpha, resolutions, file_config(cfg, alpha, resolutions, folder / f"a{alpha:g}"),
                                singles))
        else:  # one job per file: they run in parallel
            jobs += [FileJob(alpha, [r], None, [config]) for config, r in zip(singles, resolutions, strict=True)]
    return jobs


def written_files(cfg: DictConfig, jobs: list[FileJob]) -> list[tuple[Path, float]]:
    """Every job's files, `select.n_jobs` at a time in separate processes (exporters spend most of their time in
    single-threaded Python: ExecuTorch's lowering takes ~20 s per MobileNet); timing comes after, alone."""
    n_jobs = max(1, min(int(cfg.select.get("n_jobs") or 1), len(jobs)))
    if n_jobs == 1:
        return [pair for job in jobs for pair in job.write()]
    from joblib import Parallel, delayed

    written = Parallel(n_jobs=n_jobs, backend="loky")(delayed(job.write)() for job in jobs)
    return [pair for pairs in written for pair in pairs]


def measure(cfg: DictConfig, datamodule, candidates: list[Candidate], folder: Path, *, use_cache: bool) -> None:
    """Fill each candidate's cost: from the cache where it holds the candidate (and `use_cache`), else measured
    (`written_files`; then, once every file is written, each file timed at every size it takes in a fresh process of
    its own, one at a time, as `python -m toolkit.deploy --benchmark` does: latency and the runtime's peak memory)."""
    from toolkit.deploy.benchmark import time_in_child

    cache = CostCache(Path(cfg.paths.cache_dir) / CACHE_FILE)
    num_classes = (datamodule.task_kwargs() if datamodule is not None else {}).get("num_classes")
    todo: dict[float, list[Candidate]] = {}
    keys = {}  # candidate name -> (cache key, what it hashes)
    for candidate in candidates:
        key, fields = keys[candidate.name] = cache_key(cfg, candidate, num_classes)
        cached = cache.get(key) if use_cache else None
        if cached is not None:
            candidate.madds, candidate.params = cached["madds"], cached["params"]
            candidate.size_mb, candidate.local_latency_ms = cached["size_mb"], cached["latency_ms"]
            candidate.peak_memory_mb = cached.get("peak_memory_mb")  # absent from caches written before it was measured
            candidate.cached = True
        else:
            todo.setdefault(candidate.alpha, []).append(candidate)
    shared = bool(todo) and shares_files(cfg, datamodule)
    files = written_files(cfg, file_jobs(cfg, todo, folder, shared=shared))
    threads, repeats = cfg.select.get("threads"), int(cfg.export.latency_repeats)
    rows = {}  # (alpha, resolution) -> (file, benchmark row): each file timed at every size it takes
    for path, alpha in files:
        for row in time_in_child(path, threads=threads, warmup=3, repeats=repeats):
            rows[(alpha, int(row["resolution"]))] = (path, row)
    for alpha, members in todo.items():
        for candidate in members:
            count(cfg, datamodule, candidate)
            path, row = rows[(alpha, candidate.resolution)]
            candidate.size_mb, candidate.local_latency_ms = float(row["size_mb"]), float(row["latency_ms"])
            candidate.peak_memory_mb = row.get("peak_memory_mb")
            candidate.file = str(path)
            key, fields = keys[candidate.name]
            cache.put(key, fields, {"madds": candidate.madds, "params": candidate.params,
                                    "size_mb": candidate.size_mb, "latency_ms": candidate.local_latency_ms,
                                    "peak_memory_mb": candidate.peak_memory_mb})
    for candidate in candidates:
        candidate.latency_ms = candidate.local_latency_ms
        memory = "" if candidate.peak_memory_mb is None else f", peak memory {candidate.peak_memory_mb:.1f} MB"
        log.info("select: %s %s: %.1f M mult-adds, %.2f MB, %.3f ms%s%s", candidate.name, cfg.select.runtime,
                 candidate.madds / 1e6, candidate.size_mb, candidate.latency_ms, memory,
                 " (cached)" if candidate.cached else "")


# ---- a latency table from the device (python -m toolkit.deploy --benchmark) ---------------------------------
def read_latency_table(path: str | Path) -> dict[str, Any]:
    path = Path(path).expanduser()
    try:
        table = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable latency table ({e}); write one with `python -m toolkit.deploy "
                        "--benchmark <candidate files> --out latency_table.json` on the device") from e
    if not isinstance(table, dict) or not isinstance(table.get("models"), list):
        raise DataError(f"{path}: not a latency table (no 'models' list); write one with `python -m toolkit.deploy "
                        "--benchmark <candidate files> --out latency_table.json` on the device")
    return table


def apply_latency_table(table: dict[str, Any], path: str | Path, candidates: list[Candidate], runtime: str) -> None:
    """Replace each candidate's latency with the device's, matched by (format, α, ρ); a candidate the table lacks
    stops the selection (a budget checked against this machine's numbers would be a different question)."""
    rows = {}
    for row in table["models"]:
        try:
            rows[(str(row["format"]), round(float(row["alpha"]), 4), int(row["resolution"]))] = float(row["latency_ms"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{path}: model row {row!r} lacks format/alpha/resolution/latency_ms ({e}); write the table "
                            "with `python -m toolkit.deploy --benchmark`") from e
    missing = [c.name for c in candidates if (runtime, round(c.alpha, 4), c.resolution) not in rows]
    if missing:
        raise DataError(f"{path}: no {runtime} latency for {', '.join(missing)} (the table has "
                        f"{len(rows)} rows); benchmark the files of `mode=select select.export_only=true` with the same "
                        "select.alphas, select.resolutions and select.runtime")
    for c in candidates:
        c.latency_ms = rows[(runtime, round(c.alpha, 4), c.resolution)]


# ---- budgets -------------------------------------------------------------------------------------------------
def apply_budgets(cfg: DictConfig, candidates: list[Candidate]) -> list[Candidate]:
    """Mark the candidates over any budget (state `over_budget`, with why); return the feasible ones, cheapest first."""
    for c in candidates:
        c.over_budget = []
        for key, (attribute, unit) in BUDGETS.items():
            limit = cfg.select.get(key)
            value = getattr(c, attribute)
            if limit is not None and value is not None and value > limit:
                c.over_budget.append(f"{attribute} {value:.3g} {unit} > {limit:g}")
        c.state = "over_budget" if c.over_budget else "candidate"
    return sorted((c for c in candidates if not c.over_budget), key=Candidate.cost_key)


def nothing_fits(cfg: DictConfig, candidates: list[Candidate]) -> ConfigError:
    """The one-line error when no candidate meets the budgets: the cheapest candidate and its cost."""
    cheapest = min(candidates, key=Candidate.cost_key)
    key = next(k for k, (attribute, _) in BUDGETS.items()
               if cfg.select.get(k) is not None and any(p.startswith(attribute + " ") for p in cheapest.over_budget))
    return ConfigError(f"select.{key}", cfg.select.get(key),
                       f"no candidate meets the budget; the cheapest, {label(cfg, cheapest)}, has "
                       f"{cheapest.latency_ms:.3g} ms, {cheapest.size_mb:.3g} MB, {cheapest.madds_m:.3g} M mult-adds "
                       f"in {cfg.select.runtime} ({'; '.join(cheapest.over_budget)}): raise the budget or add smaller "
                       "select.alphas / select.resolutions")


def label(cfg: DictConfig, candidate: Candidate) -> str:
    from toolkit.modes.profile import model_label

    return model_label(str(cfg.backbone.get("name")), candidate.alpha, candidate.resolution)


def rank_correlation(candidates: list[Candidate]) -> float | None:
    """Spearman's rank correlation of mult-adds and latency over the candidates (None for fewer than 3)."""
    pairs = [(c.madds, c.latency_ms) for c in candidates if c.madds is not None and c.latency_ms is not None]
    if len(pairs) < 3:
        return None
    from scipy.stats import spearmanr

    rho = spearmanr([p[0] for p in pairs], [p[1] for p in pairs]).statistic
    return None if rho != rho else float(rho)  # NaN (all latencies equal): no ranking to compare
