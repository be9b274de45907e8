"""`python -m toolkit.deploy MODEL IMAGE_OR_FOLDER... [--out DIR]`: predictions from an exported file, torch-free for ONNX."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from toolkit.data.images import IMAGE_EXTENSIONS
from toolkit.errors import ToolkitError


def collect(inputs: list[str]) -> list[Path]:
    images: list[Path] = []
    for spec in inputs:
        path = Path(spec).expanduser()
        if path.is_dir():
            images += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            images.append(path)
        else:
            raise ToolkitError(f"{spec}: no such image file or folder")
    if not images:
        raise ToolkitError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(inputs)}")
    return images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit.deploy", description=__doc__)
    parser.add_argument("model", help="a file written by mode=export (.onnx, or .pte with its .pte.json)")
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--out", default="predictions", help="folder for predictions.json/.csv and pictures")
    parser.add_argument("--threads", type=int, default=None, help="runtime threads (default: the runtime's)")
    parser.add_argument("--score-thresh", type=float, default=None, help="detectors: keep boxes scoring at least this")
    parser.add_argument("--top-k", type=int, default=None, help="classifiers/geolocation: how many classes/cells per image")
    args = parser.parse_args(argv)
    from toolkit.deploy.predict import predict_files

    try:
        result = predict_files(args.model, collect(args.images), args.out, args.threads, args.score_thresh, args.top_k)
    except ToolkitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for f in result["files"]:
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
