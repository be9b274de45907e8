"""What export costs in accuracy: each format scored in its own runtime on the whole validation split.

    python -m benchmarks.learning.export_accuracy                                   # trains the shapes classifier first
    python -m benchmarks.learning.export_accuracy --ckpt best.ckpt data=imagenet paths.data_dir=/data   # your checkpoint
    python -m benchmarks.learning.export_accuracy --ckpt ssd.ckpt --name export_accuracy_ssd --no-x86-int8 \
        task=detection_ssd data=shapes ...                                   # a trained SSD (mAP, mAP@0.5)

Without `--ckpt` it first trains a shapes classifier that really learns (MobileNet V1 alpha 0.5 at 64 px,
1200 generated training images, 12 epochs of AdamW with BatchNorm statistics re-estimated before each
validation; extra arguments are Hydra overrides for both steps). Then `mode=export` writes every format
installed here that runs here (`--formats` to choose: onnx, executorch, litert, openvino and their int8 files;
Core ML needs Apple hardware) and scores each one with the task's own metric in the runtime that executes it
(the int8 files calibrated on the training split with the eval transform), each int8 file also against its own
runtime's fp32 file (the `int8` table), and `onnx_int8` is written again with each other ONNX Runtime
calibration method for comparison; and `mode=eval` scores the checkpoint in process with `compile=int8` (x86
PT2E int8 compiled by inductor) against float32. Records all of it in `benchmarks/results/<name>.json`; `tables()` renders
the tables docs/export.md quotes.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.tools.results import write_results
from benchmarks.tools.runner import QUIET, run_toolkit

#: a shapes classifier that learns in a couple of CPU minutes (tests/test_export.py trains a smaller one)
LEARNS = ["backbone.alpha=0.5", "data.resolution=64", "data.image_size=64", "data.n_train=1200", "data.n_val=600",
          "data.batch_size=32", "data.num_workers=0", "seed=0", "task.optimizer._target_=torch.optim.AdamW",
          "~task.optimizer.alpha", "~task.optimizer.momentum", "~task.optimizer.eps", "task.scheduler=null",
          "task.optimizer.lr=0.01"]
TRAIN = ["trainer.max_epochs=12", "+callbacks.precise_bn={_target_: toolkit.precise_bn.PreciseBN, num_batches: 8}"]
METHODS = ("percentile", "minmax", "entropy")  # the first is export.calibration_method's default


def runnable_formats() -> list[str]:
    """Every installed export format that runs on this machine (`export.formats=all` less Core ML)."""
    from toolkit.formats import FORMATS
    from toolkit.formats.selection import expand_formats

    return [name for name in expand_formats("all") if getattr(FORMATS[name], "runs_here", True)]


def decision_agreement(entry: dict) -> float:
    """The share of PyTorch's decisions a file makes too (top-1 classes; detectors' boxes at IoU 0.9 ...)."""
    return next(iter(v for k, v in entry["agreement"].items() if k != "max_abs_diff"))


def tables(results: dict) -> dict[str, str]:
    report = results["report"]
    metric = next(k for k in report["pytorch"] if k.startswith("val/"))
    reference = report["pytorch"][metric]
    rows = ["| format | size MB | " + metric + " | change (points) | agreement with PyTorch | ms / image, batch 1 |",
            "|---|---|---|---|---|---|",
            f"| PyTorch (reference) | - | {reference:.4f} | - | - | {report['pytorch']['latency_ms_batch1']:.2f} |"]
    for name, entry in report["formats"].items():
        agree = decision_agreement(entry)
        rows.append(f"| `{name}` | {entry['size_mb']:.2f} | {entry[metric]:.4f} | {100 * (entry[metric] - reference):+.2f} "
                    f"| {100 * agree:.2f} % | {entry['latency_ms_batch1']:.2f} |")
    methods = ["| `onnx_int8` activation ranges | " + metric + " | change (points) | agreement with PyTorch |",
               "|---|---|---|---|"]
    for method, entry in results["calibration_methods"].items():
        methods.append(f"| {method}{' (default)' if method == METHODS[0] else ''} | {entry[metric]:.4f} | "
                       f"{100 * (entry[metric] - reference):+.2f} | {100 * decision_agreement(entry):.2f} % |")
    out = {"formats": "\n".join(rows), "calibration_methods": "\n".join(methods)}
    metrics = [k for k in report["pytorch"] if k.startswith("val/")]  # detectors: mAP and mAP@0.5
    pairs = [(name, name.removesuffix("_int8")) for name in report["formats"]
             if name.endswith("_int8") and name.removesuffix("_int8") in report["formats"]]
    if pairs:  # each int8 file against its own runtime's fp32 file (the 1-point target)
        header = " | ".join(f"{m} | its fp32 | change (points)" for m in metrics)
        int8 = [f"| int8 format | {header} |", "|---|" + "---|---|---|" * len(metrics)]
        for name, fp32 in pairs:
            cells = " | ".join(f"{report['formats'][name][m]:.4f} | {report['formats'][fp32][m]:.4f} | "
                               f"{100 * (report['formats'][name][m] - report['formats'][fp32][m]):+.2f}" for m in metrics)
            int8.append(f"| `{name}` | {cells} |")
        out["int8"] = "\n".join(int8)
    if results.get("x86_int8"):
        x86 = results["x86_int8"]
        out["x86_int8"] = "\n".join([
            "| in-process path (`mode=eval`) | " + metric + " | change (points) |", "|---|---|---|",
            f"| `compile=false` (float32) | {x86['float'][metric]:.4f} | - |",
            f"| `compile=int8` (x86 PT2E int8, inductor) | {x86['int8'][metric]:.4f} | "
            f"{100 * (x86['int8'][metric] - x86['float'][metric]):+.2f} |"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=None, help="a checkpoint (default: train the shapes classifier)")
    parser.add_argument("--out", default=None, help="folder for runs and exports (default: a temp dir)")
    parser.add_argument("--name", default="export_accuracy", help="results file name")
    parser.add_argument("--threads", type=int, default=1, help="runtime threads while timing (1: the phone-like case)")
    parser.add_argument("--formats", nargs="+", default=None,
                        help="export formats (default: every installed one that runs here)")
    parser.add_argument("--no-x86-int8", action="store_true",
                        help="skip the in-process `mode=eval compile=int8` comparison (classifier-style tasks)")
    args, overrides = parser.parse_known_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="export_accuracy_"))
    base = QUIET + (LEARNS if args.ckpt is None else []) + overrides

    ckpt, trained = args.ckpt, None
    if ckpt is None:
        trained, wall = run_toolkit(base + TRAIN, out / "train")
        ckpt = trained["best_checkpoint"]
        trained = {"wall_s": wall, "cpu_s": trained["cpu_s"], "val/top1": trained["metrics"].get("val/top1")}
        print(f"trained in {wall:.0f} s ({trained['cpu_s']:.0f} CPU-s)")
    export = base + ["mode=export", f"ckpt_path={ckpt}", f"export.threads={args.threads}"]
    formats = args.formats or runnable_formats()
    exported, wall = run_toolkit(export + [f"export.formats=[{','.join(formats)}]"], out / "export")
    report = exported["export"]
    methods = {METHODS[0]: report["formats"]["onnx_int8"]}
    for method in METHODS[1:]:
        other, _ = run_toolkit(export + ["export.formats=[onnx_int8]", f"export.calibration_method={method}"],
                               out / f"export_{method}")
        methods[method] = other["export"]["formats"]["onnx_int8"]
    evaluate = base + ["mode=eval", f"ckpt_path={ckpt}", "trainer.precision=32-true"]
    x86 = {} if args.no_x86_int8 else {
        name: run_toolkit(evaluate + [f"compile={setting}"], out / f"eval_{name}")[0]["metrics"]
        for name, setting in (("float", "false"), ("int8", "int8"))}
    results = {"report": report, "calibration_methods": methods, "x86_int8": x86, "export_wall_s": wall, "export_cpu_s": exported["cpu_s"],
               "overrides": overrides, "trained_here": trained, "note": "latency on a machine shared with other jobs"}
    for table in tables(results).values():
        print(table)
    write_results(args.name, results)


if __name__ == "__main__":
    main()
