"""Checkpoint callbacks shared by every task: `last.ckpt` mid-epoch and at every epoch end."""

from __future__ import annotations

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn


class LastCheckpoint(ModelCheckpoint):
    """Keep one `last.ckpt`, rewritten every `every_n_train_steps` steps and at the end of every epoch.

    Lightning's `save_last=True` only refreshes `last.ckpt` when its own callback saved a checkpoint at
    that step (for a monitored callback: only when the metric improved), and two callbacks with
    `save_last` write `last.ckpt` and `last-v1.ckpt`. This one owns `last.ckpt` alone: the best-model
    callback keeps `save_last: false`. The file is overwritten in place (no version counter), so a
    run resumed into its own folder keeps writing the same file.
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 50):
        super().__init__(
            dirpath=dirpath,
            save_top_k=0,
            save_last=True,
            every_n_train_steps=every_n_train_steps or None,
            every_n_epochs=None if every_n_train_steps else 1,
            enable_version_counter=False,
        )

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # After the epoch's validation (it runs inside the last training batch), so the file holds a
        # finished epoch even when a step-triggered save already happened at this very step.
        if trainer.fast_dev_run or trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
