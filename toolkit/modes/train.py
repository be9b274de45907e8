"""mode=train: fit on the training split, keep best and last checkpoints, print the last validation and the best score.

The best checkpoint is not re-evaluated here: `mode=eval ckpt_path=<best>` does that on any split."""

from __future__ import annotations

import copy
import logging

from omegaconf import DictConfig

from toolkit.compilation import compile_task_model
from toolkit.console import metrics_table
from toolkit.io import trust_file_enabled
from toolkit.modes.common import (
    build_datamodule,
    build_task,
    build_trainer,
    check_resume_fits,
    output_dir,
    plain_metrics,
    record_resume,
    resolve_checkpoint,
    restore_data_config,
    write_json,
)
from toolkit.modes.profile import describe_model
from toolkit.profiling.counting import count_model

log = logging.getLogger(__name__)


def per_image_counts(task, resolution: int) -> dict[str, int]:
    """Parameters, conv/FC weights and mult-adds per image of the trained model (what a training sweep plots its
    score against), counted on a CPU copy so the trained model stays where the trainer left it."""
    count = count_model(copy.deepcopy(task.model).cpu(), task.example_input(resolution, 1))
    return {"params": count.params, "weights": count.weights, "mult_adds": count.mult_adds}


def train(cfg: DictConfig) -> dict:
    ckpt_path = resolve_checkpoint(cfg, cfg.get("ckpt_path"))
    out = output_dir(cfg)
    checkpoint = None
    if ckpt_path:  # resuming: into this run's new folder, which records where it came from, on the same data
        checkpoint = record_resume(ckpt_path, out)
        restore_data_config(cfg, checkpoint, ckpt_path)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    task = build_task(cfg, datamodule)
    if checkpoint is not None:
        check_resume_fits(task, checkpoint, ckpt_path)
    if cfg.get("init_from"):
        if ckpt_path:
            log.warning("init_from=%s is ignored: resuming from %s restores every weight", cfg.init_from, ckpt_path)
        else:
            task.load_init_weights(cfg.init_from, strict=cfg.get("init_from_strict", True))
    compile_task_model(cfg.get("compile", False), task, "train")
    trainer = build_trainer(cfg, task)
    trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=not trust_file_enabled())
    metrics = plain_metrics(trainer.callback_metrics)
    checkpoint = trainer.checkpoint_callback  # the `best` ModelCheckpoint (the first one configured)
    best = checkpoint.best_model_path if checkpoint else ""
    best_score = checkpoint.best_model_score if checkpoint else None
    result = {"metrics": metrics, "best_checkpoint": best, "output_dir": str(out),
              "global_step": trainer.global_step, "epoch": trainer.current_epoch,
              "monitor": checkpoint.monitor if checkpoint else None,
              "best_score": None if best_score is None else float(best_score)}
    skipped = {k: int(v) for k, v in metrics.items() if k.endswith("skipped_samples") and v > 0}
    if skipped:
        log.warning("skipped corrupt samples in the last epoch (data.skip_corrupt=true): %s; every epoch's count "
                    "is in the metrics file", ", ".join(f"{k}={v}" for k, v in sorted(skipped.items())))
    if trainer.world_size > 1:  # one file per rank: they should agree on every synchronised (val) metric
        write_json(out / f"train_metrics.rank{trainer.global_rank}.json", result)
    if trainer.is_global_zero:
        result["model"] = {**describe_model(cfg, task), **per_image_counts(task, int(cfg.data.resolution))}
        write_json(out / "train_metrics.json", result)
        validation = {k: v for k, v in metrics.items() if k.startswith("val/")}
        if validation:
            print(f"validation after epoch {trainer.current_epoch - 1}:")
            print(metrics_table(validation))
        if result["best_score"] is not None:
            print(f"best {result['monitor']}: {result['best_score']:.4f}")
        log.info("best checkpoint: %s", best or ("(none: trainer.fast_dev_run writes none)" if trainer.fast_dev_run
                                                 else "(none)"))
        log.info("outputs in %s", out)
    return result
