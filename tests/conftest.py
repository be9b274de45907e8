"""Shared fixtures: compose the real Hydra config (as `python -m toolkit` would) with outputs in tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

import toolkit

# Fast defaults for tests: the debug=cpu preset (conf/debug/cpu.yaml: CPU, no progress bar or model summary,
# CSV logs, data in the main process), in fp32: the numeric tests were written for it, while the default
# trainer.precision=auto would pick bf16 on a CPU with AVX-512-BF16 (tests/test_precision.py covers bf16 and auto).
# Tests add their own overrides after it.
FAST = ["debug=cpu", "trainer.precision=32-true"]


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path, monkeypatch):
    """Caches, logs and generated data go to a per-test folder, never to $HOME; no weights are downloaded (the
    download tests lift TOOLKIT_OFFLINE and serve files from a loopback server)."""
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("TOOLKIT_OFFLINE", "1")
    monkeypatch.setenv("TOOLKIT_LOG_DIR", str(tmp_path / "outputs"))
    monkeypatch.setenv("MPLBACKEND", "Agg")


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for a test module of small forwards (`pytestmark = pytest.mark.usefixtures(...)`):
    on a small shared machine more OpenMP threads spin and crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def make_cfg(tmp_path):
    """`make_cfg(["task=...", ...], fast=True) -> DictConfig` with hydra's runtime set, like a real run."""

    def _make(overrides: list[str] | None = None, fast: bool = True) -> DictConfig:
        return toolkit.compose((FAST if fast else []) + list(overrides or []), output_dir=tmp_path / "run")

    yield _make
    GlobalHydra.instance().clear()


def run_cli(args: list[str], cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m toolkit ARGS` as a user types it, from `cwd`; returns the finished process."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "toolkit", *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout)


REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(REPO))  # the benchmarks are a package run from the repo root (python -m benchmarks.<group>.<x>)
try:
    from benchmarks.tools import requote_docs  # loads benchmark scripts, finds the tables the docs quote
finally:
    sys.path.remove(str(REPO))

#: `benchmarks/<group>/<name>.py` as a module (its `tables()`, helpers), without running its `main`
load_benchmark = requote_docs.load_script


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """The rule for every user-facing entry point (docs/configuration.md): a user's mistake ends with exit code 2 and one line on
    stderr, `error: ...`, naming the thing and the fix (the `fragments`), and no traceback. Returns the line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    assert len(errors) == 1, f"expected one 'error:' line, got:\n{proc.stderr[-3000:]}"
    for fragment in fragments:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    return errors[0]
