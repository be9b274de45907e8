"""`python -m toolkit.deploy MODEL IMAGE_OR_FOLDER... [--out DIR]`: predictions from an exported file, torch-free for ONNX.
`python -m toolkit.deploy --benchmark FILES_OR_FOLDERS [--out latency_table.json]`: their latency here (mode=select).

A problem with the user's files (the model, its metadata, an image, the output folder) ends with one line,
`error: ...`, naming the file and the fix, and exit code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from toolkit.deploy.inputs import collect_inputs
from toolkit.errors import ToolkitError


def collect(inputs: list[str]) -> list[Path]:
    """The image files among `inputs` (files and folders); what is left out is named in one line on stderr."""
    found = collect_inputs(inputs, key="image input")
    if found.not_images or found.unreadable:
        print(f"warning: {found.summary()}", file=sys.stderr)
    return found.images


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--benchmark":  # the latency table of exported files (toolkit.deploy.benchmark)
        from toolkit.deploy.benchmark import main as benchmark_main

        return benchmark_main(argv[1:], one_line=one_line)
    parser = argparse.ArgumentParser(prog="python -m toolkit.deploy", description=__doc__)
    parser.add_argument("model", help="a file written by mode=export (.onnx, or .pte with its .pte.json)")
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--out", default=None, help="folder for predictions.json/.csv and pictures (default: "
                        "./predictions, or predictions-2, -3, ... where an earlier run's files are: none is overwritten)")
    parser.add_argument("--threads", type=int, default=None, help="runtime threads (default: the runtime's)")
    parser.add_argument("--score-thresh", type=float, default=None, help="detectors: keep boxes scoring at least this")
    parser.add_argument("--top-k", type=int, default=None, help="classifiers/geolocation: how many classes/cells per image")
    parser.add_argument("--skip-corrupt", action="store_true",
                        help="leave out images that cannot be decoded (each named, and counted) instead of stopping")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    from toolkit.deploy.predict import predict_files

    try:
        for name, value in (("--threads", args.threads), ("--top-k", args.top_k)):
            if value is not None and value < 1:
                raise ToolkitError(f"{name} {value}: must be at least 1")
        if args.score_thresh is not None and not 0 <= args.score_thresh <= 1:
            raise ToolkitError(f"--score-thresh {args.score_thresh}: must be a score from 0 to 1")
        result = predict_files(args.model, collect(args.images), args.out or fresh_folder("predictions"), args.threads,
                               args.score_thresh,
                               args.top_k, skip_corrupt=args.skip_corrupt)
    except (ToolkitError, OSError) as e:
        if args.debug:
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    for f in result["files"]:
        print(f"wrote {f}")
    return 0


def fresh_folder(name: str) -> Path:
    """`name`, or `name-2`, `name-3`, ... : the first that does not exist or is empty (an earlier run's stay)."""
    for n in range(1, 10_000):
        path = Path(name if n == 1 else f"{name}-{n}")
        if not path.exists() or (path.is_dir() and not any(path.iterdir())):
            return path
    raise ToolkitError(f"{name}: 10000 earlier prediction folders here; pass --out")


def one_line(error: BaseException) -> str:
    """A ToolkitError's message; an OS refusal (the output folder read-only, a full disk) with the path it names."""
    if isinstance(error, OSError) and not isinstance(error, ToolkitError):
        where = f"{error.filename}: " if error.filename else ""
        return (f"{where}{error.strerror or error}; check that the files can be read and that --out names a folder "
                "that can be written, on a disk with free space")
    return " ".join(str(error).split("\n"))


if __name__ == "__main__":
    sys.exit(main())
