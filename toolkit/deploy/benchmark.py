"""`python -m toolkit.deploy --benchmark FILES_OR_FOLDERS [--threads N] [--repeats N] [--out latency_table.json]`:
the latency of exported files on this machine, as the table `mode=select select.latency_table=...` reads.

Torch-free for ONNX files (onnxruntime, numpy), so it runs where the model will: an ARM board, a phone's Python, a
CI runner. `.pte` files need ExecuTorch's runtime, `.tflite` LiteRT's, `.xml` OpenVINO's. Each file runs at batch 1
on a zero image of the size its metadata gives, `--warmup` times, then `--repeats` timed runs; the table holds the
median and the 90th percentile. A file written for several input sizes (metadata `resolutions`: mode=select writes
one file per width α, timed at each resolution ρ) gives one row per size, smallest first.

Each file is timed in a fresh Python process of its own (one file at a time), which also gives the runtime's peak
memory for that file: `peak_memory_mb`, the process's peak resident memory (Linux: `VmHWM`; elsewhere `getrusage`'s
`ru_maxrss`) minus its
resident memory just before the file was loaded (the runtime's library already imported), so the model's weights,
the runtime's buffers and arenas for loading and running it, not Python's or the library's own code. A row of a
several-size file holds the peak up to and including its size. None where the OS reports no peak (Windows).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.deploy.runtime import RUNTIMES, open_model
from toolkit.errors import ToolkitError


def model_files(inputs: list[str]) -> list[Path]:
    """The exported files among `inputs` (files, and folders searched recursively), sorted."""
    known = tuple(RUNTIMES)
    names = ", ".join(known)
    found: list[Path] = []
    for name in inputs:
        path = Path(name).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix in known and p.is_file())
        elif path.is_file() and path.suffix in known:
            found.append(path)
        else:
            raise ToolkitError(f"{path}: not an exported model ({names}) or a folder of them")
    if not found:
        raise ToolkitError(f"no exported models ({names}) in {', '.join(inputs)}; write them with mode=select "
                           "select.export_only=true (or mode=export)")
    return found


def format_name(path: Path, metadata: dict[str, Any]) -> str:
    """The export format a file was written as (`export.formats` names): the runtime's family, `_int8` when the
    writer recorded a quantisation in the metadata (every int8 format writer does)."""
    base = RUNTIMES[path.suffix].format_family
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


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (None where the OS does not report it). Linux: `VmHWM` of
    /proc/self/status, the high-water mark of this program's memory (getrusage's `ru_maxrss` there carries the
    parent's peak across fork + exec, so a fresh child would report its parent's)."""
    try:
        with open("/proc/self/status") as f:
            line = next((line for line in f if line.startswith("VmHWM:")), None)
        if line is not None:
            return int(line.split()[1]) * 1024 / 1e6  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6  # macOS: bytes; Linux, BSD: KiB


def rss_mb() -> float | None:
    """This process's resident memory now (Linux: /proc; elsewhere its peak so far, an upper bound)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


def time_file(path: Path, *, threads: int | None, warmup: int, repeats: int) -> list[dict[str, Any]]:
    """One row per input size the file takes: median and 90th-percentile latency at batch 1, up to the final
    outputs (a detector whose file has no NMS: with the NMS that runs after the runtime, as on the device), and
    `peak_memory_mb`: this process's peak resident memory minus its resident memory before the file was loaded
    (meaningful in a fresh process: `time_in_child`)."""
    from toolkit.deploy.decoders import decoder_for

    for module in RUNTIMES[path.suffix].libraries:  # the runtime's library belongs to the baseline
        with contextlib.suppress(ImportError):  # missing: open_model says which package to install
            importlib.import_module(module)
    before = rss_mb()
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
        peak = peak_rss_mb()
        rows.append({"file": str(path), "format": format_name(path, metadata), "backbone": metadata.get("backbone"),
                     "alpha": metadata.get("alpha"), "resolution": height if metadata.get("resolutions")
                     else metadata.get("resolution"), "input": [height, width], "size_mb": path.stat().st_size / 1e6,
                     "latency_ms": float(np.median(times)), "latency_ms_p90": float(np.percentile(times, 90)),
                     "peak_memory_mb": None if peak is None or before is None else max(0.0, peak - before),
                     "repeats": repeats})
    return rows


def time_in_child(path: Path, *, threads: int | None, warmup: int, repeats: int) -> list[dict[str, Any]]:
    """`time_file` in a fresh Python process (`python -m toolkit.deploy.benchmark`, this module's child entry):
    its peak memory is this file's alone, and no runtime state of an earlier file (thread pools, arenas, caches)
    touches its timing. The child's rows come back through a JSON file; its error, as one line."""
    with tempfile.TemporaryDirectory(prefix="toolkit-benchmark-") as tmp:
        out = Path(tmp) / "rows.json"
        command = [sys.executable, "-m", "toolkit.deploy.benchmark", str(path), str(out), str(threads or 0),
                   str(warmup), str(repeats)]
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
        if not out.is_file():
            tail = [line for line in done.stderr.splitlines() if line.strip()][-1:]
            raise ToolkitError(f"{path}: the process timing it ended without a result (exit {done.returncode}"
                               f"{': ' + tail[0].strip()[:300] if tail else ''})")
        result = json.loads(out.read_text())
    if "error" in result:
        raise ToolkitError(result["error"])
    return result["rows"]


def _child(argv: list[str]) -> None:
    """The child entry of `time_in_child`: PATH OUT THREADS WARMUP REPEATS (threads 0: the runtime's default)."""
    path, out, threads, warmup, repeats = Path(argv[0]), Path(argv[1]), int(argv[2]), int(argv[3]), int(argv[4])
    try:
        result: dict[str, Any] = {"rows": time_file(path, threads=threads or None, warmup=warmup, repeats=repeats)}
    except (ToolkitError, OSError) as e:
        result = {"error": str(e).splitlines()[0] if str(e) else type(e).__name__}
    partial = out.with_name(out.name + ".partial")  # the parent reads the file only once it is whole
    partial.write_text(json.dumps(result))
    os.replace(partial, out)


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
    rows = [row for path in files for row in time_in_child(path, threads=threads, warmup=warmup, repeats=repeats)]
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
    parser.add_argument("inputs", nargs="+", help="exported files (.onnx, .pte, .tflite, .xml) or folders of them")
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
              f"{row['latency_ms']:.3f} ms (p90 {row['latency_ms_p90']:.3f})"
              + ("" if row.get("peak_memory_mb") is None else f", peak memory {row['peak_memory_mb']:.1f} MB"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # time_in_child's process
    _child(sys.argv[1:])
