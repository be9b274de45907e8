"""Which fine-tuning presets suit small custom class folders? Augmentation x flips x optimiser on generated data.

    python -m benchmarks.learning.finetune_presets                    # the settings docs/fine-tuning.md quotes
    python -m benchmarks.learning.finetune_presets --seeds 0 --epochs 5 --n-train 200   # a quick look

Two generated class folders (written to a temporary folder as JPEGs, read by the real `data=folder` path):
- `arrows`: arrows pointing left, right, up or down on noisy backgrounds, 32-48 px. Not flip-invariant: a
  horizontal flip turns a left arrow into a right one (the label is then wrong).
- `photos`: photo-like scenes (colour gradients, noise, clutter) holding one object whose shape is the class
  (disc, box, upward triangle, ring), 32-48 px. Flip-invariant.

Every combination of `augment=paper|finetune`, `data.hflip=true|false` and the optimiser recipe (`paper`:
`optimizer=rmsprop_tf scheduler=exponential`, task=classification's default; `adamw_cosine`: `optimizer=adamw
scheduler=cosine`) trains MobileNet V1 (alpha 0.25, 32 px) for 15 epochs from scratch with each seed, through
`python -m toolkit task=classification data=folder` in-process. Recorded per run: the last and the best epoch's
val top-1. Writes benchmarks/results/finetune_presets.json; `tables()` renders what docs/fine-tuning.md quotes.
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.tools.results import write_results
from benchmarks.tools.runner import QUIET, run_toolkit

AUGMENTS = ("paper", "finetune")
FLIPS = (True, False)
RECIPES = {
    "paper": ["optimizer=rmsprop_tf", "scheduler=exponential"],
    "adamw_cosine": ["optimizer=adamw", "scheduler=cosine"],
}
#: the custom-data default (data=folder, task=classification): augment=finetune, flips on, the paper's optimiser
DEFAULT = ("finetune", True, "paper")
#: what docs/fine-tuning.md advises per dataset: the default, with flips off where a mirror changes the label
ADVICE = {"arrows": ("finetune", False, "paper"), "photos": DEFAULT}
ARROWS = ("left", "right", "up", "down")
SHAPES = ("disc", "box", "triangle", "ring")


def _background(rng, size: int):
    """A noisy colour gradient: a photo-like backdrop."""
    import numpy as np

    a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    t = (np.cos(angle) * xx + np.sin(angle) * yy)
    t = (t - t.min()) / max(np.ptp(t), 1e-6)
    image = a * (1 - t[..., None]) + b * t[..., None] + rng.normal(0, rng.uniform(8, 30), (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8)


def _contrasting(rng, image) -> tuple[int, int, int]:
    """A colour far from the image's mean colour, so the object stays visible."""
    mean = image.reshape(-1, 3).mean(0)
    return tuple(int(255 - m + rng.uniform(-40, 40)) % 256 if abs(255 - 2 * m) > 60 else int((m + 128) % 256)
                 for m in mean)


def draw_arrow(rng, direction: str):
    """One arrow image: shaft + head pointing `direction`, random size, thickness, place and colours."""
    import numpy as np
    from PIL import Image, ImageDraw

    size = int(rng.integers(32, 49))
    image = Image.fromarray(_background(rng, size))
    draw = ImageDraw.Draw(image)
    length = rng.uniform(0.5, 0.8) * size
    half_width = rng.uniform(0.05, 0.1) * size
    head = rng.uniform(0.35, 0.5) * length
    cx, cy = size / 2 + rng.uniform(-0.12, 0.12) * size, size / 2 + rng.uniform(-0.12, 0.12) * size
    # pointing right, then turned: (x, y) -> the direction's frame
    points = [(-length / 2, -half_width), (length / 2 - head, -half_width), (length / 2 - head, -2.5 * half_width),
              (length / 2, 0), (length / 2 - head, 2.5 * half_width), (length / 2 - head, half_width),
              (-length / 2, half_width)]
    turn = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}[direction]
    cos, sin = turn
    polygon = [(cx + x * cos - y * sin, cy + x * sin + y * cos) for x, y in points]
    draw.polygon(polygon, fill=_contrasting(rng, np.asarray(image)))
    return image


def draw_photo(rng, shape: str):
    """One photo-like scene: a gradient backdrop, clutter lines, one object of class `shape`."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    size = int(rng.integers(32, 49))
    image = Image.fromarray(_background(rng, size))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):  # clutter
        x0, y0, x1, y1 = rng.uniform(0, size, 4)
        draw.line([(x0, y0), (x1, y1)], fill=tuple(int(c) for c in rng.uniform(0, 255, 3)), width=int(rng.integers(1, 3)))
    r = rng.uniform(0.22, 0.35) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    color = _contrasting(rng, np.asarray(image))
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "disc":
        draw.ellipse(box, fill=color)
    elif shape == "box":
        draw.rectangle([cx - 0.8 * r, cy - 0.8 * r, cx + 0.8 * r, cy + 0.8 * r], fill=color)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=color)
    else:
        draw.ellipse(box, outline=color, width=max(2, int(r / 3)))
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))


def write_folder(root: Path, kind: str, n_train: int, n_val: int, seed: int) -> Path:
    """<root>/<kind>/{train,val}/<class>/*.jpg, balanced classes."""
    import numpy as np

    classes, draw = (ARROWS, draw_arrow) if kind == "arrows" else (SHAPES, draw_photo)
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            name = classes[i % len(classes)]
            folder = root / kind / split / name
            folder.mkdir(parents=True, exist_ok=True)
            draw(rng, name).save(folder / f"{i:05d}.jpg", quality=92)
    return root / kind


def summarise(runs: list[dict]) -> list[dict]:
    """Mean and spread of last/best top-1 over seeds, per (dataset, augment, hflip, recipe)."""
    rows = []
    for key, group in itertools.groupby(sorted(runs, key=_combo), key=_combo):
        group = list(group)
        last, best = [r["last_top1"] for r in group], [r["best_top1"] for r in group]
        rows.append({"dataset": key[0], "augment": key[1], "hflip": key[2], "recipe": key[3], "seeds": len(group),
                     "last_top1": statistics.mean(last), "last_min": min(last), "last_max": max(last),
                     "best_top1": statistics.mean(best), "cpu_s": statistics.mean(r["cpu_s"] for r in group),
                     "default": key[1:] == DEFAULT})
    return rows


def _combo(run: dict) -> tuple:
    return run["dataset"], run["augment"], run["hflip"], run["recipe"]


def tables(results: dict) -> dict[str, str]:
    """`presets`: per combination, mean last-epoch val top-1 over the seeds (min-max) on each dataset. `advice`: per
    dataset, the combination the docs advise (the custom-data default; flips off for arrows) against the best."""
    datasets = [d for d in ("arrows", "photos") if any(r["dataset"] == d for r in results["summary"])]
    head = "| augment | flips | optimiser + schedule | " + " | ".join(f"{d}: top-1 (min-max)" for d in datasets) + " |"
    rows = [head, "|---|---|---|" + "---|" * len(datasets)]
    combos = sorted({(r["augment"], r["hflip"], r["recipe"]) for r in results["summary"]},
                    key=lambda c: (AUGMENTS.index(c[0]), not c[1], list(RECIPES).index(c[2])))
    by_key = {(r["dataset"], r["augment"], r["hflip"], r["recipe"]): r for r in results["summary"]}
    for augment, hflip, recipe in combos:
        cells = []
        for d in datasets:
            r = by_key.get((d, augment, hflip, recipe))
            cells.append(f"{r['last_top1']:.3f} ({r['last_min']:.3f}-{r['last_max']:.3f})" if r else "-")
        mark = " (custom-data default)" if (augment, hflip, recipe) == DEFAULT else ""
        recipe_name = " ".join(RECIPES[recipe]) + mark
        rows.append(f"| {augment} | {'on' if hflip else 'off'} | {recipe_name} | " + " | ".join(cells) + " |")
    advice = ["| data | advised (docs) | its top-1 | best combination | best top-1 | advised - best (points) |",
              "|---|---|---|---|---|---|"]
    for d in datasets:
        rows_d = [r for r in results["summary"] if r["dataset"] == d]
        best = max(rows_d, key=lambda r: r["last_top1"])
        advised = by_key.get((d, *ADVICE[d]))
        if advised is None:
            continue
        name = lambda r: f"augment={r['augment']}, flips {'on' if r['hflip'] else 'off'}, {' '.join(RECIPES[r['recipe']])}"  # noqa: E731
        advice.append(f"| {d} | {name(advised)} | {advised['last_top1']:.3f} | {name(best)} | {best['last_top1']:.3f} | "
                      f"{100 * (advised['last_top1'] - best['last_top1']):+.1f} |")
    return {"presets": "\n".join(rows), "advice": "\n".join(advice)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--alpha", type=float, default=0.25)
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--n-val", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", choices=("arrows", "photos"), default=["arrows", "photos"])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="data and run folders (default: a temporary one)")
    args, extra = parser.parse_known_args()

    import torch

    torch.set_num_threads(args.threads)
    out = args.out or Path(tempfile.mkdtemp(prefix="finetune_presets_"))
    roots = {d: write_folder(out / "data", d, args.n_train, args.n_val, seed=100 + i) for i, d in enumerate(args.datasets)}
    settings = {**{k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "extra_overrides": extra}
    runs: list[dict] = []
    start = time.perf_counter()
    for seed, dataset, augment, hflip, recipe in itertools.product(args.seeds, args.datasets, AUGMENTS, FLIPS, RECIPES):
        overrides = ["task=classification", "data=folder", f"data.root={roots[dataset]}", f"augment={augment}",
                     f"data.hflip={str(hflip).lower()}", *RECIPES[recipe], f"backbone.alpha={args.alpha}",
                     f"data.resolution={args.resolution}", f"trainer.max_epochs={args.epochs}",
                     f"data.batch_size={args.batch_size}", "data.num_workers=0", "trainer.precision=32-true",
                     f"seed={seed}", f"paths.log_dir={out / 'logs'}", "callbacks.lr_monitor=null", *extra]
        name = f"{dataset}/{augment}/flips_{'on' if hflip else 'off'}/{recipe}/seed{seed}"
        result, wall = run_toolkit(QUIET + overrides, out / "runs" / name.replace("/", "_"), record=["val/top1"])
        top1 = [r["val/top1"] for r in result["epochs"]]
        runs.append({"dataset": dataset, "seed": seed, "augment": augment, "hflip": hflip, "recipe": recipe,
                     "last_top1": top1[-1], "best_top1": max(top1), "top1_per_epoch": top1, "wall_s": wall,
                     "cpu_s": result["cpu_s"], "overrides": overrides})
        print(f"{name}: last top-1 {top1[-1]:.3f}, best {max(top1):.3f} ({wall:.0f} s wall, {result['cpu_s']:.0f} s CPU;"
              f" {time.perf_counter() - start:.0f} s so far)", flush=True)
        # the partial file after every run: a cut-short benchmark still leaves what it measured
        results = {"settings": settings, "runs": runs, "summary": summarise(runs), "complete": False}
        write_results("finetune_presets", results)
    results["complete"] = True
    write_results("finetune_presets", results)
    rendered = tables(results)
    print("\n" + rendered["presets"] + "\n\n" + rendered["advice"])


if __name__ == "__main__":
    main()
