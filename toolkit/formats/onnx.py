"""ONNX: `onnx` (fp32, ONNX Runtime) and `onnx_int8` (static post-training quantisation of that file with
`onnxruntime.quantization`: QDQ, per-channel int8 weights, int8 activations calibrated on `export.calibration`
images, ranges by `export.calibration_method`). The metadata lives in the file's `metadata_props`; detectors keep
anchor decoding and NMS inside the graph."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from toolkit.deploy.metadata import encode
from toolkit.detection.export import PREDICTION_LAYERS
from toolkit.errors import ExportError
from toolkit.formats import ExportRequest, register_format
from toolkit.formats.common import quiet_exporter, square_size_dims
from toolkit.formats.int8_target import int8_activations


def write_onnx_metadata(path: Path, metadata: dict[str, Any]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, encode(metadata))
    onnx.save(model, str(path))


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, opset: int, outputs: list[str],
                exporter: str = "dynamo", *, dynamic_size: bool = False,
                size_range: tuple[int, int] | None = None) -> Path:
    """`exporter="dynamo"`: torch.export's ONNX exporter with a dynamic batch axis (tensor-in, tensors-out
    networks). `exporter="torchscript"`: the tracing exporter, for which torchvision registers
    NonMaxSuppression/RoiAlign symbolics (whole detectors: a batch of one image, every output but `count` of
    open length; `dynamic_size`: any height and width, as Faster R-CNN's keep-aspect inputs). `size_range`
    (dynamo): square inputs of any side from its first to its second value."""
    import onnx

    if exporter not in ("dynamo", "torchscript"):
        raise ValueError(f"exporter={exporter!r}: 'dynamo' or 'torchscript'")
    try:
        with quiet_exporter():
            if exporter == "torchscript":
                axes = {name: [0] for name in outputs if name != "count"}
                if dynamic_size:
                    axes["image"] = [2, 3]
                torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=min(opset, 17),
                                  input_names=["image"], output_names=outputs, dynamic_axes=axes)
            else:
                dims = {0: torch.export.Dim("batch"), **square_size_dims(size_range)}
                torch.onnx.export(module, (example,), str(path), input_names=["image"], output_names=outputs,
                                  dynamic_shapes=(dims,), opset_version=opset,
                                  external_data=False, verbose=False)
    except Exception as e:  # the exporter's errors are long; keep the first line
        raise ExportError(f"ONNX export of {type(module).__name__} failed: {str(e).splitlines()[0]}") from e
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


#: export.calibration_method -> the name of ONNX Runtime's calibrator (onnxruntime.quantization.CalibrationMethod)
CALIBRATION_METHODS = {"percentile": "Percentile", "minmax": "MinMax", "entropy": "Entropy"}
#: export.int8_activations -> ONNX Runtime's QuantType of activations (weights are always signed int8)
ACTIVATION_TYPES = {"uint8": "QUInt8", "int8": "QInt8"}
#: the only operators quantised: the network's convolutions and matrix products (see `quantized_nodes`)
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]
#: activations that ONNX Runtime folds into the output range of the quantised layer before them (it removes them;
#: one whose input is float, as box decoding's clamps, stays): without this every ReLU sits between a Quantize and
#: a Dequantize and each layer pays that round trip (3x slower than fp32 on a small SSD)
FOLDED_ACTIVATIONS = ["Relu", "Clip"]


def quantize_onnx(fp32: Path, path: Path, calibration: list[torch.Tensor], method: str = "percentile", *,
                  activations: str = "uint8", per_image: bool = False, exclude: tuple[str, ...] = ()) -> Path:
    """QDQ static quantisation: per-channel symmetric int8 weights, activations (`activations`: "uint8", ONNX
    Runtime's fast U8S8 kernels on x86, or "int8") with ranges from `calibration` by `method` (ONNX Runtime's
    MinMax, Percentile or Entropy calibrator). Only convolutions and matrix products are quantised: box decoding
    and NMS stay in float.

    The calibrator runs one image per call: its histogram collectors stack every call's outputs into one array, so
    batches of unequal size (a split that is not a multiple of the batch) cannot be mixed. `per_image`: also
    collect the ranges one image at a time (ONNX Runtime's strided collection), for graphs whose intermediate
    shapes change from image to image (Faster R-CNN's proposals, inputs of several sizes). The fp32 graph must
    take a batch of one (classifier files have a dynamic batch axis, detector files take one image).
    `exclude`: names of nodes kept in float.
    The quantiser's files go to a temporary folder and `path` is written under a temporary name, renamed when
    complete: a failure leaves nothing behind."""
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from toolkit.io import atomic_path

    images = [{"image": np.ascontiguousarray(x[i : i + 1].numpy())} for x in calibration for i in range(len(x))]
    if not images:
        raise ExportError("onnx_int8: no calibration images")

    class Reader(CalibrationDataReader):
        """One image per call; `set_range` is ONNX Runtime's hook for strided collection."""

        def __init__(self):
            self.set_range(0, len(images))

        def __len__(self):
            return len(images)

        def set_range(self, start_index: int, end_index: int):
            self.items = iter(images[start_index:end_index])

        def get_next(self):
            return next(self.items, None)

    options = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if per_image or len({item["image"].shape for item in images}) > 1:
        options["CalibStridedMinMax"] = 1  # despite its name, every calibrator's collection in steps of 1 image
    with tempfile.TemporaryDirectory(prefix="toolkit_quantize_") as work, atomic_path(path) as partial, quiet_exporter():
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(partial), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=getattr(QuantType, ACTIVATION_TYPES[activations]),
                        weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OPS + FOLDED_ACTIVATIONS,
                        nodes_to_exclude=list(exclude),
                        calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
                        extra_options=options)
    return path


def prediction_layers(fp32: Path, parts: tuple[str, ...] = PREDICTION_LAYERS) -> tuple[str, ...]:
    """Names of a detector graph's final prediction layers (`parts` of their node names) (box offsets and class logits). They stay in float: an
    int8 output rounds every score and box offset to one of 256 levels over the whole range, which reorders
    near-tied detections and shifts boxes, while these layers are a small part of the computation."""
    import onnx

    graph = onnx.load(str(fp32), load_external_data=False).graph
    return tuple(node.name for node in graph.node
                 if node.op_type in QUANTIZED_OPS and any(part in node.name for part in parts))


def quantized_nodes(graph) -> list[str]:
    """Names of the nodes of an ONNX graph (and its subgraphs) that read a DequantizeLinear output: what runs in
    int8. The check that box decoding and NMS stay float."""
    found: list[str] = []
    dequantized = {o for node in graph.node if node.op_type == "DequantizeLinear" for o in node.output}
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") and dequantized & set(node.input):
            found.append(f"{node.op_type}:{node.name}")
        for attribute in node.attribute:
            if attribute.g.node:
                found += quantized_nodes(attribute.g)
    return found


def quantization_note(activations: str, method: str, float_heads: bool) -> str:
    return (f"onnxruntime QDQ static int8: per-channel symmetric int8 weights, {activations} activations "
            f"(ONNX Runtime QuantType {ACTIVATION_TYPES[activations]}), {method} activation ranges; "
            f"quantised ops: {', '.join(QUANTIZED_OPS)} (the {'/'.join(FOLDED_ACTIVATIONS)} after them folded "
            "into their output ranges)" + ("; prediction heads, box decoding and NMS in float" if float_heads else ""))


@dataclass(frozen=True)
class OnnxFormat:
    name: str = "onnx"
    file_name: str = "model.onnx"
    extra: str = "export"
    requires: tuple[str, ...] = ("onnx", "onnxruntime")
    int8: bool = False
    size_range: bool = True

    def write(self, request: ExportRequest, path: Path) -> dict[str, Any]:
        from toolkit.io import atomic_path

        example = request.example
        if request.dynamic_batch and len(example) < 2:
            example = example.repeat(2, 1, 1, 1)  # a batch of 1 would be specialised
        with atomic_path(path) as partial:
            export_onnx(request.module, example, partial, int(request.settings.get("opset", 18)), request.outputs,
                        "torchscript" if request.trace else "dynamo", dynamic_size=request.dynamic_size,
                        size_range=request.size_range)
            write_onnx_metadata(partial, request.metadata)
        return request.metadata


@dataclass(frozen=True)
class OnnxInt8Format(OnnxFormat):
    """The fp32 file (`model.onnx` beside it, written first where this export has not), quantised."""

    name: str = "onnx_int8"
    file_name: str = "model_int8.onnx"
    int8: bool = True

    def write(self, request: ExportRequest, path: Path) -> dict[str, Any]:
        from toolkit.io import atomic_path

        fp32 = path.with_name(OnnxFormat.file_name)
        if not fp32.is_file():
            OnnxFormat().write(request, fp32)
        settings, options = request.settings, request.int8_options
        # activation type: export.int8_activations, else the fast one of export.int8_target's CPU (U8S8 x86, S8S8 ARM)
        method, activations = str(settings.get("calibration_method", "percentile")), int8_activations(settings)
        heads = prediction_layers(fp32, tuple(options["float_layers"])) if options.get("float_layers") else ()
        metadata = {**request.metadata, "quantization": quantization_note(activations, method, bool(heads))}
        with atomic_path(path) as partial:
            quantize_onnx(fp32, partial, request.calibration, method, activations=activations,
                          per_image=bool(options.get("per_image")), exclude=heads)
            write_onnx_metadata(partial, metadata)
        return metadata


register_format(OnnxFormat())
register_format(OnnxInt8Format())
