"""Which formats an export writes (`export.formats`, with `all`), and the release gate on their metric
(`export.min_metric`, `export.max_metric_drop`): functions `mode=export` calls, kept apart from it.

- `export.formats=all` (or `[all]`): every format whose exporter and runtime are installed, in the order of
  `BUILT_IN` then the registered runtimes (LiteRT, OpenVINO, Core ML); the legacy TorchScript formats are opt-in
  only. A format the task has no form in (Faster R-CNN's `.pte`/`.tflite`) is skipped by export with its reason.
- `export.min_metric`: the task's monitored metric (top-1, mAP, ...) every verified file must reach (at most it,
  for a metric where lower is better); `export.max_metric_drop`: how much worse than PyTorch's a file's may be
  (same units, e.g. 0.01 = 1 point of a 0..1 metric). A file below either makes the command fail (exit 2) with
  one line naming each such format and its metric; the report is written first.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Iterable
from typing import Any

from toolkit.errors import ConfigError
from toolkit.formats import FORMATS

#: formats `mode=export` writes itself (until they move into toolkit.formats), with the modules each needs
BUILT_IN = {"onnx": ("onnx", "onnxruntime"), "onnx_int8": ("onnx", "onnxruntime"), "executorch": ("executorch",),
            "executorch_int8": ("executorch",), "torchscript": (), "torchscript_int8": ()}
#: left out of `all`: deprecated in torch 2.14, opt-in only
LEGACY = ("torchscript", "torchscript_int8")
#: the modules that register the runtimes' formats in toolkit.formats.FORMATS when imported
RUNTIME_MODULES = ("toolkit.formats.litert", "toolkit.formats.openvino", "toolkit.formats.coreml")


def registered_formats() -> dict[str, Any]:
    """toolkit.formats.FORMATS with the runtimes' formats registered (importing their modules imports no runtime)."""
    for name in RUNTIME_MODULES:
        importlib.import_module(name)
    return FORMATS


def known_formats() -> tuple[str, ...]:
    """Every name `export.formats` accepts, `all` included."""
    return (*BUILT_IN, *(name for name in registered_formats() if name not in BUILT_IN), "all")


def required_modules(name: str) -> tuple[str, ...]:
    if name in BUILT_IN:
        return BUILT_IN[name]
    return tuple(registered_formats()[name].requires)


def installed(name: str) -> bool:
    """Whether the modules format `name` imports are installed (found, not imported: some take seconds)."""
    if name not in BUILT_IN and name not in registered_formats():
        return False  # no exporter of that name
    return all(importlib.util.find_spec(module) is not None for module in required_modules(name))


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
