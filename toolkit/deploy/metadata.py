"""What an exported file means: preprocessing, task, classes, outputs; stored inside ONNX, beside other formats.

ONNX files keep it in `metadata_props` (one entry per key, each value JSON-encoded); other formats get a
`<file>.json` beside them with the same keys. Keys (written by `toolkit.modes.export.export_metadata`):
`task` (classification | face_attributes | face_embedding | geolocation | detection), `task_class`, `backbone`, `alpha`,
`resolution`, `input_size` ([H, W], or null where the graph takes any size), `decode` (Pillow; `jpeg_draft_min_side`:
JPEGs decode at libjpeg's reduced scale as the predict loader decodes them), `resize` (the predict loader's rule by
name, `toolkit.data.eval_preprocess`: {"mode": "center_crop", "shorter_side", "crop", "crop_fraction"} |
{"mode": "square", "size"} | {"mode": "shorter_side", "min_size", "max_size"}, each with its `interpolation`,
cv2.INTER_LINEAR), `normalize` (the arithmetic, in words), `mean`, `std` (of 0-1 RGB values), `channel_order`
("RGB"), `layout` ("NCHW"), `outputs` (names in order), and per task `class_names`, `category_ids`,
`attribute_names`, `cells` (geolocation: fine-cell tokens and their lat/lon), `nms` (detection: whether it is inside
the graph, and its settings), `detections` (detection: box format, coordinate frame, label base, rows, batch),
`raw_head` (export.postprocess=none: anchors and the decoding rule).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolkit.errors import DataError

FORMAT_SUFFIXES = (".onnx", ".pte")


def sidecar_path(model_path: str | Path) -> Path:
    """The JSON metadata file beside a non-ONNX export: `model.pte` -> `model.pte.json`."""
    path = Path(model_path)
    return path.with_name(path.name + ".json")


def encode(metadata: dict[str, Any]) -> dict[str, str]:
    """ONNX `metadata_props` hold strings: every value JSON-encoded."""
    return {key: json.dumps(value) for key, value in metadata.items()}


def decode(props: dict[str, str]) -> dict[str, Any]:
    return {key: json.loads(value) for key, value in props.items()}


def read_metadata(model_path: str | Path) -> dict[str, Any]:
    """The metadata of an exported file; a clear error when it has none (not written by `mode=export`)."""
    path = Path(model_path)
    if not path.is_file():
        raise DataError(f"{path}: no such exported model file")
    if path.suffix == ".onnx":
        import onnxruntime

        props = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_modelmeta().custom_metadata_map
        metadata = decode(props) if "task" in props else None
    else:
        side = sidecar_path(path)
        metadata = json.loads(side.read_text()) if side.is_file() else None
    if not metadata:
        where = "metadata_props" if path.suffix == ".onnx" else f"{sidecar_path(path).name} beside it"
        raise DataError(f"{path}: no toolkit metadata ({where}); export the model with `python -m toolkit mode=export "
                        "ckpt_path=...` so the file says how to preprocess images and read its outputs")
    return metadata
