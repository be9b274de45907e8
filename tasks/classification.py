"""Image classification (ImageNet, class folders, generated shapes): cross-entropy, top-1/top-5."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
import torchmetrics
from torch import nn

from toolkit.heads import build_classifier
from toolkit.io import atomic_path
from toolkit.predictions import ClassificationFiles
from toolkit.tasks.base import BaseTask, register_task
from toolkit.tasks.inference import ClassifierContract


@register_task
class ClassificationTask(BaseTask):
    inference_contract = ClassifierContract
    monitor = "val/top1"
    monitor_mode = "max"
    resolution_multiple = 32
    data_kind = "classification"

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        class_names: list[str] | None = None,
        label_smoothing: float = 0.0,
        predict_top_k: int = 5,
        channels_last: bool = False,
        **kwargs,
    ):
        """`model`: keyword arguments of `toolkit.heads.build_classifier` (`dropout`); the rest: `BaseTask`."""
        self.num_classes = num_classes
        self.channels_last = channels_last
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        super().__init__(**kwargs)

    def configure_models(self) -> None:
        self.model = build_classifier(self.hparams.backbone, self.num_classes, **self.model_kwargs)
        if self.channels_last:  # NHWC: faster convolutions on recent CPUs (oneDNN) and tensor-core GPUs
            self.model = self.model.to(memory_format=torch.channels_last)

    def configure_losses(self) -> None:
        self.criterion = nn.CrossEntropyLoss(label_smoothing=self.hparams.label_smoothing)

    def configure_metrics(self) -> None:
        top_k = min(5, self.num_classes)
        metrics = torchmetrics.MetricCollection(
            {
                "top1": torchmetrics.classification.MulticlassAccuracy(self.num_classes, top_k=1, average="micro"),
                f"top{top_k}": torchmetrics.classification.MulticlassAccuracy(self.num_classes, top_k=top_k, average="micro"),
            }
        )
        self.train_metrics = metrics.clone(prefix="train/")
        self.val_metrics = metrics.clone(prefix="val/")
        self.test_metrics = metrics.clone(prefix="test/")
        # a torchmetrics mean (float sums, summed across ranks) is exact when ranks score different numbers of
        # images; self.log(sync_dist=True) averages its integer sample counts across ranks and rounds them
        self.val_loss, self.test_loss = torchmetrics.MeanMetric(), torchmetrics.MeanMetric()
        # what mode=eval draws and tabulates per class (write_eval_outputs): the confusion matrix, and top-k per
        # class where k < the number of classes (states are not saved in checkpoints)
        self.val_confusion = torchmetrics.classification.MulticlassConfusionMatrix(self.num_classes)
        self.test_confusion = self.val_confusion.clone()
        self.val_per_class_topk = (torchmetrics.classification.MulticlassAccuracy(self.num_classes, top_k=top_k, average=None)
                                   if top_k < self.num_classes else None)
        self.test_per_class_topk = self.val_per_class_topk.clone() if self.val_per_class_topk is not None else None
        self.confusion: torch.Tensor | None = None  # the last validation/test epoch's confusion matrix
        self.per_class_topk: torch.Tensor | None = None  # ... and top-k accuracy per class (k = top_k above)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def _shared_step(self, batch: dict, stage: str, metrics: torchmetrics.MetricCollection) -> torch.Tensor | None:
        self.log_skipped(batch, stage)
        if "image" not in batch:  # every sample of this batch was a skipped corrupt file
            return None
        logits = self(batch["image"])
        loss = self.criterion(logits, batch["label"])
        metrics(logits, batch["label"])
        if stage != "train":
            getattr(self, f"{stage}_confusion").update(logits.detach(), batch["label"])
            if getattr(self, f"{stage}_per_class_topk") is not None:
                getattr(self, f"{stage}_per_class_topk").update(logits.detach(), batch["label"])
        bs = batch["label"].shape[0]
        self.log_loss(stage, loss, bs)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train", batch_size=bs)
        return loss

    def training_step(self, batch: dict, batch_idx: int):
        return self._shared_step(batch, "train", self.train_metrics)

    def validation_step(self, batch: dict, batch_idx: int):
        self._shared_step(batch, "val", self.val_metrics)

    def test_step(self, batch: dict, batch_idx: int):
        self._shared_step(batch, "test", self.test_metrics)

    def _keep_per_class(self, stage: str) -> None:
        confusion, topk = getattr(self, f"{stage}_confusion"), getattr(self, f"{stage}_per_class_topk")
        if self.updated_on_any_rank(confusion):
            self.confusion = confusion.compute().cpu()
            self.per_class_topk = topk.compute().cpu() if topk is not None else None
        confusion.reset()
        if topk is not None:
            topk.reset()

    def on_validation_epoch_end(self) -> None:
        self._keep_per_class("val")

    def on_test_epoch_end(self) -> None:
        self._keep_per_class("test")

    def write_eval_outputs(self, metrics: dict[str, float], output_dir: Path) -> None:
        """confusion_matrix.png and .csv, per_class_accuracy.csv, and the per-class table printed (worst first)."""
        from toolkit.console import format_table
        from toolkit.visualize import confusion_figure, save_figure

        if self.confusion is None:
            return
        cm, names = self.confusion, self.class_names
        with atomic_path(output_dir / "confusion_matrix.csv") as tmp, tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["true \\ predicted", *names])
            writer.writerows([names[i], *map(int, row)] for i, row in enumerate(cm.tolist()))
        png = save_figure(confusion_figure(cm.numpy(), names), output_dir / "confusion_matrix.png")
        rows = per_class_rows(cm, names, self.per_class_topk)
        k = min(5, self.num_classes)
        header = ["class", "images", "correct", "top1"] + ([f"top{k}"] if self.per_class_topk is not None else [])
        with atomic_path(output_dir / "per_class_accuracy.csv") as tmp, tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows([r[0], r[1], r[2], *(f"{v:.4f}" for v in r[3:])] for r in rows)
        shown = rows if len(rows) <= 30 else rows[:15] + rows[-15:]
        print(f"per-class accuracy ({len(rows)} classes, worst first{'; 15 worst and 15 best' if shown is not rows else ''}):")
        print(format_table(header, [[r[0], r[1], r[2], *(f"{100 * v:.1f}%" for v in r[3:])] for r in shown]))
        print(f"confusion matrix: {png}")

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        if "image" not in batch:
            return []
        probs = self(batch["image"]).softmax(-1)
        k = min(self.hparams.predict_top_k, self.num_classes)
        scores, labels = probs.topk(k, dim=-1)
        return [
            {"path": path, "top_k": [{"label": int(i), "name": self.class_names[int(i)], "score": float(s)} for s, i in zip(ss, ii, strict=True)]}
            for path, ss, ii in zip(batch["path"], scores.tolist(), labels.tolist(), strict=True)
        ]

    def prediction_files(self, output_dir: Path) -> ClassificationFiles:
        return ClassificationFiles(output_dir)


def per_class_rows(confusion: torch.Tensor, names: list[str], topk: torch.Tensor | None) -> list[list]:
    """[class, images, correct, top-1 accuracy(, top-k accuracy)] per class with images, worst top-1 first."""
    support, correct = confusion.sum(1), confusion.diag()
    rows = [[names[i], int(support[i]), int(correct[i]), float(correct[i] / support[i]),
             *([float(topk[i])] if topk is not None else [])] for i in range(len(names)) if support[i] > 0]
    return sorted(rows, key=lambda r: (r[3], r[0]))
