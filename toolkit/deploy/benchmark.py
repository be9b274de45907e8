"""`python -m toolkit.deploy --benchmark FILES_OR_FOLDERS [--threads N] [--repeats N] [--out latency_table.json]`:
the latency of exported files on this machine, as the table `mode=select select.latency_table=...` reads.

Torch-free for ONNX files (onnxruntime, numpy), so it runs where the model will: an ARM board, a phone's Python, a
CI runner. `.pte` files need ExecuTorch's runtime. Each file runs at batch 1 on a zero image of the size its
metadata gives, `--warmup` times, then `--repeats` timed runs; the table holds the median and the 90th percentile.
A file written for several input sizes (metadata `resolutions`: mode=select writes one file per width α, timed at
each resolution ρ) gives one row per size.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import ToolkitError

SUFFIXES = (".onnx", ".pte")


def model_files(inputs: list[str]) -> list[Path]:
    """The exported files among `inputs` (files, and folders searched recursively), sorted."""
    found: list[Path] = []
    for name in inputs:
        path = Path(name).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        elif path.is_file() and path.suffix in SUFFIXES:
            found.append(path)
        else:
            raise ToolkitError(f"{path}: not an exported model (.onnx, .pte) or a folder of them")
    if not found:
        raise ToolkitError(f"no .onnx or .pte files in {', '.join(inputs)}; write them with mode=select "
                           "select.export_only=true (or mode=export)")
    return found


def format_name(path: Path, metadata: dict[str, Any]) -> str:
    """The export format a file was written as (`export.formats` names)."""
    base = "onnx" if path.suffix == ".onnx" else "executorch"
    return base + ("_int8" if metadata.get("quantization") else "")


def input_sizes(metadata: dict[str, Any]) -> list[tuple[int, int]]:
    """The input sizes a file is timed at: each of its `resolutions` (smallest first), else its one input size."""
    if metadata.get("resolutions"):
        return [(int(r), int(r)) for r in sorted(metadata["resolutions"])]
    size = metadata.get("input_size")
    if size:
        return [(int(size[0]), int(size[1]))]
    resolution = int(metadata.get("resolution") or 224)
    return [(resolution, resolution)]


def time_file(path: Path, *, threads: int | None, warmup: int, repeats: int) -> list[dict[str, Any]]:
    """One row per input size the file takes: median and 90th-percentile latency at batch 1, up to the final
    outputs (a detector whose file has no NMS: with the NMS that runs after the runtime, as on the device)."""
    from toolkit.deploy.decoders import decoder_for
    from toolkit.deploy.runtime import open_model

    runner, metadata = open_model(path, threads)
    decoder = decoder_for(metadata, str(path))
    rows = []
    for height, width in input_sizes(metadata):
        batch = np.zeros((1, 3, height, width), dtype=np.float32)

        def run():
            return decoder.decode(runner.run(batch), metadata, (height, width))  # noqa: B023 - called in this loop

        for _ in range(warmup):
            run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(1000 * (time.perf_counter() - start))
        rows.append({"file": str(path), "format": format_name(path, metadata), "backbone": metadata.get("backbone"),
                     "alpha": metadata.get("alpha"), "resolution": height if metadata.get("resolutions")
                     else metadata.get("resolution"), "input": [height, width], "size_mb": path.stat().st_size / 1e6,
                     "latency_ms": float(np.median(times)), "latency_ms_p90": float(np.percentile(times, 90)),
                     "repeats": repeats})
    return rows


def this_machine() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "cores": cores, "system": platform.system(), "machine": platform.machine()}


def benchmark(files: list[Path], *, threads: int | None, warmup: int, repeats: int) -> dict[str, Any]:
    rows = [row for path in files for row in time_file(path, threads=threads, warmup=warmup, repeats=repeats)]
    versions = {}
    for package in ("onnxruntime", "executorch"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:  # noqa: BLE001 - not installed: not part of the record
            continue
    return {"machine": this_machine(), "threads": threads, "runtime_versions": versions,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "models": rows}


def main(argv: list[str], *, one_line) -> int:
    """The CLI; `one_line(error)` is the deploy CLI's one-line error message."""
    parser = argparse.ArgumentParser(prog="python -m toolkit.deploy --benchmark", description=__doc__)
    parser.add_argument("inputs", nargs="+", help="exported files (.onnx, .pte) or folders of them")
    parser.add_argument("--out", default="latency_table.json", help="the table written (JSON)")
    parser.add_argument("--threads", type=int, default=None, help="runtime threads (default: the runtime's)")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per file (median and p90 reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    from toolkit.io import write_json_atomic

    try:
        for name, value, low in (("--threads", args.threads, 1), ("--repeats", args.repeats, 1),
                                 ("--warmup", args.warmup, 0)):
            if value is not None and value < low:
                raise ToolkitError(f"{name} {value}: must be at least {low}")
        table = benchmark(model_files(args.inputs), threads=args.threads, warmup=args.warmup, repeats=args.repeats)
        write_json_atomic(args.out, table)
    except (ToolkitError, OSError) as e:
        if args.debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    for row in table["models"]:
        print(f"{row['file']}: {row['format']} alpha {row['alpha']} {row['resolution']} px: "
              f"{row['latency_ms']:.3f} ms (p90 {row['latency_ms_p90']:.3f})")
    print(f"wrote {args.out}")
    return 0

