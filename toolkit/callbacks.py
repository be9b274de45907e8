"""Callbacks shared by every task: `last.ckpt` mid-epoch and at every epoch end; the data a run trained on; the
console (a one-line model summary, a progress bar that fits the terminal)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelSummary, RichProgressBar
from lightning.pytorch.callbacks.progress.rich_progress import CustomBarColumn
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.model_summary import get_human_readable_count

log = logging.getLogger(__name__)

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


class ModelSummaryLine(ModelSummary):
    """The model in one log line ("model: ImageClassifier, 214 K parameters (214 K trainable), 0.9 MB"), in place of
    Lightning's table of the LightningModule's attributes (metrics, losses: zeros) and its FLOPs column (zero unless
    the module sets an example input). `mode=profile` gives the full count, layer by layer type."""

    def __init__(self) -> None:
        super().__init__(max_depth=1)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        total = sum(p.numel() for p in pl_module.parameters())
        trainable = sum(p.numel() for p in pl_module.parameters() if p.requires_grad)
        size_mb = sum(p.numel() * p.element_size() for p in pl_module.parameters()) / 1e6
        model = getattr(pl_module, "model", pl_module)
        log.info("model: %s, %s parameters (%s trainable), %.1f MB of weights", type(model).__name__,
                 get_human_readable_count(total), get_human_readable_count(trainable), size_mb)


class CompactProgressBar(RichProgressBar):
    """Lightning's Rich bar, fitted to the terminal (80 columns included): a short bar, no speed column, and the
    metrics on the same line under short names ("loss 1.82 val/top1 0.156"), as many as fit. Rich wraps a metrics
    column that is too wide into a tall block; this one is cut instead (every metric is in the run's metrics.csv)."""

    #: columns of everything but the metrics: "Epoch 12/99 " + bar + " 123/456 " + "0:01:02 • 0:03:04 "
    BAR_WIDTH = 16
    FIXED_WIDTH = 13 + BAR_WIDTH + 10 + 19

    def configure_columns(self, trainer: Trainer) -> list:
        columns = super().configure_columns(trainer)
        columns[1] = CustomBarColumn(complete_style=self.theme.progress_bar, finished_style=self.theme.progress_bar_finished,
                                     pulse_style=self.theme.progress_bar_pulse, bar_width=self.BAR_WIDTH)
        return columns[:4]  # without the it/s column

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict:
        console = getattr(self, "_console", None)
        room = (console.width if console is not None else 80) - self.FIXED_WIDTH
        return short_metrics(super().get_metrics(trainer, pl_module), room)


def short_metrics(metrics: dict, room: int) -> dict[str, str]:
    """{short name: 3 significant digits} of the progress-bar metrics, the training loss first, cut to `room`
    characters as "name: value" pairs joined by spaces (Lightning's metrics column). Lightning's "v_num" and
    "_epoch" copies of step metrics are left out; "train/loss_step" reads "loss"."""
    out: dict[str, str] = {}
    for name, value in metrics.items():
        if name == "v_num" or (name.endswith("_epoch") and f"{name[:-6]}_step" in metrics):
            continue
        if name.endswith("skipped_samples") and not value:
            continue
        short = name.removesuffix("_step").removeprefix("train/")
        out[short] = f"{value:.3g}" if isinstance(value, float) else str(value)
    ordered = dict(sorted(out.items(), key=lambda kv: kv[0] != "loss"))
    fitted, used = {}, 0
    for name, value in ordered.items():
        width = len(name) + len(value) + 3
        if used + width > room:
            break
        fitted[name], used = value, used + width
    return fitted
