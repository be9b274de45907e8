"""One interface over the runtimes that execute exported files: ONNX Runtime, ExecuTorch's Python runtime, LiteRT
(`toolkit.deploy.litert_file`) and OpenVINO (`toolkit.deploy.openvino_file`).

A runtime is one adapter class: `open(path, threads)` -> (runner, the file's checked metadata), and the runner's
`run(batch: np.ndarray) -> dict[str, np.ndarray]` (NCHW float32 in, outputs by name out); its `format_family` is
the `export.formats` name its files are written as (without `_int8`), its `libraries` the modules it loads them
with. `RUNTIMES` maps a file
suffix to its adapter; another runtime adds itself with one line (`RUNTIMES[".tflite"] = LiteRTModel`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from toolkit.console import native_output_quieted
from toolkit.deploy.litert_file import LiteRTModel
from toolkit.deploy.metadata import check_input, check_outputs, metadata_from_props, read_metadata, where
from toolkit.deploy.onnx_file import MissingRuntimeError, is_onnxruntime_error, onnx_session
from toolkit.deploy.openvino_file import OpenVinoModel
from toolkit.errors import DataError, ToolkitError

__all__ = ["RUNTIMES", "ExecuTorchModel", "LiteRTModel", "MissingRuntimeError", "OnnxModel", "OpenVinoModel",
           "open_model"]


class OnnxModel:
    """An .onnx file under ONNX Runtime (CPU); `run(batch)` -> {output name: array}."""

    format_family = "onnx"
    libraries = ("onnxruntime",)

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.session = onnx_session(self.path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    @classmethod
    def open(cls, path: Path, threads: int | None = None) -> tuple[OnnxModel, dict[str, Any]]:
        """The model and its metadata from one load (the metadata comes from the same session), checked against
        the graph's input and outputs."""
        model = cls(path, threads)
        metadata = metadata_from_props(path, model.session.get_modelmeta().custom_metadata_map)
        check_outputs(metadata, model.output_shapes(), where(path))
        check_input(metadata, model.input_shape(), where(path))
        return model, metadata

    def input_shape(self) -> list:
        return list(self.session.get_inputs()[0].shape)

    def output_shapes(self) -> dict[str, list]:
        """{output name: shape}; a dimension the graph leaves open is None or a name."""
        return {o.name: list(o.shape or []) for o in self.session.get_outputs()}

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        try:
            outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        except Exception as e:
            if not is_onnxruntime_error(e):
                raise
            raise DataError(f"{self.path}: ONNX Runtime cannot run the model on a {list(batch.shape)} input "
                            f"({str(e).split(' : ', 3)[-1].strip().splitlines()[0][:200]}): the file's metadata "
                            "(resize, input_size) does not match its graph; export it again") from e
        return dict(zip(self.output_names, outputs, strict=True))


class ExecuTorchModel:
    """A .pte file under ExecuTorch's Python runtime (the XNNPACK kernels a phone runs). Its bindings exchange
    torch tensors, so this class (only) imports torch; the phone's C++/Java/Swift runtime does not need it."""

    format_family = "executorch"
    libraries = ("torch", "executorch.runtime")

    def __init__(self, path: str | Path, output_names: list[str], threads: int | None = None):
        try:
            from executorch.runtime import Runtime
        except ImportError as e:
            raise MissingRuntimeError("running .pte files needs executorch: pip install 'mobilenet-toolkit[mobile]'") from e
        import torch

        self.path = Path(path)
        self._torch = torch
        if threads:
            torch.set_num_threads(int(threads))  # XNNPACK's thread pool follows the intra-op setting
        with open(path, "rb") as f:
            header = f.read(8)
        # ExecuTorch's loader aborts the whole process (C++ terminate) on some files that are not programs:
        # a program is a flatbuffer whose file identifier, bytes 4-8, is "ET" and a schema version ("ET12")
        if len(header) < 8 or header[4:6] != b"ET":
            raise DataError(f"{path}: not an ExecuTorch program (no 'ET' file identifier); the file is empty, damaged "
                            "or another format: copy it again, or export it again with `python -m toolkit mode=export "
                            "ckpt_path=...`")
        try:
            with native_output_quieted():  # XNNPACK's cpuinfo lines on stderr (replayed if loading fails)
                self.method = Runtime.get().load_program(str(path)).load_method("forward")
        except (RuntimeError, ValueError) as e:  # ExecuTorch's refusal of a damaged or foreign file
            raise DataError(f"{path}: not a readable ExecuTorch program ({str(e).strip()[:200] or type(e).__name__}); "
                            "copy it again, or export it again with `python -m toolkit mode=export ckpt_path=...`") from e
        self.output_names = list(output_names)
        # inputs are memory-planned for the largest batch the program was exported for: run bigger ones in parts
        self.max_batch = int(self.method.metadata.input_tensor_meta(0).sizes()[0])

    @classmethod
    def open(cls, path: Path, threads: int | None = None) -> tuple[ExecuTorchModel, dict[str, Any]]:
        """The program and the metadata beside it (`<file>.pte.json`)."""
        metadata = read_metadata(path)
        return cls(path, metadata["outputs"], threads), metadata

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        parts = []
        for start in range(0, len(batch), self.max_batch):
            chunk = np.ascontiguousarray(batch[start:start + self.max_batch], dtype=np.float32)
            parts.append([out.detach().numpy() for out in self.method.execute([self._torch.from_numpy(chunk)])])
        if parts and len(parts[0]) != len(self.output_names):
            raise DataError(f"{where(self.path)}: the metadata names {len(self.output_names)} "
                            f"outputs, the program gives {len(parts[0])}; export it again")
        return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(self.output_names)}


#: the runtime adapter of each exported file suffix (a class with `open(path, threads)` -> (runner, metadata))
RUNTIMES: dict[str, Any] = {".onnx": OnnxModel, ".pte": ExecuTorchModel}
RUNTIMES[".tflite"] = LiteRTModel  # LiteRT: metadata in the JSON beside the file, as a .pte's
RUNTIMES[".xml"] = OpenVinoModel  # OpenVINO IR (+ its .bin): metadata in the IR's runtime info


def open_model(path: str | Path, threads: int | None = None) -> tuple[Any, dict[str, Any]]:
    """(runner, metadata) for an exported file, by its suffix's adapter (`RUNTIMES`); the metadata checked against
    the file's input and outputs where the graph states them (`toolkit.deploy.metadata.check_outputs`)."""
    path = Path(path)
    if path.suffix not in RUNTIMES:
        raise ToolkitError(f"{path}: not an exported model (.onnx, .xml (OpenVINO) with its .bin, or .pte/.tflite "
                           "with its .json)")
    if not path.is_file():
        raise DataError(f"{path}: no such exported model file")
    return RUNTIMES[path.suffix].open(path, threads)
