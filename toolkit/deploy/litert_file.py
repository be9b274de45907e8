"""A `.tflite` file under LiteRT's interpreter (`ai-edge-litert`, the XNNPACK CPU kernels an Android app runs),
torch-free, behind the runners' interface: `run(batch)` -> {output name: array}.

Files from `mode=export` take one image per call (litert-torch lowers no dynamic batch): a batch runs image by
image. Full-integer files (`litert_int8`) take an int8 input and give int8 outputs: the input is quantised and the
outputs dequantised with the scale and zero point their tensors carry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from toolkit.deploy.metadata import check_input, read_metadata, where
from toolkit.deploy.onnx_file import MissingRuntimeError
from toolkit.errors import DataError

REEXPORT = "copy it again, or export it again with `python -m toolkit mode=export ckpt_path=... export.formats=[litert]`"


def to_tensor(values: np.ndarray, details: dict) -> np.ndarray:
    """Float values as the tensor `details` describes: float32 as they are, int8/uint8 quantised by its scale."""
    dtype = np.dtype(details["dtype"])
    if dtype == np.float32:
        return np.ascontiguousarray(values, dtype=np.float32)
    scale, zero_point = details["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(values / scale) + zero_point, info.min, info.max).astype(dtype)


def from_tensor(values: np.ndarray, details: dict) -> np.ndarray:
    scale, zero_point = details["quantization"]
    if np.dtype(details["dtype"]) == np.float32 or not scale:
        return values.astype(np.float32, copy=False)
    return ((values.astype(np.float32) - zero_point) * scale).astype(np.float32)


class LiteRTModel:
    """A .tflite file under `ai_edge_litert.interpreter.Interpreter` (`threads`: its XNNPACK thread count)."""

    format_family = "litert"
    libraries = ("ai_edge_litert.interpreter",)

    def __init__(self, path: str | Path, output_names: list[str], threads: int | None = None):
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as e:
            raise MissingRuntimeError("running .tflite files needs ai-edge-litert: "
                                      "pip install 'mobilenet-toolkit[litert]'") from e
        self.path = Path(path)
        with open(self.path, "rb") as f:
            header = f.read(8)
        # a TFLite model is a flatbuffer whose file identifier, bytes 4-8, is "TFL3"
        if len(header) < 8 or header[4:8] != b"TFL3":
            raise DataError(f"{self.path}: not a LiteRT/TFLite model (no 'TFL3' file identifier); the file is empty, "
                            f"damaged or another format: {REEXPORT}")
        try:
            self.interpreter = Interpreter(model_path=str(self.path), num_threads=int(threads) if threads else None)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as e:  # the interpreter's refusal of a damaged file
            detail = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
            raise DataError(f"{self.path}: LiteRT cannot load it ({detail[:200]}); {REEXPORT}") from e
        self.input = self.interpreter.get_input_details()[0]
        # the signature names outputs output_0, output_1, ... in the module's order; the tensor list may not be
        signature = self.interpreter.get_signature_runner()
        details = signature.get_output_details()
        ordered = sorted(details, key=lambda name: int(name.rsplit("_", 1)[-1]) if name.rsplit("_", 1)[-1].isdigit() else 0)
        self.outputs = [details[name] for name in ordered]
        if len(self.outputs) != len(output_names):
            raise DataError(f"{self.path}: its metadata names {len(output_names)} outputs, the model gives "
                            f"{len(self.outputs)}; {REEXPORT}")
        self.output_names = list(output_names)
        self.max_batch = int(self.input["shape"][0])

    @classmethod
    def open(cls, path: Path, threads: int | None = None) -> tuple[LiteRTModel, dict[str, Any]]:
        """The model and the metadata beside it (`<file>.tflite.json`, as a .pte's), its input size checked."""
        metadata = read_metadata(path)
        model = cls(path, metadata["outputs"], threads)
        check_input(metadata, model.input_shape(), where(path))
        return model, metadata

    def input_shape(self) -> list:
        return [int(v) for v in self.input["shape"]]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        expected = self.input_shape()
        if list(batch.shape[1:]) != expected[1:]:
            raise DataError(f"{self.path}: the model takes {expected[1:]} images, not {list(batch.shape[1:])}: the file's "
                            f"metadata (resize, input_size) does not match its graph; {REEXPORT}")
        parts = []
        for start in range(0, len(batch), self.max_batch):
            self.interpreter.set_tensor(self.input["index"], to_tensor(batch[start:start + self.max_batch], self.input))
            self.interpreter.invoke()
            parts.append([from_tensor(self.interpreter.get_tensor(o["index"]), o) for o in self.outputs])
        return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(self.output_names)}
