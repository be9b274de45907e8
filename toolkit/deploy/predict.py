"""Predictions from an exported file: the records and files `mode=predict` writes for a checkpoint of the same task,
through the same streaming `toolkit.predictions` files.

`mode=predict ckpt_path=model.onnx` and `python -m toolkit.deploy model.onnx ...` both run `predict_files`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.deploy.draw import draw_boxes
from toolkit.deploy.metadata import REEXPORT, check_outputs
from toolkit.deploy.postprocess import decode_ssd_head, softmax, ssd_detections
from toolkit.deploy.preprocess import preprocess
from toolkit.deploy.runtime import open_model
from toolkit.errors import DataError
from toolkit.predictions import (
    AttributeFiles,
    ClassificationFiles,
    DetectionFiles,
    EmbeddingFiles,
    GeolocationFiles,
    PredictionFiles,
)

log = logging.getLogger(__name__)

#: how a `python -m toolkit.deploy` user skips unreadable images (`mode=predict` names data.skip_corrupt instead)
SKIP_HINT = "or pass --skip-corrupt to leave such files out (they are counted and named)"


class ImageReader:
    """Decodes the images to predict: an unreadable one is a DataError naming it, or, with `skip_corrupt`, is
    left out with a warning naming it and counted in `skipped` (the policy of `data.skip_corrupt=true`)."""

    def __init__(self, metadata: dict[str, Any], skip_corrupt: bool = False, skip_hint: str = SKIP_HINT):
        self.metadata, self.skip_corrupt, self.skip_hint = metadata, skip_corrupt, skip_hint
        self.skipped: list[Path] = []

    def read(self, paths: list[Path]) -> list[tuple[Path, np.ndarray, tuple[int, int]]]:
        """(path, network input, (height, width)) of each readable image of `paths`, in order."""
        read = []
        for path in paths:
            try:
                read.append((path, *preprocess(path, self.metadata, skip_hint=self.skip_hint)))
            except DataError as e:
                if not self.skip_corrupt:
                    raise
                log.warning("skipped an unreadable image: %s", e)
                self.skipped.append(path)
        return read


def batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


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


def checked_run(runner, batch: np.ndarray, metadata: dict[str, Any], source: str) -> dict[str, np.ndarray]:
    """The runner's outputs for `batch`, their widths checked against the metadata (a graph may leave them open)."""
    outputs = runner.run(batch)
    check_outputs(metadata, {name: array.shape for name, array in outputs.items()}, source)
    return outputs


def record_batches(runner, metadata: dict[str, Any], paths: list[Path], batch_size: int = 16,
                   score_thresh: float | None = None, top_k: int | None = None,
                   inputs: ImageReader | None = None) -> Iterator[list[dict]]:
    """One record per image, in the format of the task's `predict_step`, a batch of images at a time.
    `inputs`: how images are read (default: an unreadable one is an error)."""
    kind = metadata["task"]
    inputs = inputs or ImageReader(metadata)
    source = str(getattr(runner, "path", "the model"))
    if kind == "detection":
        names, category_ids = metadata["class_names"], metadata["category_ids"]
        thresh = metadata["predict_score_thresh"] if score_thresh is None else score_thresh
        for one in paths:  # one image per run: detectors export with batch 1
            read = inputs.read([one])
            if not read:
                continue
            path, array, (height, width) = read[0]
            boxes, scores, labels = detections(checked_run(runner, array[None], metadata, source), metadata,
                                               array.shape[1:])
            outside = labels[(labels < 1) | (labels > len(names))]
            if len(outside):
                raise DataError(f"{source}: the model gives class label {int(outside[0])} but its metadata names "
                                f"classes 1 to {len(names)}; {REEXPORT}")
            scale = np.asarray([width / array.shape[2], height / array.shape[1]] * 2, dtype=np.float32)
            keep = scores >= thresh
            yield [{"path": str(path), "width": int(width), "height": int(height), "detections": [
                {"box_xyxy": [round(float(v), 2) for v in box * scale], "score": round(float(score), 4),
                 "label": int(label), "category_id": category_ids[int(label) - 1], "name": names[int(label) - 1]}
                for box, score, label in zip(boxes[keep], scores[keep], labels[keep], strict=True)]}]
        return
    for paths_chunk in batches(paths, batch_size):
        read = inputs.read(paths_chunk)
        if not read:
            continue
        chunk = [path for path, _, _ in read]
        outputs = checked_run(runner, np.stack([array for _, array, _ in read]), metadata, source)
        if kind == "classification":
            probs = softmax(outputs["logits"])
            k = min(top_k or metadata.get("predict_top_k", 5), probs.shape[1])
            records = []
            for path, p in zip(chunk, probs, strict=True):
                top = np.argsort(-p, kind="stable")[:k]
                records.append({"path": str(path), "top_k": [
                    {"label": int(i), "name": metadata["class_names"][int(i)], "score": float(p[i])} for i in top]})
        elif kind == "face_attributes":
            probs = 1.0 / (1.0 + np.exp(-outputs["logits"].astype(np.float64)))
            records = [{"path": str(path), "attributes": dict(zip(metadata["attribute_names"], p.tolist(), strict=True))}
                       for path, p in zip(chunk, probs, strict=True)]
        elif kind == "face_embedding":
            records = [{"path": str(path), "embedding": e.tolist()} for path, e in zip(chunk, outputs["embedding"], strict=True)]
        elif kind == "geolocation":
            cells = metadata["cells"]
            scores = softmax(outputs["cell_log_scores"].astype(np.float64))
            k = min(top_k or metadata.get("predict_top_k", 5), scores.shape[1])
            records = []
            for path, s, (lat, lon) in zip(chunk, scores, outputs["latlon"].tolist(), strict=True):
                top = np.argsort(-s, kind="stable")[:k]
                records.append({"path": str(path), "lat": lat, "lon": lon, "top_cells": [
                    {"token": cells["tokens"][c], "score": float(s[c]), "lat": cells["latlon"][c][0],
                     "lon": cells["latlon"][c][1]} for c in top]})
        else:
            raise DataError(f"{source}: unknown task {kind!r} in the model's metadata; {REEXPORT}")
        yield records


def prediction_files(metadata: dict[str, Any], out: Path) -> PredictionFiles:
    """The files the task's `prediction_files` picks for a checkpoint of the same task."""
    kind = metadata["task"]
    if kind == "classification":
        return ClassificationFiles(out)
    if kind == "face_attributes":
        return AttributeFiles(out, metadata["attribute_names"])
    if kind == "face_embedding":
        return EmbeddingFiles(out)
    if kind == "geolocation":
        return GeolocationFiles(out)
    if kind == "detection":
        return DetectionFiles(out, draw_boxes)
    raise DataError(f"unknown task {kind!r} in the model's metadata; {REEXPORT}")


def predict_files(model_path: str | Path, images: list[Path], out: str | Path, threads: int | None = None,
                  score_thresh: float | None = None, top_k: int | None = None, *, skip_corrupt: bool = False,
                  skip_hint: str = SKIP_HINT) -> dict[str, Any]:
    """Run an exported file on image files; write the predictions into `out` a batch at a time. Returns the files,
    how many images they hold (`count`), the images left out as unreadable (`skipped`, with `skip_corrupt`; else
    an unreadable image is a DataError whose fix is `skip_hint`) and the model's metadata."""
    runner, metadata = open_model(model_path, threads)
    inputs = ImageReader(metadata, skip_corrupt, skip_hint)
    with prediction_files(metadata, Path(out)) as files:
        for records in record_batches(runner, metadata, [Path(p) for p in images], score_thresh=score_thresh,
                                      top_k=top_k, inputs=inputs):
            files.add(records)
        written = files.close()
    if inputs.skipped:
        log.warning("skipped %d unreadable image(s) of %d: %s%s", len(inputs.skipped), len(images),
                    ", ".join(map(str, inputs.skipped[:5])), " ..." if len(inputs.skipped) > 5 else "")
    return {"count": files.count, "files": [str(f) for f in written], "output_dir": str(out), "metadata": metadata,
            "skipped": [str(p) for p in inputs.skipped]}
