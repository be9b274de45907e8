"""How far is a bf16 gradient from the fp32 one, and how far would any tiny perturbation move it?

    python -m benchmarks.learning.bf16_gradient_noise [--train-steps 0 60 300] [--seed 0]

The classification learning benchmark's model (MobileNet V1 α 0.5 at 64 px, 6 classes, BN in training mode) and
one batch of 64 of its generated training images, read by the toolkit's own `data=shapes` datamodule. At several
points of an fp32 training run with the paper's optimiser (after `--train-steps` steps), the loss gradient is
computed four ways: fp32; fp32 again (it must be identical: the check that the comparison is deterministic);
bf16 autocast; and fp32 on the same batch with each pixel scaled by (1 + e * N(0, 1)), e = 1e-4 and 2e-3
(bf16 keeps 8 significant bits: its rounding is a relative error of up to 2e-3 on every activation). Reported:
cosine similarity of each to the fp32 gradient over all parameters, and per block the cosine of the gradient
with respect to the block's output and that gradient's norm (the norm growing towards the input is the gradient
explosion of BN networks at initialisation, which turns any rounding into gradient noise).
Writes benchmarks/results/bf16_gradient_noise.json; `tables()` renders the tables docs/performance.md quotes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.tools.results import write_results
from benchmarks.tools.runner import QUIET

#: relative perturbations of the input pixels compared with bf16's rounding
INPUT_NOISE = (1e-4, 2e-3)


def setup(seed: int, folder: Path):
    """The classification benchmark's generated data (batches of 64), a freshly initialised task, its optimiser."""
    from toolkit import compose
    from toolkit.modes.common import build_datamodule, build_task

    torch.manual_seed(seed)
    cfg = compose([*QUIET, "task=classification", "data=shapes", "backbone.alpha=0.5", "data.resolution=64",
                  "data.n_train=2000", "data.n_val=600", "data.batch_size=64", "data.num_workers=0",
                  f"seed={seed}", f"paths.cache_dir={folder / 'cache'}", f"paths.log_dir={folder}"],
                  output_dir=folder / "run")
    datamodule = build_datamodule(cfg)
    datamodule.setup("fit")
    task = build_task(cfg, datamodule)
    optimizers = task.configure_optimizers()  # the paper's RMSprop with the task's weight-decay groups
    return datamodule, task, optimizers["optimizer"] if isinstance(optimizers, dict) else optimizers


def gradients(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, bf16: bool) -> tuple[torch.Tensor, dict]:
    """All parameters' gradients as one vector, and per block (gradient w.r.t. its output, as a vector)."""
    outputs: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(module, inputs, output):
            output.retain_grad()
            outputs[name] = output
        return hook

    handles = [m.register_forward_hook(keep(n)) for n, m in model.backbone.stages.named_children()]
    model.zero_grad()
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(images)
        torch.nn.functional.cross_entropy(logits.float(), labels).backward()
    finally:
        for h in handles:
            h.remove()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    return grads, {n: o.grad.float().flatten() for n, o in outputs.items()}


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0))  # fp32 sums drift past 1


def measure_at(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, seed: int) -> dict:
    """The four gradients of the docstring at the model's current weights (BN in training mode, no update)."""
    state = {k: v.clone() for k, v in model.state_dict().items()}  # BN running stats move on every forward

    def run(x: torch.Tensor, bf16: bool = False):
        result = gradients(model, x, labels, bf16)
        model.load_state_dict(state)
        return result

    model.train()
    ref, ref_blocks = run(images)
    again, _ = run(images)
    bf16, bf16_blocks = run(images, bf16=True)
    row = {"fp32_rerun_cosine": cosine(again, ref), "bf16_cosine": cosine(bf16, ref),
           "blocks": [{"block": n, "bf16_cosine": cosine(bf16_blocks[n], g), "fp32_norm": float(g.norm())}
                      for n, g in ref_blocks.items()]}
    generator = torch.Generator().manual_seed(seed + 1)
    for e in INPUT_NOISE:
        perturbed, _ = run(images * (1 + e * torch.randn(images.shape, generator=generator)))
        row[f"input_noise_{e:g}_cosine"] = cosine(perturbed, ref)
    return row


def measure(train_steps: list[int], seed: int, folder: Path) -> dict:
    datamodule, task, optimizer = setup(seed, folder)
    batches = iter(datamodule.train_dataloader())
    first = next(batches)  # the batch every measurement uses (batches are dicts: image, label, ...)
    images, labels = first["image"], first["label"]
    model = task.model
    rows, done = [], 0
    for target in sorted(train_steps):
        model.train()
        while done < target:  # plain fp32 training steps with the task's optimiser on the following batches
            try:
                batch = next(batches)
            except StopIteration:  # the next epoch
                batches = iter(datamodule.train_dataloader())
                batch = next(batches)
            optimizer.zero_grad()
            task.criterion(model(batch["image"]), batch["label"]).backward()
            optimizer.step()
            done += 1
        rows.append({"train_steps": target, **measure_at(model, images, labels, seed)})
        print(f"after {target} steps: bf16 gradient cosine {rows[-1]['bf16_cosine']:.3f}", flush=True)
    return {"model": "mobilenet_v1 α 0.5, 64 px, 6 classes", "batch": int(images.shape[0]), "seed": seed,
            "input_noise": list(INPUT_NOISE), "rows": rows}


def tables(results: dict) -> dict[str, str]:
    """`whole`: cosine to the fp32 gradient per training step; `blocks`: per block at the first step measured."""
    noise = [f"fp32, input × (1 + {e:g}·N(0,1))" for e in results["input_noise"]]
    whole = ["| after fp32 training steps | fp32 again | bf16 autocast | " + " | ".join(noise) + " |",
             "|---|---|---|" + "---|" * len(noise)]
    for r in results["rows"]:
        cells = [f"{r['fp32_rerun_cosine']:.3f}", f"{r['bf16_cosine']:.3f}",
                 *(f"{r[f'input_noise_{e:g}_cosine']:.3f}" for e in results["input_noise"])]
        whole.append(f"| {r['train_steps']} | " + " | ".join(cells) + " |")
    first = results["rows"][0]
    steps = [r["train_steps"] for r in results["rows"]]
    blocks = [f"| block | fp32 gradient norm at step {first['train_steps']} | " +
              " | ".join(f"bf16 cosine at step {s}" for s in steps) + " |", "|---|---|" + "---|" * len(steps)]
    for i, b in enumerate(first["blocks"]):
        blocks.append(f"| {b['block']} | {b['fp32_norm']:.3f} | " +
                      " | ".join(f"{r['blocks'][i]['bf16_cosine']:.3f}" for r in results["rows"]) + " |")
    return {"whole": "\n".join(whole), "blocks": "\n".join(blocks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-steps", type=int, nargs="+", default=[0, 20, 60], help="fp32 steps before each measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bf16_gradient_noise_") as folder:  # generated data, 2,000 images
        results = measure(args.train_steps, args.seed, Path(folder))
    for table in tables(results).values():
        print(table + "\n")
    write_results("bf16_gradient_noise", results)


if __name__ == "__main__":
    main()
