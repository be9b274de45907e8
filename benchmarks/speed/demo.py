"""The demo (`make demo` = `python -m toolkit`), run as a new user would, and run again: what README quotes.

    python -m benchmarks.speed.demo              # two runs of `python -m toolkit`, fresh data cache, outputs in a temp folder
    python -m benchmarks.speed.demo --runs 1
    python -m benchmarks.speed.demo --record outputs/classification/runs/<time>   # a demo run made already (make demo)

Each run is the real command in a subprocess (generated shapes, MobileNet V1, 8 epochs, seed 42). The first run
generates the data, the next ones read it from the cache: the case where the same command used to end at 0.83 one
time and 0.77 the next. Writes benchmarks/results/demo.json: each run's validation top-1 after the last epoch, the
best checkpoint's top-1, wall and CPU seconds (CPU seconds: read those when other jobs share the machine), and
whether the runs agree exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.tools.results import write_results

DEMO = [sys.executable, "-m", "toolkit"]


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_demo(work: Path) -> dict:
    """One `python -m toolkit` with caches and logs under `work`; its train_metrics.json figures."""
    env = {**os.environ, "TOOLKIT_CACHE_DIR": str(work / "cache"), "TOOLKIT_LOG_DIR": str(work / "outputs")}
    before = set((work / "outputs").glob("classification/runs/*"))
    start, cpu = time.perf_counter(), children_cpu_seconds()
    done = subprocess.run(DEMO, env=env, cwd=work, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, children_cpu_seconds() - cpu
    if done.returncode != 0:
        raise SystemExit(f"the demo failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    (run_dir,) = set((work / "outputs").glob("classification/runs/*")) - before
    return {**figures(run_dir), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "printed": done.stdout.strip().splitlines()[-6:]}


def figures(run_dir: Path) -> dict:
    """What a finished demo run folder says: its train_metrics.json (the numbers the run printed at its end)."""
    result = json.loads((run_dir / "train_metrics.json").read_text())
    return {"final_val_top1": result["metrics"]["val/top1"], "best_val_top1": result["best_score"],
            "final_val_loss": result["metrics"]["val/loss"], "epochs": result["epoch"],
            "global_step": result["global_step"], "run_dir": str(run_dir)}


def record(runs: list[dict], planned: int, command: str, note: str = "") -> None:
    """Written after every run, so an interrupted benchmark keeps the runs it finished."""
    keys = ("final_val_top1", "best_val_top1", "final_val_loss")
    identical = all(all(r[k] == runs[0][k] for k in keys) for r in runs) if len(runs) > 1 else None
    write_results("demo", {"runs": runs, "runs_planned": planned, "identical": identical, "shared_machine": True,
                           "note": "CPU shared with other jobs: wall seconds vary, CPU seconds and metrics do not"
                                   + (f"; {note}" if note else "")},
                  command=command)
    if identical is not None:
        print(f"runs identical: {identical}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--record", type=Path, help="a finished `python -m toolkit` run folder to record instead")
    parser.add_argument("--note", default="", help="with --record: how that run was made (commit, time taken)")
    args = parser.parse_args()
    command = "python -m benchmarks.speed.demo " + " ".join(sys.argv[1:])
    if args.record:
        run = figures(args.record)
        print(f"recorded {args.record}: final val/top1 {run['final_val_top1']:.4f}, best {run['best_val_top1']:.4f}")
        record([run], 1, command, args.note)
        return
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for i in range(args.runs):
            runs.append(run_demo(Path(tmp)))
            print(f"run {i + 1}: final val/top1 {runs[-1]['final_val_top1']:.4f}, best {runs[-1]['best_val_top1']:.4f}, "
                  f"{runs[-1]['wall_s']:.0f} s wall, {runs[-1]['cpu_s']:.0f} CPU-s", flush=True)
            record(runs, args.runs, command)


if __name__ == "__main__":
    main()
