"""Training and inference images/s: what Lightning costs, what bf16 and torch.compile buy, ours against timm's.

    python -m benchmarks.speed.throughput                       # mobilenet_v1 1.0-224, batch 32, fp32 and bf16, eager
    python -m benchmarks.speed.throughput --compile             # also torch.compile'd paths and x86 int8 inference
    python -m benchmarks.speed.throughput --alpha 0.5 --resolution 160 --batch-size 16 --steps 6
    python -m benchmarks.speed.throughput --compile --phases inference --no-timm --name throughput_inference

Three comparisons, each measured within one run so a machine shared with other jobs hurts both sides alike:

1. Lightning overhead: our ClassificationTask under `Trainer.fit` / `Trainer.predict` against a plain PyTorch loop
   over the SAME model (`task.model`) with the SAME optimiser (`task.configure_optimizers()`: the paper's
   RMSprop with its parameter groups), for fp32 and bf16 (and compiled with --compile).
2. Precision and compilation: the plain loop's images/s for fp32/bf16 x eager/compiled, training and inference,
   as multiples of eager fp32; with --compile also inference through `compile=int8` (x86 PT2E int8 compiled
   by inductor with weight freezing: `toolkit.compilation.QuantizedForward`).
3. Our model against timm's `mobilenetv1_100` (the same network at alpha 1.0), both in the plain loop with the
   same optimiser class and settings.

Batches are random tensors held in memory (data loading is not measured: see benchmarks/speed/loader_speed.py). Each
measurement runs `--warmup` untimed steps, then `--steps` timed ones; Lightning and plain runs alternate
`--rounds` times and the median counts. Images per CPU-second (all threads of this process) are recorded too:
they survive a busy machine better than wall time. Results: benchmarks/results/throughput.json.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import timm
import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader, Dataset

from benchmarks.tools.results import write_results
from toolkit.compilation import QuantizedForward, compile_module
from toolkit.tasks.classification import ClassificationTask

OPTIMIZER = {"_target_": "timm.optim.RMSpropTF", "lr": 0.045, "alpha": 0.9, "momentum": 0.9, "eps": 1.0,
             "weight_decay": 4e-5}
PRECISIONS = {"fp32": "32-true", "bf16": "bf16-mixed"}
TARGETS = {"lightning_vs_plain": 0.95, "bf16_training_speedup": 1.4, "best_inference_speedup": 3.5}
TARGET_NAMES = {"lightning_vs_plain": "Lightning / plain loop, img/s", "bf16_training_speedup": "bf16 training / fp32",
                "best_inference_speedup": "best inference path / eager fp32"}


class FixedBatches(Dataset):
    """`n` identical-shape batches kept in memory; each item is already a whole batch."""

    def __init__(self, n: int, batch_size: int, resolution: int, num_classes: int):
        g = torch.Generator().manual_seed(0)
        self.batches = [{"image": torch.randn(batch_size, 3, resolution, resolution, generator=g),
                         "label": torch.randint(0, num_classes, (batch_size,), generator=g),
                         "path": [f"synthetic_{i}" for i in range(batch_size)]} for _ in range(n)]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        return self.batches[i]


class Clock:
    """Wall and CPU seconds from the end of warm-up step `warmup` to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup, self.wall, self.cpu = warmup, 0.0, 0.0
        self._start: tuple[float, float] | None = None

    def step_done(self, index: int) -> None:
        now = (time.perf_counter(), time.process_time())
        if index == self.warmup - 1:
            self._start = now
        elif self._start is not None:
            self.wall, self.cpu = now[0] - self._start[0], now[1] - self._start[1]


class StepClock(Callback):
    def __init__(self, clock: Clock):
        self.clock = clock

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.clock.step_done(batch_idx)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.clock.step_done(batch_idx)


def new_task(args) -> ClassificationTask:
    torch.manual_seed(0)
    return ClassificationTask(backbone={"name": "mobilenet_v1", "alpha": args.alpha}, num_classes=args.num_classes,
                              channels_last=True, optimizer=OPTIMIZER, scheduler=None)


def rate(args, clock: Clock) -> dict[str, float]:
    images = args.batch_size * args.steps
    return {"images_per_s": images / clock.wall, "images_per_cpu_s": images / clock.cpu}


def compile_for(model: torch.nn.Module, data: FixedBatches, precision: str, compiled: bool) -> None:
    """torch.compile `model` in place; int8: quantized as `compile=int8` does (calibrated on two batches)."""
    if precision == "int8":
        model.forward = QuantizedForward(model.forward, lambda: [b["image"] for b in data.batches[:2]])
    elif compiled:
        compile_module(model)


def lightning_run(args, data: FixedBatches, train: bool, precision: str, compiled: bool) -> dict[str, float]:
    """Our ClassificationTask under Trainer.fit (train) or Trainer.predict (inference)."""
    task = new_task(args)
    compile_for(task.model, data, precision, compiled)
    clock = Clock(args.warmup)
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=len(data), max_epochs=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, callbacks=[StepClock(clock)],
                      precision=PRECISIONS.get(precision, "32-true"))
    loader = DataLoader(data, batch_size=None, shuffle=False)
    if train:
        trainer.fit(task, train_dataloaders=loader)
    else:
        trainer.predict(task, dataloaders=loader, return_predictions=False)
    return rate(args, clock)


def plain_run(args, data: FixedBatches, train: bool, precision: str, compiled: bool,
              model: torch.nn.Module | None = None) -> dict[str, float]:
    """A hand-written loop: our task's model and optimiser (or `model` with the same optimiser settings)."""
    if model is None:
        task = new_task(args)
        model, optimizer = task.model, task.configure_optimizers()
    else:
        opt_kwargs = {k: v for k, v in OPTIMIZER.items() if k != "_target_"}
        optimizer = timm.optim.RMSpropTF(model.parameters(), **opt_kwargs)
        model = model.to(memory_format=torch.channels_last)
    compile_for(model, data, precision, compiled)
    criterion = torch.nn.CrossEntropyLoss()
    model.train(train)
    clock = Clock(args.warmup)
    for i, batch in enumerate(data):
        x = batch["image"].contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            if train:
                loss = criterion(model(x), batch["label"])
            else:
                with torch.inference_mode():
                    model(x).softmax(-1).topk(5)
        if train:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        clock.step_done(i)
    return rate(args, clock)


def median_rate(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in runs) for key in runs[0]}


def compare(args, data, train: bool, precision: str, compiled: bool, sides: dict) -> dict:
    """Alternate the `sides` (name -> run function) `args.rounds` times; the median of each."""
    runs: dict[str, list] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, side in sides.items():
            runs[name].append(side(args, data, train, precision, compiled))
    return {name: {**median_rate(r), "rounds": [round(x["images_per_s"], 2) for x in r]} for name, r in runs.items()}


def tables(results: dict) -> dict[str, str]:
    """The Markdown tables docs/performance.md quotes, rendered from a results file's `results`."""
    out = {"lightning": ["| phase | path | Lightning img/s | plain loop img/s | Lightning / plain | same, per CPU-second |",
                         "|---|---|---|---|---|---|"]}
    for key, row in results["lightning_vs_plain"].items():
        phase, path = key.split("/")
        out["lightning"].append(f"| {phase} | {path} | {row['lightning']['images_per_s']:.1f} | "
                                f"{row['plain']['images_per_s']:.1f} | {row['ratio']:.2f} | {row['ratio_cpu']:.2f} |")
    out["paths"] = ["| phase | path (plain loop) | img/s | vs eager fp32 | img per CPU-s | vs eager fp32 (CPU-s) |",
                    "|---|---|---|---|---|---|"]
    for key, value in results["paths"].items():
        phase, path = key.split("/")
        speedup = results["speedup_vs_eager_fp32"][key]
        out["paths"].append(f"| {phase} | {path} | {value['images_per_s']:.1f} | {speedup['wall']:.2f}x | "
                            f"{value['images_per_cpu_s']:.1f} | {speedup['cpu']:.2f}x |")
    if results.get("ours_vs_timm"):
        out["timm"] = ["| phase | precision | ours img/s | timm img/s | ours / timm |", "|---|---|---|---|---|"]
        for key, row in results["ours_vs_timm"].items():
            phase, precision = key.split("/")
            out["timm"].append(f"| {phase} | {precision} | {row['ours']['images_per_s']:.1f} | "
                               f"{row['timm']['images_per_s']:.1f} | {row['ratio']:.2f} |")
    if results.get("targets"):
        out["targets"] = ["| target | wanted | measured | met |", "|---|---|---|---|"]
        for name, t in results["targets"].items():
            value = t.get("value", t.get("worst"))
            if name == "lightning_vs_plain":
                what = f"{t['worst']:.2f} (worst row), {t['median']:.2f} (median row)" if "median" in t else f"{value:.2f}"
            else:
                what = f"{value:.2f}x" + (f" ({t['path']})" if t.get("path") else "")
            out["targets"].append(f"| {TARGET_NAMES[name]} | >= {t['target']} | {what} | "
                                  f"{'yes' if value >= t['target'] else 'no'} |")
    return {name: "\n".join(lines) for name, lines in out.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run (after --warmup)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (compilation happens here)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating Lightning/plain runs; the median counts")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--compile", action="store_true", help="also the torch.compile'd paths")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--phases", nargs="+", default=["train", "inference"], choices=("train", "inference"))
    parser.add_argument("--no-timm", action="store_true", help="skip the comparison with timm's model")
    parser.add_argument("--name", default="throughput", help="results file benchmarks/results/<name>.json")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-Trainer banners between rows
    if args.threads:
        torch.set_num_threads(args.threads)
    data = FixedBatches(args.warmup + args.steps, args.batch_size, args.resolution, args.num_classes)
    print(f"mobilenet_v1 alpha {args.alpha} resolution {args.resolution} batch {args.batch_size} channels_last, "
          f"{args.steps} timed steps after {args.warmup}, {args.rounds} rounds, {torch.get_num_threads()} threads")
    compiled_options = (False, True) if args.compile else (False,)
    paths = [(precision, compiled) for compiled in compiled_options for precision in PRECISIONS]
    results: dict = {"settings": vars(args), "lightning_vs_plain": {}, "paths": {}, "ours_vs_timm": {}}

    print(f"\n{'phase':<10}{'path':<16}{'Lightning img/s':>16}{'plain img/s':>13}{'ratio':>8}{'ratio (CPU s)':>15}")
    phases = [(phase, phase == "train") for phase in args.phases]
    for phase, train in phases:
        for precision, compiled in paths + ([] if train or not args.compile else [("int8", True)]):
            path = precision + ("_compiled" if compiled else "")
            r = compare(args, data, train, precision, compiled, {"lightning": lightning_run, "plain": plain_run})
            light, plain = r["lightning"], r["plain"]
            row = {**r, "ratio": light["images_per_s"] / plain["images_per_s"],
                   "ratio_cpu": light["images_per_cpu_s"] / plain["images_per_cpu_s"]}
            results["lightning_vs_plain"][f"{phase}/{path}"] = row
            results["paths"][f"{phase}/{path}"] = plain
            print(f"{phase:<10}{path:<16}{light['images_per_s']:>16.1f}{plain['images_per_s']:>13.1f}"
                  f"{row['ratio']:>8.3f}{row['ratio_cpu']:>15.3f}", flush=True)

    print(f"\n{'phase':<10}{'path (plain loop)':<20}{'img/s':>9}{'vs eager fp32':>15}{'img/CPU-s':>11}")
    speedups = {}
    for phase, _ in phases:
        base = results["paths"][f"{phase}/fp32"]
        for key, value in results["paths"].items():
            if key.startswith(phase + "/"):
                speedup = value["images_per_s"] / base["images_per_s"]
                speedups[key] = {"wall": speedup, "cpu": value["images_per_cpu_s"] / base["images_per_cpu_s"]}
                print(f"{phase:<10}{key.split('/')[1]:<20}{value['images_per_s']:>9.1f}{speedup:>14.2f}x"
                      f"{value['images_per_cpu_s']:>11.1f}", flush=True)
    results["speedup_vs_eager_fp32"] = speedups

    if args.alpha == 1.0 and not args.no_timm:
        def timm_run(a, d, train, precision, compiled):
            torch.manual_seed(0)
            return plain_run(a, d, train, precision, compiled, timm.create_model("mobilenetv1_100",
                                                                                 num_classes=a.num_classes))

        print(f"\n{'phase':<10}{'path':<8}{'ours img/s':>12}{'timm img/s':>12}{'ratio':>8}")
        for phase, train in phases:
            for precision in PRECISIONS:
                r = compare(args, data, train, precision, False, {"ours": plain_run, "timm": timm_run})
                row = {**r, "ratio": r["ours"]["images_per_s"] / r["timm"]["images_per_s"]}
                results["ours_vs_timm"][f"{phase}/{precision}"] = row
                print(f"{phase:<10}{precision:<8}{r['ours']['images_per_s']:>12.1f}{r['timm']['images_per_s']:>12.1f}"
                      f"{row['ratio']:>8.3f}", flush=True)

    light = [v["ratio"] for v in results["lightning_vs_plain"].values()]
    results["targets"] = {"lightning_vs_plain": {"target": TARGETS["lightning_vs_plain"], "worst": min(light),
                                                 "median": statistics.median(light)}}
    if "train/bf16" in speedups:
        results["targets"]["bf16_training_speedup"] = {"target": TARGETS["bf16_training_speedup"],
                                                       "value": speedups["train/bf16"]["wall"]}
    if "inference/fp32" in speedups:
        best = max((k for k in speedups if k.startswith("inference/")), key=lambda k: speedups[k]["wall"])
        results["targets"]["best_inference_speedup"] = {
            "target": TARGETS["best_inference_speedup"], "value": speedups[best]["wall"], "path": best.split("/")[1]}
    print("\ntargets:")
    for name, t in results["targets"].items():
        value = t.get("value", t.get("worst"))
        print(f"  {name:<24s} {value:6.2f} (target >= {t['target']}) {'met' if value >= t['target'] else 'NOT met'}")
    for name, table in tables(results).items():
        print(f"\n{name}:\n{table}")
    path = write_results(args.name, results)
    print(f"results: {path}")


if __name__ == "__main__":
    main()
