"""mode=select's cost phase for the paper's 16 candidates (alpha 1.0/0.75/0.5/0.25 x 224/192/160/128): each built
untrained, exported and timed at batch 1 in the runtime, for `onnx` and `executorch_int8`; wall and CPU seconds of
the whole phase, and Spearman's rank correlation of mult-adds and measured latency.

    python -m benchmarks.speed.select_cost [--runtimes onnx executorch_int8] [--threads 1] [--alphas ...] [--resolutions ...]
        [--name select_cost]

Runs `mode=select select.export_only=true` (the cost phase without the cache, every file written) on generated
shapes (a 6-class classifier head). Writes benchmarks/results/select_cost.json; docs/select.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.tools.results import write_results
from benchmarks.tools.runner import cpu_seconds, run_toolkit
from toolkit.modes.select_cost import PAPER_ALPHAS, PAPER_RESOLUTIONS, Candidate, rank_correlation


def measure(runtime: str, *, alphas, resolutions, threads: int, root: Path) -> dict:
    overrides = ["mode=select", "debug=cpu", "select.export_only=true", f"select.runtime={runtime}",
                 f"select.threads={threads}", f"select.alphas=[{','.join(map(str, alphas))}]",
                 f"select.resolutions=[{','.join(map(str, resolutions))}]"]
    cpu = cpu_seconds()
    start = time.perf_counter()
    result, _ = run_toolkit(overrides, root / runtime)
    wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    record = json.loads(Path(result["selection"]).read_text())
    rows = [{k: c[k] for k in ("alpha", "resolution", "madds", "params", "size_mb", "latency_ms")}
            for c in record["candidates"]]
    candidates = [Candidate(alpha=r["alpha"], resolution=r["resolution"], madds=r["madds"], latency_ms=r["latency_ms"])
                  for r in rows]
    by_latency = sorted(rows, key=lambda r: r["latency_ms"])
    by_madds = sorted(rows, key=lambda r: r["madds"])
    return {"runtime": runtime, "runtime_version": record["runtime_version"], "threads": threads,
            "candidates": len(rows), "wall_s": wall, "cpu_s": cpu, "seconds_per_candidate": wall / len(rows),
            "spearman_madds_vs_latency": rank_correlation(candidates),
            "same_order": [r["alpha"] for r in by_latency] == [r["alpha"] for r in by_madds]
            and [r["resolution"] for r in by_latency] == [r["resolution"] for r in by_madds],
            "rows": rows}


def tables(results: dict) -> dict[str, str]:
    """The markdown tables docs/select.md quotes, from the results file: `cost` (one row per candidate, each runtime's
    size and latency) and `summary` (per runtime: time of the phase, rank correlation)."""
    runtimes = results["runtimes"]
    rows: dict[tuple, dict] = {}
    for name, entry in runtimes.items():
        for r in entry["rows"]:
            rows.setdefault((r["alpha"], r["resolution"]), {"madds": r["madds"], "params": r["params"]})[name] = r
    cost = ["| alpha | res | M mult-adds | M params | " + " | ".join(f"{n} MB | {n} ms" for n in runtimes) + " |",
            "|---|---|---|---|" + "---|---|" * len(runtimes)]
    for (alpha, resolution), v in sorted(rows.items(), key=lambda kv: -kv[1]["madds"]):
        cells = []
        for name in runtimes:
            r = v.get(name)
            cells += [f"{r['size_mb']:.2f}", f"{r['latency_ms']:.2f}"] if r else ["-", "-"]
        cost.append(f"| {alpha:g} | {resolution} | {v['madds'] / 1e6:.1f} | {v['params'] / 1e6:.2f} | "
                    + " | ".join(cells) + " |")
    summary = ["| runtime | candidates | wall s | CPU s | s per candidate | Spearman(mult-adds, latency) |",
               "|---|---|---|---|---|---|"]
    for name, e in runtimes.items():
        rho = e["spearman_madds_vs_latency"]
        summary.append(f"| {name} {e['runtime_version']} ({e['threads']} thread) | {e['candidates']} | {e['wall_s']:.0f} | "
                       f"{e['cpu_s']:.0f} | {e['seconds_per_candidate']:.0f} | {'-' if rho is None else f'{rho:.3f}'} |")
    return {"cost": "\n".join(cost), "summary": "\n".join(summary)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtimes", nargs="+", default=["onnx", "executorch_int8"])
    parser.add_argument("--threads", type=int, default=1, help="runtime threads while timing (1: stable on a shared machine)")
    parser.add_argument("--alphas", nargs="+", type=float, default=list(PAPER_ALPHAS))
    parser.add_argument("--resolutions", nargs="+", type=int, default=list(PAPER_RESOLUTIONS))
    parser.add_argument("--name", default="select_cost", help="results file name (a partial grid: another name)")
    args = parser.parse_args()
    results: dict = {"runtimes": {}, "complete": False}
    command = "python -m benchmarks.speed.select_cost " + " ".join(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        for runtime in args.runtimes:
            entry = measure(runtime, alphas=args.alphas, resolutions=args.resolutions, threads=args.threads,
                            root=Path(tmp))
            results["runtimes"][runtime] = entry
            print(f"{runtime}: {entry['candidates']} candidates in {entry['wall_s']:.0f} s wall "
                  f"({entry['seconds_per_candidate']:.1f} s each), Spearman(mult-adds, latency) "
                  f"{entry['spearman_madds_vs_latency']:.3f}")
            for r in entry["rows"]:
                print(f"  {r['alpha']:<5g} {r['resolution']:>4}  {r['madds'] / 1e6:8.1f} M  {r['size_mb']:6.2f} MB  "
                      f"{r['latency_ms']:8.3f} ms")
            results["total_wall_s"] = sum(e["wall_s"] for e in results["runtimes"].values())
            results["complete"] = len(results["runtimes"]) == len(args.runtimes)
            write_results(args.name, results, command=command)  # after each runtime: a long run keeps its part


if __name__ == "__main__":
    main()
