"""Hydra callback: after a `-m` sweep, gather every job's results into one CSV and a PNG plot.

- `mode=profile` jobs (profile.json): profile_sweep.csv/png. The plot is the paper's Figures 4-5 (ImageNet
  accuracy against mult-adds and against parameters, log x, one labelled point per alpha x resolution) plus
  accuracy against the measured latency, when `profile.results_file` gives accuracies; otherwise the cost alone
  (parameters and measured latency against mult-adds).
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


#: the latency a sweep plots: median ms of one image (batch 1) through the fp32 eager path
LATENCY_KEY = "latency_b1_fp32_ms"


def sweep_figure(rows: list[dict[str, Any]], score: str = "top1", score_label: str = "Top-1 accuracy",
                 no_score_hint: str = "set profile.results_file"):
    """The paper's pictures of a width x resolution sweep, one labelled point per model (colour: width alpha):
    with scores, `score` against mult-adds (Figure 4) and against parameters (Figure 5), log x, and against the
    measured latency where it was timed; without, the cost alone: parameters and latency against mult-adds.
    Returns the matplotlib Figure (tests check its panels)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    with_score = [r for r in rows if r.get(score) is not None]
    timed = [r for r in rows if r.get(LATENCY_KEY) is not None]
    if with_score:
        panels = [("mult_adds", "Million Mult-Adds", score, score_label, f"{score_label} vs mult-adds (Fig. 4)"),
                  ("params", "Million Parameters", score, score_label, f"{score_label} vs parameters (Fig. 5)")]
        if any(r.get(LATENCY_KEY) is not None for r in with_score):
            panels.append((LATENCY_KEY, "ms per image (batch 1, fp32)", score, score_label, f"{score_label} vs latency"))
        shown = with_score
    else:
        panels = [("mult_adds", "Million Mult-Adds", "params", "Million Parameters", "parameters vs mult-adds")]
        if timed:
            panels.append(("mult_adds", "Million Mult-Adds", LATENCY_KEY, "ms per image (batch 1, fp32)",
                           "latency vs mult-adds"))
        shown = rows
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), squeeze=False, layout="constrained")
    groups: dict[str, list[dict[str, Any]]] = {}  # one colour per width (alpha) / model
    for r in shown:
        groups.setdefault(f"alpha {r['alpha']}" if r["alpha"] is not None else str(r["model"]), []).append(r)
    scale = {"mult_adds": 1e6, "params": 1e6}
    for ax, (xkey, xlabel, ykey, ylabel, title) in zip(axes[0], panels, strict=True):
        for name, group in groups.items():
            points = [r for r in group if r.get(xkey) is not None and r.get(ykey) is not None]
            ax.scatter([r[xkey] / scale.get(xkey, 1) for r in points], [r[ykey] / scale.get(ykey, 1) for r in points],
                       label=name, s=28, zorder=3)
            for r in points:
                ax.annotate(_point_label(r), (r[xkey] / scale.get(xkey, 1), r[ykey] / scale.get(ykey, 1)), fontsize=7,
                            xytext=(0, 5), textcoords="offset points", ha="center")
        ax.set_xscale("log")
        if ykey in scale or ykey == LATENCY_KEY:  # costs span orders of magnitude: log on both axes
            ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis) if ykey in scale or ykey == LATENCY_KEY else (ax.xaxis,):
            axis.set_major_formatter(_plain_formatter())
            axis.set_minor_formatter(FuncFormatter(lambda v, pos, axis=axis: _minor_label(axis, v)))
        ax.set_xlabel(f"{xlabel} (log scale)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.margins(x=0.15, y=0.1)
    labelled_by_resolution = all(isinstance(r.get("alpha"), int | float) for r in shown)
    axes[0][0].legend(fontsize=8, title="labels: resolution" if labelled_by_resolution else None, title_fontsize=8)
    missing = len(rows) - len(shown)
    if missing:
        fig.suptitle(f"{missing} model(s) without a {score_label} not shown ({no_score_hint})", fontsize=9)
    elif not with_score:
        fig.suptitle(f"cost per model (no {score_label}: {no_score_hint})", fontsize=9)
    return fig


def _point_label(row: dict[str, Any]) -> str:
    """A point's resolution (its colour gives the width alpha), or the row's label for a model without alpha."""
    return str(row["resolution"]) if isinstance(row.get("alpha"), int | float) else str(row["label"])


def _plain_formatter():
    """Tick labels as plain numbers (100, 200, 500) on a log axis, no offset or powers of ten."""
    from matplotlib.ticker import ScalarFormatter

    formatter = ScalarFormatter()
    formatter.set_scientific(False)
    formatter.set_useOffset(False)
    return formatter


def overlapping_texts(fig) -> list[tuple[str, str]]:
    """Pairs of titles, axis labels and tick labels whose drawn boxes overlap (rendered at the figure's size)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [fig._suptitle] if fig._suptitle is not None else []
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.label, ax.yaxis.label]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t is not None and t.get_text()]
    return [(a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:] if box_a.overlaps(box_b)]


def plot_rows(rows: list[dict[str, Any]], path: Path, score: str = "top1", score_label: str = "Top-1 accuracy",
              no_score_hint: str = "set profile.results_file") -> Path:
    """`sweep_figure` written to `path` (PNG)."""
    import matplotlib.pyplot as plt

    fig = sweep_figure(rows, score, score_label, no_score_hint)
    try:
        with atomic_path(path) as tmp:  # the temporary name ends in .tmp: say the format
            fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path


def _minor_label(axis, value: float) -> str:
    """Every minor tick labelled on a log axis spanning less than a decade (else it shows one number or none),
    the 2x and 5x ones otherwise."""
    low, high = sorted(axis.get_view_interval())
    if low > 0 and high / low < 10:
        return f"{value:g}"
    return _label_2_and_5(value, None)


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
