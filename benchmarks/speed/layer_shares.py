"""The paper's Tables 2 and 3 as the profiler counts them: where the mult-adds and parameters of MobileNet are.

    python -m benchmarks.speed.layer_shares

Table 2: shares of mult-adds and of conv/FC weights (the paper's parameter count) by layer type in 1.0
MobileNet-224 (1000-class classifier). Table 3: one 14x14x512 layer with a 3x3 kernel and 512 outputs as a full
convolution, depthwise separable, at alpha 0.75, and at rho 0.714 (10x10). Counts only (no timing): they do not
depend on the machine. Writes benchmarks/results/layer_shares.json; docs/profiling.md quotes its tables.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.tools.results import write_results
from toolkit.backbones import create_backbone
from toolkit.heads import ImageClassifier
from toolkit.profiling import count_model

#: Table 2's rows: (layer type of the profiler's breakdown, the docs' label, the paper's mult-add / parameter share %)
TABLE2 = (
    ("conv_1x1", "Conv 1×1", 94.86, 74.59),
    ("conv_dw", "Conv DW 3×3", 3.06, 1.06),
    ("conv_first", "Conv 3×3 (first layer)", 1.19, 0.02),
    ("fc", "Fully connected", 0.18, 24.33),
)
#: Table 3's rows: (label, channels, feature map side, depthwise separable, the paper's M mult-adds, M params)
TABLE3 = (
    ("full convolution", 512, 14, False, 462, 2.36),
    ("depthwise separable", 512, 14, True, 52.3, 0.27),
    ("α = 0.75", 384, 14, True, 29.6, 0.15),
    ("ρ = 0.714 (10×10)", 384, 10, True, 15.1, 0.15),
)


def single_layer(channels: int, separable: bool) -> nn.Sequential:
    if separable:
        return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
                             nn.Conv2d(channels, channels, 1, bias=False))
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False))


def measure() -> dict:
    count = count_model(ImageClassifier(create_backbone("mobilenet_v1", alpha=1.0), 1000), torch.randn(1, 3, 224, 224))
    layers = []
    for label, channels, side, separable, _, _ in TABLE3:
        c = count_model(single_layer(channels, separable), torch.randn(1, channels, side, side))
        layers.append({"layer": label, "mult_adds": c.mult_adds, "weights": c.weights})
    return {"table2_model": "mobilenet_v1 1.0, 224 px, 1000 classes", "mult_adds": count.mult_adds,
            "weights": count.weights, "breakdown": count.breakdown(), "table3": layers}


def tables(results: dict) -> dict[str, str]:
    """`table2`: share of mult-adds / of parameters by layer type, paper and profiler; `table3`: the single layer."""
    breakdown = results["breakdown"]
    t2 = ["| layer type | paper | profiler |", "|---|---|---|"]
    for key, label, p_madds, p_params in TABLE2:
        t2.append(f"| {label} | {p_madds:.2f}% / {p_params:.2f}% | {breakdown[key]['mult_adds_share']:.2f}% / "
                  f"{breakdown[key]['params_share']:.2f}% |")
    t3 = ["| layer | paper M mult-adds / M params | profiler |", "|---|---|---|"]
    for (label, _, _, _, p_madds, p_params), row in zip(TABLE3, results["table3"], strict=True):
        t3.append(f"| {label} | {p_madds:g} / {p_params:g} | {row['mult_adds'] / 1e6:.2f} / {row['weights'] / 1e6:.3f} |")
    return {"table2": "\n".join(t2), "table3": "\n".join(t3)}


def main() -> None:
    results = measure()
    for name, table in tables(results).items():
        print(f"\n{name}:\n{table}")
    write_results("layer_shares", results)


if __name__ == "__main__":
    main()
