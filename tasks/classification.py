"""Image classification (ImageNet, class folders, generated shapes): cross-entropy, top-1/top-5."""

from __future__ import annotations

from pathlib import Path

import torch
import torchmetrics
from torch import nn

from toolkit.heads import build_classifier
from toolkit.predictions import ClassificationFiles
from toolkit.tasks.base import BaseTask


class ClassificationTask(BaseTask):
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
