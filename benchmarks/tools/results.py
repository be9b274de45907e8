"""Where every benchmark leaves its figures: `benchmarks/results/<name>.json`, with the commit and the machine.

A benchmark that keeps several runs (seeds, precisions) names them `<benchmark>/<run>` (e.g.
`classification_learning/32_seed1`): a folder per benchmark.

Docs and README quote these files (tests/test_docs_figures.py checks that they agree), so a figure always comes
from a run of a script, on a known commit and machine.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch

    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


#: paths whose uncommitted changes cannot change a figure: the docs, and the results files other runs wrote
NOT_CODE = (":!docs", ":!README.md", ":!benchmarks/results")


def commit() -> str:
    """The checkout's commit, with `+dirty` when it has uncommitted changes to tracked files (other than `NOT_CODE`)."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *NOT_CODE], cwd=root,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def invocation() -> str:
    """This run's command line as it is typed from the repo root: `python -m benchmarks.<group>.<script> ARGS`."""
    import sys

    script = Path(sys.argv[0]).resolve()
    try:
        module = ".".join(script.relative_to(Path(__file__).resolve().parents[2]).with_suffix("").parts)
    except ValueError:  # run from elsewhere (a copy of the script): its path
        return " ".join(["python", *sys.argv])
    return " ".join(["python", "-m", module, *sys.argv[1:]])


def write_results(name: str, results: dict[str, Any], *, command: str | None = None,
                  results_dir: Path = RESULTS_DIR) -> Path:
    """Write `results` as `<results_dir>/<name>.json` (atomically; `name` may hold a folder: `<benchmark>/<run>`),
    stamped with commit, machine, date and command (`invocation()` unless given).

    The commit is the checkout's when the benchmark started (this module was imported): the code that ran, even if
    the checkout moved on during a long run."""
    from toolkit.io import write_json_atomic

    payload = {
        "benchmark": name,
        "commit": COMMIT_AT_START,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "command": command or invocation(),
        "results": results,
    }
    path = results_dir / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path = write_json_atomic(path, payload)
    print(f"results written to {path}")
    return path


COMMIT_AT_START = commit()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
