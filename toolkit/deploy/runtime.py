"""One interface over the runtimes that execute exported files: ONNX Runtime and ExecuTorch's Python runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from toolkit.deploy.metadata import check_outputs, checked, metadata_from_props, read_metadata, where
from toolkit.deploy.onnx_file import MissingRuntimeError, is_onnxruntime_error, onnx_session
from toolkit.errors import DataError, ToolkitError

__all__ = ["ExecuTorchModel", "MissingRuntimeError", "OnnxModel", "open_model"]


class OnnxModel:
    """An .onnx file under ONNX Runtime (CPU); `run(batch)` -> {output name: array}."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.session = onnx_session(self.path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

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
            self.method = Runtime.get().load_program(str(path)).load_method("forward")
        except (RuntimeError, ValueError) as e:  # ExecuTorch's refusal of a damaged or foreign file
            raise DataError(f"{path}: not a readable ExecuTorch program ({str(e).strip()[:200] or type(e).__name__}); "
                            "copy it again, or export it again with `python -m toolkit mode=export ckpt_path=...`") from e
        self.output_names = list(output_names)
        # inputs are memory-planned for the largest batch the program was exported for: run bigger ones in parts
        self.max_batch = int(self.method.metadata.input_tensor_meta(0).sizes()[0])

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        parts = []
        for start in range(0, len(batch), self.max_batch):
            chunk = np.ascontiguousarray(batch[start:start + self.max_batch], dtype=np.float32)
            parts.append([out.detach().numpy() for out in self.method.execute([self._torch.from_numpy(chunk)])])
        if parts and len(parts[0]) != len(self.output_names):
            raise DataError(f"{where(self.path)}: the metadata names {len(self.output_names)} "
                            f"outputs, the program gives {len(parts[0])}; export it again")
        return {name: np.concatenate([p[i] for p in parts]) for i, name in enumerate(self.output_names)}


def open_model(path: str | Path, threads: int | None = None) -> tuple[OnnxModel | ExecuTorchModel, dict[str, Any]]:
    """(runner, metadata) for an exported file, chosen by its suffix; the metadata checked against the file's
    input and outputs where the graph states them (`toolkit.deploy.metadata.check_outputs`)."""
    path = Path(path)
    if path.suffix not in (".onnx", ".pte", ".tflite", ".xml"):
        raise ToolkitError(f"{path}: not an exported model (.onnx, .xml (OpenVINO), or .pte/.tflite with its .json)")
    if not path.is_file():
        raise DataError(f"{path}: no such exported model file")
    if path.suffix == ".pte":
        metadata = read_metadata(path)
        return ExecuTorchModel(path, metadata["outputs"], threads), metadata
    if path.suffix == ".tflite":  # LiteRT (toolkit.deploy.litert_file); metadata beside it as .pte's
        from toolkit.deploy.litert_file import LiteRTModel

        metadata = read_metadata(path)
        return LiteRTModel(path, metadata["outputs"], threads), metadata
    if path.suffix == ".xml":  # OpenVINO IR (toolkit.deploy.openvino_file); metadata in its rt_info
        from toolkit.deploy.openvino_file import OpenVinoModel

        model = OpenVinoModel(path, threads)
        metadata = checked(path, model.metadata())
        check_outputs(metadata, model.output_shapes(), f"{path} (rt_info)")
        check_input(metadata, model.input_shape(), f"{path} (rt_info)")
        return model, metadata
    model = OnnxModel(path, threads)  # one load: the metadata comes from the same session
    metadata = metadata_from_props(path, model.session.get_modelmeta().custom_metadata_map)
    check_outputs(metadata, model.output_shapes(), where(path))
    check_input(metadata, model.input_shape(), where(path))
    return model, metadata


def check_input(metadata: dict[str, Any], shape: list, source: str) -> None:
    """A graph with a fixed input size must get the size the metadata's resize rule makes."""
    from toolkit.data.eval_preprocess import rule_from_metadata

    rule = rule_from_metadata(metadata)
    expected = rule.get("crop") if rule["mode"] == "center_crop" else rule.get("size")
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
        raise DataError(f"{source}: the model takes a {shape} input, not a batch of 3-channel (NCHW) images; "
                        "export it again")
    if expected is not None and all(isinstance(v, int) for v in shape[2:]) and list(shape[2:]) != list(expected):
        raise DataError(f"{source}: the model takes {shape[2]}x{shape[3]} images but its metadata resizes them to "
                        f"{expected[0]}x{expected[1]} (resize, resolution); export it again")
