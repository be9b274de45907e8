"""ExecuTorch: `executorch` / `executorch_int8` `.pte` files (`torch.export` + the XNNPACK delegate; int8 by PT2E
quantisation with the XNNPACK quantizer), metadata in `<file>.pte.json`. SSD's NMS runs after the runtime
(`toolkit.deploy.postprocess`); a task whose model has no ExecuTorch form says so in its inference contract."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from toolkit.formats import ExportRequest, register_format
from toolkit.formats.common import quiet_exporter, square_size_dims, write_sidecar

#: the largest batch a .pte takes in one call (its input is memory-planned for it; toolkit.deploy splits larger ones)
MAX_PTE_BATCH = 32


def export_executorch(module: nn.Module, example: torch.Tensor, path: Path, calibration: list[torch.Tensor] | None,
                      dynamic_batch: bool, size_range: tuple[int, int] | None = None) -> Path:
    """`torch.export` -> (PT2E int8 with the XNNPACK quantizer when `calibration` is given) -> XNNPACK-lowered .pte.
    `size_range`: (smallest, largest) square side the program takes (XNNPACK reshapes at run time; memory is planned
    for the largest)."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    dims: dict[int, Any] = {0: torch.export.Dim("batch", min=1, max=MAX_PTE_BATCH)} if dynamic_batch else {}
    dims.update(square_size_dims(size_range))
    shapes = (dims,) if dims else None
    if dynamic_batch and len(example) < 2:
        example = example.repeat(2, 1, 1, 1)  # torch.export specialises a dimension of size 1
    with quiet_exporter():
        if calibration is not None:
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer,
                get_symmetric_quantization_config,
            )
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            prepared = prepare_pt2e(torch.export.export(module, (example,), dynamic_shapes=shapes).module(), quantizer)
            with torch.no_grad():  # observers keep running ranges: batches of any size, a split of one image
                for images in calibration:
                    for chunk in images.split(MAX_PTE_BATCH if dynamic_batch else 1):  # the exported batch range
                        prepared(chunk)
            module = convert_pt2e(prepared)
        program = torch.export.export(module, (example,), dynamic_shapes=shapes)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    from toolkit.io import write_bytes_atomic

    return write_bytes_atomic(path, lowered.buffer)


@dataclass(frozen=True)
class ExecuTorchFormat:
    name: str = "executorch"
    file_name: str = "model.pte"
    extra: str = "mobile"
    requires: tuple[str, ...] = ("executorch",)
    int8: bool = False
    graph_nms: bool = False  # XNNPACK has no NMS or RoIAlign kernel: SSD's NMS runs after the runtime
    size_range: bool = True

    def write(self, request: ExportRequest, path: Path) -> dict[str, Any]:
        metadata = dict(request.metadata)
        export_executorch(request.module, request.example[:1], path, request.calibration if self.int8 else None,
                          dynamic_batch=request.dynamic_batch, size_range=request.size_range)
        if self.int8:
            metadata["quantization"] = "PT2E XNNPACKQuantizer int8, per-channel weights"
        return write_sidecar(path, metadata)


register_format(ExecuTorchFormat())
register_format(ExecuTorchFormat(name="executorch_int8", file_name="model_int8.pte", int8=True))
