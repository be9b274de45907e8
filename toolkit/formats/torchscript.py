"""Legacy TorchScript: `torchscript` / `torchscript_int8` (FX graph-mode quantisation), single-output models only
(torch.jit and FX quantisation are deprecated in torch 2.14); opt-in. Metadata in `<file>.pt.json`. Its runner
needs torch, so it lives here rather than in the torch-free `toolkit.deploy`."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from toolkit.formats import ExportRequest, register_format
from toolkit.formats.common import write_sidecar


def quantize_fx(module: nn.Module, calibration: list[torch.Tensor], backend: str = "qnnpack") -> nn.Module:
    """Legacy int8: FX graph-mode static quantisation (deprecated in torch 2.14; `torchscript_int8` only)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = backend
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(module).eval(), get_default_qconfig_mapping(backend), (calibration[0],))
        with torch.inference_mode():
            for images in calibration:
                prepared(images)
        return convert_fx(prepared)


def save_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated
        torch.jit.save(torch.jit.trace(module, example), str(path))
    return path


class TorchScriptModel:
    """A legacy TorchScript file behind the deploy runners' interface."""

    def __init__(self, path: Path, output_names: list[str], threads: int | None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # TorchScript is code: this opens only the file this export has just written (never a user's file)
            self.module = torch.jit.load(str(path))
        self.output_names = output_names

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(batch)))
        out = out if isinstance(out, tuple) else (out,)
        return {n: o.numpy() for n, o in zip(self.output_names, out, strict=True)}


@dataclass(frozen=True)
class TorchScriptFormat:
    name: str = "torchscript"
    file_name: str = "model_fp32.pt"
    extra: str = ""
    requires: tuple[str, ...] = ()
    int8: bool = False

    def write(self, request: ExportRequest, path: Path) -> dict[str, Any]:
        from toolkit.io import atomic_path

        traced = quantize_fx(request.module, request.calibration) if self.int8 else request.module
        with atomic_path(path) as partial:
            save_torchscript(traced, request.example, partial)
        return write_sidecar(path, dict(request.metadata))

    def open(self, path: Path, threads: int | None = None) -> tuple[TorchScriptModel, dict[str, Any]]:
        """The file this export has just written, with the metadata beside it (not a user's file: code)."""
        from toolkit.deploy.metadata import read_metadata

        metadata = read_metadata(path)
        return TorchScriptModel(path, metadata["outputs"], threads), metadata


register_format(TorchScriptFormat())
register_format(TorchScriptFormat(name="torchscript_int8", file_name="model_int8.pt", int8=True))
