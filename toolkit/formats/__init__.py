"""Export formats: how a task's inference module becomes one file a runtime loads (the torch side of export).

One module per runtime family (`onnx.py`, `executorch.py`, `litert.py`, `openvino.py`, `coreml.py`, ...), each
registering its `ExportFormat` objects with `register_format`. `mode=export`, `mode=select` and the benchmarks
loop over `FORMATS`; nothing outside a format's own module knows how it is written. The task decides *what* is
exported (`ExportRequest`: module, input, outputs, calibration inputs); the format decides *how*. The files are
run torch-free by `toolkit.deploy` (one runtime adapter per file suffix, `toolkit.deploy.runtime`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

__all__ = ["FORMATS", "ExportFormat", "ExportRequest", "register_format"]


@dataclass(frozen=True)
class ExportRequest:
    """Everything a format needs to write one file, decided by the task's inference contract."""

    module: Any  # torch.nn.Module in eval mode: the task's inference module for this format
    example: Any  # torch.Tensor: a batch of preprocessed inputs (NCHW float32)
    outputs: list[str]  # output names, in the module's output order
    calibration: list[Any]  # torch.Tensor batches from the calibration split (int8 formats only)
    metadata: dict[str, Any]  # what the file says about itself (preprocessing, labels, outputs, ...)
    dynamic_batch: bool = True  # the batch dimension stays open
    dynamic_size: bool = False  # the spatial size stays open (detectors resizing by their own rule)
    size_range: tuple[int, int] | None = None  # (smallest, largest) square side the file takes: mode=select times
    # one file per width at each resolution (formats with `size_range = True` honour it; None: the example's size)
    settings: Mapping[str, Any] = field(default_factory=dict)  # cfg.export: opset, calibration_method, int8 options
    int8_options: dict[str, Any] = field(default_factory=dict)  # the task's int8 needs (e.g. layers kept in float)
    trace: bool = False  # data-dependent ops (NMS, RoIAlign): exporters that trace (ONNX's TorchScript-based one)


class ExportFormat(Protocol):
    name: str  # the `export.formats` entry, e.g. "onnx_int8"
    file_name: str  # the file written in the export folder, e.g. "model_int8.onnx"
    extra: str  # the pip extra that installs its exporter and runtime: mobilenet-toolkit[<extra>]
    requires: tuple[str, ...]  # modules it imports (checked before any work, one line naming the extra)
    int8: bool  # quantised: needs calibration inputs

    def write(self, request: ExportRequest, path: Path) -> dict[str, Any]:
        """Write the file at `path` (complete or absent: a temporary name, then rename) with its metadata in the
        file or beside it (`toolkit.deploy.metadata.sidecar_path`); return the metadata as written."""
        ...

    # Optional: `graph_nms: bool` (default True): the runtime has NMS and RoIAlign kernels, so detectors are written
    # whole; False: SSD's NMS runs after the runtime (`toolkit.deploy.decoders`), Faster R-CNN has no form in it.
    # Optional: `open(path, threads) -> (runner, metadata)` for a file `toolkit.deploy.runtime.RUNTIMES` does not
    # open (legacy TorchScript needs torch); verification opens every other file by its suffix, as a user does.
    # Optional: `size_range: bool` (default False): the format honours `ExportRequest.size_range`.
    # Optional: `runs_here: bool` (default True): False for files this machine cannot run (Core ML needs Apple
    # hardware): export writes them and reports them as not run, with no metric or latency.


#: every registered format by name, in registration order (the order `export.formats=all` exports them)
FORMATS: dict[str, ExportFormat] = {}


def register_format(fmt: ExportFormat) -> ExportFormat:
    if fmt.name in FORMATS:
        raise ValueError(f"export format {fmt.name!r} is registered twice")
    FORMATS[fmt.name] = fmt
    return fmt


# the formats register on import, in the order `export.formats=all` exports them
# isort: off
from toolkit.formats import onnx  # noqa: E402, F401
from toolkit.formats import executorch  # noqa: E402, F401
from toolkit.formats import torchscript  # noqa: E402, F401
from toolkit.formats import litert  # noqa: E402, F401
from toolkit.formats import openvino  # noqa: E402, F401
from toolkit.formats import coreml  # noqa: E402, F401
# isort: on
