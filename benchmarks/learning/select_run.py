"""A whole `mode=select` on generated data (shapes classification) under three latency budgets: the chosen model,
its metric, wall and CPU minutes; then, as the check that pruning does not cost the answer (`--check-full`), every
candidate trained from scratch to the full schedule with each of `--seeds`: under each budget the chosen one's mean
metric against the best feasible one's, the gap compared with the seed noise (the pooled standard deviation of one
run's metric over seeds; "within" when the gap is at most twice it).

    python -m benchmarks.learning.select_run [--alphas 0.25 0.5] [--resolutions 64 96] [--runtime onnx] [--check-full]

The first selection has no budget (it measures the costs, cached for the next two); the other two budgets are set
between measured latencies: one that drops the slowest candidate, one that keeps the cheapest two. Each
selection runs as a user types it (`python -m toolkit mode=select ...`, training jobs through the joblib launcher).
Writes benchmarks/results/select_run.json; docs/select.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.tools.results import write_results

ROOT = Path(__file__).resolve().parent.parent


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def toolkit(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float, float]:
    start, cpu = time.perf_counter(), children_cpu_s()
    done = subprocess.run([sys.executable, "-m", "toolkit", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"python -m toolkit {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done, time.perf_counter() - start, children_cpu_s() - cpu


def selection(base: list[str], budget: float | None, folder: Path, cwd: Path) -> dict:
    args = [*base, f"hydra.run.dir={folder}"] + ([f"select.latency_ms={budget}"] if budget is not None else [])
    _, wall, cpu = toolkit(args, cwd)
    record = json.loads((folder / "selection.json").read_text())
    winner = record["winner"]
    return {"budget_ms": budget, "chosen": winner["label"], "alpha": winner["alpha"], "resolution": winner["resolution"],
            "metric": winner["metric"], "monitor": winner["monitor"], "latency_ms": winner["latency_ms"],
            "remeasured_latency_ms": winner["export"]["remeasured_latency_ms"],
            "meets_budget_within_10pct": winner["export"].get("meets_budget"),
            "feasible": [c["name"] for c in record["candidates"] if c["state"] != "over_budget"],
            "states": {c["name"]: c["state"] for c in record["candidates"]},
            "spearman_madds_vs_latency": record["rank_correlation"]["spearman_madds_vs_latency"],
            "wall_min": wall / 60, "cpu_min": cpu / 60, "record": record}


def full_schedule(base: list[str], names: list[str], epochs: int, seeds: list[int], folder: Path,
                  cwd: Path) -> dict[str, dict[int, float]]:
    """Every candidate trained from scratch to the full schedule with each seed, in one multirun:
    {name: {seed: best metric}}."""
    train = [a for a in base if not a.startswith("select.") and a != "mode=select"]
    overrides = ["-m", "mode=train", *train, f"trainer.max_epochs={epochs}", f"hydra.sweep.dir={folder}",
                 "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"seed={','.join(map(str, seeds))}"]
    alphas = sorted({float(n.split("_")[0][1:]) for n in names})
    resolutions = sorted({int(n.split("_r")[1]) for n in names})
    overrides += [f"backbone.alpha={','.join(map(str, alphas))}", f"data.resolution={','.join(map(str, resolutions))}"]
    toolkit(overrides, cwd)
    scores: dict[str, dict[int, float]] = {}
    for job in folder.glob("[0-9]*"):
        metrics = json.loads((job / "train_metrics.json").read_text())
        model = metrics["model"]
        job_overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
        seed = int(next(o.split("=", 1)[1] for o in job_overrides if o.startswith("seed=")))
        scores.setdefault(f"a{float(model['alpha']):g}_r{model['resolution']}", {})[seed] = metrics["best_score"]
    return scores


def seed_noise(full: dict[str, dict[int, float]]) -> float:
    """The pooled standard deviation over seeds of one candidate's full-schedule metric (every candidate's seeds
    pooled: what one training run's metric varies by when only the seed changes)."""
    squares = sum(sum((v - statistics.fmean(by_seed.values())) ** 2 for v in by_seed.values())
                  for by_seed in full.values())
    dof = sum(len(by_seed) - 1 for by_seed in full.values())
    return math.sqrt(squares / dof)


def check(selection: dict, full: dict[str, dict[int, float]], noise: float) -> dict:
    """The chosen candidate against the best feasible one at the full schedule (means over seeds); within seed noise
    when the gap is at most twice the seed noise of one run."""
    means = {name: statistics.fmean(by_seed.values()) for name, by_seed in full.items()}
    best = max(selection["feasible"], key=lambda n: means[n])
    chosen = f"a{selection['alpha']:g}_r{selection['resolution']}"
    gap = means[best] - means[chosen]
    return {"best_feasible_full_schedule": best, "its_metric": means[best], "chosen_full_schedule_metric": means[chosen],
            "gap": gap, "seed_noise": noise, "within_seed_noise": gap <= 2 * noise}


def tables(results: dict) -> dict[str, str]:
    """The markdown tables docs/select.md quotes: one row per budget (`selections`); every candidate's full-schedule
    metric per seed (`full_schedule`)."""
    lines = ["| budget ms | feasible | chosen | metric (full schedule) | ms (selection) | ms (re-measured) | wall min | "
             "CPU min | best feasible at full schedule (mean of seeds) | chosen (mean of seeds) | gap / seed noise |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["selections"]:
        c = r.get("check")
        if c and "gap" in c:
            check_cells = (f"{c['best_feasible_full_schedule']} {c['its_metric']:.3f} | {c['chosen_full_schedule_metric']:.3f}"
                           f" | {c['gap']:.3f} / {c['seed_noise']:.3f}: "
                           f"{'within' if c['within_seed_noise'] else 'NOT within'}")
        elif c:  # an older results file: one seed, no noise estimate
            check_cells = f"{c['best_feasible_full_schedule']} {c['its_metric']:.3f} | {c['chosen_full_schedule_metric']:.3f} | -"
        else:
            check_cells = "- | - | -"
        budget = "none" if r["budget_ms"] is None else f"{r['budget_ms']:.3f}"
        lines.append(f"| {budget} | {len(r['feasible'])} | "
                     f"{r['chosen']} | {r['monitor']} {r['metric']:.3f} | {r['latency_ms']:.3f} | "
                     f"{r['remeasured_latency_ms']:.3f} | {r['wall_min']:.1f} | {r['cpu_min']:.1f} | {check_cells} |")
    out = {"selections": "\n".join(lines)}
    full = results.get("full_schedule")
    if full and all(isinstance(v, dict) for v in full.values()):
        seeds = sorted({int(s) for by_seed in full.values() for s in by_seed})
        rows = ["| candidate | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |",
                "|---|" + "---|" * (len(seeds) + 1)]
        for name, by_seed in sorted(full.items(), key=lambda kv: -statistics.fmean(kv[1].values())):
            values = {int(s): v for s, v in by_seed.items()}
            rows.append(f"| {name} | " + " | ".join(f"{values[s]:.3f}" if s in values else "-" for s in seeds)
                        + f" | {statistics.fmean(values.values()):.3f} |")
        out["full_schedule"] = "\n".join(rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.25, 0.5])
    parser.add_argument("--resolutions", nargs="+", type=int, default=[64, 96])
    parser.add_argument("--runtime", default="onnx")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--n-train", type=int, default=1500)
    parser.add_argument("--n-val", type=int, default=300)
    parser.add_argument("--search-epochs", type=int, default=2)
    parser.add_argument("--final-epochs", type=int, default=4)
    parser.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44],
                        help="--check-full: the seeds every candidate trains with (42: the selection's own)")
    parser.add_argument("--check-full", action="store_true",
                        help="also train every candidate to --final-epochs with each of --seeds")
    args = parser.parse_args()
    # a cosine over the full schedule (fixed horizon, so a rung's checkpoint resumes on the same curve): the shapes
    # learn in a few epochs (docs/classification.md), so the candidates are well above chance and differ
    base = ["mode=select", "debug=cpu", "data=shapes", f"data.n_train={args.n_train}", f"data.n_val={args.n_val}",
            "data.image_size=96", "data.batch_size=32", "scheduler=cosine_epoch",
            f"task.scheduler.T_max={args.final_epochs}", f"select.runtime={args.runtime}",
            f"select.threads={args.threads}", f"select.alphas=[{','.join(map(str, args.alphas))}]",
            f"select.resolutions=[{','.join(map(str, args.resolutions))}]", f"select.search_epochs={args.search_epochs}",
            f"select.final_epochs={args.final_epochs}", f"export.formats=[{args.runtime}]"]
    runs: list[dict] = []
    command = "python -m benchmarks.learning.select_run " + " ".join(sys.argv[1:])
    start, cpu = time.perf_counter(), children_cpu_s()

    def save(full: dict | None = None, complete: bool = False, **more) -> None:  # after every step: a long run keeps its part
        shown = [{k: v for k, v in r.items() if k != "record"} for r in runs]
        write_results("select_run", {"settings": vars(args), "complete": complete, "selections": shown,
                                     "full_schedule": full, "total_wall_min": (time.perf_counter() - start) / 60,
                                     "total_cpu_min": (children_cpu_s() - cpu) / 60, **more}, command=command)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        loose = selection(base, None, tmp / "loose", tmp)
        runs.append(loose)
        save()
        latencies = sorted(c["latency_ms"] for c in loose["record"]["candidates"])
        budgets = [(latencies[-2] + latencies[-1]) / 2,  # drops the slowest candidate
                   (latencies[1] + latencies[2]) / 2]  # keeps the cheapest two
        for k, budget in enumerate(budgets):
            runs.append(selection(base, round(budget, 4), tmp / f"budget{k}", tmp))
            save()
        full, noise = None, None
        if args.check_full:
            names = [c["name"] for c in loose["record"]["candidates"]]
            full = full_schedule(base, names, args.final_epochs, args.seeds, tmp / "full", tmp)
            noise = seed_noise(full)
            for r in runs:
                r["check"] = check(r, full, noise)
    for r in runs:
        print(f"budget {r['budget_ms']} ms: chose {r['chosen']} ({r['monitor']} {r['metric']:.4f}, "
              f"{r['latency_ms']:.3f} ms, re-measured {r['remeasured_latency_ms']:.3f} ms) in {r['wall_min']:.1f} min "
              f"wall, {r['cpu_min']:.1f} CPU min; feasible {len(r['feasible'])}"
              + (f"; best feasible at the full schedule {r['check']}" if "check" in r else ""))
    save(full, complete=True, seed_noise=noise)


if __name__ == "__main__":
    main()
