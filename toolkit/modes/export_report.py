"""The export report: each written file's speed beside PyTorch's, whether it is worse than PyTorch, and the
printed table (`mode=export`'s `export.json` and summary)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn


def latency(run, batch: np.ndarray, repeats: int) -> float:
    """Median seconds of `run(batch)` after two warm-up calls."""
    for _ in range(2):
        run(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def speed(run: Callable[[np.ndarray], Any], example: torch.Tensor, settings, *, one_image: bool,
          batch_run: Callable[[np.ndarray], Any] | None = None) -> dict[str, float | None]:
    """ms per image at batch 1 (`run`: up to the final outputs, detectors with the NMS that runs after the runtime
    where the file has none), and images/s at export.batch_size by `batch_run` (default `run`); graphs that take
    `one_image` per call have no batch figure."""
    repeats = int(settings.latency_repeats)
    single = example[:1].contiguous().numpy()
    result: dict[str, float | None] = {"latency_ms_batch1": 1000 * latency(run, single, repeats)}
    batch = int(settings.batch_size)
    if one_image:
        result[f"images_per_s_batch{batch}"] = None
    else:
        images = np.repeat(single, batch, axis=0)
        result[f"images_per_s_batch{batch}"] = batch / latency(batch_run or run, images, max(3, repeats // 4))
    return result


class TorchRunner:
    """The PyTorch model behind the runners' `run` interface (for the reference latency)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def run(self, batch: np.ndarray):
        with torch.inference_mode():
            return self.module(torch.from_numpy(batch))


#: a format that changes the task's metric by more than this (1 point of a 0..1 metric) against PyTorch is flagged
METRIC_TOLERANCE = 0.01
#: agreement with PyTorch below which a format is flagged: 90 % of decisions (top-1 class, box of the same class at
#: IoU >= 0.9, attribute decision); embeddings have no decision, their mean cosine to PyTorch's must reach 0.99
#: (an int8 file that keeps its ranking of pairs stays above it; 0.99 is an angle of 8 degrees)
AGREEMENT_FLOORS = {"top1_agreement": 0.90, "box_match_iou0.9": 0.90, "attribute_agreement": 0.90, "mean_cosine": 0.99}
AGREEMENT_WORDS = {"top1_agreement": "top-1 classes", "box_match_iou0.9": "boxes (same class, IoU >= 0.9)",
                   "attribute_agreement": "attribute decisions"}


def quality_warnings(entry: dict[str, Any], pytorch: dict[str, Any], metrics: list[str], mode: str) -> list[str]:
    """Why a written file is worse than the PyTorch model, in words ([] when it is not): each of the task's
    `metrics` worse than PyTorch's by more than METRIC_TOLERANCE (`mode`: the task's "max" or "min", which way is
    better), and agreement below AGREEMENT_FLOORS."""
    warnings_: list[str] = []
    for name in metrics:
        value, reference = entry.get(name), pytorch.get(name)
        if value is None or reference is None:
            continue
        worse = reference - value if mode == "max" else value - reference
        if worse > METRIC_TOLERANCE:
            change = (f"loses {100 * worse:.1f} points of {name}" if mode == "max"
                      else f"raises {name} by {worse:.4g} (lower is better)")
            warnings_.append(f"{change} vs pytorch ({value:.4f} vs {reference:.4f})")
    agree = entry.get("agreement") or {}
    for key, floor in AGREEMENT_FLOORS.items():
        if key not in agree or agree[key] >= floor:
            continue
        if key == "mean_cosine":
            warnings_.append(f"mean cosine to pytorch's embeddings {agree[key]:.4f} (< {floor})")
        else:
            warnings_.append(f"agrees with pytorch on {100 * agree[key]:.1f}% of {AGREEMENT_WORDS[key]} (< {100 * floor:.0f}%)")
    return warnings_


def format_export_report(report: dict[str, Any], metrics: list[str]) -> str:
    """The printed table; a file worse than PyTorch (its `warnings`, see `quality_warnings`) is marked LOW."""
    batch = report["batch_size"]
    header = ["format", "size MB", *metrics, "agreement", "ms/img @1", f"img/s @{batch}", "!"]
    rows = []

    def cells(name: str, entry: dict[str, Any], size: float | None) -> list[str]:
        agree = entry.get("agreement") or {}
        key = next((k for k in AGREEMENT_FLOORS if k in agree), None)
        throughput = entry.get(f"images_per_s_batch{batch}")
        return [name, "-" if size is None else f"{size:.2f}",
                *("-" if entry.get(m) is None else f"{entry[m]:.4f}" for m in metrics),
                "-" if key is None else f"{100 * agree[key]:.2f}% {key.split('_')[0]}",
                "-" if entry.get("latency_ms_batch1") is None else f"{entry['latency_ms_batch1']:.2f}",
                "-" if throughput is None else f"{throughput:.1f}",
                "LOW" if entry.get("warnings") else ""]

    rows.append(cells("pytorch (fp32)", report["pytorch"], None))
    rows += [cells(name, entry, entry["size_mb"]) for name, entry in report["formats"].items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    calibrated = (f"; int8 calibrated on {report['calibration_images']} images ({report['calibration']})"
                  if any(name.endswith("_int8") for name in report["formats"]) else "")
    lines = [f"export of {report['task_class']} at {report['resolution']} px{calibrated}; "
             f"threads {report['threads'] or 'default'}"
             + ("" if report.get("verified", True) else "; not verified ("
                + ("export.verify=false" if report.get("not_verified") == "export.verify=false"
                   else "the data cannot be used: see the warning above") + ")")]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines += [f"{fmt}: skipped: {why}" for fmt, why in report["skipped"].items()]
    lines += [f"{fmt}: not run ({entry['not_run']})" for fmt, entry in report["formats"].items() if "not_run" in entry]
    return "\n".join(lines)


def file_size(path: Path) -> int:
    """Bytes of an exported file with what it needs beside it: OpenVINO's .bin next to the .xml, or a whole
    folder (Core ML's .mlpackage)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    weights = path.with_suffix(".bin")
    return path.stat().st_size + (weights.stat().st_size if path.suffix == ".xml" and weights.is_file() else 0)
