"""Do reported metrics depend on the hardware? One checkpoint per task evaluated under `trainer.precision=auto` (the
default), `32-true` and `bf16-mixed`, on the same validation images (bf16 evaluation under `auto` once gave an SSD
mAP of 0.0427 where fp32 gave 0.0515: why `auto` evaluates in fp32).

    python -m benchmarks.learning.eval_precision

Trains a short SSD (generated shapes) and a short classifier, then runs `mode=eval` on the best checkpoint three
times. Expected: `auto` equals `32-true` exactly on every CPU; `bf16-mixed` differs (by how much depends on the CPU).
Writes benchmarks/results/eval_precision.json and prints the table.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.tools.results import write_results
from benchmarks.tools.runner import QUIET, run_toolkit

#: task -> (overrides, the metric that picks best.ckpt); SSD with detection_learning.py's recipe, fewer images/epochs
TASKS = {
    "detection_ssd": (["task=detection_ssd", "data=shapes", "backbone.alpha=0.25", "data.resolution=300",
                       "data.image_size=96", "data.n_train=600", "data.n_val=100", "data.batch_size=32",
                       "trainer.max_epochs=6", "task.optimizer._target_=torch.optim.AdamW", "task.optimizer.lr=0.004",
                       "~task.optimizer.alpha", "~task.optimizer.momentum", "~task.optimizer.eps"], "val/map"),
    "classification": (["backbone.alpha=0.5", "data.resolution=64", "data.n_train=600", "data.n_val=200",
                        "trainer.max_epochs=3"], "val/top1"),
}
PRECISIONS = ("auto", "32-true", "bf16-mixed")


def measure(name: str, overrides: list[str], metric: str, work: Path) -> dict:
    common = [*QUIET, "seed=0", *overrides]
    trained, _ = run_toolkit([*common, "trainer.precision=auto"], work / name / "train")
    row = {"metric": metric, "trained_under": "auto", "best_score_at_training": trained["best_score"]}
    for precision in PRECISIONS:
        result, _ = run_toolkit([*common, "mode=eval", f"ckpt_path={trained['best_checkpoint']}",
                                 f"trainer.precision={precision}"], work / name / f"eval_{precision}")
        row[precision] = result["metrics"][metric]
        row[f"{precision}_ran_as"] = result["precision"]
    row["auto_minus_fp32"] = row["auto"] - row["32-true"]
    row["bf16_minus_fp32"] = row["bf16-mixed"] - row["32-true"]
    return row


def tables(results: dict) -> dict[str, str]:
    lines = ["| task | metric | auto (ran as) | 32-true | bf16-mixed | auto - fp32 | bf16 - fp32 | best score at training |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in results["tasks"].items():
        lines.append(f"| {name} | {r['metric']} | {r['auto']:.4f} ({r['auto_ran_as']}) | {r['32-true']:.4f} | "
                     f"{r['bf16-mixed']:.4f} | {r['auto_minus_fp32']:+.4f} | {r['bf16_minus_fp32']:+.4f} | "
                     f"{r['best_score_at_training']:.4f} |")
    return {"table": "\n".join(lines)}


def main() -> None:
    from toolkit.precision import fast_bf16

    with tempfile.TemporaryDirectory() as tmp:
        results = {"fast_bf16": fast_bf16("cpu")[1],
                   "tasks": {name: measure(name, overrides, metric, Path(tmp)) for name, (overrides, metric) in TASKS.items()}}
    write_results("eval_precision", results)
    print(tables(results)["table"])


if __name__ == "__main__":
    main()
