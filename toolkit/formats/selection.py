"""Which formats an export writes (`export.formats`, with `all`), and the release gate on their metric
(`export.min_metric`, `export.max_metric_drop`): functions `mode=export` calls, kept apart from it.

- `export.formats=all` (or `[all]`): every format whose exporter and runtime are installed, in the order of
  `toolkit.formats.FORMATS` (ONNX, ExecuTorch, LiteRT, OpenVINO, Core ML); the legacy TorchScript formats are
  opt-in only. A format the task has no form in (Faster R-CNN's `.pte`/`.tflite`) is skipped by export with its reason.
- `export.min_metric`: the task's monitored metric (top-1, mAP, ...) every verified file must reach (at most it,
  for a metric where lower is better); `export.max_metric_drop`: how much worse than PyTorch's a file's may be
  (same units, e.g. 0.01 = 1 point of a 0..1 metric). A file below either makes the command fail (exit 2) with
  one line naming each such format and its metric; the report is written first.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from typing import Any

from toolkit.errors import ConfigError
from toolkit.formats import FORMATS

#: left out of `all`: deprecated in torch 2.14, opt-in only
LEGACY = ("torchscript", "torchscript_int8")


def known_formats() -> tuple[str, ...]:
    """Every name `export.formats` accepts, `all` included."""
    return (*FORMATS, "all")


def missing_dependency(name: str) -> str | None:
    """The one line naming the extra to install when a module format `name` imports is missing, else None. The
    modules are found, not imported: litert-torch, OpenVINO and coremltools take seconds to import."""
    fmt = FORMATS[name]
    for module in fmt.requires:
        if importlib.util.find_spec(module) is None:
            return f"export.formats={name} needs the '{module}' package: pip install 'mobilenet-toolkit[{fmt.extra}]'"
    return None


def installed(name: str) -> bool:
    """Whether format `name` is registered and the modules it imports are installed."""
    return name in FORMATS and missing_dependency(name) is None


def not_run(fmt: Any) -> str | None:
    """Why this machine cannot run the format's files (`runs_here = False`, with its `not_run` reason: Core ML
    needs Apple hardware), or None: export writes such files and reports them with no metric or latency."""
    if getattr(fmt, "runs_here", True):
        return None
    return str(getattr(fmt, "not_run", "cannot run on this machine"))


def registered_formats() -> dict[str, Any]:
    """The formats benchmarks/deploy.py writes through toolkit.formats (LiteRT, OpenVINO, Core ML: it writes ONNX
    and ExecuTorch files itself)."""
    families = ("toolkit.formats.litert", "toolkit.formats.openvino", "toolkit.formats.coreml")
    return {name: fmt for name, fmt in FORMATS.items() if type(fmt).__module__ in families}


def expand_formats(names: Iterable[str], supported: Iterable[str] | None = None) -> list[str]:
    """`export.formats` as the list of formats to write: `all` becomes every installed, non-legacy format (of
    `supported`, the known names by default), the others stay as given; no name twice."""
    names = [names] if isinstance(names, str) else list(names)  # export.formats=all
    candidates = [name for name in (known_formats() if supported is None else supported) if name != "all"]
    formats: list[str] = []
    for name in names:
        chosen = ([f for f in candidates if f not in LEGACY and installed(f)] if name == "all" else [name])
        formats += [f for f in chosen if f not in formats]
    return formats


def _number(settings: Any, key: str) -> float | None:
    value = settings.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"export.{key}", value, "a number (the task's monitored metric, e.g. 0.7 for top-1 or "
                          "mAP) or null for no gate")
    if key == "max_metric_drop" and value < 0:
        raise ConfigError(f"export.{key}", value, "a number >= 0 (e.g. 0.01: one point of a 0..1 metric)")
    return float(value)


def check_gate_settings(settings: Any) -> None:
    """A wrong `export.min_metric` / `export.max_metric_drop` is one line before any export work."""
    _number(settings, "min_metric")
    _number(settings, "max_metric_drop")


def metric_floor_failures(report: dict[str, Any], metric: str, mode: str = "max", *, min_metric: float | None = None,
                          max_drop: float | None = None) -> list[str]:
    """One phrase per verified format whose `metric` misses `min_metric` (a floor; a ceiling when `mode` is "min",
    lower being better) or is worse than PyTorch's by more than `max_drop`. Files with no metric (not verified,
    or not run here: Core ML) are not judged."""
    failures = []
    reference = (report.get("pytorch") or {}).get(metric)
    for name, entry in report.get("formats", {}).items():
        value = entry.get(metric)
        if value is None:
            continue
        if min_metric is not None and (value < min_metric if mode == "max" else value > min_metric):
            relation = "below" if mode == "max" else "above"
            failures.append(f"{name} {metric} {value:.4f} is {relation} export.min_metric={min_metric:g}")
        if max_drop is not None and reference is not None:
            drop = reference - value if mode == "max" else value - reference
            if drop > max_drop + 1e-12:
                failures.append(f"{name} {metric} {value:.4f} is {drop:.4f} worse than pytorch's {reference:.4f} "
                                f"(export.max_metric_drop={max_drop:g})")
    return failures


def gate_failures(report: dict[str, Any], metric: str, mode: str, settings: Any) -> list[str]:
    """`metric_floor_failures` with the gate of `settings` (cfg.export)."""
    return metric_floor_failures(report, metric, mode, min_metric=_number(settings, "min_metric"),
                                 max_drop=_number(settings, "max_metric_drop"))
