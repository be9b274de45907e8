"""Torch-free decoders: an exported file's outputs -> the prediction records `mode=predict` writes for a checkpoint
of the same task, and the files they go to. One decoder per kind of task, chosen by the metadata's `task` value
(what the task's inference contract, `toolkit.tasks.inference`, writes there).

A decoder checks its own metadata keys (`validate`), names the outputs it reads and their widths, turns a run's
outputs into the model's final ones (`decode`: detectors' NMS after the runtime where the file has none) and those
into records (`records`). A new kind of output is one class here and one line in `DECODERS`; a task whose network
gives plain values uses the generic `outputs` decoder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from toolkit.deploy.checks import REEXPORT, bad, get, is_int, is_number, json_object, names
from toolkit.deploy.draw import draw_boxes
from toolkit.deploy.postprocess import decode_ssd_head, softmax, ssd_detections
from toolkit.errors import DataError
from toolkit.predictions import (
    AttributeFiles,
    ClassificationFiles,
    DetectionFiles,
    EmbeddingFiles,
    GeolocationFiles,
    PredictionFiles,
)

#: an image as the predictor read it: (path, network input CHW, (original height, width))
Read = tuple[Path, np.ndarray, tuple[int, int]]


class Decoder:
    """Generic: each output's values per image (`{"path": ..., "<output>": [...]}`), in `predictions.json`."""

    task: ClassVar[str] = "outputs"
    outputs: ClassVar[tuple[str, ...]] = ()  # the outputs `records` reads
    one_image: ClassVar[bool] = False  # the file takes one image per run

    def validate(self, metadata: dict[str, Any], source: str) -> None:
        """Refuse malformed task keys (one DataError line naming the key), on opening the file."""

    def required_outputs(self, metadata: dict[str, Any]) -> tuple[str, ...]:
        return self.outputs

    def output_widths(self, metadata: dict[str, Any]) -> dict[str, int]:
        """{output name: the size its last axis must have}, from what the metadata lists."""
        return {}

    def decode(self, outputs: dict[str, np.ndarray], metadata: dict[str, Any],
               input_size: tuple[int, int] | None = None) -> dict[str, np.ndarray]:
        """The model's final outputs from a run's (`input_size`: (H, W) of the input)."""
        return outputs

    def records(self, read: list[Read], outputs: dict[str, np.ndarray], metadata: dict[str, Any], *,
                score_thresh: float | None, top_k: int | None, source: str) -> list[dict]:
        return [{"path": str(path), **{name: outputs[name][i].tolist() for name in metadata["outputs"]}}
                for i, (path, _, _) in enumerate(read)]

    def files(self, metadata: dict[str, Any], out: Path) -> PredictionFiles:
        """The files the task's `prediction_files` picks for a checkpoint of the same task."""
        return PredictionFiles(out)


def top_k_of(metadata: dict[str, Any], top_k: int | None, width: int) -> int:
    return min(top_k or metadata.get("predict_top_k", 5), width)


class ClassificationDecoder(Decoder):
    task = "classification"
    outputs = ("logits",)

    def validate(self, metadata, source):
        names(source, "class_names", get(metadata, source, "class_names"))

    def output_widths(self, metadata):
        return {"logits": len(metadata["class_names"])}

    def records(self, read, outputs, metadata, *, score_thresh, top_k, source):
        probs = softmax(outputs["logits"])
        k = top_k_of(metadata, top_k, probs.shape[1])
        records = []
        for (path, _, _), p in zip(read, probs, strict=True):
            top = np.argsort(-p, kind="stable")[:k]
            records.append({"path": str(path), "top_k": [
                {"label": int(i), "name": metadata["class_names"][int(i)], "score": float(p[i])} for i in top]})
        return records

    def files(self, metadata, out):
        return ClassificationFiles(out)


class AttributesDecoder(Decoder):
    task = "face_attributes"
    outputs = ("logits",)

    def validate(self, metadata, source):
        names(source, "attribute_names", get(metadata, source, "attribute_names"))

    def output_widths(self, metadata):
        return {"logits": len(metadata["attribute_names"])}

    def records(self, read, outputs, metadata, *, score_thresh, top_k, source):
        probs = 1.0 / (1.0 + np.exp(-outputs["logits"].astype(np.float64)))
        return [{"path": str(path), "attributes": dict(zip(metadata["attribute_names"], p.tolist(), strict=True))}
                for (path, _, _), p in zip(read, probs, strict=True)]

    def files(self, metadata, out):
        return AttributeFiles(out, metadata["attribute_names"])


class EmbeddingDecoder(Decoder):
    task = "face_embedding"
    outputs = ("embedding",)

    def records(self, read, outputs, metadata, *, score_thresh, top_k, source):
        return [{"path": str(path), "embedding": e.tolist()}
                for (path, _, _), e in zip(read, outputs["embedding"], strict=True)]

    def files(self, metadata, out):
        return EmbeddingFiles(out)


class GeolocationDecoder(Decoder):
    task = "geolocation"
    outputs = ("cell_log_scores", "latlon")

    def validate(self, metadata, source):
        cells = json_object(source, "cells", get(metadata, source, "cells"))
        names(source, "cells.tokens", cells.get("tokens"))
        latlon = cells.get("latlon")
        if (not isinstance(latlon, list) or len(latlon) != len(cells["tokens"])
                or not all(isinstance(v, list) and len(v) == 2 and all(is_number(x) for x in v) for v in latlon)):
            raise bad(source, "cells.latlon", latlon, f"must be {len(cells['tokens'])} [lat, lon] pairs, one per token")

    def output_widths(self, metadata):
        return {"cell_log_scores": len(metadata["cells"]["tokens"]), "latlon": 2}

    def records(self, read, outputs, metadata, *, score_thresh, top_k, source):
        cells = metadata["cells"]
        scores = softmax(outputs["cell_log_scores"].astype(np.float64))
        k = top_k_of(metadata, top_k, scores.shape[1])
        records = []
        for (path, _, _), s, (lat, lon) in zip(read, scores, outputs["latlon"].tolist(), strict=True):
            top = np.argsort(-s, kind="stable")[:k]
            records.append({"path": str(path), "lat": lat, "lon": lon, "top_cells": [
                {"token": cells["tokens"][c], "score": float(s[c]), "lat": cells["latlon"][c][0],
                 "lon": cells["latlon"][c][1]} for c in top]})
        return records

    def files(self, metadata, out):
        return GeolocationFiles(out)


class DetectionDecoder(Decoder):
    """Boxes in input pixels, scores and labels 1..K per image, scaled to the photo's pixels in the records."""

    task = "detection"
    one_image = True  # detectors export with batch 1

    def validate(self, metadata, source):
        class_names = get(metadata, source, "class_names")
        names(source, "class_names", class_names)
        ids = get(metadata, source, "category_ids")
        if not isinstance(ids, list) or len(ids) != len(class_names) or not all(is_int(v) for v in ids):
            raise bad(source, "category_ids", ids, f"must be {len(class_names)} whole numbers, one per class name")
        thresh = get(metadata, source, "predict_score_thresh")
        if not is_number(thresh) or not 0 <= thresh <= 1:
            raise bad(source, "predict_score_thresh", thresh, "must be a score from 0 to 1")
        nms = json_object(source, "nms", get(metadata, source, "nms"))
        if not isinstance(nms.get("in_graph"), bool):
            raise bad(source, "nms.in_graph", nms.get("in_graph"), "must be true or false")
        if not nms["in_graph"]:
            for key in ("score_thresh", "iou_thresh"):
                if not is_number(nms.get(key)) or not 0 <= nms[key] <= 1:
                    raise bad(source, f"nms.{key}", nms.get(key), "must be a number from 0 to 1")
            for key in ("topk_candidates", "detections_per_img"):
                if not is_int(nms.get(key)) or nms[key] < 1:
                    raise bad(source, f"nms.{key}", nms.get(key), "must be a whole number of at least 1")
        if "raw_head" in metadata:
            raw = json_object(source, "raw_head", metadata["raw_head"])
            anchors = raw.get("anchors")
            if not isinstance(anchors, list) or not all(
                    isinstance(a, list) and len(a) == 4 and all(is_number(x) for x in a) for a in anchors):
                raise bad(source, "raw_head.anchors", anchors, "must be a list of [x1, y1, x2, y2] boxes")
            coder = json_object(source, "raw_head.box_coder", raw.get("box_coder"))
            weights, clip = coder.get("weights"), coder.get("bbox_xform_clip")
            if not isinstance(weights, list) or len(weights) != 4 or not all(is_number(w) and w > 0 for w in weights):
                raise bad(source, "raw_head.box_coder.weights", weights, "must be 4 numbers above 0")
            if not is_number(clip):
                raise bad(source, "raw_head.box_coder.bbox_xform_clip", clip, "must be a finite number")

    def required_outputs(self, metadata):
        if metadata["nms"]["in_graph"]:
            return ("boxes", "scores", "labels", "count")
        return ("bbox_regression", "cls_logits") if "raw_head" in metadata else ("boxes", "scores")

    def output_widths(self, metadata):
        if metadata["nms"]["in_graph"]:
            return {}
        classes = len(metadata["class_names"]) + 1  # with the background
        if "raw_head" in metadata:
            return {"cls_logits": classes, "bbox_regression": 4}
        return {"scores": classes, "boxes": 4}

    def decode(self, outputs, metadata, input_size=None):
        boxes, scores, labels = detections(outputs, metadata, input_size)
        return {"boxes": boxes, "scores": scores, "labels": labels}

    def records(self, read, outputs, metadata, *, score_thresh, top_k, source):
        ((path, array, (height, width)),) = read
        class_names, category_ids = metadata["class_names"], metadata["category_ids"]
        thresh = metadata["predict_score_thresh"] if score_thresh is None else score_thresh
        boxes, scores, labels = outputs["boxes"], outputs["scores"], outputs["labels"]
        outside = labels[(labels < 1) | (labels > len(class_names))]
        if len(outside):
            raise DataError(f"{source}: the model gives class label {int(outside[0])} but its metadata names "
                            f"classes 1 to {len(class_names)}; {REEXPORT}")
        scale = np.asarray([width / array.shape[2], height / array.shape[1]] * 2, dtype=np.float32)
        keep = scores >= thresh
        return [{"path": str(path), "width": int(width), "height": int(height), "detections": [
            {"box_xyxy": [round(float(v), 2) for v in box * scale], "score": round(float(score), 4),
             "label": int(label), "category_id": category_ids[int(label) - 1], "name": class_names[int(label) - 1]}
            for box, score, label in zip(boxes[keep], scores[keep], labels[keep], strict=True)]}]

    def files(self, metadata, out):
        return DetectionFiles(out, draw_boxes)


def detections(outputs: dict[str, np.ndarray], metadata: dict[str, Any],
               input_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes in input pixels, scores, labels) of one image: straight from the graph when NMS is inside it,
    else from the dense anchor outputs (decoded first when the file holds the raw head, `export.postprocess=none`)
    through `ssd_detections`. `input_size`: (H, W) of the input (default: the file's fixed input size)."""
    nms = metadata["nms"]
    if nms["in_graph"]:
        count = int(outputs["count"].reshape(-1)[0])
        return outputs["boxes"][:count], outputs["scores"][:count], outputs["labels"][:count].astype(np.int64)
    if "raw_head" in metadata:
        size = input_size or tuple(metadata["input_size"])
        boxes, probs = decode_ssd_head(outputs["bbox_regression"][0], outputs["cls_logits"][0], metadata["raw_head"], size)
    else:
        boxes, probs = outputs["boxes"][0], outputs["scores"][0]
    return ssd_detections(boxes, probs, nms["score_thresh"], nms["iou_thresh"], nms["topk_candidates"],
                          nms["detections_per_img"])


#: the decoder of each metadata `task` value
DECODERS: dict[str, Decoder] = {d.task: d for d in (Decoder(), ClassificationDecoder(), AttributesDecoder(),
                                                      EmbeddingDecoder(), GeolocationDecoder(), DetectionDecoder())}


def decoder_for(metadata: dict[str, Any], source: str = "the model") -> Decoder:
    task = metadata.get("task")
    if task not in DECODERS:
        raise DataError(f"{source}: unknown task {task!r} in the model's metadata; {REEXPORT}")
    return DECODERS[task]
