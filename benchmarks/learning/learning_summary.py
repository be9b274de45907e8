"""One line per learning benchmark, from their results files: the summary README.md quotes.

    python -m benchmarks.learning.learning_summary

Reads the results files the learning benchmarks wrote (a missing one is listed with the command that writes
it) and writes benchmarks/results/learning_summary.json; `tables()` renders the README table.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from benchmarks.tools.results import RESULTS_DIR, write_results


def classification(r: dict) -> str:
    reached = r["target_reached_epoch"]
    return (f"{r['settings']['n_train']} training images: val top-1 {r['best_top1']:.3f} (best, epoch {r['best_epoch']} of {len(r['epochs'])}); "
            + (f">= {r['target_top1']:.0%} from epoch {reached}" if reached is not None else f"{r['target_top1']:.0%} not reached"))


def detection(r: dict) -> str:
    reached = r["target_reached_epoch"]
    return (f"mAP@0.5 {r['best_map_50']:.3f} (best, epoch {r['best_epoch']} of {len(r['epochs'])}), COCO mAP "
            f"{r['best_map']:.3f}; " + (f"mAP@0.5 >= {r['target_map_50']} from epoch {reached}" if reached is not None
                                         else f"mAP@0.5 {r['target_map_50']} not reached"))


def fine_grained(r: dict) -> str:
    run = r["runs"][0]
    return f"top-1 {100 * run['top1']:.1f} % after {r['settings']['epochs']} fine-tuning epochs ({r['verdict']}: >= 80 %)"


def geolocation(r: dict) -> str:
    return f"{100 * r['metrics']['val/within_25km']:.1f} % of photos within 25 km ({r['verdict']}: >= 80 %)"


def faces(r: dict) -> str:
    attributes = {m["key"]: m for m in r["attributes"]["models"]}
    embeddings = {m["key"]: m for m in r["embeddings"]["models"]}
    return (f"student α 0.25 mean AP {100 * attributes['student_online']['mAP']:.1f} % (teacher "
            f"{100 * attributes['teacher']['mAP']:.1f}, baseline {100 * attributes['baseline']['mAP']:.1f}); verification "
            f"{100 * embeddings['student']['accuracy']:.1f} % (teacher {100 * embeddings['teacher']['accuracy']:.1f}, "
            f"baseline {100 * embeddings['baseline']['accuracy']:.1f})")


def cpu_minutes(r: dict) -> float:
    if "cpu_min" in r:
        return r["cpu_min"]
    if "cpu_s" in r:
        return r["cpu_s"] / 60
    if "runs" in r:  # fine-grained: pretraining + the fine-tuning runs
        return (r["pretrain"]["cpu_s"] + sum(run["cpu_s"] for run in r["runs"])) / 60
    return sum(m["train_cpu_s"] for part in ("attributes", "embeddings") for m in r[part]["models"]) / 60


#: (benchmark, its page, results name, the command that writes it, the line of its results)
BENCHMARKS: tuple[tuple[str, str, str, str, Callable[[dict], str]], ...] = (
    ("classification, α 0.5, 64 px", "docs/classification.md", "classification_learning/32",
     "python -m benchmarks.learning.classification_learning --precision 32-true --results classification_learning/32", classification),
    ("SSD300, α 0.25", "docs/detection.md", "detection_learning/ssd_32",
     "python -m benchmarks.learning.detection_learning --model ssd --precision 32-true --results detection_learning/ssd_32", detection),
    ("Faster R-CNN 300, α 0.25", "docs/detection.md", "detection_learning/frcnn",
     "python -m benchmarks.learning.detection_learning --model frcnn", detection),
    ("fine-grained (pretrain + fine-tune), α 0.25", "docs/fine_grained.md", "fine_grained_learning",
     "python -m benchmarks.learning.fine_grained_learning", fine_grained),
    ("geolocation, α 0.25", "docs/geolocation.md", "geolocation_learning", "python -m benchmarks.learning.geolocation_learning",
     geolocation),
    ("faces: distillation α 0.5 -> 0.25", "docs/faces.md", "face_distillation/32",
     "python -m benchmarks.learning.face_distillation --precision 32-true --results face_distillation/32", faces),
)


def measure() -> dict:
    rows = []
    for benchmark, page, name, command, line in BENCHMARKS:
        path = RESULTS_DIR / f"{name}.json"
        if not path.is_file():
            rows.append({"benchmark": benchmark, "page": page, "results": None, "command": command})
            continue
        payload = json.loads(path.read_text())
        r = payload["results"]
        rows.append({"benchmark": benchmark, "page": page, "results": name, "summary": line(r),
                     "precision": r.get("precision") or r["settings"].get("precision"), "cpu_min": cpu_minutes(r),
                     "threads": payload["machine"]["torch_threads"], "commit": payload["commit"]})
    return {"rows": rows}


def tables(results: dict) -> dict[str, str]:
    """`readme`: benchmark, result, precision, CPU minutes, the results file (or the command, when not run)."""
    lines = ["| benchmark | result on the generated data | precision | CPU min | results file |", "|---|---|---|---|---|"]
    for r in results["rows"]:
        if r["results"] is None:
            lines.append(f"| {r['benchmark']} | not measured in this round: `{r['command']}` | | | |")
            continue
        lines.append(f"| [{r['benchmark']}]({r['page']}) | {r['summary']} | {r['precision']} | {r['cpu_min']:.1f} | "
                     f"`{r['results']}.json` |")
    return {"readme": "\n".join(lines)}


def main() -> None:
    results = measure()
    print(tables(results)["readme"])
    write_results("learning_summary", results)


if __name__ == "__main__":
    main()
