"""Training and inference images/s: our ClassificationTask through Lightning vs a plain PyTorch loop over timm.

    python benchmarks/throughput.py                                   # mobilenet_v1 1.0 / 224, batch 16
    python benchmarks/throughput.py --alpha 0.5 --resolution 160 --batch-size 32 --channels-last

Both sides get the same batches (random tensors held in memory, so data loading is not measured), the same
optimiser (the paper's RMSprop, TF semantics) and the same number of steps. The reference is timm's
`mobilenetv1_100` (the same network at alpha 1.0; at other widths timm has no V1, so the reference is our
backbone with a head in the same plain loop). Runs alternate ours/reference `--rounds` times and report the
median, so a machine shared with other jobs hurts both sides alike. Ratio > 0.9 = overhead under 10%.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import timm
import timm.optim
import torch
from lightning.pytorch import Callback, Trainer
from torch.utils.data import DataLoader, Dataset

from toolkit.heads import build_classifier
from toolkit.tasks.classification import ClassificationTask

OPTIMIZER = {"_target_": "timm.optim.RMSpropTF", "lr": 0.045, "alpha": 0.9, "momentum": 0.9, "eps": 1.0,
             "weight_decay": 4e-5}


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


class StepTimer(Callback):
    """Wall time from the end of warm-up batch `warmup` to the end of the last batch."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.end = warmup, None, None

    def _mark(self, batch_idx: int) -> None:
        if batch_idx == self.warmup - 1:
            self.start = time.perf_counter()
        self.end = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._mark(batch_idx)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self._mark(batch_idx)


def lightning_run(args, data: FixedBatches, train: bool) -> float:
    """Images/s of ClassificationTask under Trainer.fit (train) or Trainer.predict (inference)."""
    task = ClassificationTask({"name": "mobilenet_v1", "alpha": args.alpha}, num_classes=args.num_classes,
                              channels_last=args.channels_last, optimizer=OPTIMIZER, scheduler=None)
    timer = StepTimer(args.warmup)
    trainer = Trainer(accelerator=args.device, devices=1, max_steps=len(data), max_epochs=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer], precision=args.precision)
    loader = DataLoader(data, batch_size=None, shuffle=False)
    if train:
        trainer.fit(task, train_dataloaders=loader)
    else:
        trainer.predict(task, dataloaders=loader, return_predictions=False)
    return args.batch_size * (len(data) - args.warmup) / (timer.end - timer.start)


def reference_model(args) -> torch.nn.Module:
    if args.alpha == 1.0:
        return timm.create_model("mobilenetv1_100", num_classes=args.num_classes)
    return build_classifier({"name": "mobilenet_v1", "alpha": args.alpha}, args.num_classes)


def plain_run(args, data: FixedBatches, train: bool) -> float:
    """Images/s of the reference model in a hand-written loop."""
    device = torch.device("cuda" if args.device == "gpu" else "cpu")
    model = reference_model(args).to(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16 if device.type == "cpu" else torch.float16,
                              enabled=args.precision != "32-true")
    opt_kwargs = {k: v for k, v in OPTIMIZER.items() if k != "_target_"}
    optimizer = timm.optim.RMSpropTF(model.parameters(), **opt_kwargs)
    criterion = torch.nn.CrossEntropyLoss()
    model.train(train)
    start = None
    for i, batch in enumerate(data):
        x = batch["image"].to(device).contiguous(memory_format=memory_format)
        y = batch["label"].to(device)
        if train:
            with autocast:
                loss = criterion(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            with torch.inference_mode(), autocast:
                model(x).softmax(-1).topk(5)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i == args.warmup - 1:
            start = time.perf_counter()
    return args.batch_size * (len(data) - args.warmup) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per run (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="alternating ours/reference runs; the median counts")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--precision", default="32-true", help="Lightning precision (32-true, bf16-mixed, 16-mixed)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-Trainer banners between rows
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = FixedBatches(args.warmup + args.steps, args.batch_size, args.resolution, args.num_classes)
    reference = "timm mobilenetv1_100" if args.alpha == 1.0 else f"our mobilenet_v1 {args.alpha} (timm has no V1 at this width)"
    print(f"mobilenet_v1 alpha {args.alpha} resolution {args.resolution} batch {args.batch_size}, "
          f"{args.steps} timed steps, {args.rounds} rounds, channels_last={args.channels_last}, device {args.device}, "
          f"precision {args.precision}, {torch.get_num_threads()} threads; reference: {reference}")
    print(f"{'phase':<10}{'ours img/s':>12}{'plain img/s':>13}{'ratio':>8}   rounds (ours/plain)")
    for phase, train in (("train", True), ("inference", False)):
        ours, plain = [], []
        for _ in range(args.rounds):
            ours.append(lightning_run(args, data, train))
            plain.append(plain_run(args, data, train))
        o, p = statistics.median(ours), statistics.median(plain)
        rounds = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(ours, plain, strict=True))
        print(f"{phase:<10}{o:>12.1f}{p:>13.1f}{o / p:>8.3f}   {rounds}", flush=True)


if __name__ == "__main__":
    main()
