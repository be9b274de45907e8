"""What an exported file means: preprocessing, task, classes, outputs; stored inside ONNX, beside other formats.

ONNX files keep it in `metadata_props` (one entry per key, each value JSON-encoded); other formats get a
`<file>.json` beside them with the same keys. Keys (written by the task's inference contract, `toolkit.tasks.inference`):
`task` (the decoder that reads the outputs, `toolkit.deploy.decoders.DECODERS`: classification | face_attributes | face_embedding | geolocation | detection | outputs), `task_class`, `backbone`, `alpha`,
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

from toolkit.deploy.checks import REEXPORT, bad, get, is_int, is_number, json_object, names, side, sides
from toolkit.deploy.decoders import DECODERS, decoder_for
from toolkit.errors import DataError

FORMAT_SUFFIXES = (".onnx", ".pte")
#: the resize rules `toolkit.data.eval_preprocess` knows
RESIZE_MODES = ("center_crop", "square", "shorter_side")


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
    sidecar = sidecar_path(path)
    metadata = None
    if sidecar.is_file():
        try:
            metadata = json.loads(sidecar.read_text(encoding="utf-8"), parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError) as e:
            raise DataError(f"{sidecar}: not valid JSON ({e}); {REEXPORT}, which writes it beside the file") from e
        except OSError as e:
            raise DataError(f"{sidecar}: cannot be read ({e.strerror})") from e
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


def validate_metadata(metadata: Any, source: str) -> None:
    """Refuse malformed metadata when the file is opened, with one line naming the key, its value and the rule,
    rather than failing midway (a zero `std` would write NaN for every image, a short `class_names` an IndexError).
    `source`: where the metadata came from, for the message. The task's own keys are its decoder's to check
    (`toolkit.deploy.decoders`). Output widths are checked against the model by `check_outputs` once they are known."""
    if not isinstance(metadata, dict):
        raise DataError(f"{source}: the metadata is {type(metadata).__name__}, not a JSON object; {REEXPORT}")
    task = get(metadata, source, "task")
    if task not in DECODERS:
        raise bad(source, "task", task, f"must be one of {', '.join(DECODERS)} (a newer toolkit's file?)")
    side(source, "resolution", get(metadata, source, "resolution"))
    for key in ("mean", "std"):
        value = get(metadata, source, key)
        if not isinstance(value, list) or len(value) != 3 or not all(is_number(v) for v in value):
            raise bad(source, key, value, "must be 3 finite numbers (R, G, B of 0-1 values)")
    if not all(v > 0 for v in metadata["std"]):
        raise bad(source, "std", metadata["std"], "every value must be above 0 (images are divided by it)")
    for key, allowed in (("channel_order", "RGB"), ("layout", "NCHW")):
        if metadata.get(key, allowed) != allowed:
            raise bad(source, key, metadata[key], f"this predictor feeds {allowed} inputs only")
    outputs = get(metadata, source, "outputs")
    names(source, "outputs", outputs)
    if metadata.get("input_size") is not None:
        sides(source, "input_size", metadata["input_size"])
    decode_settings = metadata.get("decode")
    if decode_settings is not None and json_object(source, "decode", decode_settings).get("jpeg_draft_min_side") is not None:
        side(source, "decode.jpeg_draft_min_side", decode_settings["jpeg_draft_min_side"])
    _validate_resize(json_object(source, "resize", get(metadata, source, "resize")), source)
    if "predict_top_k" in metadata and (not is_int(metadata["predict_top_k"]) or metadata["predict_top_k"] < 1):
        raise bad(source, "predict_top_k", metadata["predict_top_k"], "must be a whole number of at least 1")
    decoder = DECODERS[task]
    decoder.validate(metadata, source)
    missing = [name for name in decoder.required_outputs(metadata) if name not in outputs]
    if missing:
        raise bad(source, "outputs", outputs, f"a {task} file needs the output(s) {', '.join(missing)}")


def _validate_resize(resize: dict, source: str) -> None:
    mode = resize.get("mode")
    if mode not in RESIZE_MODES:
        raise bad(source, "resize.mode", mode, f"must be one of {', '.join(RESIZE_MODES)}")
    for key in ("shorter_side", "min_size", "max_size"):
        if key in resize:
            side(source, f"resize.{key}", resize[key])
    for key in ("crop", "size"):
        if key in resize:
            sides(source, f"resize.{key}", resize[key])
    if mode == "center_crop":
        fraction = resize.get("crop_fraction", 1.0)
        if not is_number(fraction) or not 0 < fraction <= 1:
            raise bad(source, "resize.crop_fraction", fraction, "must be above 0 and at most 1")
        if "crop" in resize and "shorter_side" in resize and max(resize["crop"]) > resize["shorter_side"]:
            raise bad(source, "resize.crop", resize["crop"], f"must fit in shorter_side={resize['shorter_side']}")
    if mode == "shorter_side" and "max_size" not in resize:
        raise DataError(f"{source}: the metadata's resize has no 'max_size' key; {REEXPORT}")


def check_outputs(metadata: dict, shapes: dict[str, Any], source: str) -> None:
    """Refuse a file whose outputs disagree with its metadata: `shapes` {output name: shape}, from the graph when the
    file is opened (a dimension may be unknown there: None or a name) or from the arrays of a run."""
    decoder = decoder_for(metadata, source)
    missing = [name for name in decoder.required_outputs(metadata) if name not in shapes]
    if missing:
        raise DataError(f"{source}: the metadata names output(s) {', '.join(missing)} that the model does not have "
                        f"(it has {', '.join(shapes)}); {REEXPORT}")
    for name, width in decoder.output_widths(metadata).items():
        shape = list(shapes[name])
        if shape and is_int(shape[-1]) and shape[-1] != width:
            raise DataError(f"{source}: the model's output {name!r} has {shape[-1]} values per row but the metadata "
                            f"lists {width} (class names, attributes or cells); {REEXPORT}")
    anchors = (metadata.get("raw_head") or {}).get("anchors")
    rows = list(shapes.get("bbox_regression", ()))
    if anchors is not None and len(rows) >= 2 and is_int(rows[-2]) and rows[-2] != len(anchors):
        raise DataError(f"{source}: the metadata holds {len(anchors)} anchors for the model's {rows[-2]} box rows; "
                        f"{REEXPORT}")


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
