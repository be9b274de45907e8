"""mode=eval: metrics of a checkpoint on the validation split, printed and written as JSON."""

from __future__ import annotations

import logging

from omegaconf import DictConfig

from toolkit.compilation import compile_task_model, int8_trainer_settings
from toolkit.console import metrics_table
from toolkit.modes.common import (
    build_datamodule,
    build_trainer,
    load_task,
    output_dir,
    plain_metrics,
    write_json,
)

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict:
    out = output_dir(cfg)
    task = load_task(cfg)
    datamodule = build_datamodule(cfg, task)
    datamodule.prepare_data()
    datamodule.setup("validate")
    val = getattr(datamodule, "val_dataset", None)

    def calibration():  # compile=int8: ranges from export.calibration (the training split, eval transform)
        from toolkit.modes.export_data import calibration_inputs

        if cfg.export.calibration == "train":
            datamodule.setup("fit")
        return calibration_inputs(cfg, datamodule)[0]

    compile_task_model(cfg.get("compile", False), task, "eval", n_images=len(val) if val is not None else None,
                       calibration=calibration)
    trainer = build_trainer(cfg, task, logger=False, **int8_trainer_settings(cfg.get("compile")))
    (metrics,) = trainer.validate(task, datamodule=datamodule, verbose=False)  # one table: ours, below
    metrics = plain_metrics(metrics)
    write_json(out / "metrics.json", metrics)
    precision = str(trainer.precision)
    if precision not in ("32-true", "32"):  # asked for (auto evaluates in fp32): these numbers depend on the hardware
        print(f"evaluated under trainer.precision={precision}: fp32 numbers with trainer.precision=32-true")
    print(metrics_table(metrics))
    task.write_eval_outputs(metrics, out)  # per-class tables and pictures, after the summary
    print(f"metrics written to {out / 'metrics.json'}")
    return {"metrics": metrics, "output_dir": str(out), "precision": precision}
