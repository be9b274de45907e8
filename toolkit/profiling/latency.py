"""Measured latency: median wall time of inference forward passes on the chosen device, under a time budget."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from toolkit.errors import ConfigError
from toolkit.profiling.counting import call

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then CPU; an explicit device must be present."""
    if name not in DEVICES:
        raise ConfigError("profile.device", name, f"allowed: {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("profile.device", name, "no CUDA device is visible here; use cpu or auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("profile.device", name, "no Apple MPS device is available here; use cpu or auto")
    return torch.device(name)


def to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list | tuple):
        return type(value)(to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


def measure_latency(model: nn.Module, example_input: Any, device: torch.device, budget_s: float = 2.0,
                    bf16: bool = False, min_run_time: float = 0.05) -> dict[str, float]:
    """Milliseconds per forward pass of `example_input` (eval mode, no autograd; bf16 autocast when `bf16`).

    One untimed warm-up call first; when it takes half of `budget_s` or more (a detector at 600 px on a small
    CPU), one more call is timed and is the answer (`calls` 1). Otherwise `torch.utils.benchmark.Timer.adaptive_autorange`
    times blocks of calls until the median is stable or the rest of the budget is spent (it sets the thread
    count and synchronises CUDA). The model is moved to `device` and back to where it was. Returns the median,
    interquartile range and fastest block (ms per call), the timed calls and blocks.
    """
    # imported here: it loads torch's C++-extension helper, which prints a CUDA_HOME warning on CPU-only machines
    from torch.utils import benchmark

    if not budget_s > 0:
        raise ConfigError("profile.budget_s", budget_s, "must be > 0 seconds")
    original = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
    was_training = model.training
    model.eval().to(device)
    inputs = to_device(example_input, device)

    def forward() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            call(model, inputs)

    try:
        # the first call sets up kernels and (bf16) reorders weights: never timed
        warmup = time_first_call(model, inputs, device, bf16)
        if warmup >= budget_s / 2:  # no room for the timer's warm-up and blocks: one timed call is all we afford
            once = time_first_call(model, inputs, device, bf16)
            return {"median_ms": once * 1e3, "iqr_ms": 0.0, "min_ms": once * 1e3, "calls": 1, "blocks": 1}
        timer = benchmark.Timer(stmt="forward()", globals={"forward": forward}, num_threads=torch.get_num_threads())
        rest = budget_s - warmup
        measured = timer.adaptive_autorange(threshold=0.1, min_run_time=min(min_run_time, rest), max_run_time=rest)
    finally:
        model.to(original).train(was_training)
    return {"median_ms": measured.median * 1e3, "iqr_ms": measured.iqr * 1e3, "min_ms": min(measured.times) * 1e3,
            "calls": len(measured.times) * measured.number_per_run, "blocks": len(measured.times)}


def time_first_call(model: nn.Module, example_input: Any, device: torch.device, bf16: bool = False) -> float:
    """Seconds of one forward pass: for a compiled model, the compilation (`torch.compile` is lazy)."""
    was_training = model.training
    model.eval()
    inputs = to_device(example_input, device)
    start = time.perf_counter()
    try:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            call(model, inputs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        model.train(was_training)
    return time.perf_counter() - start


def device_description(device: torch.device) -> str:
    """What ran the timing, for the report: GPU name, or CPU with its thread count."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type
