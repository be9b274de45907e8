"""Learning check: train a detector on generated shapes on the CPU, print COCO mAP and mAP@0.5 per epoch.

    python -m benchmarks.learning.detection_learning --model ssd [--minutes 20] [--threads 2]
    python -m benchmarks.learning.detection_learning --model frcnn
    python -m benchmarks.learning.detection_learning --model ssd --precision bf16-mixed --results detection_learning/ssd_bf16

Writes benchmarks/results/detection_learning/<model>.json (`--results NAME`: NAME.json); `tables()` renders the
per-epoch table docs/detection.md quotes, and `bf16_parity.py` compares `--precision` pairs.

Every number comes from the real pipeline: `data=shapes` written as COCO JSON + JPEGs, the task's own
training step, and `CocoEvaluator` (pycocotools) at each validation epoch. Training stops at the time
budget or after `--epochs` (default: the model's `EPOCHS`, what fits the budget). The target of both detectors'
issues is mAP@0.5 >= 0.5 within 20 minutes on 2 cores.

The budget is CPU time by default (`--budget cpu`: 20 min x 2 cores = 40 CPU-minutes of this process and
its data workers), because on a shared machine wall-clock time says more about the neighbours than about
the model; `--budget wall` stops on wall-clock minutes instead. Both clocks are printed per epoch.

Add a detector by adding an entry to `MODELS`: the Hydra overrides that select its task and the small
settings that fit a CPU run (`--model frcnn` belongs to the Faster R-CNN task).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from benchmarks.tools.results import write_results

#: model name -> Hydra overrides of that run (on top of COMMON)
MODELS: dict[str, list[str]] = {
    # SSD at the paper's 300x300: the anchor layout needs it. At 64 px the six maps are 4,2,1,1,1,1 (96 anchors,
    # four 1x1 maps all centred on the image) and only 28% of the shapes' boxes have an anchor at IoU >= 0.5, so
    # most positives are forced low-IoU matches whose regression targets are many anchor widths away: the loss
    # falls but mAP@0.5 stays near 0. At 300 (19,10,5,3,2,1; 1,917 anchors) 95% do (160 px: 73%, 224: 90%).
    # AdamW instead of TF's RMSprop lr 0.004 (tuned for 200k steps at batch 24): a few thousand steps here.
    "ssd": [
        "task=detection_ssd",
        "backbone.alpha=0.25",
        "data.resolution=300",
        "data.batch_size=32",
        "data.n_val=200",
        "task.optimizer._target_=torch.optim.AdamW",
        "task.optimizer.lr=0.004",
        "~task.optimizer.alpha",
        "~task.optimizer.momentum",
        "~task.optimizer.eps",
        "+task.scheduler={_target_: torch.optim.lr_scheduler.CosineAnnealingLR, T_max: ${trainer.max_epochs}}",
    ],
    # Faster R-CNN at the paper's 300 (shorter side): the conv12/conv13 second stage on every RoI dominates a
    # CPU step, so fewer images per epoch (more validations), 32 sampled RoIs per image, AdamW from scratch;
    # evaluation keeps the paper's 300 proposals. The warm-up/step schedule is the task's own.
    "frcnn": [
        "task=detection_frcnn",
        "backbone.alpha=0.25",
        "data.resolution=300",
        "data.batch_size=4",
        "data.n_train=600",
        "data.n_val=100",
        "task.lr_reference_batch=null",
        "task.optimizer._target_=torch.optim.AdamW",
        "task.optimizer.lr=0.002",
        "~task.optimizer.momentum",
        "~task.optimizer.nesterov",  # the SGD preset writes torch's default out; AdamW takes no such key
        "task.scheduler.warmup_steps=100",
        "task.model.rcnn.box_batch_size_per_image=32",
    ],
}

#: model name -> default --epochs: the schedule (cosine / warm-up + steps) spans them, so they should end within
#: the budget (SSD: 1.5 CPU-min per epoch, Faster R-CNN: 2.1 CPU-min per epoch with 2 threads)
EPOCHS = {"ssd": 20, "frcnn": 18}
#: what both detectors must reach within the budget to count as learning: mAP@0.5 >= 0.5
TARGET_MAP_50 = 0.5

COMMON = [
    "data=shapes",
    "data.image_size=96",
    "data.n_train=2000",
    "data.n_val=300",
    "debug=cpu",
    "callbacks=none",
    "logger=none",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="ssd")
    parser.add_argument("--minutes", type=float, default=20.0, help="time budget for training + validation")
    parser.add_argument("--budget", choices=("cpu", "wall"), default="cpu",
                        help="cpu: stop at minutes x threads CPU-minutes (idle-machine equivalent); wall: wall clock")
    parser.add_argument("--epochs", type=int, default=None, help="epochs, which the lr schedule spans (default: EPOCHS)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target machine: 2 cores)")
    parser.add_argument("--workers", type=int, default=1, help="data loader worker processes")
    parser.add_argument("--precision", default="auto", help="trainer.precision: auto (trains in 32-true, see "
                        "toolkit/precision.py), 32-true, bf16-mixed")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed (weights, data order)")
    parser.add_argument("--results", default=None, help="results file benchmarks/results/<NAME>.json "
                        "(default: detection_learning/<model>)")
    parser.add_argument("--out", default=None, help="folder for data cache and run outputs (default: a temp dir)")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. backbone.alpha=0.25")
    args = parser.parse_args()
    args.epochs = args.epochs or EPOCHS[args.model]

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning threads would bill waiting as CPU time
    import torch

    torch.set_num_threads(args.threads)
    out = Path(args.out or tempfile.mkdtemp(prefix="detection_learning_"))
    os.environ.setdefault("TOOLKIT_CACHE_DIR", str(out / "cache"))
    os.environ.setdefault("TOOLKIT_LOG_DIR", str(out / "outputs"))

    import hydra.utils
    from lightning.pytorch import Callback, seed_everything

    from toolkit import compose
    from toolkit.modes.common import build_datamodule, build_task
    from toolkit.precision import resolve_precision

    precision = resolve_precision(args.precision, "cpu")  # what `auto` chooses here (the runs get args.precision)
    overrides = COMMON + MODELS[args.model] + [f"trainer.max_epochs={args.epochs}", f"data.num_workers={args.workers}",
                                               f"trainer.precision={args.precision}", f"seed={args.seed}", *args.overrides]
    cfg = compose(overrides, output_dir=out / "run")
    seed_everything(cfg.seed, workers=True)

    rows: list[tuple[int, float, float, float, float]] = []
    start = time.perf_counter()
    budget_cpu = args.minutes * args.threads

    def cpu_minutes() -> float:
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return (own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime) / 60

    class EpochTable(Callback):
        def on_train_batch_end(self, trainer, *_):
            if args.budget == "cpu" and cpu_minutes() >= budget_cpu:
                trainer.should_stop = True

        def on_validation_end(self, trainer, module):  # after the task logged its COCO numbers
            if trainer.sanity_checking:
                return
            m = trainer.callback_metrics
            rows.append((trainer.current_epoch, (time.perf_counter() - start) / 60, cpu_minutes(), float(m["val/map"]),
                         float(m["val/map_50"])))
            print(f"epoch {rows[-1][0]:3d}  {rows[-1][1]:6.1f} wall-min  {rows[-1][2]:6.1f} cpu-min  "
                  f"mAP {rows[-1][3]:.4f}  mAP@0.5 {rows[-1][4]:.4f}", flush=True)


    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    task = build_task(cfg, datamodule)
    minutes = args.minutes - (time.perf_counter() - start) / 60  # data generation counts against the budget
    limits = {"max_time": timedelta(minutes=max(minutes, 0.1))} if args.budget == "wall" else {}
    trainer = hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[EpochTable()], num_sanity_val_steps=0, **limits)
    trainer.fit(task, datamodule=datamodule)
    if not rows or rows[-1][0] != trainer.current_epoch - 1:  # the budget cut the last epoch: evaluate what we have
        trainer.validate(task, datamodule=datamodule, verbose=False)

    rows = [dict(zip(("epoch", "wall_min", "cpu_min", "map", "map_50"), r, strict=True)) for r in rows]
    best = max(rows, key=lambda r: r["map_50"]) if rows else {"epoch": None, "map_50": 0.0, "map": 0.0}
    reached = next((r for r in rows if r["map_50"] >= TARGET_MAP_50), None)
    results = {
        "settings": vars(args), "overrides": overrides, "precision": precision,
        "train_images": len(datamodule.train_dataset), "val_images": len(datamodule.val_dataset),
        "epochs": rows, "final_map": rows[-1]["map"] if rows else 0.0, "final_map_50": rows[-1]["map_50"] if rows else 0.0,
        "best_map_50": best["map_50"], "best_map": max((r["map"] for r in rows), default=0.0), "best_epoch": best["epoch"],
        "cpu_min": cpu_minutes(), "wall_min": (time.perf_counter() - start) / 60,
        "target_map_50": TARGET_MAP_50, "target_reached_epoch": reached["epoch"] if reached else None,
    }
    print(f"\n{args.model}: {' '.join(MODELS[args.model][1:3])}, {' '.join(args.overrides)} {precision}, "
          f"threads={args.threads}, {len(datamodule.train_dataset)} train / {len(datamodule.val_dataset)} val images, "
          f"budget {args.minutes:g} min ({args.budget}{f' = {budget_cpu:g} CPU-min' if args.budget == 'cpu' else ''})")
    print(tables(results)["epochs"])
    print(f"\nbest mAP@0.5 {best['map_50']:.3f} (target >= {TARGET_MAP_50} within the budget): "
          f"{'PASS' if reached else 'FAIL'}")
    write_results(args.results or f"detection_learning/{args.model}", results)
    sys.exit(0 if reached else 1)


def tables(results: dict) -> dict[str, str]:
    """`epochs`: COCO mAP and mAP@0.5 per validation epoch with cumulative wall and CPU minutes."""
    rows = ["| epoch | wall min | CPU min | COCO mAP | mAP@0.5 |", "|---|---|---|---|---|"]
    for r in results["epochs"]:
        bold = "**" if r["epoch"] == results["target_reached_epoch"] else ""
        rows.append(f"| {r['epoch']} | {r['wall_min']:.1f} | {r['cpu_min']:.1f} | {r['map']:.3f} | {bold}{r['map_50']:.3f}{bold} |")
    return {"epochs": "\n".join(rows)}


if __name__ == "__main__":
    main()
