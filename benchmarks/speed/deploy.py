"""Deployment speed on this CPU, side by side in one run: MobileNet V1 1.0-224 in every export format, timm's
`mobilenetv1_100` exported the same way, the machine's fp32 GEMM limit, and SSD300.

    python -m benchmarks.speed.deploy                  # writes benchmarks/results/deploy.json
    python -m benchmarks.speed.deploy --threads 1 --formats onnx onnx_int8
    python -m benchmarks.speed.deploy --formats onnx onnx_int8 litert litert_int8 openvino openvino_int8

Formats: onnx, onnx_int8, executorch, executorch_int8 and the runtimes' formats of toolkit.formats (litert,
litert_int8: LiteRT's interpreter, one image per call; openvino, openvino_int8: OpenVINO Runtime on the CPU);
Core ML cannot run here and is not timed. Each int8 format's row is also given as a speed-up over its own fp32.
Every file is written by the toolkit's own format writers from the task's inference contract, as `mode=export`
writes it, and timed up to what a user gets from it (`toolkit.deploy`'s decoding): SSD's ONNX files with NMS in
the graph, its other files with NMS in numpy after the runtime (`toolkit.deploy.postprocess`), both timed.

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
from types import SimpleNamespace

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


def export_settings() -> dict:
    """`cfg.export` as `mode=export` runs by default (opset, calibration method, int8 target, score threshold)."""
    from omegaconf import OmegaConf

    from toolkit import compose

    return OmegaConf.to_container(compose(["mode=export"], output_dir=tempfile.mkdtemp(prefix="deploy_cfg_")).export)


def export_all(task, formats: list[str], out: Path, resolution: int) -> dict[str, Path]:
    """Write the task's inference model in each format with the toolkit's own writers, as `mode=export` writes it
    (the task's contract decides module, outputs, one image per call, int8 needs; detectors in each format's form:
    NMS in the ONNX graph, after the runtime elsewhere), calibrated on random images. Formats the model has no
    form in, and files that cannot run here (Core ML), are left out."""
    from toolkit.formats import FORMATS
    from toolkit.modes.export import request_for, write_format

    settings = export_settings()
    contract = task.inference()
    contract.configure(settings)
    generator = torch.Generator().manual_seed(0)
    batch = 1 if contract.one_image else 2
    calibration = [torch.randn(batch, 3, resolution, resolution, generator=generator) for _ in range(4)]
    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for name in formats:
        fmt = FORMATS[name]
        nms_in_graph = getattr(fmt, "graph_nms", True)
        if not getattr(fmt, "runs_here", True) or contract.no_form(name, nms_in_graph=nms_in_graph) is not None:
            continue
        request = request_for(contract, fmt, calibration, settings, resolution=resolution, datamodule=None,
                              postprocess="nms", nms_in_graph=nms_in_graph)
        files[name] = out / fmt.file_name
        write_format(fmt, request, files[name])
    return files


def file_mb(path: Path) -> float:
    """Size of an exported file with an OpenVINO IR's weights (.bin beside the .xml)."""
    weights = path.with_suffix(".bin")
    return (path.stat().st_size + (weights.stat().st_size if path.suffix == ".xml" and weights.is_file() else 0)) / 1e6


def runner_for(path: Path, threads: int):
    """The file opened as a user opens it (by suffix), returning what a user gets: its outputs decoded as
    `toolkit.deploy` decodes them (detectors: boxes, NMS after the runtime where the file has none)."""
    from toolkit.deploy.runtime import open_model
    from toolkit.modes.export import decoded_run

    runner, metadata = open_model(path, threads)
    return SimpleNamespace(run=decoded_run(runner, metadata), metadata=metadata)


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

    from toolkit.modes.export_report import TorchRunner
    from toolkit.tasks.classification import ClassificationTask
    from toolkit.tasks.detection_ssd import SSDTask

    flops = gemm_flops(args.threads)
    limit = flops / (2 * MULT_ADDS_V1_224)
    print(f"fp32 GEMM {flops / 1e9:.1f} GFLOP/s on {args.threads} threads -> limit {limit:.0f} img/s for V1 1.0-224")
    v1 = {"name": "mobilenet_v1", "alpha": 1.0}
    timm_task = ClassificationTask(backbone=v1, num_classes=1000).eval()
    timm_task.model = timm.create_model("mobilenetv1_100", pretrained=False).eval()  # timm's network, the same task
    tasks = {"toolkit mobilenet_v1 1.0-224": ClassificationTask(backbone=v1, num_classes=1000).eval(),
             "timm mobilenetv1_100": timm_task}
    rows = []
    for label, task in tasks.items():
        name = "ours" if label.startswith("toolkit") else "timm"
        with torch.inference_mode():
            rows.append({"model": label, "format": "pytorch (eager)",
                         **measure(TorchRunner(task.model), (3, 224, 224), args.batch, max(3, args.repeats // 4))})
        formats = args.formats if name == "ours" else [f for f in args.formats if f.startswith("onnx")]
        for fmt, path in export_all(task, formats, out / name, 224).items():
            row = {"model": label, "format": fmt, "size_mb": file_mb(path),
                   **measure(runner_for(path, args.threads), (3, 224, 224), args.batch, args.repeats)}
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
        ssd = SSDTask(backbone=v1, num_classes=80).eval()
        for fmt, path in export_all(ssd, args.formats, out / "ssd300", 300).items():
            runner = runner_for(path, args.threads)
            row = {"model": "toolkit SSD300 mobilenet_v1 1.0 (80 classes)", "format": fmt,
                   "nms": "in graph" if runner.metadata["nms"]["in_graph"] else "numpy after the runtime",
                   "size_mb": file_mb(path),
                   **measure(runner, (3, 300, 300), args.batch, args.repeats, single_only=True), "map": None}
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
