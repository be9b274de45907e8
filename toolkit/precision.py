"""`trainer.precision=auto`: bf16 mixed precision where the hardware runs bf16 fast, else fp32.

Fast bf16 means CUDA GPUs that support it (Ampere and newer) and x86 CPUs with AMX-bf16 or AVX-512-BF16
(Cooper Lake, Sapphire Rapids and newer Xeons, Zen 4): there oneDNN runs bf16 convolutions and matrix
products at 1.5-2x fp32. Elsewhere bf16 is emulated and slower than fp32, so `auto` keeps 32-true.

`auto` trains in bf16 too (1.67x faster here): the bf16 parity benchmark (benchmarks/results/bf16_parity.json,
docs/performance.md) compares the learning benchmarks' means over several seeds per precision. From random
weights, bf16 gradients are noisy for the first ~100 steps (BN networks amplify any rounding there:
benchmarks/results/bf16_gradient_noise.json), which delays early epochs without changing where training ends.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)

AUTO = "auto"
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
