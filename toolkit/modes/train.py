"""mode=train: fit on the training split, keep best and last checkpoints, evaluate the best one."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from toolkit.modes.common import (
    build_datamodule,
    build_task,
    build_trainer,
    output_dir,
    plain_metrics,
    resolve_checkpoint,
    write_json,
)

log = logging.getLogger(__name__)


def train(cfg: DictConfig) -> dict:
    out = output_dir(cfg)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    task = build_task(cfg, datamodule)
    if cfg.get("init_from"):
        task.load_init_weights(cfg.init_from)
    trainer = build_trainer(cfg, task)
    trainer.fit(task, datamodule=datamodule, ckpt_path=resolve_checkpoint(cfg, cfg.get("ckpt_path")))
    metrics = plain_metrics(trainer.callback_metrics)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    result = {"metrics": metrics, "best_checkpoint": best, "output_dir": str(out)}
    write_json(out / "train_metrics.json", result)
    log.info("best checkpoint: %s", best or "(none)")
    log.info("outputs in %s", out)
    return result
