"""A quiet console: third-party lines a user cannot act on are filtered at their source, and `verbose=true` (or
the environment variable `TOOLKIT_VERBOSE=1`) brings every one of them back.

What is filtered, and where (docs/configuration.md lists it for users):
- Python warnings, by message (`warnings.filterwarnings`): Lightning's model-summary precision note, its
  "smaller than the logging interval" note, torch's `LeafSpec` deprecation (from Lightning's pytree helper), the
  DataLoader's worker-count advice.
- INFO lines of Lightning's `rank_zero` logger that describe the machine rather than the run ("GPU available",
  "TPU available", "`limit_train_batches=1.0` was configured", "already configured with model summary").
- torch's "No CUDA runtime is found, using CUDA_HOME=..." warning (torch.compile on a machine with CUDA_HOME set
  and no GPU) and its pytree note on torchao's enums ("is an Enum subclass and is now natively supported"), by
  filters on their loggers.
- Native libraries that print to the process's file descriptors (ExecuTorch's cpuinfo lines, TensorFlow/absl's
  oneDNN notes when LiteRT or OpenVINO load it): `native_output_quieted()` around the one noisy call, and
  `TF_CPP_MIN_LOG_LEVEL` for TensorFlow's C++ logging.
Warnings and errors of the toolkit itself are never filtered."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator

#: the environment switch that brings every filtered line back (as `verbose=true` does)
VERBOSE_ENV = "TOOLKIT_VERBOSE"

#: warning messages (regular expressions, matched at the start) that are filtered unless verbose
QUIET_WARNINGS = (
    r"Precision .* is not supported by the model summary",
    r"The number of training batches \(\d+\) is smaller than the logging interval",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",
    r"This DataLoader will create \d+ worker processes",
)
#: starts of Lightning INFO lines that describe the machine rather than the run
#: {logger: parts of its lines} that describe the machine or a library's internals rather than the run
QUIET_LOG_LINES = {
    "torch.utils.cpp_extension": ("No CUDA runtime is found",),  # torch.compile on a machine with CUDA_HOME set
    "torch.utils._pytree": ("is an Enum subclass and is now natively supported",),  # torchao/executorch at import
}
QUIET_LIGHTNING_INFO = ("GPU available:", "TPU available:", "HPU available:", "IPU available:", "`Trainer(limit_",
                        "Trainer already configured with model summary callbacks", "💡 Tip:")


def verbose_requested(cfg=None) -> bool:
    """`verbose=true` in the config, or TOOLKIT_VERBOSE=1 (true/yes) in the environment."""
    if os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes"):
        return True
    return bool(cfg is not None and cfg.get("verbose"))


def _quiet_lightning_record(record: logging.LogRecord) -> bool:
    return not (record.levelno <= logging.INFO and str(record.msg).startswith(QUIET_LIGHTNING_INFO))


def _quiet_log_line(record: logging.LogRecord) -> bool:
    message = str(record.msg)
    return not any(part in message for part in QUIET_LOG_LINES.get(record.name, ()))


#: set by `quiet_console`; `native_output_quieted` reads it
_state = {"verbose": False}


def quiet_console(*, verbose: bool) -> None:
    """Install the filters (idempotent: a sweep calls it once per job); with `verbose` remove them."""
    _state["verbose"] = verbose
    rank_zero = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    rank_zero.removeFilter(_quiet_lightning_record)
    for name in QUIET_LOG_LINES:
        logging.getLogger(name).removeFilter(_quiet_log_line)
    if verbose:
        os.environ[VERBOSE_ENV] = "1"  # worker processes and subprocesses see it too
        warnings.filters[:] = [f for f in warnings.filters if not _is_ours(f)]
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's C++ INFO lines (oneDNN notes); warnings stay
    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    rank_zero.addFilter(_quiet_lightning_record)
    for name in QUIET_LOG_LINES:
        logging.getLogger(name).addFilter(_quiet_log_line)
    logging.getLogger("absl").setLevel(logging.WARNING)


def _is_ours(entry) -> bool:
    pattern = getattr(entry[1], "pattern", None)
    return entry[0] == "ignore" and pattern in QUIET_WARNINGS


@contextlib.contextmanager
def native_output_quieted(*, verbose: bool | None = None) -> Iterator[None]:
    """Around one call into a native library that prints to the process's stdout/stderr (file descriptors 1 and 2,
    which Python's own redirection cannot reach): its output goes to a temporary file, dropped when the call
    succeeds and replayed on stderr when it fails (so nothing that explains an error is lost). Python-level
    prints inside go the same way. `verbose` (default: the run's switch) leaves the output alone."""
    if verbose is None:
        verbose = _state["verbose"] or verbose_requested()
    if verbose:
        yield
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile() as capture:
        try:
            for fd in (1, 2):
                os.dup2(capture.fileno(), fd)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                for fd, copy in saved.items():
                    os.dup2(copy, fd)
        except BaseException:
            capture.seek(0)
            sys.stderr.write(capture.read().decode(errors="replace"))
            raise
        finally:
            for copy in saved.values():
                os.close(copy)


def format_table(header: list[str], rows: list[list]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned (numbers), a rule under the
    header. Values are printed as given (format numbers before)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip()

    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def metrics_table(metrics: dict[str, float]) -> str:
    """The table eval prints: one row per metric, 4 decimals (counts as integers); zero skipped-sample counts
    are left out, and COCO's -1 (no ground truth of that size) reads "n/a" (metrics.json has every number)."""
    rows = []
    for name, value in sorted(metrics.items()):
        if name.endswith("skipped_samples"):
            if not value:
                continue
            rows.append([name, f"{int(value)}"])
        elif value == -1 and name.split("/")[-1].startswith(("map", "mar")):
            rows.append([name, "n/a"])
        else:
            rows.append([name, f"{value:.4f}"])
    return format_table(["metric", "value"], rows)
