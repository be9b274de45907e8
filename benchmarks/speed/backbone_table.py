"""The backbone tables of docs/backbones.md: params, mult-adds (1000-class classifier) and taps of every built-in.

    python -m benchmarks.speed.backbone_table [--alphas 1.0 0.75 0.5 0.25] [--resolution 224]

Writes benchmarks/results/backbone_table.json; docs/backbones.md quotes its tables.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks.tools.results import write_results
from toolkit.backbones import create_backbone, list_backbones
from toolkit.backbones.weights import list_weights
from toolkit.heads import ImageClassifier
from toolkit.profiling import count_model


def rows(alphas: list[float], resolution: int) -> list[dict]:
    out = []
    for name in list_backbones():
        for alpha in alphas:
            backbone = create_backbone(name, alpha=alpha)
            count = count_model(ImageClassifier(backbone, 1000), torch.randn(1, 3, resolution, resolution))
            sources = [s for s, w in list_weights(name)[name].items() if w.alpha == alpha and ":" not in s]
            out.append({
                "backbone": name, "alpha": alpha, "params": count.params, "weights": count.weights,
                "mult_adds": count.mult_adds, "backbone_params": sum(p.numel() for p in backbone.parameters()),
                "last_tap": backbone.feature_info[-1].name, "num_features": backbone.num_features,
                "pretrained": sources,
            })
    return out


def tables(results: dict) -> dict[str, str]:
    """`all`: one row per backbone and width; `widths`: params / mult-adds per width (docs/backbones.md)."""
    m = 1e6
    every = [f"| backbone | alpha | params (M) | conv/FC weights (M) | mult-adds at {results['resolution']} (M) | "
             "backbone params (M) | deepest tap (channels) | pretrained |", "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        every.append(f"| {r['backbone']} | {r['alpha']} | {r['params'] / m:.2f} | {r['weights'] / m:.2f} | "
                     f"{r['mult_adds'] / m:.0f} | {r['backbone_params'] / m:.2f} | {r['last_tap']} ({r['num_features']}) | "
                     f"{', '.join(r['pretrained']) or '-'} |")
    alphas = list(dict.fromkeys(r["alpha"] for r in results["rows"]))
    widths = ["| backbone | " + " | ".join(f"α = {a}" for a in alphas) + " |", "|---" * (len(alphas) + 1) + "|"]
    for name in dict.fromkeys(r["backbone"] for r in results["rows"]):
        cells = {r["alpha"]: f"{r['params'] / m:.2f} / {r['mult_adds'] / m:.0f}" for r in results["rows"] if r["backbone"] == name}
        widths.append(f"| `{name}` | " + " | ".join(cells[a] for a in alphas) + " |")
    return {"all": "\n".join(every), "widths": "\n".join(widths)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    parser.add_argument("--resolution", type=int, default=224)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {"resolution": args.resolution, "rows": rows(args.alphas, args.resolution)}
    for name, table in tables(results).items():
        print(f"\n{name}:\n{table}")
    write_results("backbone_table", results)


if __name__ == "__main__":
    main()
