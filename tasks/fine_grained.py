"""Fine-grained recognition (Stanford Dogs, paper Table 10): classification plus mean per-class accuracy and a
summary of the most confused class pairs; `init_from` always starts a fresh head (the paper's fine-tuning)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch
import torchmetrics
from torch import nn

from toolkit.io import atomic_path, write_text_atomic
from toolkit.tasks.base import register_task
from toolkit.tasks.classification import ClassificationTask

log = logging.getLogger(__name__)


@register_task
class FineGrainedTask(ClassificationTask):
    def __init__(
        self,
        *,
        num_classes: int = 120,
        confused_pairs: int = 20,
        keep_pretrained_head: bool = False,
        **kwargs,
    ):
        """`confused_pairs`: rows of confused_pairs.csv; `keep_pretrained_head`: `init_from` keeps a head whose shape
        matches. The rest: `ClassificationTask`."""
        super().__init__(num_classes=num_classes, **kwargs)
        self.confusion: torch.Tensor | None = None  # the last validation/test epoch's confusion matrix

    def configure_metrics(self) -> None:
        super().configure_metrics()
        for metrics in (self.train_metrics, self.val_metrics, self.test_metrics):
            metrics.add_metrics({"mean_class_acc": torchmetrics.classification.MulticlassAccuracy(self.num_classes, average="macro")})
        self.val_confusion = torchmetrics.classification.MulticlassConfusionMatrix(self.num_classes)
        self.test_confusion = self.val_confusion.clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = super().forward(x)
        self._last_logits = logits.detach()  # the parent's step computes them; the confusion matrix reuses them
        return logits

    def validation_step(self, batch: dict, batch_idx: int):
        super().validation_step(batch, batch_idx)
        if "image" in batch:
            self.val_confusion.update(self._last_logits, batch["label"])

    def test_step(self, batch: dict, batch_idx: int):
        super().test_step(batch, batch_idx)
        if "image" in batch:
            self.test_confusion.update(self._last_logits, batch["label"])

    def _keep_confusion(self, metric: torchmetrics.Metric) -> None:
        if self.updated_on_any_rank(metric):
            self.confusion = metric.compute().cpu()
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._keep_confusion(self.val_confusion)

    def on_test_epoch_end(self) -> None:
        self._keep_confusion(self.test_confusion)

    # ---- fine-tuning ------------------------------------------------------------------------------
    def load_init_weights(self, path: str | Path, *, strict: bool = True) -> dict[str, list[str]]:
        """The pretrained backbone, and a freshly initialised head even where shapes match (another label set),
        unless `keep_pretrained_head` (e.g. continuing from a checkpoint of this very task)."""
        report = super().load_init_weights(path, strict=strict)
        head = [k for k in report["loaded"] if k.startswith("model.head.")]
        if head and not self.hparams.keep_pretrained_head:
            for module in self.model.head.modules():
                if isinstance(module, nn.Linear | nn.Conv2d | nn.BatchNorm2d):
                    module.reset_parameters()
            report["loaded"] = [k for k in report["loaded"] if k not in head]
            report["reinitialised"] = sorted(set(report["reinitialised"]) | set(head))
            log.info("init_from: head re-initialised for %d classes (keep_pretrained_head=false)", self.num_classes)
        return report

    # ---- outputs ------------------------------------------------------------------------------------
    def confused_pair_rows(self, confusion: torch.Tensor, limit: int) -> list[dict]:
        """Class pairs ranked by how many images of either were taken for the other."""
        cm = confusion.double()
        support = cm.sum(1)
        pairs = (cm + cm.T).triu(diagonal=1)
        order = pairs.flatten().argsort(descending=True, stable=True)  # ties: lower class index first
        rows = []
        for flat in order[:limit].tolist():
            a, b = divmod(flat, cm.shape[0])
            total = int(pairs[a, b])
            if total == 0:
                break
            rows.append({"class_a": self.class_names[a], "class_b": self.class_names[b], "a_as_b": int(cm[a, b]),
                         "b_as_a": int(cm[b, a]), "total": total,
                         "share_of_pair": total / max(float(support[a] + support[b]), 1.0)})
        return rows

    def write_eval_outputs(self, metrics: dict[str, float], output_dir: Path) -> None:
        """confusion_matrix.csv, per_class_accuracy.csv, confused_pairs.csv and a Markdown summary."""
        if self.confusion is None:
            return
        cm = self.confusion
        names = self.class_names
        with atomic_path(output_dir / "confusion_matrix.csv") as tmp, tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["true \\ predicted", *names])
            writer.writerows([names[i], *map(int, row)] for i, row in enumerate(cm.tolist()))
        support, correct = cm.sum(1), cm.diag()
        per_class = sorted(((names[i], int(support[i]), int(correct[i]), float(correct[i] / support[i]))
                            for i in range(len(names)) if support[i] > 0), key=lambda r: r[3])
        with atomic_path(output_dir / "per_class_accuracy.csv") as tmp, tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["class", "images", "correct", "accuracy"])
            writer.writerows([n, s, c, f"{a:.4f}"] for n, s, c, a in per_class)
        pairs = self.confused_pair_rows(cm, self.hparams.confused_pairs)
        with atomic_path(output_dir / "confused_pairs.csv") as tmp, tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=["rank", "class_a", "class_b", "a_as_b", "b_as_a", "total", "share_of_pair"])
            writer.writeheader()
            writer.writerows({"rank": i, **r, "share_of_pair": f"{r['share_of_pair']:.4f}"} for i, r in enumerate(pairs, 1))
        prefix = "val/" if any(k.startswith("val/") for k in metrics) else "test/"
        lines = [f"{key}: {100 * metrics[prefix + key]:.2f}%" for key in ("top1", "top5", "mean_class_acc")
                 if prefix + key in metrics]
        lines += ["", "Most confused pairs (a taken for b / b taken for a):", "",
                  "| # | class a | class b | a->b | b->a | share of the pair's images |", "|---|---|---|---|---|---|"]
        lines += [f"| {i} | {r['class_a']} | {r['class_b']} | {r['a_as_b']} | {r['b_as_a']} | {100 * r['share_of_pair']:.1f}% |"
                  for i, r in enumerate(pairs[:10], 1)]
        lines += ["", "Weakest classes: " + ", ".join(f"{n} {100 * a:.0f}%" for n, _, _, a in per_class[:5])]
        summary = "\n".join(lines) + "\n"
        write_text_atomic(output_dir / "fine_grained_summary.md", summary)
        print(summary)
