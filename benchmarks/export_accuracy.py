"""What export costs in accuracy: each format scored in its own runtime on the whole validation split.

    python benchmarks/export_accuracy.py                                   # trains the demo classifier first
    python benchmarks/export_accuracy.py --ckpt best.ckpt data=imagenet paths.data_dir=/data   # your checkpoint
    python benchmarks/export_accuracy.py --name export_accuracy_ssd task=detection_ssd data=shapes ...

Without `--ckpt` it first trains what `make demo` trains (MobileNet V1 alpha 1.0 on the generated shapes at
64 px, 8 epochs; extra arguments are Hydra overrides for both steps). Then `mode=export` writes every format
and scores each one with the task's own metric in the runtime that executes it (the int8 files calibrated on
the training split), and this script records that report in `benchmarks/results/<name>.json`.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_results  # noqa: E402
from _runner import QUIET, run_toolkit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", default=None, help="a checkpoint (default: train the demo classifier)")
    parser.add_argument("--out", default=None, help="folder for runs and exports (default: a temp dir)")
    parser.add_argument("--name", default="export_accuracy", help="results file name")
    parser.add_argument("--threads", type=int, default=1, help="runtime threads while timing (1: the phone-like case)")
    args, overrides = parser.parse_known_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="export_accuracy_"))

    ckpt, trained = args.ckpt, None
    if ckpt is None:
        trained, wall = run_toolkit(QUIET + overrides, out / "train")
        ckpt = trained["best_checkpoint"]
        print(f"trained in {wall:.0f} s ({trained['cpu_s']:.0f} CPU-s)")
    formats = ["onnx", "onnx_int8"] + (["executorch", "executorch_int8"] if importlib.util.find_spec("executorch") else [])
    exported, wall = run_toolkit(QUIET + ["mode=export", f"ckpt_path={ckpt}", f"export.formats=[{','.join(formats)}]",
                                          f"export.threads={args.threads}", *overrides], out / "export")
    report = exported["export"]
    write_results(args.name, {"report": report, "export_wall_s": wall, "export_cpu_s": exported["cpu_s"],
                              "overrides": overrides, "trained_here": trained is not None,
                              "note": "latency on a machine shared with other jobs"},
                  command="python benchmarks/export_accuracy.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
