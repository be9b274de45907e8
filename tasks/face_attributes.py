"""Face attributes (paper §4.5, Table 12): multi-label sigmoid outputs distilled from a teacher; mean AP.

Loss: per-attribute sigmoid BCE against the teacher's probabilities at temperature T (scaled by
T²), mixed with ground-truth BCE by `label_weight` where labels exist; `teacher=none` trains on
labels alone (the supervised baseline). Metrics on the eval split: AP per attribute and their
mean (torchmetrics), plus accuracy at 0.5 (CelebA's customary figure), written as a table.
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import torch
from torchmetrics import MeanMetric
from torchmetrics.classification import MultilabelAveragePrecision, MultilabelStatScores

from toolkit.distill.losses import attribute_distillation_loss, masked_label_loss
from toolkit.errors import ConfigError, DataError
from toolkit.heads import build_classifier
from toolkit.io import atomic_path, write_text_atomic
from toolkit.predictions import AttributeFiles
from toolkit.tasks.base import register_task
from toolkit.tasks.distillation import DistillationTask
from toolkit.tasks.inference import AttributesContract


@register_task
class FaceAttributesTask(DistillationTask):
    inference_contract = AttributesContract
    monitor = "val/mAP"
    monitor_mode = "max"
    resolution_multiple = 32
    data_kind = "face_attributes"
    distill_output = "logits"
    accepted_teacher_outputs = ("logits", "probabilities")

    def __init__(
        self,
        *,
        num_attributes: int = 40,
        attribute_names: list[str] | None = None,
        temperature: float = 1.0,
        label_weight: float = 0.0,
        **kwargs,
    ):
        """`model`: keyword arguments of `toolkit.heads.build_classifier` (`dropout`); the rest: `DistillationTask`."""
        if not 0.0 <= label_weight <= 1.0:
            raise ConfigError("task.label_weight", label_weight, "a weight in [0, 1]: 0 = teacher only (the paper), 1 = labels only")
        if temperature <= 0:
            raise ConfigError("task.temperature", temperature, "must be > 0 (1 = the teacher's own probabilities)")
        self.num_attributes = num_attributes
        self.attribute_names = list(attribute_names) if attribute_names else [f"attr{i}" for i in range(num_attributes)]
        if len(self.attribute_names) != num_attributes:
            raise ConfigError("task.attribute_names", len(self.attribute_names), f"needs {num_attributes} names")
        super().__init__(**kwargs)

    @property
    def output_dim(self) -> int:
        return self.num_attributes

    def expected_teacher_dim(self) -> int:
        return self.num_attributes

    def configure_models(self) -> None:
        self.model = build_classifier(self.hparams.backbone, self.num_attributes, **self.model_kwargs)

    def configure_metrics(self) -> None:
        n = self.num_attributes
        self.val_ap = MultilabelAveragePrecision(num_labels=n, average=None, ignore_index=-1)
        self.val_stats = MultilabelStatScores(num_labels=n, average=None, ignore_index=-1)
        # exact across ranks that score different numbers of images (self.log(sync_dist=True) rounds the counts)
        self.val_loss = MeanMetric()
        self.last_table: list[dict] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # ---- loss ----------------------------------------------------------------------------------
    def teacher_logits(self, batch: dict) -> torch.Tensor:
        out = self.teacher_outputs(batch)
        if self.teacher.output == "probabilities":  # a teacher that exports probabilities: back to logits
            out = torch.logit(out.clamp(1e-6, 1 - 1e-6))
        return out

    def compute_loss(self, logits: torch.Tensor, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts: dict[str, torch.Tensor] = {}
        labels = batch.get("labels")
        weight = self.hparams.label_weight if self.has_teacher else 1.0
        if self.has_teacher:
            parts["distill"] = attribute_distillation_loss(logits, self.teacher_logits(batch), self.hparams.temperature)
        if weight > 0:
            if labels is None:
                raise DataError("task.label_weight > 0 (or teacher=none) needs attribute labels; this data has none")
            parts["labels"] = masked_label_loss(logits, labels)
        loss = (1 - weight) * parts.get("distill", 0.0) + weight * parts.get("labels", 0.0)
        return loss, parts

    def training_step(self, batch: dict, batch_idx: int):
        self.log_skipped(batch, "train")
        if "image" not in batch:
            return None
        logits = self(batch["image"])
        loss, parts = self.compute_loss(logits, batch)
        bs = logits.shape[0]
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bs)
        for name, value in parts.items():
            self.log(f"train/loss_{name}", value, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    # ---- evaluation ----------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log_skipped(batch, "val")
        if "image" not in batch:
            return
        logits = self(batch["image"])
        labels = batch["labels"].long()
        self.val_loss.update(masked_label_loss(logits, labels).detach().float(), weight=logits.shape[0])
        self.log("val/loss", self.val_loss, on_epoch=True, batch_size=logits.shape[0])
        probs = torch.sigmoid(logits.float())
        self.val_ap.update(probs, labels)
        self.val_stats.update(probs, labels)

    def on_validation_epoch_end(self) -> None:
        with warnings.catch_warnings():  # attributes without positives are handled below, not warned about
            warnings.filterwarnings("ignore", message=".*positive samples.*")
            ap = self.val_ap.compute().float().cpu()
        stats = self.val_stats.compute().float().cpu()  # per attribute: tp, fp, tn, fn, support
        self.val_ap.reset()
        self.val_stats.reset()
        positives, labelled = stats[:, 4], stats[:, :4].sum(1)
        accuracy = (stats[:, 0] + stats[:, 2]) / labelled.clamp(min=1)
        # AP is undefined for an attribute without positives (torchmetrics reports 0): leave it out of the mean
        defined = (positives > 0) & (positives < labelled)
        ap = torch.where(defined, ap, torch.full_like(ap, float("nan")))
        self.log("val/mAP", ap[defined].mean() if defined.any() else torch.tensor(0.0), prog_bar=True)
        self.log("val/mean_accuracy", accuracy[labelled > 0].mean() if (labelled > 0).any() else torch.tensor(0.0))
        self.log("val/attributes_scored", defined.sum().float())
        self.last_table = []
        for i, name in enumerate(self.attribute_names):
            if defined[i]:
                self.log(f"val/ap/{name}", ap[i])
            self.last_table.append({"attribute": name, "ap": float(ap[i]), "accuracy": float(accuracy[i]),
                                    "positives": int(positives[i]), "labelled": int(labelled[i])})

    def write_eval_outputs(self, metrics: dict[str, float], output_dir: Path) -> None:
        """`attributes.csv` and `attributes.md`: AP, accuracy and positives per attribute, mean AP last."""
        rows = self.last_table
        with atomic_path(output_dir / "attributes.csv") as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["attribute", "ap", "accuracy", "positives", "labelled"])
            writer.writeheader()
            writer.writerows(rows)
        lines = ["| attribute | AP | accuracy | positives / labelled |", "|---|---|---|---|"]
        for r in rows:
            ap = "n/a (no positives or no negatives)" if math.isnan(r["ap"]) else f"{100 * r['ap']:.1f}"
            lines.append(f"| {r['attribute']} | {ap} | {100 * r['accuracy']:.1f} | {r['positives']} / {r['labelled']} |")
        lines.append(f"| **mean** | **{100 * metrics.get('val/mAP', float('nan')):.1f}** | "
                     f"**{100 * metrics.get('val/mean_accuracy', float('nan')):.1f}** | "
                     f"{int(metrics.get('val/attributes_scored', 0))} attributes scored |")
        write_text_atomic(output_dir / "attributes.md", "\n".join(lines) + "\n")
        print("\n".join(lines))

    # ---- prediction ----------------------------------------------------------------------------
    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        if "image" not in batch:
            return []
        probs = torch.sigmoid(self(batch["image"]).float())
        return [{"path": path, "attributes": dict(zip(self.attribute_names, p, strict=True))}
                for path, p in zip(batch["path"], probs.tolist(), strict=True)]

    def prediction_files(self, output_dir: Path) -> AttributeFiles:
        return AttributeFiles(output_dir, self.attribute_names)
