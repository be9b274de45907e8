"""One interface over the runtimes that execute exported files: ONNX Runtime and ExecuTorch's Python runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from toolkit.deploy.metadata import read_metadata
from toolkit.errors import ToolkitError


class MissingRuntimeError(ToolkitError):
    """The runtime a file needs is not installed; the message names the extra to install."""


class OnnxModel:
    """An .onnx file under ONNX Runtime (CPU); `run(batch)` -> {output name: array}."""

    def __init__(self, path: str | Path, threads: int | None = None):
        try:
            import onnxruntime
        except ImportError as e:
            raise MissingRuntimeError("running .onnx files needs onnxruntime: pip install 'mobilenet-toolkit[export]'") from e
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = options.inter_op_num_threads = int(threads)
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return dict(zip(self.output_names, outputs, strict=True))


class ExecuTorchModel:
    """A .pte file under ExecuTorch's Python runtime (the XNNPACK kernels a phone runs). Its bindings exchange
    torch tensors, so this class (only) imports torch; the phone's C++/Java/Swift runtime does not need it."""

    def __init__(self, path: str | Path, output_names: list[str], threads: int | None = None):
        try:
            from executorch.runtime import Runtime
        except ImportError as e:
            raise MissingRuntimeError("running .pte files needs executorch: pip install 'mobilenet-toolkit[mobile]'") from e
        import torch

        self._torch = torch
        if threads:
            torch.set_num_threads(int(threads))  # XNNPACK's thread pool follows the intra-op setting
        self.method = Runtime.get().load_program(str(path)).load_method("forward")
        self.output_names = list(output_names)
        # inputs are memory-planned for the largest batch the program was exported for: run bigger ones in parts
        self.max_batch = int(self.method.metadata.input_tensor_meta(0).sizes()[0])

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        parts = []
        for start in range(0, len(batch), self.max_batch):
            chunk = np.ascontiguousarray(batch[start:start + self.max_batch], dtype=np.float32)
            parts.append([out.detach().numpy() for out in self.method.execute([self._torch.from_numpy(chunk)])])
        return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(self.output_names)}


def open_model(path: str | Path, threads: int | None = None) -> tuple[OnnxModel | ExecuTorchModel, dict[str, Any]]:
    """(runner, metadata) for an exported file, chosen by its suffix."""
    path = Path(path)
    metadata = read_metadata(path)
    if path.suffix == ".onnx":
        return OnnxModel(path, threads), metadata
    if path.suffix == ".pte":
        return ExecuTorchModel(path, metadata["outputs"], threads), metadata
    raise ToolkitError(f"{path}: not an exported model (.onnx or .pte)")
