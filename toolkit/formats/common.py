"""What the format writers share: exporters kept quiet, and the metadata file beside a non-ONNX file."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

from toolkit.deploy.metadata import sidecar_path


@contextlib.contextmanager
def quiet_exporter():
    """The ONNX exporters print optimisation steps and log INFO lines that drown the report (ONNX Runtime's
    quantiser logs one line per output channel whose bias scale it raises, on the root logger)."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export")]
    loggers.append(logging.getLogger())
    levels = [q.level for q in loggers]
    try:
        for q in loggers:
            q.setLevel(logging.WARNING)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for q, level in zip(loggers, levels, strict=True):
            q.setLevel(level)


def write_sidecar(path: Path, metadata: dict[str, Any]) -> dict[str, Any]:
    """`<file>.json` beside a written file (`toolkit.deploy.metadata.sidecar_path`); a file without its metadata
    is of no use to anyone, so a failure here removes the file too."""
    from toolkit.io import write_json_atomic

    try:
        write_json_atomic(sidecar_path(path), metadata)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return metadata


def square_size_dims(size_range: tuple[int, int] | None) -> dict[int, Any]:
    """torch.export's dynamic dimensions for `ExportRequest.size_range`: height and width (2, 3) from its first to its
    second value ({} for None: the example's size)."""
    if size_range is None:
        return {}
    import torch

    low, high = size_range
    return {2: torch.export.Dim("height", min=low, max=high), 3: torch.export.Dim("width", min=low, max=high)}


@contextlib.contextmanager
def quiet_converter(*logger_names: str):
    """Around a third-party converter that prints progress bars and logs per pass (litert-torch, NNCF, coremltools):
    its loggers at ERROR, its Python-level stdout/stderr and warnings dropped; the export report is the output."""
    loggers = [logging.getLogger(name) for name in logger_names]
    levels = [q.level for q in loggers]
    try:
        for q in loggers:
            q.setLevel(logging.ERROR)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for q, level in zip(loggers, levels, strict=True):
            q.setLevel(level)
