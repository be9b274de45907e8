"""Deployment speed on this CPU, side by side in one run: MobileNet V1 1.0-224 in every export format, timm's
`mobilenetv1_100` exported the same way, the machine's fp32 GEMM limit, and SSD300.

    python -m benchmarks.speed.deploy                  # writes benchmarks/results/deploy.json
    python -m benchmarks.speed.deploy --threads 1 --formats onnx onnx_int8
    python -m benchmarks.speed.deploy --formats onnx onnx_int8 litert litert_int8 openvino openvino_int8

Formats: onnx, onnx_int8, executorch, executorch_int8 and the runtimes' formats of toolkit.formats (litert,
litert_int8: LiteRT's interpreter, one image per call; openvino, openvino_int8: OpenVINO Runtime on the CPU);
Core ML cannot run here and is not timed. Each int8 format's row is also given as a speed-up over its own fp32.

The GEMM limit: `torch.mm` of two 4096x4096 fp32 matrices measured in the same run gives the machine's
multiply-add rate; MobileNet V1 1.0-224 needs 569 M mult-adds per image (2 x 569 M flops), so
`limit = GEMM flop/s / (2 x 569 M)` images/s is what a perfect fp32 runtime could reach. Weights are random
(timm builds its model from code; speed does not depend on the values); int8 files are calibrated on random
images, so this script says nothing about int8 accuracy (benchmarks/learning/export_accuracy.py does).
When other jobs share the machine, the ratios in one run (to the GEMM limit, to timm, int8 / fp32) are the
figures to read; absolute rates move with the load.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.tools.results import write_results
from toolkit.modes.export_report import latency  # noqa: E402  (the export report's own timer)

MULT_ADDS_V1_224 = 569e6


def gemm_flops(threads: int, size: int = 4096, repeats: int = 5) -> float:
    """Best fp32 flop/s of `torch.mm` on size x size matrices."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def measure(runner, shape: tuple[int, ...], batch: int, repeats: int, single_only: bool = False) -> dict[str, float | None]:
    one = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    result: dict[str, float | None] = {"ms_batch1": 1000 * latency(runner.run, one, repeats)}
    result["img_s_batch1"] = 1000 / result["ms_batch1"]
    if not single_only:
        many = np.repeat(one, batch, axis=0)
        result[f"img_s_batch{batch}"] = batch / latency(runner.run, many, max(3, repeats // 3))
    return result


def export_all(module: torch.nn.Module, name: str, formats: list[str], out: Path, resolution: int, kind: str,
               outputs: list[str]) -> dict[str, Path]:
    """Write `module` in each format with the toolkit's own exporters (what mode=export writes)."""
    from toolkit.formats.executorch import export_executorch
    from toolkit.formats.onnx import export_onnx, quantize_onnx

    generator = torch.Generator().manual_seed(0)
    batch = 1 if kind == "detection" else 2
    calibration = [torch.randn(batch, 3, resolution, resolution, generator=generator) for _ in range(4)]
    files: dict[str, Path] = {}
    if {"onnx", "onnx_int8"} & set(formats):
        files["onnx"] = export_onnx(module, calibration[0], out / f"{name}.onnx", 18, outputs,
                                     "torchscript" if kind == "detection" else "dynamo")
        if "onnx_int8" in formats:
            files["onnx_int8"] = quantize_onnx(files["onnx"], out / f"{name}_int8.onnx", calibration)
    for fmt in ("executorch", "executorch_int8"):
        if fmt in formats:
            int8 = fmt.endswith("int8")
            files[fmt] = export_executorch(module, calibration[0][:1], out / f"{name}{'_int8' if int8 else ''}.pte",
                                           calibration if int8 else None, dynamic_batch=kind != "detection")
    from toolkit.formats import ExportRequest
    from toolkit.formats.selection import registered_formats

    for fmt, writer in registered_formats().items():
        if fmt in formats and getattr(writer, "runs_here", True):
            request = ExportRequest(module=module, example=calibration[0], outputs=outputs, calibration=calibration,
                                    metadata={"outputs": outputs}, dynamic_batch=kind != "detection",
                                    # SSD: backbone and extra layers int8, heads float, as mode=export writes it
                                    int8_options={"quantized_modules": ("ssd.backbone", "ssd.extras")}
                                    if kind == "detection" else {})
            files[fmt] = out / f"{name}_{writer.file_name}"
            writer.write(request, files[fmt])
    return files


def file_mb(path: Path) -> float:
    """Size of an exported file with an OpenVINO IR's weights (.bin beside the .xml)."""
    weights = path.with_suffix(".bin")
    return (path.stat().st_size + (weights.stat().st_size if path.suffix == ".xml" and weights.is_file() else 0)) / 1e6


def runner_for(fmt: str, path: Path, outputs: list[str], threads: int):
    from toolkit.deploy.runtime import ExecuTorchModel, OnnxModel

    if fmt.startswith("litert"):
        from toolkit.deploy.litert_file import LiteRTModel

        return LiteRTModel(path, outputs, threads)
    if fmt.startswith("openvino"):
        from toolkit.deploy.openvino_file import OpenVinoModel

        return OpenVinoModel(path, threads)
    return OnnxModel(path, threads) if fmt.startswith("onnx") else ExecuTorchModel(path, outputs, threads)


def tables(results: dict) -> dict[str, str]:
    """The tables docs/export.md and README quote (tests/test_docs_figures.py checks them against the file)."""
    batch, limit = results["batch"], results["gemm_limit_img_s"]

    def num(value, spec):
        return "-" if value is None else format(value, spec)

    classifier = [f"| model | format | size MB | ms / image @1 | img/s @1 | img/s @{batch} | of GEMM limit @{batch} |",
                  "|---|---|---|---|---|---|---|"]
    for row in results["classifier"]:
        classifier.append(f"| {row['model']} | {row['format']} | {num(row.get('size_mb'), '.2f')} | "
                          f"{row['ms_batch1']:.1f} | {row['img_s_batch1']:.1f} | {num(row[f'img_s_batch{batch}'], '.1f')} | "
                          f"{num(row['fraction_of_gemm_limit'], '.2f')} |")
    ratios = ["| ratio (same run) | value |", "|---|---|",
              f"| fp32 GEMM limit, img/s ({results['gemm_gflops']:.1f} GFLOP/s, 2 x 569 M flops per image) | {limit:.1f} |"]
    ratios += [f"| {name.replace('_', ' ')} | {value:.2f} |" for name, value in results["ratios"].items()]
    ssd = ["| model | format | NMS | size MB | ms / image @1 | img/s @1 |", "|---|---|---|---|---|---|"]
    for row in results["ssd300"]:
        ssd.append(f"| {row['model']} | {row['format']} | {row['nms']} | {row['size_mb']:.2f} | {row['ms_batch1']:.1f} | "
                   f"{row['img_s_batch1']:.1f} |")
    return {"classifier": "\n".join(classifier), "ratios": "\n".join(ratios), "ssd300": "\n".join(ssd)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--formats", nargs="+", default=["onnx", "onnx_int8", "executorch", "executorch_int8"])
    parser.add_argument("--no-ssd", action="store_true", help="skip the SSD300 table")
    parser.add_argument("--out", default=None, help="folder for the exported files (default: a temp dir)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="deploy_bench_"))
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    cpu_start = time.process_time()

    import timm

    from toolkit.heads import build_classifier

    flops = gemm_flops(args.threads)
    limit = flops / (2 * MULT_ADDS_V1_224)
    print(f"fp32 GEMM {flops / 1e9:.1f} GFLOP/s on {args.threads} threads -> limit {limit:.0f} img/s for V1 1.0-224")
    models = {"toolkit mobilenet_v1 1.0-224": build_classifier({"name": "mobilenet_v1", "alpha": 1.0}, 1000).eval(),
              "timm mobilenetv1_100": timm.create_model("mobilenetv1_100", pretrained=False).eval()}
    rows = []
    for label, module in models.items():
        name = "ours" if label.startswith("toolkit") else "timm"
        with torch.inference_mode():
            from toolkit.modes.export_report import TorchRunner

            rows.append({"model": label, "format": "pytorch (eager)",
                         **measure(TorchRunner(module), (3, 224, 224), args.batch, max(3, args.repeats // 4))})
        formats = args.formats if name == "ours" else [f for f in args.formats if f.startswith("onnx")]
        for fmt, path in export_all(module, name, formats, out, 224, "classification", ["logits"]).items():
            row = {"model": label, "format": fmt, "size_mb": file_mb(path),
                   **measure(runner_for(fmt, path, ["logits"], args.threads), (3, 224, 224), args.batch, args.repeats)}
            rows.append(row)
            print(row)
    batch_key = f"img_s_batch{args.batch}"
    for row in rows:
        row["fraction_of_gemm_limit"] = None if row[batch_key] is None else row[batch_key] / limit
    ours = {r["format"]: r for r in rows if r["model"].startswith("toolkit")}
    theirs = {r["format"]: r for r in rows if r["model"].startswith("timm")}
    ratios = {}
    if "onnx" in ours and "onnx" in theirs:
        ratios["ours_over_timm_onnx_batch"] = ours["onnx"][batch_key] / theirs["onnx"][batch_key]
    for fmt in ("onnx_int8", "executorch_int8", "litert_int8", "openvino_int8"):
        if fmt in ours and "onnx" in ours:
            ratios[f"{fmt}_over_onnx_fp32_batch1"] = ours[fmt]["img_s_batch1"] / ours["onnx"]["img_s_batch1"]
        fp32 = fmt.removesuffix("_int8")
        if fmt in ours and fp32 in ours and fp32 != "onnx":  # each int8 file over its own runtime's fp32
            ratios[f"{fmt}_over_{fp32}_fp32_batch1"] = ours[fmt]["img_s_batch1"] / ours[fp32]["img_s_batch1"]
    fp32_rows = [r for r in ours.values() if not r["format"].endswith("int8") and r[batch_key] is not None]
    if fp32_rows:
        ratios["best_fp32_runtime_of_gemm_limit_batch"] = max(r[batch_key] for r in fp32_rows) / limit

    ssd_rows = []
    if not args.no_ssd:
        from toolkit.detection.export import SSDDenseOutputs, WholeDetector
        from toolkit.detection.ssd import build_ssd

        ssd = build_ssd({"name": "mobilenet_v1", "alpha": 1.0}, 80).eval()
        whole = export_all(WholeDetector(ssd).eval(), "ssd300", [f for f in args.formats if f.startswith("onnx")], out,
                           300, "detection", ["boxes", "scores", "labels", "count"])
        dense = export_all(SSDDenseOutputs(ssd).eval(), "ssd300_dense",
                           [f for f in args.formats if not f.startswith("onnx")], out, 300, "detection",
                           ["boxes", "scores"])
        for fmt, path in {**whole, **dense}.items():
            outputs = ["boxes", "scores"] if not fmt.startswith("onnx") else ["boxes", "scores", "labels", "count"]
            row = {"model": "toolkit SSD300 mobilenet_v1 1.0 (80 classes)", "format": fmt,
                   "nms": "in graph" if fmt.startswith("onnx") else "not timed (numpy after the runtime)",
                   "size_mb": file_mb(path),
                   **measure(runner_for(fmt, path, outputs, args.threads), (3, 300, 300), args.batch, args.repeats,
                             single_only=True),
                   "map": None}
            ssd_rows.append(row)
            print(row)

    results = {"threads": args.threads, "batch": args.batch, "gemm_gflops": flops / 1e9, "gemm_limit_img_s": limit,
               "classifier": rows, "ratios": ratios, "ssd300": ssd_rows,
               "cpu_seconds": time.process_time() - cpu_start,
               "note": "random weights (speed only); the machine was shared with other jobs: read the ratios"}
    write_results("deploy", results)
    for table in tables(results).values():
        print(table, end="\n\n")

if __name__ == "__main__":
    main()
