"""Hydra callback: after a `-m` sweep, gather every job's results into one CSV and a PNG plot.

- `mode=profile` jobs (profile.json): profile_sweep.csv/png. The plot has the paper's Figures 4-5
  axes (ImageNet accuracy against mult-adds and against parameters, log x) when
  `profile.results_file` gives accuracies; otherwise it shows mult-adds and parameters per model.
- `mode=train` jobs (train_metrics.json): train_sweep.csv/png, the same axes with each job's own
  best validation score (the task's checkpoint metric, e.g. val/top1) against its model's cost.

Sweeps of other modes write neither file, so the callback does nothing for them.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from toolkit.errors import DataError
from toolkit.io import atomic_path

PROFILE_FILE = "profile.json"
CSV_NAME = "profile_sweep.csv"
PNG_NAME = "profile_sweep.png"
#: what names a model and what it costs per image: written by profile mode and, under "model", by train mode
MODEL_COLUMNS = ("label", "model", "alpha", "resolution", "task", "params", "weights", "mult_adds")
#: the timed paths of profile.json (report.latency_variants); compiled ones are empty unless profile.compile=true
LATENCY_PATHS = ("fp32", "bf16", "fp32_compiled", "bf16_compiled")
LATENCY_COLUMNS = tuple(f"latency_{b}_{path}_ms" for path in LATENCY_PATHS for b in ("b1", "bn"))
COLUMNS = ("job", *MODEL_COLUMNS, "batch_size", *LATENCY_COLUMNS, "device", "top1")
TRAIN_FILE = "train_metrics.json"
TRAIN_CSV_NAME = "train_sweep.csv"
TRAIN_PNG_NAME = "train_sweep.png"
TRAIN_COLUMNS = ("job", *MODEL_COLUMNS, "metric", "best", "epoch", "checkpoint")
RESULT_COLUMNS = ("model", "alpha", "resolution", "top1")


def _key(model: str, alpha: Any, resolution: Any) -> tuple[str, float | None, int]:
    return str(model), None if alpha in (None, "") else round(float(alpha), 4), int(resolution)


def read_results(path: str | Path) -> dict[tuple, float]:
    """Accuracies from a CSV with header `model,alpha,resolution,top1` (alpha may be empty for timm models)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"profile.results_file={str(path)!r}: no such file. Give a CSV with columns "
                        f"{','.join(RESULT_COLUMNS)}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in RESULT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}; the header must hold "
                            f"{','.join(RESULT_COLUMNS)} (found {','.join(reader.fieldnames or [])})")
        results = {}
        for line, row in enumerate(reader, start=2):
            try:
                results[_key(row["model"], row["alpha"], row["resolution"])] = float(row["top1"])
            except (TypeError, ValueError) as e:
                raise DataError(f"{path}, line {line}: {dict(row)} is not model,alpha,resolution,top1 "
                                f"with numbers for alpha, resolution and top1 ({e})") from e
    return results


def _job_files(sweep_dir: Path, name: str) -> list[Path]:
    return sorted(sweep_dir.glob(f"**/{name}"), key=lambda p: _job_order(p.parent.name))


def collect_rows(sweep_dir: Path, results: dict[tuple, float] | None = None) -> list[dict[str, Any]]:
    """One row per job folder holding a profile.json, in job order."""
    rows = []
    for path in _job_files(sweep_dir, PROFILE_FILE):
        p = json.loads(path.read_text())
        latency = p.get("latency") or {}
        row = {
            "job": str(path.parent.relative_to(sweep_dir)), **{k: p.get(k) for k in MODEL_COLUMNS},
            "batch_size": latency.get("batch_size"),
            **latency_cells(latency),
            "device": latency.get("device"),
            "top1": (results or {}).get(_key(p["model"], p.get("alpha"), p["resolution"])),
        }
        rows.append(row)
    return rows


def latency_cells(latency: dict[str, Any]) -> dict[str, float | None]:
    """{latency_b1_fp32_ms: ..., latency_bn_bf16_ms: ...} from a profile.json's latency block (None: not timed)."""
    variants = latency.get("variants") or {}
    return {f"latency_{b}_{path}_ms": ((variants.get(path) or {}).get(key) or {}).get("median_ms")
            for path in LATENCY_PATHS for b, key in (("b1", "batch_1"), ("bn", "batch_n"))}


def collect_train_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per training job (train_metrics.json with the model's counts), in job order."""
    rows = []
    for path in _job_files(sweep_dir, TRAIN_FILE):
        t = json.loads(path.read_text())
        model = t.get("model")
        if not model:  # written before train mode recorded the model's counts: nothing to plot
            continue
        rows.append({"job": str(path.parent.relative_to(sweep_dir)), **{k: model.get(k) for k in MODEL_COLUMNS},
                     "metric": t.get("monitor"), "best": t.get("best_score"), "epoch": t.get("epoch"),
                     "checkpoint": t.get("best_checkpoint") or None})
    return rows


def _job_order(name: str) -> tuple[int, str]:
    return (int(name), name) if name.isdigit() else (1 << 30, name)


def write_csv(rows: list[dict[str, Any]], path: Path, columns: tuple[str, ...] = COLUMNS) -> Path:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})
    return path


def plot_rows(rows: list[dict[str, Any]], path: Path, score: str = "top1", score_label: str = "Top-1 accuracy",
              no_score_hint: str = "set profile.results_file") -> Path:
    """`score` vs mult-adds and vs params (log x, Figures 4-5) where rows have one, else the counts per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, ScalarFormatter

    with_acc = [r for r in rows if r[score] is not None]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    if with_acc:
        groups: dict[str, list[dict[str, Any]]] = {}  # one colour per width (alpha) / model
        for r in with_acc:
            groups.setdefault(f"alpha {r['alpha']}" if r["alpha"] is not None else r["model"], []).append(r)
        for ax, key, xlabel in ((axes[0], "mult_adds", "Million Mult-Adds"), (axes[1], "params", "Million Parameters")):
            for name, group in groups.items():
                ax.scatter([r[key] / 1e6 for r in group], [r[score] for r in group], label=name)
            for r in with_acc:
                ax.annotate(r["label"], (r[key] / 1e6, r[score]), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(FuncFormatter(_label_2_and_5))
            ax.legend(fontsize=8)
            ax.set_xlabel(f"{xlabel} (log scale)")
            ax.set_ylabel(score_label)
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_title(f"{score_label} vs mult-adds (paper Figure 4)")
        axes[1].set_title(f"{score_label} vs parameters (paper Figure 5)")
        missing = len(rows) - len(with_acc)
        if missing:
            fig.suptitle(f"{missing} model(s) without a {score_label} are not shown ({no_score_hint})")
    else:
        labels = [r["label"] for r in rows]
        for ax, key, title in ((axes[0], "mult_adds", "Million Mult-Adds"), (axes[1], "params", "Million Parameters")):
            ax.bar(range(len(rows)), [r[key] / 1e6 for r in rows])
            ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=7)
            if max(r[key] for r in rows) > 10 * min(r[key] for r in rows):
                ax.set_yscale("log")
            ax.set_ylabel(title)
            ax.set_title(f"{title} per model (no {score_label}: {no_score_hint})")
            ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:  # the temporary name ends in .tmp: say the format
        fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def _label_2_and_5(value: float, _position) -> str:
    """Minor tick labels of a log axis at 2x and 5x the powers of ten (the rest stay unlabelled)."""
    leading = round(value / 10 ** math.floor(math.log10(value))) if value > 0 else 0
    return f"{value:g}" if leading in (2, 5) else ""


def summarize_sweep(sweep_dir: Path, results_file: str | None = None) -> tuple[list[dict], Path, Path] | None:
    """Write the CSV and PNG into `sweep_dir` and return (rows, csv, png); None when no job wrote a profile.json."""
    results = read_results(results_file) if results_file else None
    rows = collect_rows(sweep_dir, results)
    if not rows:
        return None
    return rows, write_csv(rows, sweep_dir / CSV_NAME), plot_rows(rows, sweep_dir / PNG_NAME)


def summarize_train_sweep(sweep_dir: Path) -> tuple[list[dict], Path, Path] | None:
    """train_sweep.csv and .png in `sweep_dir`: each training job's best validation score against its model's
    mult-adds and parameters; None when no job wrote a train_metrics.json with counts."""
    rows = collect_train_rows(sweep_dir)
    if not rows:
        return None
    metrics = sorted({r["metric"] for r in rows if r["metric"]})
    label = f"best {' / '.join(metrics) or 'score'}"
    return (rows, write_csv(rows, sweep_dir / TRAIN_CSV_NAME, TRAIN_COLUMNS),
            plot_rows(rows, sweep_dir / TRAIN_PNG_NAME, "best", label, "no checkpoint metric was logged"))


def print_rows(rows: list[dict[str, Any]]) -> None:
    header = f"{'model':<32s} {'params':>9s} {'mult-adds':>11s} {'b1 ms':>8s} {'top1':>6s}"
    print(header)
    for r in rows:
        b1 = "" if r["latency_b1_fp32_ms"] is None else f"{r['latency_b1_fp32_ms']:.1f}"
        top1 = "" if r["top1"] is None else f"{r['top1']:.1f}"
        print(f"{r['label']:<32s} {r['params'] / 1e6:8.2f}M {r['mult_adds'] / 1e6:10.1f}M {b1:>8s} {top1:>6s}")


def print_train_rows(rows: list[dict[str, Any]]) -> None:
    print(f"{'model':<32s} {'params':>9s} {'mult-adds':>11s} {'best':>8s}  metric")
    for r in rows:
        best = "" if r["best"] is None else f"{r['best']:.4f}"
        print(f"{r['label']:<32s} {r['params'] / 1e6:8.2f}M {r['mult_adds'] / 1e6:10.1f}M {best:>8s}  {r['metric'] or ''}")


class SweepSummaryCallback(Callback):
    """Registered in conf/hydra/default.yaml; acts on multiruns whose jobs wrote profile.json or train_metrics.json."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        results_file = (config.get("profile") or {}).get("results_file")
        for kind, summarize, print_table in (("profile", lambda: summarize_sweep(sweep_dir, results_file), print_rows),
                                             ("train", lambda: summarize_train_sweep(sweep_dir), print_train_rows)):
            written = summarize()
            if written is not None:
                rows, csv_path, png_path = written
                print_table(rows)
                print(f"{kind} sweep table: {csv_path.resolve()}")
                print(f"{kind} sweep plot: {png_path.resolve()}")
