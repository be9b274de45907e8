"""Core ML `.mlpackage` (an ML program) through coremltools: `coreml`, iOS/macOS apps load it with Core ML
(`MLModel(contentsOf:)`), which picks the Neural Engine, GPU or CPU. Computation in float16 by default
(`export.coreml_precision=fp16`, what the Neural Engine runs; `fp32` for the CPU/GPU at full precision); the
input `image` and the outputs stay float32 arrays. One image per call (iOS apps run one camera frame).

Core ML runs only on Apple hardware: here the file is written and its spec checked, never run (the export
report says "not run (needs Apple hardware)"). The metadata is in the file: the model's user-defined metadata
(`MLModel.modelDescription.metadata[.creatorDefinedKey]`), one entry per key, each value JSON-encoded.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.deploy.metadata import encode
from toolkit.errors import ConfigError
from toolkit.formats import ExportRequest, register_format
from toolkit.formats.common import quiet_converter

PRECISIONS = ("fp16", "fp32")


def precision_of(settings) -> str:
    precision = str(settings.get("coreml_precision", "fp16") or "fp16")
    if precision not in PRECISIONS:
        raise ConfigError("export.coreml_precision", precision, "fp16 (what the Neural Engine runs) or fp32")
    return precision


def convert_coreml(request: ExportRequest, precision: str):
    import coremltools as ct
    import numpy as np
    import torch

    example = request.example[:1].contiguous()
    with quiet_converter("coremltools", "torch.export", "root"):
        program = torch.export.export(request.module, (example,)).run_decompositions({})
        return ct.convert(program, inputs=[ct.TensorType(name="image", shape=tuple(example.shape), dtype=np.float32)],
                          outputs=[ct.TensorType(name=name, dtype=np.float32) for name in request.outputs],
                          convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                          compute_precision=ct.precision.FLOAT16 if precision == "fp16" else ct.precision.FLOAT32)


def save_package(model, path: Path) -> None:
    """The .mlpackage folder complete or absent: saved into a temporary folder beside it, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        model.save(str(work / path.name))
        if path.exists():
            shutil.rmtree(path)
        os.replace(work / path.name, path)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class CoreMLFormat:
    name: str = "coreml"
    file_name: str = "model.mlpackage"
    extra: str = "coreml"
    requires: tuple[str, ...] = ("coremltools",)
    int8: bool = False
    runs_here: bool = False  # Core ML runs on Apple hardware only: written, reported as not run, for this reason
    not_run: str = "needs Apple hardware"
    graph_nms: bool = False  # SSD as decoded anchors, NMS in the app (as the .pte); Faster R-CNN has no form here

    def write(self, request: ExportRequest, path: Path) -> dict[str, Any]:
        precision = precision_of(request.settings)
        metadata = {**request.metadata, "batch": 1, "precision": f"{precision} computation, float32 input and outputs"}
        model = convert_coreml(request, precision)
        model.short_description = f"{metadata.get('task')} model exported by mobilenet-toolkit"
        for key, value in encode(metadata).items():
            model.user_defined_metadata[key] = value
        save_package(model, path)
        return metadata


COREML = register_format(CoreMLFormat())
