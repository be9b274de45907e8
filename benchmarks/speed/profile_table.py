"""The paper's 16-model grid (alpha x resolution) as the profiler measures it: params, mult-adds, latency.

    python -m benchmarks.speed.profile_table [--device cpu] [--batch-size 8] [--budget-s 6] [--threads N] [--no-latency]

Also measures the baselines (Conv and Shallow MobileNet, Tables 4-5), the other built-in backbones at width
1.0 and 224 (1000-class ImageNet classifiers, as in the paper), and the two Table 13 detectors as
`mode=profile` builds them. Writes benchmarks/results/profile_table.json; docs/profiling.md quotes its tables.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from benchmarks.tools.results import write_results
from benchmarks.tools.runner import run_toolkit
from toolkit.backbones import create_backbone, list_backbones
from toolkit.heads import ImageClassifier
from toolkit.profiling import profile_model

ALPHAS = (1.0, 0.75, 0.5, 0.25)
RESOLUTIONS = (224, 192, 160, 128)
#: the paper's printed figures: (label, backbone, alpha, resolution, M mult-adds, M params)
PAPER = (
    ("1.0 MobileNet-224 (Table 6)", "mobilenet_v1", 1.0, 224, 569, 4.2),
    ("0.75 MobileNet-224", "mobilenet_v1", 0.75, 224, 325, 2.6),
    ("0.5 MobileNet-224", "mobilenet_v1", 0.5, 224, 149, 1.3),
    ("0.25 MobileNet-224", "mobilenet_v1", 0.25, 224, 41, 0.5),
    ("1.0 MobileNet-192 (Table 7)", "mobilenet_v1", 1.0, 192, 418, 4.2),
    ("1.0 MobileNet-160", "mobilenet_v1", 1.0, 160, 290, 4.2),
    ("1.0 MobileNet-128", "mobilenet_v1", 1.0, 128, 186, 4.2),
    ("Conv MobileNet (Table 4)", "mobilenet_v1_conv", 1.0, 224, 4866, 29.3),
    ("Shallow MobileNet (Table 5)", "mobilenet_v1_shallow", 1.0, 224, 307, 2.9),
    ("0.50 MobileNet-160 (Table 9)", "mobilenet_v1", 0.5, 160, 76, 1.32),
)
#: Table 13's detectors: (label, task, resolution, M mult-adds, M params)
DETECTORS = (
    ("SSD 300 MobileNet (Table 13, `task=detection_ssd`)", "detection_ssd", 300, 1200, 6.8),
    ("Faster-RCNN 600 MobileNet (Table 13, `task=detection_frcnn`)", "detection_frcnn", 600, 30500, 6.1),
)
#: README's backbone table: (label, `backbone=` argument, backbone, alpha, the paper's M mult-adds / M params)
README = (
    ("1.0 MobileNet V1 (Table 1)", "mobilenet_v1", "mobilenet_v1", 1.0, "569 / 4.2"),
    ("0.75 MobileNet V1", "mobilenet_v1 backbone.alpha=0.75", "mobilenet_v1", 0.75, "325 / 2.6"),
    ("0.5 MobileNet V1", "mobilenet_v1 backbone.alpha=0.5", "mobilenet_v1", 0.5, "149 / 1.3"),
    ("0.25 MobileNet V1", "mobilenet_v1 backbone.alpha=0.25", "mobilenet_v1", 0.25, "41 / 0.5"),
    ("Conv MobileNet (Table 4)", "mobilenet_v1_conv", "mobilenet_v1_conv", 1.0, "4866 / 29.3"),
    ("Shallow MobileNet (Table 5)", "mobilenet_v1_shallow", "mobilenet_v1_shallow", 1.0, "307 / 2.9"),
    ("MobileNetV2", "mobilenet_v2", "mobilenet_v2", 1.0, "300 / 3.4 (V2 paper)"),
    ("MobileNetV3-Large", "mobilenet_v3_large", "mobilenet_v3_large", 1.0, "–"),
    ("MobileNetV3-Small", "mobilenet_v3_small", "mobilenet_v3_small", 1.0, "–"),
)
#: latency ratios the docs discuss: (label, model A, model B), each model (backbone, alpha, resolution)
RATIOS = (
    ("Conv MobileNet / 1.0 MobileNet-224", ("mobilenet_v1_conv", 1.0, 224), ("mobilenet_v1", 1.0, 224)),
    ("1.0 MobileNet-224 / 0.25 MobileNet-128", ("mobilenet_v1", 1.0, 224), ("mobilenet_v1", 0.25, 128)),
)


def classifier_row(name: str, alpha: float, resolution: int, args) -> dict:
    model = ImageClassifier(create_backbone(name, alpha=alpha), 1000).eval()
    p = profile_model(model, lambda n: torch.randn(n, 3, resolution, resolution), batch_size=args.batch_size,
                      latency=not args.no_latency, device=args.device, budget_s=args.budget_s)
    lat = ((p["latency"] or {}).get("variants") or {}).get("fp32") or {}  # the fp32 eager path
    return {"name": name, "alpha": alpha, "resolution": resolution, "params": p["params"], "weights": p["weights"],
            "mult_adds": p["mult_adds"], "ms_batch_1": (lat.get("batch_1") or {}).get("median_ms"),
            "ms_batch_n": (lat.get("batch_n") or {}).get("median_ms")}


def detector_row(task: str, resolution: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result, _ = run_toolkit(["mode=profile", f"task={task}", f"data.resolution={resolution}", "profile.latency=false",
                                 "debug=cpu"], Path(tmp))
    profile = result["profile"]
    return {"task": task, "resolution": resolution, "params": profile["params"], "mult_adds": profile["mult_adds"]}


def measure(args) -> dict:
    grid = [(a, r) for a in ALPHAS for r in RESOLUTIONS]
    models = [("mobilenet_v1", a, r) for a, r in grid] + [("mobilenet_v1_conv", 1.0, 224), ("mobilenet_v1_shallow", 1.0, 224)]
    models += [(name, 1.0, 224) for name in list_backbones() if not name.startswith("mobilenet_v1")]
    rows = []
    for model in models:
        rows.append(classifier_row(*model, args))
        print(f"{model}: {rows[-1]['mult_adds'] / 1e6:.2f} M mult-adds", flush=True)
    detectors = [detector_row(task, resolution) for _, task, resolution, _, _ in DETECTORS]
    return {"batch_size": args.batch_size, "budget_s": args.budget_s, "device": args.device,
            "threads": torch.get_num_threads(), "classifiers": rows, "detectors": detectors}


def tables(results: dict) -> dict[str, str]:
    """The markdown tables docs/profiling.md quotes, from the results file."""
    by_model = {(r["name"], r["alpha"], r["resolution"]): r for r in results["classifiers"]}
    m = 1e6
    paper = ["| model | paper M mult-adds | profiler M mult-adds | paper M params | profiler M weights | profiler M params (all) |",
             "|---|---|---|---|---|---|"]
    for label, name, alpha, resolution, p_madds, p_params in PAPER:
        r = by_model[(name, alpha, resolution)]
        paper.append(f"| {label} | {p_madds} | {r['mult_adds'] / m:.2f} | {p_params} | {r['weights'] / m:.3f} | "
                     f"{r['params'] / m:.3f} |")
    for (label, _, _, p_madds, p_params), r in zip(DETECTORS, results["detectors"], strict=True):
        paper.append(f"| {label} | {p_madds} | {r['mult_adds'] / m:.2f} | {p_params} | – | {r['params'] / m:.3f} |")

    paper_of = {(name, alpha, res): f"{p_madds} / {p_params}" for _, name, alpha, res, p_madds, p_params in PAPER}
    n = results["batch_size"]
    latency = [f"| model | alpha | res | M mult-adds | M weights (paper's count) | M params (all) | paper M mult-adds / M params "
               f"| ms batch 1 | ms batch {n} |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results["classifiers"]:
        key = (r["name"], r["alpha"], r["resolution"])
        times = "- | -" if r["ms_batch_1"] is None else f"{r['ms_batch_1']:.1f} | {r['ms_batch_n']:.1f}"
        latency.append(f"| {r['name']} | {r['alpha']:.2f} | {r['resolution']} | {r['mult_adds'] / m:.2f} | "
                       f"{r['weights'] / m:.3f} | {r['params'] / m:.3f} | {paper_of.get(key, '')} | {times} |")

    ratios = [f"| ratio | mult-adds | time at batch 1 | time at batch {n} |", "|---|---|---|---|"]
    for label, a, b in RATIOS:
        ra, rb = by_model[a], by_model[b]
        if ra["ms_batch_1"] is None:
            continue
        ratios.append(f"| {label} | {ra['mult_adds'] / rb['mult_adds']:.1f}x | {ra['ms_batch_1'] / rb['ms_batch_1']:.1f}x | "
                      f"{ra['ms_batch_n'] / rb['ms_batch_n']:.1f}x |")

    readme = ["| backbone | `backbone=` | M mult-adds | M weights | M params | paper |", "|---|---|---|---|---|---|"]
    for label, arg, name, alpha, printed in README:
        r = by_model[(name, alpha, 224)]
        readme.append(f"| {label} | `{arg}` | {r['mult_adds'] / m:.2f} | {r['weights'] / m:.3f} | {r['params'] / m:.3f} | {printed} |")
    readme.append("| any timm model | `timm backbone.name=timm/<name>` | | | | |")
    return {"paper_models": "\n".join(paper), "latency": "\n".join(latency), "ratios": "\n".join(ratios),
            "readme": "\n".join(readme)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--budget-s", type=float, default=6.0, help="seconds of timing per batch size (fp32, bf16)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--no-latency", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = measure(args)
    for name, table in tables(results).items():
        print(f"\n{name}:\n{table}")
    write_results("profile_table", results)


if __name__ == "__main__":
    main()
