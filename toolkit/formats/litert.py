"""LiteRT (formerly TensorFlow Lite) `.tflite` files through litert-torch: `litert` (fp32) and `litert_int8`
(full-integer: int8 weights and activations, int8 input and output with their scales in the file, calibrated
on `request.calibration` by PT2E with litert-torch's quantizer). Android apps run them with LiteRT's
interpreter (XNNPACK on the CPU); `toolkit.deploy.litert_file` runs them here in `ai-edge-litert`.

litert-torch lowers a `torch.export` program through JAX/StableHLO; a dynamic batch does not lower (its reshape
of `view(batch, C)` needs concrete sizes), so a file takes one image per call, as phone apps run it, and
`toolkit.deploy` runs larger batches image by image. The TFLite metadata schema's writer (`tflite-support`)
does not install beside this stack, so the metadata is the JSON beside the file (`model.tflite.json`), as `.pte`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.deploy.metadata import sidecar_path
from toolkit.formats import ExportRequest, register_format
from toolkit.formats.common import quiet_converter
from toolkit.io import atomic_path, plain_file_mode, write_json_atomic


def single_images(calibration: list[Any]):
    """Every calibration image as a batch of one: the program is exported for one image per call."""
    for images in calibration:
        yield from images.split(1)


def convert_litert(module, example, calibration: list[Any] | None, quantized_modules: tuple[str, ...] = ()):
    """The litert-torch model of `module` at `example`'s shape (one image); int8 by PT2E when `calibration`:
    the whole module, or only the submodules named in `quantized_modules` (a detector's backbone and extra
    layers: its prediction heads and box decoding, whose index arithmetic the quantizer cannot observe, stay float,
    as in `onnx_int8`)."""
    import litert_torch
    import torch

    example = example[:1].contiguous()
    if calibration is None:
        return litert_torch.convert(module, (example,))
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    # per-channel symmetric int8 weights, int8 activations with static ranges: TFLite's full-integer scheme
    class NamedModulesQuantizer(PT2EQuantizer):
        """Annotates the graph prepare_pt2e hands it (rebuilt after export) with module paths it can match."""

        def annotate(self, model):
            dynamo_module_keys(model)
            return super().annotate(model)

    config = get_symmetric_quantization_config(is_per_channel=True)
    quantizer = NamedModulesQuantizer() if quantized_modules else PT2EQuantizer()
    for name in quantized_modules:
        quantizer.set_module_name(name, config)
    if not quantized_modules:
        quantizer.set_global(config)
    prepared = prepare_pt2e(torch.export.export(module, (example,)).module(), quantizer)
    with torch.no_grad():
        for image in single_images(calibration):
            prepared(image.contiguous())
    quantized = convert_pt2e(prepared, fold_quantize=False)
    # the converter reads only the scheme (static QDQ) from its quant_config's global setting
    scheme = QuantConfig(pt2e_quantizer=PT2EQuantizer().set_global(config))
    return litert_torch.convert(quantized, (example,), quant_config=scheme)


def dynamo_module_keys(graph) -> None:
    """Rewrite each node's `nn_module_stack` so litert-torch's module-name filter finds the modules named.

    That filter (litert-torch 0.10) reads a module path from each key by cutting the 10-character prefix
    `L__self___` and turning `_` into `.`, and matches names exactly; torch 2.14 writes keys as `L__self__` + the
    dotted path (9 characters: every name comes out one letter short) and records only the modules whose forward
    ran (a detector calls its backbone's stages, not the backbone), and none for weights. The keys are rewritten in the filter's form,
    with every enclosing path added, so `set_module_name("ssd.backbone", ...)` covers all that runs inside it
    (paths whose names have no underscore, as the ones named here)."""
    for node in graph.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if node.op == "get_attr":  # a weight: the modules that own it (the annotators check every node of a pattern)
            stack = {node.target: (node.target.rpartition(".")[0], "")}
        if not stack:
            continue
        entries = {}
        for path, module_type in stack.values():
            parts = path.split(".") if path else []
            for depth in range(1, len(parts) + 1):
                prefix = ".".join(parts[:depth])
                entries.setdefault("L__self___" + prefix.replace(".", "_"), (prefix, module_type))
        node.meta["nn_module_stack"] = entries or stack


@dataclass(frozen=True)
class LiteRTFormat:
    name: str
    file_name: str
    int8: bool
    extra: str = "litert"
    requires: tuple[str, ...] = ("litert_torch", "ai_edge_litert")
    graph_nms: bool = False  # LiteRT's builtin ops have no NMS or RoIAlign: SSD's NMS runs after the runtime

    def write(self, request: ExportRequest, path: Path) -> dict[str, Any]:
        metadata = dict(request.metadata)
        metadata["batch"] = 1  # one image per call (see the module's docstring)
        if self.int8:
            metadata["quantization"] = ("litert-torch PT2E full-integer int8: per-channel symmetric int8 weights, int8 "
                                        "activations with static ranges; int8 input and outputs (scale and zero point "
                                        "in the file's tensors: quantise the input, dequantise the outputs)"
                                        + ("; quantised modules: " + ", ".join(request.int8_options["quantized_modules"])
                                           if request.int8_options.get("quantized_modules") else ""))
        with quiet_converter("absl", "jax", "torch.export", "root"):
            model = convert_litert(request.module, request.example, request.calibration if self.int8 else None,
                                   tuple(request.int8_options.get("quantized_modules", ())))
            with atomic_path(path) as partial:
                model.export(str(partial))
                os.chmod(partial, plain_file_mode())  # the converter writes a new file
        try:
            write_json_atomic(sidecar_path(path), metadata)
        except BaseException:
            path.unlink(missing_ok=True)  # a file without its metadata is of no use to anyone
            raise
        return metadata


LITERT = register_format(LiteRTFormat(name="litert", file_name="model.tflite", int8=False))
LITERT_INT8 = register_format(LiteRTFormat(name="litert_int8", file_name="model_int8.tflite", int8=True))
