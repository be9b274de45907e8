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
from toolkit.tasks.classification import ClassificationTask, per_class_rows

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

    def configure_metrics(self) -> None:
        super().configure_metrics()
        for metrics in (self.train_metrics, self.val_metrics, self.test_metrics):
            metrics.add_metrics({"mean_class_acc": torchmetrics.classification.MulticlassAccuracy(self.num_classes, average="macro")})

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
        """The classification outputs (confusion matrix, per-class accuracy), then confused_pairs.csv and a
        Markdown summary."""
        super().write_eval_outputs(metrics, output_dir)
        if self.confusion is None:
            return
        cm = self.confusion
        per_class = [(r[0], r[1], r[2], r[3]) for r in per_class_rows(cm, self.class_names, None)]
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
