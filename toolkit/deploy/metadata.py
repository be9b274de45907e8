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
import math
from pathlib import Path
from typing import Any

from toolkit.errors import DataError

FORMAT_SUFFIXES = (".onnx", ".pte")
TASKS = ("classification", "face_attributes", "face_embedding", "geolocation", "detection")
#: the resize rules `toolkit.data.eval_preprocess` knows
RESIZE_MODES = ("center_crop", "square", "shorter_side")
#: largest side a file's metadata may resize an image to: far beyond any MobileNet input, while a crafted
#: 100000 would have OpenCV allocate tens of gigabytes
MAX_SIDE = 8192
#: the outputs each task's predictor reads (detection: by where NMS runs, see `required_outputs`)
TASK_OUTPUTS = {"classification": ("logits",), "face_attributes": ("logits",), "face_embedding": ("embedding",),
                "geolocation": ("cell_log_scores", "latlon")}
REEXPORT = "export the model again with `python -m toolkit mode=export ckpt_path=...`"


def sidecar_path(model_path: str | Path) -> Path:
    """The JSON metadata file beside a non-ONNX export: `model.pte` -> `model.pte.json`."""
    path = Path(model_path)
    return path.with_name(path.name + ".json")


def encode(metadata: dict[str, Any]) -> dict[str, str]:
    """ONNX `metadata_props` hold strings: every value JSON-encoded."""
    return {key: json.dumps(value) for key, value in metadata.items()}


def decode(props: dict[str, str], source: str = "metadata_props") -> dict[str, Any]:
    """`metadata_props` back to values; a value that is not JSON is a DataError naming `source` and the key."""
    metadata = {}
    for key, value in props.items():
        try:
            metadata[key] = json.loads(value, parse_constant=_no_constant)
        except ValueError as e:
            raise DataError(f"{source}: metadata key {key!r} is not valid JSON ({e}); {REEXPORT}") from e
    return metadata


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def where(path: str | Path) -> str:
    """Where a file's metadata lives, for errors: `model.onnx (metadata_props)` or the `.pte.json` beside it."""
    path = Path(path)
    return f"{path} (metadata_props)" if path.suffix == ".onnx" else str(sidecar_path(path))


def read_metadata(model_path: str | Path) -> dict[str, Any]:
    """The metadata of an exported file, checked (`validate_metadata`); a clear error when it has none (not
    written by `mode=export`) or when a value is malformed."""
    path = Path(model_path)
    if not path.is_file():
        raise DataError(f"{path}: no such exported model file")
    if path.suffix == ".onnx":
        from toolkit.deploy.onnx_file import onnx_session

        return metadata_from_props(path, onnx_session(path).get_modelmeta().custom_metadata_map)
    side = sidecar_path(path)
    metadata = None
    if side.is_file():
        try:
            metadata = json.loads(side.read_text(encoding="utf-8"), parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{side}: not valid JSON ({e}); {REEXPORT}, which writes it beside the file") from e
        except OSError as e:
            raise DataError(f"{side}: cannot be read ({e.strerror})") from e
    return checked(path, metadata)


def metadata_from_props(path: Path, props: dict[str, str]) -> dict[str, Any]:
    """The checked metadata of an .onnx file from its `metadata_props`."""
    return checked(path, decode(props, where(path)) if "task" in props else None)


def checked(path: Path, metadata: Any) -> dict[str, Any]:
    if not metadata:
        place = "metadata_props" if path.suffix == ".onnx" else f"{sidecar_path(path).name} beside it"
        raise DataError(f"{path}: no toolkit metadata ({place}); export the model with `python -m toolkit mode=export "
                        "ckpt_path=...` so the file says how to preprocess images and read its outputs")
    validate_metadata(metadata, where(path))
    return metadata


# ---- checks ----------------------------------------------------------------------------------------------------
def _bad(source: str, key: str, value: Any, rule: str) -> DataError:
    shown = json.dumps(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return DataError(f"{source}: invalid metadata {key}={shown}: {rule}; {REEXPORT}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _side(source: str, key: str, value: Any) -> None:
    if not _is_int(value) or not 1 <= value <= MAX_SIDE:
        raise _bad(source, key, value, f"must be a whole number of pixels from 1 to {MAX_SIDE}")


def _sides(source: str, key: str, value: Any) -> None:
    if not isinstance(value, list) or len(value) != 2:
        raise _bad(source, key, value, "must be [height, width]")
    for v in value:
        _side(source, key, v)


def _names(source: str, key: str, value: Any) -> None:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise _bad(source, key, value, "must be a non-empty list of names (strings)")


def _dict(source: str, key: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise _bad(source, key, value, "must be a JSON object")
    return value


def _get(metadata: dict, source: str, key: str) -> Any:
    if key not in metadata:
        raise DataError(f"{source}: the metadata has no {key!r} key; {REEXPORT}")
    return metadata[key]


def validate_metadata(metadata: Any, source: str) -> None:
    """Refuse malformed metadata when the file is opened, with one line naming the key, its value and the rule,
    rather than failing midway (a zero `std` would write NaN for every image, a short `class_names` an IndexError).
    `source`: where the metadata came from, for the message. Output widths are checked against the model by
    `check_outputs` once they are known."""
    if not isinstance(metadata, dict):
        raise DataError(f"{source}: the metadata is {type(metadata).__name__}, not a JSON object; {REEXPORT}")
    task = _get(metadata, source, "task")
    if task not in TASKS:
        raise _bad(source, "task", task, f"must be one of {', '.join(TASKS)} (a newer toolkit's file?)")
    _side(source, "resolution", _get(metadata, source, "resolution"))
    for key in ("mean", "std"):
        value = _get(metadata, source, key)
        if not isinstance(value, list) or len(value) != 3 or not all(_is_number(v) for v in value):
            raise _bad(source, key, value, "must be 3 finite numbers (R, G, B of 0-1 values)")
    if not all(v > 0 for v in metadata["std"]):
        raise _bad(source, "std", metadata["std"], "every value must be above 0 (images are divided by it)")
    for key, allowed in (("channel_order", "RGB"), ("layout", "NCHW")):
        if metadata.get(key, allowed) != allowed:
            raise _bad(source, key, metadata[key], f"this predictor feeds {allowed} inputs only")
    outputs = _get(metadata, source, "outputs")
    _names(source, "outputs", outputs)
    if metadata.get("input_size") is not None:
        _sides(source, "input_size", metadata["input_size"])
    decode_settings = metadata.get("decode")
    if decode_settings is not None and _dict(source, "decode", decode_settings).get("jpeg_draft_min_side") is not None:
        _side(source, "decode.jpeg_draft_min_side", decode_settings["jpeg_draft_min_side"])
    _validate_resize(_dict(source, "resize", _get(metadata, source, "resize")), source)
    if "predict_top_k" in metadata and (not _is_int(metadata["predict_top_k"]) or metadata["predict_top_k"] < 1):
        raise _bad(source, "predict_top_k", metadata["predict_top_k"], "must be a whole number of at least 1")
    if task == "classification":
        _names(source, "class_names", _get(metadata, source, "class_names"))
    elif task == "face_attributes":
        _names(source, "attribute_names", _get(metadata, source, "attribute_names"))
    elif task == "geolocation":
        _validate_cells(_dict(source, "cells", _get(metadata, source, "cells")), source)
    elif task == "detection":
        _validate_detection(metadata, source)
    missing = [name for name in required_outputs(metadata) if name not in outputs]
    if missing:
        raise _bad(source, "outputs", outputs, f"a {task} file needs the output(s) {', '.join(missing)}")


def _validate_resize(resize: dict, source: str) -> None:
    mode = resize.get("mode")
    if mode not in RESIZE_MODES:
        raise _bad(source, "resize.mode", mode, f"must be one of {', '.join(RESIZE_MODES)}")
    for key in ("shorter_side", "min_size", "max_size"):
        if key in resize:
            _side(source, f"resize.{key}", resize[key])
    for key in ("crop", "size"):
        if key in resize:
            _sides(source, f"resize.{key}", resize[key])
    if mode == "center_crop":
        fraction = resize.get("crop_fraction", 1.0)
        if not _is_number(fraction) or not 0 < fraction <= 1:
            raise _bad(source, "resize.crop_fraction", fraction, "must be above 0 and at most 1")
        if "crop" in resize and "shorter_side" in resize and max(resize["crop"]) > resize["shorter_side"]:
            raise _bad(source, "resize.crop", resize["crop"], f"must fit in shorter_side={resize['shorter_side']}")
    if mode == "shorter_side" and "max_size" not in resize:
        raise DataError(f"{source}: the metadata's resize has no 'max_size' key; {REEXPORT}")


def _validate_cells(cells: dict, source: str) -> None:
    _names(source, "cells.tokens", cells.get("tokens"))
    latlon = cells.get("latlon")
    if (not isinstance(latlon, list) or len(latlon) != len(cells["tokens"])
            or not all(isinstance(v, list) and len(v) == 2 and all(_is_number(x) for x in v) for v in latlon)):
        raise _bad(source, "cells.latlon", latlon, f"must be {len(cells['tokens'])} [lat, lon] pairs, one per token")


def _validate_detection(metadata: dict, source: str) -> None:
    names = _get(metadata, source, "class_names")
    _names(source, "class_names", names)
    ids = _get(metadata, source, "category_ids")
    if not isinstance(ids, list) or len(ids) != len(names) or not all(_is_int(v) for v in ids):
        raise _bad(source, "category_ids", ids, f"must be {len(names)} whole numbers, one per class name")
    thresh = _get(metadata, source, "predict_score_thresh")
    if not _is_number(thresh) or not 0 <= thresh <= 1:
        raise _bad(source, "predict_score_thresh", thresh, "must be a score from 0 to 1")
    nms = _dict(source, "nms", _get(metadata, source, "nms"))
    if not isinstance(nms.get("in_graph"), bool):
        raise _bad(source, "nms.in_graph", nms.get("in_graph"), "must be true or false")
    if not nms["in_graph"]:
        for key in ("score_thresh", "iou_thresh"):
            if not _is_number(nms.get(key)) or not 0 <= nms[key] <= 1:
                raise _bad(source, f"nms.{key}", nms.get(key), "must be a number from 0 to 1")
        for key in ("topk_candidates", "detections_per_img"):
            if not _is_int(nms.get(key)) or nms[key] < 1:
                raise _bad(source, f"nms.{key}", nms.get(key), "must be a whole number of at least 1")
    if "raw_head" in metadata:
        raw = _dict(source, "raw_head", metadata["raw_head"])
        anchors = raw.get("anchors")
        if not isinstance(anchors, list) or not all(isinstance(a, list) and len(a) == 4 and all(_is_number(x) for x in a)
                                                    for a in anchors):
            raise _bad(source, "raw_head.anchors", anchors, "must be a list of [x1, y1, x2, y2] boxes")
        coder = _dict(source, "raw_head.box_coder", raw.get("box_coder"))
        weights, clip = coder.get("weights"), coder.get("bbox_xform_clip")
        if not isinstance(weights, list) or len(weights) != 4 or not all(_is_number(w) and w > 0 for w in weights):
            raise _bad(source, "raw_head.box_coder.weights", weights, "must be 4 numbers above 0")
        if not _is_number(clip):
            raise _bad(source, "raw_head.box_coder.bbox_xform_clip", clip, "must be a finite number")


def required_outputs(metadata: dict) -> tuple[str, ...]:
    """The outputs the predictor reads for this file's task."""
    if metadata["task"] != "detection":
        return TASK_OUTPUTS[metadata["task"]]
    if metadata["nms"]["in_graph"]:
        return ("boxes", "scores", "labels", "count")
    return ("bbox_regression", "cls_logits") if "raw_head" in metadata else ("boxes", "scores")


def output_widths(metadata: dict) -> dict[str, int]:
    """{output name: the size its last axis must have}, from the class names, attributes or cells the file lists."""
    task = metadata["task"]
    if task == "classification":
        return {"logits": len(metadata["class_names"])}
    if task == "face_attributes":
        return {"logits": len(metadata["attribute_names"])}
    if task == "geolocation":
        return {"cell_log_scores": len(metadata["cells"]["tokens"]), "latlon": 2}
    if task == "detection" and not metadata["nms"]["in_graph"]:
        classes = len(metadata["class_names"]) + 1  # with the background
        if "raw_head" in metadata:
            return {"cls_logits": classes, "bbox_regression": 4}
        return {"scores": classes, "boxes": 4}
    return {}


def check_outputs(metadata: dict, shapes: dict[str, Any], source: str) -> None:
    """Refuse a file whose outputs disagree with its metadata: `shapes` {output name: shape}, from the graph when the
    file is opened (a dimension may be unknown there: None or a name) or from the arrays of a run."""
    missing = [name for name in required_outputs(metadata) if name not in shapes]
    if missing:
        raise DataError(f"{source}: the metadata names output(s) {', '.join(missing)} that the model does not have "
                        f"(it has {', '.join(shapes)}); {REEXPORT}")
    for name, width in output_widths(metadata).items():
        shape = list(shapes[name])
        if shape and _is_int(shape[-1]) and shape[-1] != width:
            raise DataError(f"{source}: the model's output {name!r} has {shape[-1]} values per row but the metadata "
                            f"lists {width} (class names, attributes or cells); {REEXPORT}")
    anchors = (metadata.get("raw_head") or {}).get("anchors")
    rows = list(shapes.get("bbox_regression", ()))
    if anchors is not None and len(rows) >= 2 and _is_int(rows[-2]) and rows[-2] != len(anchors):
        raise DataError(f"{source}: the metadata holds {len(anchors)} anchors for the model's {rows[-2]} box rows; "
                        f"{REEXPORT}")
