"""One model's profile as plain data (counts, Table 2 breakdown, latency) and as a readable text table."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

from toolkit.compilation import compile_module
from toolkit.profiling.counting import LAYER_TYPES, count_model
from toolkit.profiling.latency import device_description, measure_latency, resolve_device, time_first_call


def latency_variants(compile: bool) -> list[tuple[str, bool, bool]]:
    """(name, bf16, compiled) of each timed path: fp32 and bf16 eager, and compiled when asked."""
    variants = [("fp32", False, False), ("bf16", True, False)]
    if compile:
        variants += [("fp32_compiled", False, True), ("bf16_compiled", True, True)]
    return variants


def profile_model(model: nn.Module, make_input: Callable[[int], Any], *, batch_size: int = 8, latency: bool = True,
                  device: str = "auto", budget_s: float = 6.0, compile: bool = False) -> dict[str, Any]:
    """Counts on `make_input(1)`; latency at batch 1 and at `batch_size` on `device` of each path (fp32, bf16;
    compiled too when `compile`), each batch size's `budget_s` seconds split evenly over the paths."""
    count = count_model(model, make_input(1))
    result: dict[str, Any] = count.to_dict()
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        sub = count.subtotal("backbone.")
        result["backbone"] = {"params": sum(p.numel() for p in backbone.parameters()), **sub}
    result["latency"] = None
    if not latency:
        return result
    dev = resolve_device(device)
    variants = [v for v in latency_variants(compile) if not (v[1] and dev.type == "mps")]  # no bf16 autocast on MPS
    share = budget_s / len(variants)
    timings: dict[str, dict[str, Any]] = {}
    for name, bf16, compiled in variants:
        timed = model
        entry: dict[str, Any] = {}
        if compiled:
            timed = compile_module(copy.deepcopy(model).to(dev))
            entry["compile_s"] = time_first_call(timed, make_input(batch_size), dev, bf16)  # compilation is lazy
            entry["compile_failed"] = timed.forward.failed
        entry["batch_1"] = measure_latency(timed, make_input(1), dev, share, bf16)
        estimate_s = entry["batch_1"]["median_ms"] * batch_size / 1e3
        if estimate_s > share:  # keep the budget: a batch this large would take longer than the whole share
            entry["batch_n"] = {"median_ms": None, "skipped": f"one call ~{estimate_s:.0f} s > {share:.1f} s of budget"}
        else:
            entry["batch_n"] = measure_latency(timed, make_input(batch_size), dev, share, bf16)
        timings[name] = entry
    result["latency"] = {"device": device_description(dev), "batch_size": batch_size, "budget_s": budget_s,
                         "variants": timings}
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
        lines.append(f"  latency on {lat['device']} (median ms per call, {lat['budget_s']:g} s budget per batch size)")
        lines.append(f"    {'path':<15s} {'batch 1':>9s} {f'batch {n}':>10s} {'ms/image':>9s} {'vs fp32':>8s}")
        base = lat["variants"]["fp32"]
        for name, entry in lat["variants"].items():
            b1, bn = entry["batch_1"]["median_ms"], entry["batch_n"]["median_ms"]
            # speed-up over fp32 at batch n, or at batch 1 where batch n was over budget
            key = "batch_n" if bn is not None and base["batch_n"]["median_ms"] is not None else "batch_1"
            ratio = base[key]["median_ms"] / entry[key]["median_ms"]
            notes = [entry["batch_n"]["skipped"] + ": raise profile.budget_s"] if bn is None else []
            if "compile_s" in entry:
                notes.append("compile failed: eager" if entry["compile_failed"] else f"compile {entry['compile_s']:.0f} s")
            per_image = f"{bn / n:9.2f}" if bn is not None else f"{b1:9.2f}"
            bn_text = f"{bn:10.2f}" if bn is not None else f"{'-':>10s}"
            note = f"  ({'; '.join(notes)})" if notes else ""
            lines.append(f"    {name:<15s} {b1:9.2f} {bn_text} {per_image} {ratio:7.2f}x{note}")
    else:
        lines.append("  latency: not measured (profile.latency=false)")
    return "\n".join(lines)
