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

from toolkit.deploy.decoders import decoder_for, detections
from toolkit.deploy.metadata import check_outputs
from toolkit.deploy.preprocess import preprocess
from toolkit.deploy.runtime import open_model
from toolkit.errors import DataError
from toolkit.predictions import PredictionFiles

__all__ = ["ImageReader", "detections", "predict_files", "prediction_files", "record_batches"]

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


def checked_run(runner, batch: np.ndarray, metadata: dict[str, Any], source: str) -> dict[str, np.ndarray]:
    """The runner's outputs for `batch`, their widths checked against the metadata (a graph may leave them open)."""
    outputs = runner.run(batch)
    check_outputs(metadata, {name: array.shape for name, array in outputs.items()}, source)
    return outputs


def record_batches(runner, metadata: dict[str, Any], paths: list[Path], batch_size: int = 16,
                   score_thresh: float | None = None, top_k: int | None = None,
                   inputs: ImageReader | None = None) -> Iterator[list[dict]]:
    """One record per image, in the format of the task's `predict_step`, a batch of images at a time (one image
    per run where the file takes one). `inputs`: how images are read (default: an unreadable one is an error)."""
    inputs = inputs or ImageReader(metadata)
    source = str(getattr(runner, "path", "the model"))
    decoder = decoder_for(metadata, source)
    for paths_chunk in batches(paths, 1 if decoder.one_image else batch_size):
        read = inputs.read(paths_chunk)
        if not read:
            continue
        batch = np.stack([array for _, array, _ in read])
        outputs = decoder.decode(checked_run(runner, batch, metadata, source), metadata, batch.shape[2:])
        yield decoder.records(read, outputs, metadata, score_thresh=score_thresh, top_k=top_k, source=source)


def prediction_files(metadata: dict[str, Any], out: Path) -> PredictionFiles:
    """The files the task's `prediction_files` picks for a checkpoint of the same task."""
    return decoder_for(metadata).files(metadata, out)


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
