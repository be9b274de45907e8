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

    BAR_WIDTH = 12

    def configure_columns(self, trainer: Trainer) -> list:
        columns = super().configure_columns(trainer)
        columns[1] = CustomBarColumn(complete_style=self.theme.progress_bar, finished_style=self.theme.progress_bar_finished,
                                     pulse_style=self.theme.progress_bar_pulse, bar_width=self.BAR_WIDTH)
        return columns[:4]  # without the it/s column

    def _get_train_description(self, current_epoch: int) -> str:
        # "Epoch 1/8" ... "Epoch 8/8" for max_epochs=8 (Lightning's reads "Epoch 0/7" ... "Epoch 7/7")
        description = f"Epoch {current_epoch + 1}" + (f"/{self.trainer.max_epochs}" if self.trainer.max_epochs else "")
        return f"{description:{len(self.validation_description)}}"

    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict:
        console = getattr(self, "_console", None)
        # everything but the metrics: "Epoch 12/99 " + bar + " 123/456 " + "0:01:02 • 0:03:04 " (+ separators)
        batches = trainer.num_training_batches if isinstance(trainer.num_training_batches, int) else 9999
        fixed = len(f"Epoch {trainer.max_epochs}/{trainer.max_epochs}") + 2 + self.BAR_WIDTH + 2 * len(str(batches)) + 3 + 19
        return short_metrics(super().get_metrics(trainer, pl_module), (console.width if console is not None else 80) - fixed)


def short_metrics(metrics: dict, room: int) -> dict[str, str]:
    """{short name: 3 significant digits} of the progress-bar metrics, the training loss first, cut to `room`
    characters as "name: value" pairs joined by spaces (Lightning's metrics column). Lightning's "v_num" and
    "_epoch" copies of step metrics are left out; "train/loss_step" reads "loss", "val/loss" "val_loss" and
    other validation metrics drop their "val/" ("top1", "map")."""
    out: dict[str, str] = {}
    for name, value in metrics.items():
        if name == "v_num" or (name.endswith("_epoch") and f"{name[:-6]}_step" in metrics):
            continue
        if name.endswith("skipped_samples") and not value:
            continue
        short = name.removesuffix("_step").removeprefix("train/")
        short = "val_loss" if short == "val/loss" else short.removeprefix("val/")
        out[short] = f"{value:.3g}" if isinstance(value, float) else str(value)
    first = ("loss", "top1", "map", "val_loss")  # the training loss, then the task's usual metric
    ordered = dict(sorted(out.items(), key=lambda kv: first.index(kv[0]) if kv[0] in first else len(first)))
    fitted, used = {}, 0
    for name, value in ordered.items():
        width = len(name) + len(value) + 3
        if used + width > room:
            break
        fitted[name], used = value, used + width
    return fitted


class TrainingCurves(Callback):
    """`training_curves.png` in the run folder, redrawn at the end of every training epoch (after its validation):
    the loss (train and val), the task's metric (its checkpoint monitor, e.g. val/top1 or val/map, and val/map_50
    for detectors) and the learning rate, by epoch. Values come from the metrics the task logged
    (`trainer.callback_metrics`); the learning rate from the optimizer."""

    FILE = "training_curves.png"

    def __init__(self, filename: str = FILE):
        self.filename = filename
        self.history: dict[str, list[tuple[int, float]]] = {}

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.fast_dev_run or trainer.sanity_checking or not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if getattr(v, "numel", lambda: 1)() == 1}
        train_loss = metrics.get("train/loss_epoch", metrics.get("train/loss"))
        values = {"train/loss": train_loss, "val/loss": metrics.get("val/loss")}
        for key in self.metric_keys(pl_module):
            values[key] = metrics.get(key)
        for i, optimizer in enumerate(trainer.optimizers):
            values[f"lr{'' if i == 0 else f' (optimizer {i})'}"] = float(optimizer.param_groups[0]["lr"])
        for key, value in values.items():
            if value is not None and value == value:  # not NaN
                self.history.setdefault(key, []).append((epoch, value))
        self.write(Path(trainer.default_root_dir) / self.filename)

    @staticmethod
    def metric_keys(pl_module: LightningModule) -> list[str]:
        monitor = getattr(pl_module, "monitor", None)
        keys = [monitor] if monitor and not monitor.endswith("loss") else []
        if monitor == "val/map":
            keys.append("val/map_50")
        return keys

    def write(self, path: Path) -> Path:
        from toolkit.visualize import save_figure

        return save_figure(self.figure(), path)

    def figure(self):
        from toolkit.visualize import curves_figure

        metric_keys = [k for k in self.history if k not in ("train/loss", "val/loss") and not k.startswith("lr")]
        return curves_figure(self.history, loss_keys=["train/loss", "val/loss"], metric_keys=metric_keys,
                             lr_keys=[k for k in self.history if k.startswith("lr")])


def spread(items: list, count: int) -> list:
    """`count` items evenly spaced over the list: validation folders are sorted by class, so the first 16 images
    would all show one class."""
    if len(items) <= count:
        return list(items)
    step = len(items) / count
    return [items[int(i * step)] for i in range(count)]


class ValidationMosaic(Callback):
    """`val_predictions.png` in the run folder when training ends: the trained model's predictions on validation
    images spread over the split (image tasks: classification captions "name 0.88", green when right, red and "(is <true
    class>)" when wrong;
    detection boxes drawn as `mode=predict` draws them). Other tasks write nothing."""

    FILE = "val_predictions.png"

    def __init__(self, images: int = 16, filename: str = FILE):
        self.images, self.filename = images, filename

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.fast_dev_run or not trainer.is_global_zero or trainer.datamodule is None:
            return
        try:
            path = self.write(trainer, pl_module)
        except Exception as error:  # noqa: BLE001 - a picture must not fail a finished training; said in one line
            log.warning("no %s: %s: %s", self.filename, type(error).__name__, error)
            return
        if path is not None:
            log.info("validation predictions: %s", path)

    def write(self, trainer: Trainer, pl_module: LightningModule) -> Path | None:
        import torch
        from lightning.pytorch.utilities import move_data_to_device
        from PIL import Image

        from toolkit.visualize import draw_boxes_on, mosaic

        dataset = getattr(trainer.datamodule, "val_dataset", None)
        kind = getattr(pl_module, "data_kind", None)
        if kind == "classification" and hasattr(dataset, "samples"):
            truth = {str(p): int(label) for p, label in spread(dataset.samples, self.images)}
        elif kind == "detection" and hasattr(dataset, "records"):
            truth = {str(r[1]): None for r in spread(dataset.records, self.images // 2)}
        else:
            return None
        if not truth or not hasattr(trainer.datamodule, "predict_loader"):
            return None
        records = []
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.no_grad():
                for i, batch in enumerate(trainer.datamodule.predict_loader([Path(p) for p in truth])):
                    records += pl_module.predict_step(move_data_to_device(batch, pl_module.device), i)
        finally:
            pl_module.train(was_training)
        tiles = []
        thumb = 160 if kind == "classification" else 256
        for record in records:
            with Image.open(record["path"]) as img:
                img = img.convert("RGB")
            if kind == "detection":  # drawn at the tile's size, so labels are sized for the tile
                scale = (thumb - 6) / max(img.size)
                img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
                detections = [{**d, "box_xyxy": [v * scale for v in d["box_xyxy"]]} for d in record["detections"]]
                caption = f"{Path(record['path']).name}: {len(detections)} box{'es' if len(detections) != 1 else ''}"
                tiles.append((draw_boxes_on(img, detections), caption, None))
            else:
                best, label = record["top_k"][0], truth[str(record["path"])]
                caption = f"{best['name']} {best['score']:.2f}"
                if best["label"] != label:  # wrong: say what it is
                    caption += f" (is {pl_module.class_names[label]})"
                tiles.append((img, caption, best["label"] == label))
        return mosaic(tiles, Path(trainer.default_root_dir) / self.filename, thumb=thumb, columns=4)
