"""One model's profile as plain data (counts, Table 2 breakdown, latency) and as a readable text table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from toolkit.profiling.counting import LAYER_TYPES, count_model
from toolkit.profiling.latency import device_description, measure_latency, resolve_device


def profile_model(model: nn.Module, make_input: Callable[[int], Any], *, batch_size: int = 8, latency: bool = True,
                  device: str = "auto", repeats: int = 20, warmup: int = 3) -> dict[str, Any]:
    """Counts on `make_input(1)`; latency (median ms) at batch 1 and at `batch_size` on `device`."""
    count = count_model(model, make_input(1))
    result: dict[str, Any] = count.to_dict()
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        sub = count.subtotal("backbone.")
        result["backbone"] = {"params": sum(p.numel() for p in backbone.parameters()), **sub}
    result["latency"] = None
    if latency:
        dev = resolve_device(device)
        result["latency"] = {
            "device": device_description(dev),
            "batch_size": batch_size,
            "batch_1": measure_latency(model, make_input(1), dev, repeats, warmup),
            "batch_n": measure_latency(model, make_input(batch_size), dev, repeats, warmup),
        }
    return result


def format_report(profile: dict[str, Any]) -> str:
    """The table `mode=profile` prints: totals, Table 2 shares, latency."""
    m = 1e6
    lines = [f"model: {profile['label']}  (task {profile.get('task')}, input {profile['resolution']}x{profile['resolution']})",
             f"  parameters (all)          {profile['params'] / m:10.3f} M",
             f"  parameters (conv/FC wts)  {profile['weights'] / m:10.3f} M   <- the paper's count",
             f"  mult-adds (conv + FC)     {profile['mult_adds'] / m:10.2f} M   (per image)"]
    if profile.get("backbone"):
        b = profile["backbone"]
        lines.append(f"  backbone alone            {b['params'] / m:10.3f} M params, {b['mult_adds'] / m:.2f} M mult-adds")
    lines += ["", f"  {'layer type (Table 2)':<28s} {'mult-adds':>10s} {'share':>8s} {'params':>10s} {'share':>8s}"]
    for key, label in LAYER_TYPES.items():
        row = profile["breakdown"][key]
        if row["mult_adds"] or row["weights"]:
            lines.append(f"  {label:<28s} {row['mult_adds'] / m:9.2f}M {row['mult_adds_share']:7.2f}% "
                         f"{row['weights'] / m:9.3f}M {row['params_share']:7.2f}%")
    lat = profile.get("latency")
    lines.append("")
    if lat:
        n = lat["batch_size"]
        lines.append(f"  latency on {lat['device']}: median of {lat['batch_1']['repeats']} runs")
        lines.append(f"    batch 1   {lat['batch_1']['median_ms']:9.2f} ms")
        lines.append(f"    batch {n:<3d} {lat['batch_n']['median_ms']:9.2f} ms  ({lat['batch_n']['median_ms'] / n:.2f} ms/image)")
    else:
        lines.append("  latency: not measured (profile.latency=false)")
    return "\n".join(lines)
