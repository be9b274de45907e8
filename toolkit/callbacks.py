"""Checkpoint callbacks shared by every task: `last.ckpt` mid-epoch and at every epoch end; the data a run trained on."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn

#: the checkpoint entry `RememberData` writes
DATA_CONFIG_KEY = "data_config"


class RememberData(Callback):
    """Write the data config a run trains with into every checkpoint it saves (`checkpoint["data_config"]`), so that
    eval, predict, export and a resumed run read the same data (paths, resolution, classes) without the user typing
    every path again. `config` is plain data (the resolved `data` config); `choice` the `data=` option it came from."""

    def __init__(self, config: dict, choice: str | None = None):
        self.config, self.choice = config, choice

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        checkpoint[DATA_CONFIG_KEY] = {"choice": self.choice, "config": self.config}


class LastCheckpoint(Callback):
    """Keep one `last.ckpt`, rewritten every `every_n_train_steps` steps and at the end of every epoch.

    Lightning's `save_last=True` only refreshes `last.ckpt` when its own callback saved a checkpoint at that step
    (for a monitored callback: only when the metric improved), and one ModelCheckpoint cannot save both every N
    steps and at every epoch end. This callback owns `last.ckpt` alone (the best-model callback keeps
    `save_last: false`) and writes it through the public `Trainer.save_checkpoint`, to a temporary name renamed
    over the old file: a run killed while saving still has its previous `last.ckpt` whole.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 50):
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps or 0
        self._saved_at_step = -1

    @property
    def path(self) -> Path:
        return self.dirpath / "last.ckpt"

    def _skip(self, trainer: Trainer) -> bool:
        return bool(trainer.fast_dev_run) or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        step = trainer.global_step
        if self.every_n_train_steps and step % self.every_n_train_steps == 0 and not self._skip(trainer):
            self.save(trainer)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After the epoch's validation (it runs inside the last training batch), so the file holds a finished epoch
        # even when a step-triggered save already happened at this very step.
        if not self._skip(trainer):
            self.save(trainer, force=True)

    def save(self, trainer: Trainer, force: bool = False) -> None:
        if trainer.global_step == self._saved_at_step and not force:
            return
        tmp = self.dirpath / f".last.ckpt.{trainer.global_step}.tmp"
        try:
            trainer.save_checkpoint(tmp, weights_only=False)  # the whole state, to resume; every rank calls it, rank 0 writes
        except OSError as error:  # a full disk: the old last.ckpt stays; the error names it, not the temporary name
            tmp.unlink(missing_ok=True)
            if error.filename == str(tmp) and error.errno is not None:
                raise OSError(error.errno, error.strerror, str(self.path)) from error
            raise
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier("last_checkpoint")
        self._saved_at_step = trainer.global_step
        for logger in trainer.loggers:  # metrics.csv on disk then covers every step the checkpoint holds
            logger.save()
