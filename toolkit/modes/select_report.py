"""mode=select's answer: the console tables (costs and budgets; the final ranking) and the paper's Figure-4-style
pictures (metric vs mult-adds, log x; metric vs measured latency with the budget line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from toolkit.io import atomic_path
from toolkit.modes.select_cost import Candidate


def _cell(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(candidates: list[Candidate], *, runtime: str, metric_name: str | None = None) -> str:
    """One row per candidate: α, ρ, mult-adds, params, size, latency, the runtime's peak memory, metric and state
    (or why it is over budget)."""
    header = ["alpha", "res", "M madds", "M params", "MB", f"ms ({runtime})", "peak MB"] + ([metric_name] if metric_name else [])
    header.append("state")
    rows = []
    for c in sorted(candidates, key=lambda c: (-c.alpha, -c.resolution)):
        row = [f"{c.alpha:g}", str(c.resolution), _cell(c.madds_m, ".1f"),
               _cell(None if c.params is None else c.params / 1e6, ".2f"), _cell(c.size_mb, ".2f"),
               _cell(c.latency_ms, ".3f"), _cell(c.peak_memory_mb, ".1f")]
        if metric_name:
            row.append(_cell(final_metric(c), ".4f"))
        row.append(c.state + (f" ({'; '.join(c.over_budget)})" if c.over_budget else ""))
        rows.append(row)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows])


def final_metric(candidate: Candidate) -> float | None:
    """The candidate's metric at the last rung it reached (the fine-tuned winner's is in selection.json's `winner`)."""
    if not candidate.rungs:
        return None
    return candidate.rungs[max(candidate.rungs, key=int)].get("metric")


def plot(candidates: list[Candidate], path: Path, *, metric_name: str, runtime: str, latency_budget: float | None,
         winner: Candidate | None, latency_source: str) -> Path:
    """Two panels: metric vs mult-adds (log x, the paper's Figure 4) and metric vs measured latency (the budget
    as a vertical line). Over-budget candidates, untrained, stand on the x axis as crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, ScalarFormatter

    from toolkit.profiling.sweep import (
        _label_2_and_5,  # the profile sweep's plot: minor ticks 2 and 5 labelled
    )

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    trained = [c for c in candidates if final_metric(c) is not None]
    floor = min((final_metric(c) for c in trained), default=0.0)
    for ax, key, xlabel in ((axes[0], "madds_m", "Million Mult-Adds (log scale)"),
                            (axes[1], "latency_ms", f"Latency at batch 1, ms ({runtime}, {latency_source})")):
        by_alpha: dict[float, list[Candidate]] = {}
        for c in trained:
            by_alpha.setdefault(c.alpha, []).append(c)
        for alpha, group in sorted(by_alpha.items(), reverse=True):
            ax.scatter([getattr(c, key) for c in group], [final_metric(c) for c in group], label=f"alpha {alpha:g}")
        for c in trained:
            ax.annotate(f"{c.alpha:g}-{c.resolution}" + ("" if c.state == "trained" else f" ({c.state.replace('pruned_at_epoch_', 'pruned@')})"),
                        (getattr(c, key), final_metric(c)), fontsize=7, xytext=(3, 3), textcoords="offset points")
        dropped = [c for c in candidates if c.state == "over_budget"]
        if dropped:
            ax.scatter([getattr(c, key) for c in dropped], [floor] * len(dropped), marker="x", color="grey",
                       label="over budget (not trained)")
        if winner is not None and final_metric(winner) is not None:
            ax.scatter([getattr(winner, key)], [final_metric(winner)], s=160, facecolors="none", edgecolors="red",
                       label="chosen")
        if key == "madds_m":
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(FuncFormatter(_label_2_and_5))
        elif latency_budget is not None:
            ax.axvline(latency_budget, color="red", linestyle="--", label=f"budget {latency_budget:g} ms")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{metric_name} (short schedule, last rung reached)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title(f"{metric_name} vs mult-adds (paper Figure 4)")
    axes[1].set_title(f"{metric_name} vs measured latency")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
