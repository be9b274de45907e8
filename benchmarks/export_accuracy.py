"""What export costs in accuracy: fp32 against ONNX Runtime and int8 on a whole validation split, on the CPU.

    python benchmarks/export_accuracy.py                                   # trains the demo classifier first
    python benchmarks/export_accuracy.py --ckpt best.ckpt data=imagenet paths.data_dir=/data   # your checkpoint

Without `--ckpt` it first trains what `make demo` trains (MobileNet V1 α 1.0 on the generated shapes at 64 px,
8 epochs). Then `mode=export` writes the ONNX and int8 files exactly as users get them (int8 calibrated on
`export.calibration_batches` validation batches), and every validation image runs through fp32, ONNX Runtime
and int8. The table gives top-1 against the labels, top-1 agreement with fp32, file size and the latency of
one image on one thread (the phone-like setting). Extra arguments are Hydra overrides for both steps.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _runner import QUIET, compose_config, run_toolkit  # benchmarks/ is on sys.path when run as a script


def latency_ms(model, image: torch.Tensor, repeats: int = 30) -> float:
    """Median milliseconds of one image through `model` (a callable), after a few warm-up runs."""
    for _ in range(3):
        model(image)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(image)
        times.append(time.perf_counter() - start)
    return 1000 * sorted(times)[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=None, help="a classification checkpoint (default: train the demo model)")
    parser.add_argument("--out", default=None, help="folder for runs and exports (default: a temp dir)")
    args, overrides = parser.parse_known_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="export_accuracy_"))

    import onnxruntime

    from toolkit.modes.common import build_datamodule, load_task
    from toolkit.modes.export import load_torchscript

    ckpt = args.ckpt
    if ckpt is None:
        trained, wall = run_toolkit(QUIET + overrides, out / "train")
        ckpt = trained["best_checkpoint"]
        print(f"trained the demo classifier in {wall:.0f} s: val/top1 {trained['metrics']['val/top1']:.4f}")
    exported, _ = run_toolkit(QUIET + ["mode=export", f"ckpt_path={ckpt}", *overrides], out / "export")
    report = exported["export"]

    cfg = compose_config(QUIET + ["mode=eval", f"ckpt_path={ckpt}", *overrides], out / "eval")
    task = load_task(cfg).eval()
    datamodule = build_datamodule(cfg, task)
    datamodule.prepare_data()
    datamodule.setup("validate")

    torch.set_num_threads(1)
    int8 = load_torchscript(Path(report["int8"]["file"]))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(report["onnx"]["file"], options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    models = {
        "fp32 (PyTorch)": task.model,
        "ONNX Runtime": lambda x: torch.from_numpy(session.run(None, {input_name: x.numpy()})[0]),
        "int8 (TorchScript)": int8,
    }
    sizes = {"fp32 (PyTorch)": report["fp32"]["size_mb"], "ONNX Runtime": report["onnx"]["size_mb"],
             "int8 (TorchScript)": report["int8"]["size_mb"]}

    predictions: dict[str, list[torch.Tensor]] = {name: [] for name in models}
    labels = []
    with torch.inference_mode():
        for batch in datamodule.val_dataloader():
            labels.append(batch["label"])
            for name, model in models.items():
                predictions[name].append(model(batch["image"]).argmax(1))
        image = batch["image"][:1]
        speed = {name: latency_ms(model, image) for name, model in models.items()}
    labels_all = torch.cat(labels)
    reference = torch.cat(predictions["fp32 (PyTorch)"])

    resolution = int(cfg.data.resolution)
    backbone = task.hparams.backbone
    print(f"\n{backbone['name']} alpha {backbone.get('alpha', 1.0)} at {resolution}x{resolution}, {len(labels_all)} validation images; int8: "
          f"{report['int8']['backend']}, calibrated on {report['calibration_images']} images ({report['calibration']})")
    print("| format | size MB | top-1 | top-1 agreement with fp32 | ms / image (1 thread) |\n|---|---|---|---|---|")
    for name in models:
        predicted = torch.cat(predictions[name])
        top1 = (predicted == labels_all).float().mean().item()
        agree = (predicted == reference).float().mean().item()
        print(f"| {name} | {sizes[name]:.2f} | {100 * top1:.2f} % | {100 * agree:.2f} % | {speed[name]:.2f} |")


if __name__ == "__main__":
    main()
