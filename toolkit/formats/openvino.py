"""OpenVINO IR (`model.xml` + `model.bin`): `openvino` (fp32, converted from the `torch.export` program) and
`openvino_int8` (NNCF post-training quantisation calibrated on `request.calibration`: int8 weights and activations,
OpenVINO's CPU plugin runs them with its VNNI/AMX kernels). Intel PCs and edge boxes load them with OpenVINO
Runtime (`toolkit.deploy.openvino_file` here).

The metadata is inside the IR, in its runtime info (`<rt_info><mobilenet_toolkit>`, one entry per key, each value
JSON-encoded as ONNX's `metadata_props`); `Core().read_model(...).get_rt_info()` reads it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.deploy.metadata import encode
from toolkit.formats import ExportRequest, register_format
from toolkit.formats.common import quiet_converter
from toolkit.io import plain_file_mode

#: the rt_info section that holds the toolkit's metadata (toolkit.deploy.openvino_file reads it)
RT_INFO_KEY = "mobilenet_toolkit"


def convert_openvino(request: ExportRequest):
    """The OpenVINO model of the request's module: input `image` (batch open where the request says so, spatial
    size fixed unless `dynamic_size`), outputs named as the request's."""
    import openvino as ov
    import torch

    example = request.example.contiguous()
    shapes = None
    if request.dynamic_batch:
        if len(example) < 2:
            example = example.repeat(2, 1, 1, 1)  # torch.export specialises a dimension of size 1
        shapes = ({0: torch.export.Dim("batch")},)
    program = torch.export.export(request.module, (example,), dynamic_shapes=shapes)
    model = ov.convert_model(program)
    height, width = (-1, -1) if request.dynamic_size else tuple(int(v) for v in example.shape[-2:])
    model.reshape({model.inputs[0]: ov.PartialShape([-1 if request.dynamic_batch else 1, 3, height, width])})
    model.inputs[0].get_tensor().set_names({"image"})
    for output, name in zip(model.outputs, request.outputs, strict=True):
        output.get_tensor().set_names({name})
    return model


def prediction_convolutions(model) -> list[str]:
    """Names of the convolutions nearest each output (walking back from the outputs, not past a convolution):
    a detector's prediction heads. The IR converted from `torch.export` keeps no module names to find them by."""
    found, seen = set(), set()
    stack = [output.get_node() for output in model.outputs]
    while stack:
        node = stack.pop()
        name = node.get_friendly_name()
        if name in seen:
            continue
        seen.add(name)
        if node.get_type_name() == "Convolution":
            found.add(name)
            continue
        stack += [value.get_source_output().get_node() for value in node.inputs()]
    return sorted(found)


def quantize_openvino(model, calibration: list[Any], float_heads: bool = False):
    """NNCF post-training quantisation (its default: symmetric int8 weights per channel and activations, ranges
    from every calibration batch). `float_heads`: the prediction convolutions stay float (a detector's box
    offsets and class scores, as in `onnx_int8`)."""
    import nncf

    batches = [images.contiguous().numpy() for images in calibration]
    ignored = nncf.IgnoredScope(names=prediction_convolutions(model)) if float_heads else None
    return nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches), ignored_scope=ignored)


def save_ir(model, path: Path, compress_to_fp16: bool) -> None:
    """`path` (.xml) and its .bin, both complete or absent: saved into a temporary folder beside them, then moved
    (the .bin first, so an .xml never names weights that are not there)."""
    import openvino as ov

    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        ov.save_model(model, str(work / path.name), compress_to_fp16=compress_to_fp16)
        for written in (work / path.name).with_suffix(".bin"), work / path.name:
            os.chmod(written, plain_file_mode())
            os.replace(written, path.parent / written.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@dataclass(frozen=True)
class OpenVinoFormat:
    name: str
    file_name: str
    int8: bool
    requires: tuple[str, ...]
    extra: str = "openvino"
    graph_nms: bool = False  # detectors as the .pte holds them: SSD's decoded anchors, NMS after the runtime

    def write(self, request: ExportRequest, path: Path) -> dict[str, Any]:
        metadata = dict(request.metadata)
        if self.int8:
            metadata["quantization"] = ("NNCF post-training quantisation (OpenVINO): symmetric per-channel int8 "
                                        "weights, int8 activations with ranges from the calibration images")
        with quiet_converter("nncf", "openvino", "torch.export"):
            model = convert_openvino(request)
            if self.int8:
                # a task that keeps part of its model float (detectors: their prediction heads) says so in
                # int8_options (float_layers, or quantized_modules naming the rest); the IR keeps no module names,
                # so the heads are found by the graph's structure
                options = request.int8_options
                model = quantize_openvino(model, request.calibration,
                                          float_heads=bool(options.get("float_layers") or options.get("quantized_modules")))
        for key, value in encode(metadata).items():
            model.set_rt_info(value, [RT_INFO_KEY, key])
        path.parent.mkdir(parents=True, exist_ok=True)
        save_ir(model, path, compress_to_fp16=False)  # fp32 weights: the file PyTorch's outputs are compared with
        return metadata


OPENVINO = register_format(OpenVinoFormat(name="openvino", file_name="model_openvino.xml", int8=False,
                                                requires=("openvino",)))
OPENVINO_INT8 = register_format(OpenVinoFormat(name="openvino_int8", file_name="model_openvino_int8.xml",
                                                     int8=True, requires=("openvino", "nncf")))
