"""`trainer.precision=auto`: bf16 mixed-precision training where the hardware runs bf16 fast, else fp32; every
reported number (validation that picks `best.ckpt`, `mode=eval`, `mode=predict`, export's PyTorch row) in fp32.

Fast bf16 means CUDA GPUs that support it (Ampere and newer) and x86 CPUs with AMX-bf16 or AVX-512-BF16
(Cooper Lake, Sapphire Rapids and newer Xeons, Zen 4): there oneDNN runs bf16 convolutions and matrix
products at 1.5-2x fp32. Elsewhere bf16 is emulated and slower than fp32, so `auto` keeps 32-true.

`auto` trains in bf16 too (1.67x faster here), after `FP32_WARMUP_STEPS` optimiser steps in fp32: from random
weights a BN network amplifies any rounding into gradient noise (the cosine between bf16's and fp32's gradient is
0.30 at initialisation, 0.97 after 100 steps: benchmarks/results/bf16_gradient_noise.json), which delayed the
first epochs of the classification benchmark under plain bf16. The bf16 parity benchmark
(benchmarks/results/bf16_parity.json, docs/performance.md) compares the learning benchmarks over several seeds.

Evaluation stays fp32 under `auto` so that a metric does not depend on the CPU it was computed on (bf16 evaluation
moved a detector's mAP from 0.0515 to 0.0427): `trainer.precision=bf16-mixed` asks for bf16 everywhere, and the
output then says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.precision import MixedPrecision

log = logging.getLogger(__name__)

AUTO = "auto"
#: optimiser steps that `auto` trains in fp32 before bf16 (see the module docstring)
FP32_WARMUP_STEPS = 100
#: /proc/cpuinfo flags of the x86 instructions oneDNN uses for bf16 convolutions
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """The bf16 instruction flags this CPU reports; empty where there are none or no /proc/cpuinfo (macOS)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return []
    for line in text.splitlines():
        if line.startswith("flags"):  # every core lists the same flags; the first line is enough
            flags = set(line.split(":", 1)[1].split())
            return [f for f in CPU_BF16_FLAGS if f in flags]
    return []


def trainer_device(accelerator: str | None) -> str:
    """The device type a Trainer with this `accelerator` runs on: cuda, mps or cpu (Lightning's `auto` order)."""
    accelerator = (accelerator or AUTO).lower()
    if accelerator in ("gpu", "cuda") or (accelerator == AUTO and torch.cuda.is_available()):
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if accelerator == "mps" or (accelerator == AUTO and mps is not None and mps.is_available()):
        return "mps"
    return "cpu"


def fast_bf16(device: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[bool, str]:
    """Whether `device` (cuda | mps | cpu) runs bf16 faster than fp32, and why (for the log line)."""
    if device == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{torch.cuda.get_device_name()} supports bf16"
        return False, "this GPU has no native bf16"
    if device == "cpu":
        flags = cpu_bf16_flags(cpuinfo)
        if flags:
            return True, f"CPU has {', '.join(flags)}"
        return False, "CPU has no AMX-bf16 / AVX-512-BF16 (bf16 would be emulated)"
    return False, f"bf16 autocast is not a speed-up on {device}"


def resolve_precision(precision: str | int | None, accelerator: str | None = AUTO,
                      cpuinfo: Path = Path("/proc/cpuinfo")) -> str | int | None:
    """`auto` -> `bf16-mixed` where the Trainer's device runs bf16 fast, else `32-true`, said in one log line;
    any other value is returned unchanged for Lightning to check."""
    if precision != AUTO:
        return precision
    device = trainer_device(accelerator)
    fast, why = fast_bf16(device, cpuinfo)
    chosen = "bf16-mixed" if fast else "32-true"
    log.info("trainer.precision=auto -> %s on %s (%s)", chosen, device, why)
    return chosen


class BF16AfterFP32Warmup(MixedPrecision):
    """bf16 autocast for training steps (Lightning's `bf16-mixed`), except the first `fp32_steps` optimiser steps.

    Validation, test and predict steps run in fp32: the metric that picks `best.ckpt` is the one `mode=eval` prints,
    on any hardware. The step count is saved in checkpoints (Lightning stores a precision plugin's `state_dict`), so
    a resumed run does not warm up again."""

    def __init__(self, device: str, fp32_steps: int):
        super().__init__("bf16-mixed", device)
        self.fp32_steps, self.steps = fp32_steps, 0

    @contextmanager
    def train_step_context(self) -> Generator[None, None, None]:
        if self.steps < self.fp32_steps:
            yield  # no autocast: fp32
        else:
            with self.forward_context():
                yield

    @contextmanager
    def val_step_context(self) -> Generator[None, None, None]:
        yield  # fp32: reported numbers do not depend on the hardware's bf16

    test_step_context = predict_step_context = val_step_context

    def optimizer_step(self, optimizer: Any, model: Any, closure: Callable[[], Any], **kwargs: Any) -> Any:
        output = super().optimizer_step(optimizer, model=model, closure=closure, **kwargs)
        self.steps += 1
        return output

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = int(state_dict.get("steps", 0))


def trainer_precision(precision: str | int | None, accelerator: str | None = AUTO, *, training: bool,
                      cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str | int | None, list[MixedPrecision]]:
    """The Trainer's `precision` argument and the precision plugins to add, for the configured `precision`.

    `auto`: a job that does not train (eval, predict, export) runs in `32-true`; a training job for which
    `resolve_precision` chose `bf16-mixed` gets a `BF16AfterFP32Warmup` plugin (and `precision=None`: Lightning
    refuses both), which trains in bf16 and validates in fp32. Other values are returned unchanged."""
    if precision == AUTO and not training:
        log.info("trainer.precision=auto -> 32-true: evaluation in fp32, the same numbers on any hardware "
                 "(trainer.precision=bf16-mixed evaluates in bf16)")
        return "32-true", []
    chosen = resolve_precision(precision, accelerator, cpuinfo)
    if precision == AUTO and chosen == "bf16-mixed" and training and FP32_WARMUP_STEPS > 0:
        log.info("the first %d training steps run in fp32 (bf16's gradients are noisy from random weights); "
                 "validation runs in fp32", FP32_WARMUP_STEPS)
        return None, [BF16AfterFP32Warmup(trainer_device(accelerator), FP32_WARMUP_STEPS)]
    return chosen, []
