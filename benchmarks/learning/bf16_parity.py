"""Do the learning benchmarks reach the same accuracy under bf16 autocast as under fp32 (within 1 point)?

    python -m benchmarks.learning.bf16_parity

Reads the results files the learning benchmarks wrote with identical settings, once per precision and seed:
`<prefix>32.json` / `<prefix>bf16.json` (seed 0) and `<prefix>32_seed<k>.json` / `<prefix>bf16_seed<k>.json`
(a prefix such as `classification_learning/` or `detection_learning/ssd_`: each benchmark's runs are in its own
folder of benchmarks/results/), and where present `<prefix>auto*.json`: `--precision auto`, which on a bf16 machine trains its first steps in fp32, then bf16
(toolkit/precision.py); each of bf16 and auto is compared with fp32. One pair
says little: two fp32 runs that differ only in their seed already end several points apart on small generated
data sets, so the comparison is between the precisions' means over their seeds, with a 95 % Welch interval on
the difference. bf16 matches fp32 "within 1 point" when that whole interval lies inside +-1 point; one that
excludes 0 is a real gain or loss (a loss is printed in bold); an interval around 0 that is wider than +-1 says
no difference was found at this resolution, and whether the means are within 1 point. Checks that every file's settings agree except precision and seed, writes
benchmarks/results/bf16_parity.json; `tables()` renders the table docs/performance.md quotes. The runs (1 torch
thread each here, two at a time; each file records its command):

    python -m benchmarks.learning.classification_learning --threads 1 --precision 32-true --seed 1 --results classification_learning/32_seed1
    python -m benchmarks.learning.detection_learning --model ssd --threads 1 --workers 0 --minutes 240 --precision bf16-mixed \
        --results detection_learning/ssd_bf16
    python -m benchmarks.learning.face_distillation --threads 1 ... --precision 32-true --seed 2 --results face_distillation/32_seed2
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable

from benchmarks.tools.results import RESULTS_DIR, write_results

#: a point is 0.01 of a metric in [0, 1]; bf16 counts as the same as fp32 when the difference stays within this
TOLERANCE_POINTS = 1.0
#: settings that may differ between the runs of one comparison
PER_RUN_SETTINGS = {"precision", "results", "out", "seed", "no_speed"}
#: seeds looked for: seed 0 has no suffix, seed k >= 1 the suffix `_seed<k>`
MAX_SEEDS = 20
#: file-name suffix -> what the table calls that run's precision; fp32 ("32") is the reference of the others
PRECISIONS = {"32": "32-true", "bf16": "bf16-mixed", "auto": "auto (fp32 warm-up, then bf16)"}


def _face_model(part: str, key: str, metric: str) -> Callable[[dict], list[float]]:
    def per_epoch(results: dict) -> list[float]:
        model = next(m for m in results[part]["models"] if m["key"] == key)
        return [r[metric] for r in model["epochs"]]
    return per_epoch


#: (benchmark, metric, results name before the precision (a folder and a prefix), metric per validation epoch of a results file)
COMPARISONS: tuple[tuple[str, str, str, Callable[[dict], list[float]]], ...] = (
    ("classification α 0.5, 64 px", "val top-1", "classification_learning/", lambda r: [e["top1"] for e in r["epochs"]]),
    ("classification α 0.5, 64 px, 300 images", "val top-1", "classification_learning/300_",
     lambda r: [e["top1"] for e in r["epochs"]]),
    ("SSD300 α 0.25", "mAP@0.5", "detection_learning/ssd_", lambda r: [e["map_50"] for e in r["epochs"]]),
    ("SSD300 α 0.25", "COCO mAP", "detection_learning/ssd_", lambda r: [e["map"] for e in r["epochs"]]),
    ("face attributes, teacher α 0.5", "mean AP", "face_distillation/", _face_model("attributes", "teacher", "val/mAP")),
    ("face attributes, student α 0.25 distilled", "mean AP", "face_distillation/",
     _face_model("attributes", "student_online", "val/mAP")),
    ("face embeddings, teacher α 0.5", "verification accuracy", "face_distillation/",
     _face_model("embeddings", "teacher", "val/accuracy")),
    ("face embeddings, student α 0.25 distilled", "verification accuracy", "face_distillation/",
     _face_model("embeddings", "student", "val/accuracy")),
)


def load(name: str) -> dict | None:
    path = RESULTS_DIR / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def run_names(name: str, precision: str) -> list[str]:
    """The results files of `name` under `precision` (suffix 32 | bf16) that exist, seed 0 first."""
    names = [f"{name}{precision}", *(f"{name}{precision}_seed{k}" for k in range(1, MAX_SEEDS))]
    return [n for n in names if (RESULTS_DIR / f"{n}.json").is_file()]


def cpu_minutes(results: dict) -> float:
    if "cpu_min" in results:
        return results["cpu_min"]
    if "cpu_s" in results:
        return results["cpu_s"] / 60
    return sum(m["train_cpu_s"] for part in ("attributes", "embeddings") for m in results.get(part, {}).get("models", [])) / 60


def check_same_settings(a: dict, b: dict, names: tuple[str, str]) -> None:
    """The runs must differ in precision and seed only: else the comparison measures something else."""
    sa, sb = ({k: v for k, v in p["results"]["settings"].items() if k not in PER_RUN_SETTINGS} for p in (a, b))
    if sa != sb:
        diff = {k: (sa.get(k), sb.get(k)) for k in sa.keys() | sb.keys() if sa.get(k) != sb.get(k)}
        raise SystemExit(f"benchmarks/results/{names[0]}.json and {names[1]}.json were run with different settings {diff}: "
                         "rerun one of them with the other's command and another --precision or --seed")


def summary(name: str, payload: dict, per_epoch: Callable[[dict], list[float]]) -> dict:
    values = per_epoch(payload["results"])
    return {"file": name, "seed": payload["results"]["settings"].get("seed", 0), "final": values[-1],
            "best": max(values), "epochs": len(values), "cpu_min": cpu_minutes(payload["results"]),
            "commit": payload["commit"], "threads": payload["machine"]["torch_threads"]}


def welch_interval(a: list[float], b: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """`confidence` interval of mean(b) - mean(a) (Welch's t, unequal variances); None below 2 runs a side."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    diff = statistics.fmean(b) - statistics.fmean(a)
    if va + vb == 0:
        return diff, diff
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = stats.t.ppf(0.5 + confidence / 2, dof) * (va + vb) ** 0.5
    return float(diff - half), float(diff + half)


def verdict(interval: tuple[float, float] | None, diff: float) -> str:
    """What the interval of (compared - fp32) and the difference of the means, in points, say against the tolerance."""
    if interval is None:
        return "one seed per precision: no noise estimate"
    lo, hi = interval
    if lo >= -TOLERANCE_POINTS and hi <= TOLERANCE_POINTS:
        return "same within 1 point"
    if lo > 0:
        return "higher than fp32"
    if hi < 0:
        return "lower than fp32"
    if abs(diff) <= TOLERANCE_POINTS:
        return "no difference found; means within 1 point, seed noise wider"
    return "no difference found; seed noise wider than the difference"


def compare(benchmark: str, metric: str, name: str, per_epoch: Callable[[dict], list[float]],
            variant: str) -> dict | None:
    """fp32 against `variant` (a PRECISIONS suffix) over their seeds; None where either has no results file."""
    files = {"fp32": run_names(name, "32"), "other": run_names(name, variant)}
    if not files["fp32"] or not files["other"]:
        if variant == "bf16":  # auto runs are optional
            print(f"skipped {benchmark} {metric}: no benchmarks/results/{name}32*.json or {name}{variant}*.json")
        return None
    payloads = {n: load(n) for key in files for n in files[key]}
    reference = files["fp32"][0]
    for n, payload in payloads.items():
        check_same_settings(payloads[reference], payload, (reference, n))
    row: dict = {"benchmark": benchmark, "metric": metric, "precision": PRECISIONS[variant]}
    for key in files:
        runs = [summary(n, payloads[n], per_epoch) for n in files[key]]
        row[key] = {"runs": runs, "seeds": len(runs), "cpu_min": statistics.fmean(r["cpu_min"] for r in runs)}
        for which in ("final", "best"):
            values = [100 * r[which] for r in runs]
            row[key][f"{which}_mean"] = statistics.fmean(values) / 100
            row[key][f"{which}_sd_points"] = statistics.stdev(values) if len(values) > 1 else None
    for which in ("final", "best"):
        row[f"diff_{which}_points"] = 100 * (row["other"][f"{which}_mean"] - row["fp32"][f"{which}_mean"])
        row[f"interval_{which}_points"] = welch_interval([100 * r[which] for r in row["fp32"]["runs"]],
                                                         [100 * r[which] for r in row["other"]["runs"]])
    row["verdict"] = verdict(row["interval_final_points"], row["diff_final_points"])  # runs end on a cosine plateau
    row["within_tolerance"] = row["verdict"] == "same within 1 point"
    return row


#: the benchmark whose mean learning curve per precision `tables()["epochs"]` shows (where bf16 lags, auto not)
CURVES = ("classification_learning/", lambda r: [e["top1"] for e in r["epochs"]])


def mean_curves(name: str, per_epoch: Callable[[dict], list[float]]) -> list[dict]:
    """Per precision with results files: the metric per validation epoch, averaged over the seeds."""
    curves = []
    for suffix, label in PRECISIONS.items():
        runs = [per_epoch(load(n)["results"]) for n in run_names(name, suffix)]
        if runs:
            curves.append({"precision": label, "seeds": len(runs),
                           "mean_per_epoch": [statistics.fmean(r[i] for r in runs) for i in range(min(map(len, runs)))]})
    return curves


def measure() -> dict:
    rows = [compare(*comparison, variant) for comparison in COMPARISONS for variant in ("bf16", "auto")]
    return {"tolerance_points": TOLERANCE_POINTS, "confidence": 0.95, "rows": [r for r in rows if r is not None],
            "curves": {"results": CURVES[0], "by_precision": mean_curves(*CURVES)}}


def tables(results: dict) -> dict[str, str]:
    """`epochs`: the mean learning curve of `CURVES` per precision; `parity`: per benchmark, the mean final metric of fp32 and of the compared precision (+- seed-to-seed
    standard deviation) over the seeds run, their difference with its 95 % interval (final and best epoch),
    CPU minutes per run, and the verdict."""
    lines = ["| benchmark | metric | compared with fp32 | seeds | fp32 final: mean ± sd | compared: mean ± sd | "
             "difference, final (points, 95 % interval) | difference, best epoch (points) | "
             "CPU min per run fp32 / compared | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def mean_sd(side: dict) -> str:
        sd = side["final_sd_points"]
        return f"{side['final_mean']:.3f}" + (f" ± {sd / 100:.3f}" if sd is not None else "")

    def diff(row: dict, which: str) -> str:
        interval = row[f"interval_{which}_points"]
        text = f"{row[f'diff_{which}_points']:+.1f}"
        return text + (f" [{interval[0]:+.1f}, {interval[1]:+.1f}]" if interval is not None else "")

    for r in results["rows"]:
        verdict_text = f"**{r['verdict']}**" if r["verdict"] == "lower than fp32" else r["verdict"]
        lines.append(f"| {r['benchmark']} | {r['metric']} | {r['precision']} | {r['fp32']['seeds']} / {r['other']['seeds']} | "
                     f"{mean_sd(r['fp32'])} | {mean_sd(r['other'])} | {diff(r, 'final')} | {diff(r, 'best')} | "
                     f"{r['fp32']['cpu_min']:.1f} / {r['other']['cpu_min']:.1f} | {verdict_text} |")
    tables = {"parity": "\n".join(lines)}
    curves = results.get("curves", {}).get("by_precision")
    if curves:  # `epochs`: the mean learning curve of CURVES per precision
        epochs = ["| epoch | " + " | ".join(f"{c['precision']} ({c['seeds']} seeds)" for c in curves) + " |",
                  "|---|" + "---|" * len(curves)]
        for i in range(min(len(c["mean_per_epoch"]) for c in curves)):
            epochs.append(f"| {i} | " + " | ".join(f"{c['mean_per_epoch'][i]:.3f}" for c in curves) + " |")
        tables["epochs"] = "\n".join(epochs)
    return tables


def main() -> None:
    results = measure()
    print(tables(results)["parity"])
    write_results("bf16_parity", results)


if __name__ == "__main__":
    main()
