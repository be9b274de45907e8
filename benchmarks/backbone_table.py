"""Print the backbone table of docs/backbones.md: params, mult-adds (at 224, 1000 classes) and taps of every built-in."""

from __future__ import annotations

import argparse

import torch

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
                "backbone": name, "alpha": alpha, "params_m": count.params / 1e6, "weights_m": count.weights / 1e6,
                "mult_adds_m": count.mult_adds / 1e6,
                "backbone_params_m": sum(p.numel() for p in backbone.parameters()) / 1e6,
                "last": f"{backbone.feature_info[-1].name} ({backbone.num_features})",
                "weights": ", ".join(sources) or "-",
            })
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--alphas", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.25])
    parser.add_argument("--resolution", type=int, default=224)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"| backbone | alpha | params (M) | conv/FC weights (M) | mult-adds at {args.resolution} (M) | "
          "backbone params (M) | deepest tap (channels) | pretrained |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows(args.alphas, args.resolution):
        print(f"| {r['backbone']} | {r['alpha']} | {r['params_m']:.2f} | {r['weights_m']:.2f} | {r['mult_adds_m']:.0f} | "
              f"{r['backbone_params_m']:.2f} | {r['last']} | {r['weights']} |")


if __name__ == "__main__":
    main()
