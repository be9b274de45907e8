"""Do the learning benchmarks reach the same accuracy under bf16 autocast as under fp32 (issue 14: within 1 point)?

    python benchmarks/bf16_parity.py

Reads the pairs of results files the learning benchmarks wrote with identical settings and seed, one with
`--precision 32-true`, one with `--precision bf16-mixed` (and, where present, an fp32 run with another seed: the
run-to-run noise the difference has to be read against; and a bf16 run with that seed: the comparison again), checks that each pair's settings agree except for the
precision, and writes benchmarks/results/bf16_parity.json; `tables()` renders the table docs/performance.md quotes.
The runs (2 torch threads each here; see each file's command):

    python benchmarks/classification_learning.py --precision 32-true --results classification_learning_32
    python benchmarks/classification_learning.py --precision bf16-mixed --results classification_learning_bf16
    python benchmarks/classification_learning.py --precision 32-true --seed 1 --results classification_learning_32_seed1
    python benchmarks/detection_learning.py --model ssd --precision 32-true --results detection_learning_ssd_32 ...
    python benchmarks/face_distillation.py --precision 32-true --results face_distillation_32 ...

(the same for bf16-mixed and `--seed 1`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from _results import RESULTS_DIR, write_results

#: a point is 0.01 of a metric in [0, 1]; the issue's tolerance
TOLERANCE_POINTS = 1.0
#: settings that may differ within a pair
PER_RUN_SETTINGS = {"precision", "results", "out", "seed", "no_speed"}


def _face_model(part: str, key: str, metric: str) -> Callable[[dict], list[float]]:
    def per_epoch(results: dict) -> list[float]:
        model = next(m for m in results[part]["models"] if m["key"] == key)
        return [r[metric] for r in model["epochs"]]
    return per_epoch


#: (benchmark, metric, results name without the precision suffix, metric per validation epoch of a results file)
COMPARISONS: tuple[tuple[str, str, str, Callable[[dict], list[float]]], ...] = (
    ("classification α 0.5, 64 px", "val top-1", "classification_learning", lambda r: [e["top1"] for e in r["epochs"]]),
    ("SSD300 α 0.25", "mAP@0.5", "detection_learning_ssd", lambda r: [e["map_50"] for e in r["epochs"]]),
    ("SSD300 α 0.25", "COCO mAP", "detection_learning_ssd", lambda r: [e["map"] for e in r["epochs"]]),
    ("face attributes, teacher α 0.5", "mean AP", "face_distillation", _face_model("attributes", "teacher", "val/mAP")),
    ("face attributes, student α 0.25 distilled", "mean AP", "face_distillation",
     _face_model("attributes", "student_online", "val/mAP")),
    ("face embeddings, teacher α 0.5", "verification accuracy", "face_distillation",
     _face_model("embeddings", "teacher", "val/accuracy")),
    ("face embeddings, student α 0.25 distilled", "verification accuracy", "face_distillation",
     _face_model("embeddings", "student", "val/accuracy")),
)


def load(name: str) -> dict | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def cpu_minutes(results: dict) -> float:
    if "cpu_min" in results:
        return results["cpu_min"]
    if "cpu_s" in results:
        return results["cpu_s"] / 60
    return sum(m["train_cpu_s"] for part in ("attributes", "embeddings") for m in results.get(part, {}).get("models", [])) / 60


def check_same_settings(a: dict, b: dict, names: tuple[str, str]) -> None:
    """The pair must differ in precision only (and the results name): else the comparison measures something else."""
    sa, sb = ({k: v for k, v in p["results"]["settings"].items() if k not in PER_RUN_SETTINGS} for p in (a, b))
    if sa != sb:
        diff = {k: (sa.get(k), sb.get(k)) for k in sa.keys() | sb.keys() if sa.get(k) != sb.get(k)}
        raise SystemExit(f"benchmarks/results/{names[0]}.json and {names[1]}.json were run with different settings {diff}: "
                         "rerun one of them with the other's command and another --precision")


def summary(payload: dict, per_epoch: Callable[[dict], list[float]]) -> dict:
    values = per_epoch(payload["results"])
    return {"final": values[-1], "best": max(values), "epochs": len(values), "cpu_min": cpu_minutes(payload["results"]),
            "commit": payload["commit"], "threads": payload["machine"]["torch_threads"]}


def measure() -> dict:
    rows = []
    for benchmark, metric, name, per_epoch in COMPARISONS:
        names = (f"{name}_32", f"{name}_bf16")
        fp32, bf16 = load(names[0]), load(names[1])
        if fp32 is None or bf16 is None:
            print(f"skipped {benchmark} {metric}: benchmarks/results/{names[0]}.json or {names[1]}.json missing")
            continue
        check_same_settings(fp32, bf16, names)
        row = {"benchmark": benchmark, "metric": metric, "files": list(names),
               "fp32": summary(fp32, per_epoch), "bf16": summary(bf16, per_epoch)}
        for precision in ("32", "bf16"):  # optional runs with --seed 1: the noise, and the comparison again
            seed1 = load(f"{name}_{precision}_seed1")
            if seed1 is not None:
                check_same_settings(fp32, seed1, (names[0], f"{name}_{precision}_seed1"))
                row[f"{'fp32' if precision == '32' else precision}_seed1"] = summary(seed1, per_epoch)
                row["files"].append(f"{name}_{precision}_seed1")
        diffs = [("diff", "bf16", "fp32")]
        if "fp32_seed1" in row:
            diffs.append(("seed_diff", "fp32_seed1", "fp32"))
        if "fp32_seed1" in row and "bf16_seed1" in row:
            diffs.append(("seed1_diff", "bf16_seed1", "fp32_seed1"))
        for key, a, b in diffs:
            for which in ("final", "best"):
                row[f"{key}_{which}_points"] = 100 * (row[a][which] - row[b][which])
        row["within_tolerance"] = all(abs(row[f"{key}_{which}_points"]) <= TOLERANCE_POINTS
                                      for key in ("diff", "seed1_diff") if f"{key}_final_points" in row
                                      for which in ("final", "best"))
        rows.append(row)
    return {"tolerance_points": TOLERANCE_POINTS, "rows": rows}


def tables(results: dict) -> dict[str, str]:
    """`parity`: final and best metric per precision, bf16 - fp32 in points, the fp32 seed-to-seed difference, the
    bf16 - fp32 difference again at seed 1 where both ran, CPU minutes of the seed-0 runs, and whether every
    bf16 - fp32 difference is within the tolerance."""
    lines = ["| benchmark | metric | fp32 final / best | bf16 final / best | bf16 - fp32 (points) final / best | "
             "fp32 seed 1 - seed 0 (points) final / best | bf16 - fp32 at seed 1 (points) final / best | "
             "CPU min fp32 / bf16 | within 1 point |",
             "|---|---|---|---|---|---|---|---|---|"]

    def points(row: dict, key: str) -> str:
        return (f"{row[key + '_final_points']:+.1f} / {row[key + '_best_points']:+.1f}" if key + "_final_points" in row
                else "not run")

    for r in results["rows"]:
        lines.append(f"| {r['benchmark']} | {r['metric']} | {r['fp32']['final']:.3f} / {r['fp32']['best']:.3f} | "
                     f"{r['bf16']['final']:.3f} / {r['bf16']['best']:.3f} | {points(r, 'diff')} | {points(r, 'seed_diff')} | "
                     f"{points(r, 'seed1_diff')} | {r['fp32']['cpu_min']:.1f} / {r['bf16']['cpu_min']:.1f} | "
                     f"{'yes' if r['within_tolerance'] else '**no**'} |")
    return {"parity": "\n".join(lines)}


def main() -> None:
    results = measure()
    print(tables(results)["parity"])
    write_results("bf16_parity", results, command=" ".join(["python", *sys.argv]))


if __name__ == "__main__":
    main()
