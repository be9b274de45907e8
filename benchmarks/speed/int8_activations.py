"""Which int8 activation type `onnx_int8` should use: fp32 against QDQ int8 with signed (QInt8, S8S8) and unsigned
(QUInt8, U8S8) activations, for MobileNet V1 1.0-224 (1000 classes) and SSD300 (MobileNet V1 1.0, 80 classes, NMS in
the graph), at batch 1 on `--threads` ONNX Runtime threads, quantised as mode=export does (`quantize_onnx`; SSD's
prediction heads in float), and for SSD also with its heads quantised.

    python -m benchmarks.speed.int8_activations        # writes benchmarks/results/int8_activations.json

Speed only: weights are random (BatchNorm statistics estimated on smooth random images), so agreement would say
nothing (a random 1000-class head has near-tied logits); mode=export reports a trained model's metric and agreement
for each file. SSD is timed through box decoding: its random heads give no detection above the score threshold, so
NMS (float, the same in every variant) is not in the figure. Latency: the variants are timed in interleaved rounds (median of all runs), so load
from other jobs falls on all of them alike.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

from benchmarks.tools.results import write_results


def smooth_images(count: int, size: int, seed: int) -> torch.Tensor:
    """Normalised images with structure at several scales (upsampled noise), not pixel noise."""
    generator = torch.Generator().manual_seed(seed)
    parts = [nn.functional.interpolate(torch.randn(count, 3, s, s, generator=generator), size=(size, size),
                                       mode="bilinear", align_corners=False) for s in (4, 16, 64)]
    return sum(parts) / 2


def estimate_batchnorm(model: nn.Module, images: torch.Tensor) -> nn.Module:
    update_bn(images.split(8), model)  # torch's BN re-estimation (what toolkit.precise_bn uses)
    return model.eval()


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def cpu_int8_flags() -> list[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return sorted(f for f in line.split(":", 1)[1].split() if "vnni" in f or "amx" in f)
    return []


def timed(runners: dict, batch: np.ndarray, rounds: int, per_round: int) -> dict[str, float]:
    """Median ms of each runner, in interleaved rounds."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    for run in runners.values():
        for _ in range(3):
            run(batch)
    for _ in range(rounds):
        for name, run in runners.items():
            for _ in range(per_round):
                start = time.perf_counter()
                run(batch)
                times[name].append(time.perf_counter() - start)
    return {name: 1000 * float(np.median(t)) for name, t in times.items()}


def tables(results: dict) -> dict[str, str]:
    """The table a doc may quote (benchmarks/tools/requote_docs.py): latency at batch 1 per model and variant."""
    lines = [f"| model | file | size MB | ms / image @1 ({results['threads']} threads) | speed vs fp32 |",
             "|---|---|---|---|---|"]
    for model, rows in results["models"].items():
        fp32 = next(r["ms_batch1"] for r in rows if r["format"] == "onnx")
        for row in rows:
            lines.append(f"| {model} | {row['format']} | {row['size_mb']:.2f} | {row['ms_batch1']:.1f} | "
                         f"{fp32 / row['ms_batch1']:.2f}x |")
    return {"latency": "\n".join(lines)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--per-round", type=int, default=5)
    parser.add_argument("--calibration-images", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    out = Path(tempfile.mkdtemp(prefix="int8_activations_"))

    from toolkit.deploy.runtime import OnnxModel
    from toolkit.detection.export import WholeDetector
    from toolkit.detection.ssd import build_ssd
    from toolkit.formats.onnx import export_onnx, prediction_layers, quantize_onnx
    from toolkit.heads import build_classifier

    results: dict = {"cpu": cpu_name(), "cpu_int8_flags": cpu_int8_flags(), "threads": args.threads, "models": {}}

    # ---- classifier
    model = build_classifier({"name": "mobilenet_v1", "alpha": 1.0}, 1000).eval()
    estimate_batchnorm(model, smooth_images(64, 224, seed=1))
    calibration = smooth_images(args.calibration_images, 224, seed=2)
    image = smooth_images(1, 224, seed=3).numpy()
    fp32 = export_onnx(model, calibration[:2], out / "v1.onnx", 18, ["logits"], "dynamo")
    files = {"onnx": fp32}
    for act in ("int8", "uint8"):
        files[f"onnx_int8 ({act})"] = quantize_onnx(fp32, out / f"v1_{act}.onnx", [calibration], activations=act)
    runners = {name: OnnxModel(path, args.threads) for name, path in files.items()}
    ms = timed({n: r.run for n, r in runners.items()}, image, args.rounds, args.per_round)
    rows = [{"format": name, "size_mb": path.stat().st_size / 1e6, "ms_batch1": ms[name]} for name, path in files.items()]
    for row in rows:
        print(row)
    results["models"]["mobilenet_v1 1.0-224"] = rows

    # ---- SSD300
    ssd = build_ssd({"name": "mobilenet_v1", "alpha": 1.0}, 80).eval()
    for module in ssd.modules():  # BatchNorm statistics from images, as the fixed-seed detector of the tests
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    ssd.train()
    with torch.no_grad():
        for chunk in smooth_images(16, 300, seed=4).split(4):
            ssd.features(chunk)
        for name, param in ssd.named_parameters():
            if name.startswith("head."):
                param.mul_(0.1)
    ssd.eval()
    ssd.score_thresh = 0.02  # random heads score every class about 1/81: none passes, so NMS is not what is timed
    whole = WholeDetector(ssd).eval()
    calibration = smooth_images(args.calibration_images, 300, seed=5)
    image = smooth_images(1, 300, seed=6).numpy()
    fp32 = export_onnx(whole, calibration[:1], out / "ssd.onnx", 17, ["boxes", "scores", "labels", "count"], "torchscript")
    heads = prediction_layers(fp32)
    files = {"onnx": fp32}
    singles = [calibration[i : i + 1] for i in range(len(calibration))]
    for act in ("int8", "uint8"):  # as mode=export writes them: prediction heads in float
        files[f"onnx_int8 ({act})"] = quantize_onnx(fp32, out / f"ssd_{act}.onnx", singles, activations=act,
                                                    exclude=heads)
    files["onnx_int8 (uint8, heads int8 too)"] = quantize_onnx(fp32, out / "ssd_uint8_heads.onnx", singles,
                                                                activations="uint8")
    runners = {name: OnnxModel(path, args.threads) for name, path in files.items()}
    ms = timed({n: r.run for n, r in runners.items()}, image, args.rounds, args.per_round)
    rows = [{"format": name, "size_mb": path.stat().st_size / 1e6, "ms_batch1": ms[name]} for name, path in files.items()]
    for row in rows:
        print(row)
    results["models"]["ssd300 mobilenet_v1 1.0 (80 classes)"] = rows
    results["note"] = ("random weights with estimated BatchNorm statistics (speed only); latency in interleaved rounds "
                       "on a machine shared with other jobs")
    write_results("int8_activations", results)
    print(tables(results)["latency"])


if __name__ == "__main__":
    main()
