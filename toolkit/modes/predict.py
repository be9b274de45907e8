"""mode=predict: run a checkpoint, or a file `mode=export` wrote (.onnx/.pte, through `toolkit.deploy`), on an image
file or folder; write per-image results and pictures."""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

from omegaconf import DictConfig

from toolkit.compilation import compile_task_model, int8_trainer_settings
from toolkit.data.images import SKIP_HINT
from toolkit.deploy.inputs import collect_inputs
from toolkit.deploy.metadata import FORMAT_SUFFIXES
from toolkit.errors import ConfigError
from toolkit.modes.common import build_datamodule, build_trainer, load_task, output_dir
from toolkit.predictions import summary_line

log = logging.getLogger(__name__)


def collect_images(spec: str | None) -> list[Path]:
    """The images of `predict.input` (a file or a folder); files left out (not images, unreadable) are counted and
    named in one log line (`toolkit.deploy.inputs`, the rule `python -m toolkit.deploy` follows)."""
    if not spec:
        raise ConfigError("predict.input", spec, "give an image file or a folder of images")
    found = collect_inputs([str(spec)], key="predict.input")
    if found.not_images or found.unreadable:
        log.warning("%s", found.summary())
    return found.images


def predict(cfg: DictConfig) -> dict:
    """Write the predictions into the run's folder, batch by batch; return the files and how many images they hold
    (`count`). Under DDP every rank predicts its share and rank 0 writes the files (`files` is empty elsewhere)."""
    out = output_dir(cfg)
    images = collect_images(cfg.predict.input)
    if Path(str(cfg.get("ckpt_path") or "")).suffix in FORMAT_SUFFIXES:  # an exported file: its runtime, no torch model
        from toolkit.deploy.predict import predict_files

        result = predict_files(cfg.ckpt_path, images, out, skip_corrupt=bool(cfg.data.get("skip_corrupt")),
                               skip_hint=SKIP_HINT)
    else:
        result = predict_checkpoint(cfg, images, out)
    if result["files"]:  # rank 0 (DDP: the others write nothing)
        predictions, unit = result.get("predictions") or (None, "predictions")
        print(summary_line(images=result["count"], files=result["files"], output_dir=result["output_dir"],
                           predictions=predictions, unit=unit))
        for f in result["files"]:
            log.debug("wrote %s", f)
    return {k: result[k] for k in ("count", "files", "output_dir")}


def predict_checkpoint(cfg: DictConfig, images: list[Path], out: Path) -> dict:
    from toolkit.prediction_writer import PredictionWriter

    task = load_task(cfg)
    datamodule = build_datamodule(cfg, task)
    loader = datamodule.predict_loader(images)

    def calibration():  # compile=int8: ranges from the first images to predict, as the model sees them
        return [batch["image"].contiguous() for batch in itertools.islice(loader, cfg.export.calibration_batches)
                if len(batch.get("image", ()))]

    compile_task_model(cfg.get("compile", False), task, "predict", n_images=len(images), calibration=calibration)
    trainer = build_trainer(cfg, task, logger=False, **int8_trainer_settings(cfg.get("compile")))
    writer = PredictionWriter(out, images)
    trainer.callbacks.append(writer)
    trainer.predict(task, dataloaders=loader, return_predictions=False)
    return {"count": writer.count, "files": [str(f) for f in writer.written], "output_dir": str(out),
            "predictions": writer.predictions}
