"""Measured latency: median wall time of inference forward passes on the chosen device, after warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
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


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure_latency(model: nn.Module, example_input: Any, device: torch.device, repeats: int = 20,
                    warmup: int = 3, clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median, min and max milliseconds per forward pass of `example_input` (eval mode, no autograd).

    The model is moved to `device` and back to where it was.
    """
    if repeats < 1:
        raise ConfigError("profile.repeats", repeats, "must be >= 1")
    original = next(model.parameters()).device if any(True for _ in model.parameters()) else torch.device("cpu")
    was_training = model.training
    model.eval().to(device)
    inputs = to_device(example_input, device)
    times = []
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                call(model, inputs)
            _synchronize(device)
            for _ in range(repeats):
                start = clock()
                call(model, inputs)
                _synchronize(device)
                times.append((clock() - start) * 1000.0)
    finally:
        model.to(original).train(was_training)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "repeats": repeats}


def device_description(device: torch.device) -> str:
    """What ran the timing, for the report: GPU name, or CPU with its thread count."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type
