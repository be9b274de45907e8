"""Profiling: the paper's mult-add and parameter counts, measured latency, and profile-sweep summaries."""

from toolkit.profiling.counting import LAYER_TYPES, ModelCount, count_model, flop_counter_mult_adds
from toolkit.profiling.latency import measure_latency, resolve_device
from toolkit.profiling.report import format_report, profile_model

__all__ = [
    "LAYER_TYPES",
    "ModelCount",
    "count_model",
    "flop_counter_mult_adds",
    "format_report",
    "measure_latency",
    "profile_model",
    "resolve_device",
]
