"""Print the paper's 16-model grid (alpha x resolution) as the profiler measures it: params, mult-adds, latency.

    python benchmarks/profile_table.py [--device cpu] [--batch-size 8] [--repeats 20] [--threads N] [--no-latency]

Also prints the baselines (Conv and Shallow MobileNet, Tables 4-5) and the other built-in
backbones at width 1.0 and 224. The models are 1000-class ImageNet classifiers, as in the paper.
"""

from __future__ import annotations

import argparse
import platform

import torch

from toolkit.backbones import create_backbone, list_backbones
from toolkit.heads import ImageClassifier
from toolkit.profiling import profile_model

ALPHAS = (1.0, 0.75, 0.5, 0.25)
RESOLUTIONS = (224, 192, 160, 128)
# Table 6/7 (and 9) figures, M mult-adds / M params, where the paper prints them
PAPER = {(1.0, 224): (569, 4.2), (0.75, 224): (325, 2.6), (0.5, 224): (149, 1.3), (0.25, 224): (41, 0.5),
         (1.0, 192): (418, 4.2), (1.0, 160): (290, 4.2), (1.0, 128): (186, 4.2), (0.5, 160): (76, 1.32)}


def row(name: str, alpha: float, resolution: int, args) -> dict:
    model = ImageClassifier(create_backbone(name, alpha=alpha), 1000).eval()
    p = profile_model(model, lambda n: torch.randn(n, 3, resolution, resolution), batch_size=args.batch_size,
                      latency=not args.no_latency, device=args.device, repeats=args.repeats, warmup=args.warmup)
    lat = p["latency"] or {}
    return {"name": name, "alpha": alpha, "resolution": resolution, "params": p["params"] / 1e6,
            "weights": p["weights"] / 1e6, "mult_adds": p["mult_adds"] / 1e6,
            "b1": (lat.get("batch_1") or {}).get("median_ms"), "bn": (lat.get("batch_n") or {}).get("median_ms"),
            "device": lat.get("device")}


def fmt(r: dict, paper: tuple | None) -> str:
    lat = "- | -" if r["b1"] is None else f"{r['b1']:.1f} | {r['bn']:.1f}"
    ref = "" if paper is None else f"{paper[0]} / {paper[1]}"
    return (f"| {r['name']} | {r['alpha']:.2f} | {r['resolution']} | {r['mult_adds']:.2f} | "
            f"{r['weights']:.3f} | {r['params']:.3f} | {ref} | {lat} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--no-latency", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, device {args.device}; latency = median of {args.repeats} runs")
    print(f"| model | alpha | res | M mult-adds | M weights (paper's count) | M params (all) | paper M mult-adds / M params "
          f"| ms batch 1 | ms batch {args.batch_size} |")
    print("|---|---|---|---|---|---|---|---|---|")
    for alpha in ALPHAS:
        for resolution in RESOLUTIONS:
            print(fmt(row("mobilenet_v1", alpha, resolution, args), PAPER.get((alpha, resolution))),
                  flush=True)
    print(fmt(row("mobilenet_v1_conv", 1.0, 224, args), (4866, 29.3)), flush=True)
    print(fmt(row("mobilenet_v1_shallow", 1.0, 224, args), (307, 2.9)), flush=True)
    for name in list_backbones():
        if not name.startswith("mobilenet_v1"):
            print(fmt(row(name, 1.0, 224, args), None), flush=True)


if __name__ == "__main__":
    main()
