"""mode=select's cost phase for the paper's 16 candidates (alpha 1.0/0.75/0.5/0.25 x 224/192/160/128): each built
untrained, exported and timed at batch 1 in the runtime, for `onnx` and `executorch_int8`; wall and CPU seconds of
the whole phase, and Spearman's rank correlation of mult-adds and measured latency.

    python -m benchmarks.speed.select_cost [--runtimes onnx executorch_int8] [--threads 1] [--alphas ...] [--resolutions ...]
        [--check-static ALPHA] [--name select_cost]

Runs `mode=select select.export_only=true` (the cost phase without the cache, every file written) on generated
shapes (a 6-class classifier head). Writes benchmarks/results/select_cost.json; docs/select.md quotes it.

`--check-static ALPHA`: the cost phase times one file per width at every resolution; this also writes, for width
ALPHA, one static file per resolution (a selection with that single resolution) and times the shared file and the
static ones alternately, `--check-rounds` times, each in a fresh process: the table `static` says whether the shared
file runs each resolution as fast as a file written for it alone (median over rounds of each round's median).
"""

from __future__ import annotations

import argparse
import json
import statistics
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
    rows = [{k: c.get(k) for k in ("alpha", "resolution", "madds", "params", "size_mb", "latency_ms", "peak_memory_mb",
                                   "file")} for c in record["candidates"]]
    candidates = [Candidate(alpha=r["alpha"], resolution=r["resolution"], madds=r["madds"], latency_ms=r["latency_ms"])
                  for r in rows]
    by_latency = sorted(rows, key=lambda r: r["latency_ms"])
    by_madds = sorted(rows, key=lambda r: r["madds"])
    return {"runtime": runtime, "runtime_version": record["runtime_version"], "threads": threads,
            "candidates": len(rows), "wall_s": wall, "cpu_s": cpu, "seconds_per_candidate": wall / len(rows),
            "spearman_madds_vs_latency": rank_correlation(candidates),
            "same_order": [r["alpha"] for r in by_latency] == [r["alpha"] for r in by_madds]
            and [r["resolution"] for r in by_latency] == [r["resolution"] for r in by_madds],
            "files": len({r["file"] for r in rows}), "rows": rows}


def check_static(runtime: str, *, alpha: float, resolutions: list[int], shared_file: str, threads: int, rounds: int,
                 root: Path) -> list[dict]:
    """Width `alpha`'s shared file against one static file per resolution (written by a one-resolution selection),
    timed alternately in fresh processes (`toolkit.deploy.benchmark.time_in_child`): one row per resolution."""
    from toolkit.deploy.benchmark import time_in_child

    static = {}
    for resolution in resolutions:
        overrides = ["mode=select", "debug=cpu", "select.export_only=true", f"select.runtime={runtime}",
                     f"select.threads={threads}", f"select.alphas=[{alpha}]", f"select.resolutions=[{resolution}]"]
        result, _ = run_toolkit(overrides, root / f"{runtime}_static_r{resolution}")
        static[resolution] = Path(result["files"][0])
    shared_ms: dict[int, list[float]] = {r: [] for r in resolutions}
    static_ms: dict[int, list[float]] = {r: [] for r in resolutions}
    memory: dict[tuple[str, int], float | None] = {}
    for _ in range(rounds):
        for row in time_in_child(Path(shared_file), threads=threads, warmup=3, repeats=30):
            shared_ms[int(row["resolution"])].append(row["latency_ms"])
            memory[("shared", int(row["resolution"]))] = row["peak_memory_mb"]
        for resolution, path in static.items():
            row = time_in_child(path, threads=threads, warmup=3, repeats=30)[0]
            static_ms[resolution].append(row["latency_ms"])
            memory[("static", resolution)] = row["peak_memory_mb"]
    rows = []
    for resolution in sorted(resolutions, reverse=True):
        shared, alone = statistics.median(shared_ms[resolution]), statistics.median(static_ms[resolution])
        rows.append({"alpha": alpha, "resolution": resolution, "shared_ms": shared, "static_ms": alone,
                     "ratio": shared / alone, "shared_peak_memory_mb": memory[("shared", resolution)],
                     "static_peak_memory_mb": memory[("static", resolution)],
                     "shared_size_mb": Path(shared_file).stat().st_size / 1e6,
                     "static_size_mb": static[resolution].stat().st_size / 1e6, "rounds": rounds})
    return rows


def tables(results: dict) -> dict[str, str]:
    """The markdown tables docs/select.md quotes, from the results file: `cost` (one row per candidate, each runtime's
    size, latency and peak memory), `summary` (per runtime: time of the phase, rank correlation) and, from a
    `--check-static` run, `static` (the shared file's latency against static files')."""
    runtimes = results["runtimes"]
    rows: dict[tuple, dict] = {}
    for name, entry in runtimes.items():
        for r in entry["rows"]:
            rows.setdefault((r["alpha"], r["resolution"]), {"madds": r["madds"], "params": r["params"]})[name] = r
    cost = ["| alpha | res | M mult-adds | M params | " + " | ".join(f"{n} MB | {n} ms | {n} peak MB" for n in runtimes)
            + " |", "|---|---|---|---|" + "---|---|---|" * len(runtimes)]
    for (alpha, resolution), v in sorted(rows.items(), key=lambda kv: -kv[1]["madds"]):
        cells = []
        for name in runtimes:
            r = v.get(name)
            peak = r.get("peak_memory_mb") if r else None
            cells += ([f"{r['size_mb']:.2f}", f"{r['latency_ms']:.2f}", "-" if peak is None else f"{peak:.1f}"] if r
                      else ["-", "-", "-"])
        cost.append(f"| {alpha:g} | {resolution} | {v['madds'] / 1e6:.1f} | {v['params'] / 1e6:.2f} | "
                    + " | ".join(cells) + " |")
    summary = ["| runtime | candidates | files | wall s | CPU s | s per candidate | Spearman(mult-adds, latency) |",
               "|---|---|---|---|---|---|---|"]
    for name, e in runtimes.items():
        rho = e["spearman_madds_vs_latency"]
        summary.append(f"| {name} {e['runtime_version']} ({e['threads']} thread) | {e['candidates']} | "
                       f"{e.get('files', '-')} | {e['wall_s']:.0f} | "
                       f"{e['cpu_s']:.0f} | {e['seconds_per_candidate']:.0f} | {'-' if rho is None else f'{rho:.3f}'} |")
    out = {"cost": "\n".join(cost), "summary": "\n".join(summary)}
    checks = [(name, e["static"]) for name, e in runtimes.items() if e.get("static")]
    if checks:
        static = ["| runtime | alpha | res | shared file ms | static file ms | shared / static | shared peak MB | "
                  "static peak MB |", "|---|---|---|---|---|---|---|---|"]
        for name, rows in checks:
            for r in rows:
                static.append(f"| {name} | {r['alpha']:g} | {r['resolution']} | {r['shared_ms']:.2f} | "
                              f"{r['static_ms']:.2f} | {r['ratio']:.2f} | {r['shared_peak_memory_mb']:.1f} | "
                              f"{r['static_peak_memory_mb']:.1f} |")
        out["static"] = "\n".join(static)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtimes", nargs="+", default=["onnx", "executorch_int8"])
    parser.add_argument("--threads", type=int, default=1, help="runtime threads while timing (1: stable on a shared machine)")
    parser.add_argument("--alphas", nargs="+", type=float, default=list(PAPER_ALPHAS))
    parser.add_argument("--resolutions", nargs="+", type=int, default=list(PAPER_RESOLUTIONS))
    parser.add_argument("--check-static", type=float, default=None, metavar="ALPHA",
                        help="also time width ALPHA's shared file against static one-resolution files")
    parser.add_argument("--check-rounds", type=int, default=3, help="--check-static: alternating timing rounds")
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
                      f"{r['latency_ms']:8.3f} ms  peak {r['peak_memory_mb'] or 0:6.1f} MB")
            if args.check_static is not None:
                shared = next(r["file"] for r in entry["rows"] if r["alpha"] == args.check_static)
                entry["static"] = check_static(runtime, alpha=args.check_static, resolutions=args.resolutions,
                                               shared_file=shared, threads=args.threads, rounds=args.check_rounds,
                                               root=Path(tmp))
                for r in entry["static"]:
                    print(f"  alpha {r['alpha']:g} {r['resolution']:>4}: shared file {r['shared_ms']:.3f} ms, static "
                          f"file {r['static_ms']:.3f} ms (x{r['ratio']:.2f})")
            results["total_wall_s"] = sum(e["wall_s"] for e in results["runtimes"].values())
            results["complete"] = len(results["runtimes"]) == len(args.runtimes)
            write_results(args.name, results, command=command)  # after each runtime: a long run keeps its part


if __name__ == "__main__":
    main()
