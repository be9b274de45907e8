"""Face embeddings (paper §4.7, Table 14): an L2-normalised embedding distilled from a teacher's; verification.

The student's embedding has the teacher's width (a linear projection after pooling when the
backbone's width differs); loss = squared L2 distance to the teacher's (normalised) embedding,
as the paper. `teacher=none` trains on identity folders instead (softmax over cosine similarity
to per-identity weights, scaled): how a teacher for the generated data is made. Validation and
`mode=eval` score a pairs file: 10-fold accuracy, TAR at FAR 1e-3 / 1e-4, ROC points and plot.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.utilities.distributed import gather_all_tensors

from toolkit.backbones import create_backbone
from toolkit.distill.losses import embedding_distillation_loss
from toolkit.errors import ConfigError, DataError
from toolkit.io import atomic_path, json_text, write_text_atomic
from toolkit.predictions import EmbeddingFiles
from toolkit.tasks.base import register_task
from toolkit.tasks.distillation import DistillationTask
from toolkit.tasks.inference import EmbeddingContract
from toolkit.verification import plot_roc, verification_report


class EmbeddingNet(nn.Module):
    """backbone -> global average pool -> (projection if widths differ) -> L2 normalisation."""

    def __init__(self, backbone: nn.Module, dim: int):
        super().__init__()
        self.backbone = backbone
        self.projection = nn.Identity() if backbone.num_features == dim else nn.Linear(backbone.num_features, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the norm in fp32: under bf16 autocast the unit vectors would carry only ~3 significant digits
        return F.normalize(self.projection(self.backbone(x).mean(dim=(2, 3))).float(), dim=1)


@register_task
class FaceEmbeddingTask(DistillationTask):
    inference_contract = EmbeddingContract
    monitor = "val/accuracy"
    monitor_mode = "max"
    resolution_multiple = 32
    data_kind = "face_embedding"
    distill_output = "embedding"
    accepted_teacher_outputs = ("embedding",)

    def __init__(
        self,
        *,
        embedding_dim: int | None = None,
        num_identities: int = 0,
        identity_scale: float = 16.0,
        fars: Sequence[float] = (0.001, 0.0001),
        folds: int = 10,
        **kwargs,
    ):
        """`embedding_dim` is the model's width, yet a task argument: null means the teacher's width, which only the
        task resolves (then records here, so the checkpoint rebuilds without the teacher). `num_identities`,
        `identity_scale`: teacher=none's identity softmax. `fars`, `folds`: verification. The rest:
        `DistillationTask` (`model`: keyword arguments of `EmbeddingNet`, which has no setting besides the width)."""
        if embedding_dim is not None and embedding_dim < 1:
            raise ConfigError("task.embedding_dim", embedding_dim, "a positive width, or null for the teacher's")
        self.fars = tuple(fars)
        super().__init__(**kwargs)

    @property
    def output_dim(self) -> int:
        return self.hparams.embedding_dim

    def expected_teacher_dim(self) -> int:
        return self.hparams.embedding_dim

    def configure_models(self) -> None:
        dim = self.hparams.embedding_dim
        if dim is None:  # the teacher's width; recorded in hparams so checkpoints rebuild without the teacher
            dim = self.teacher.probe_dim() if self.has_teacher else 128
            self.hparams["embedding_dim"] = int(dim)
        self.model = EmbeddingNet(create_backbone(**self.hparams.backbone), int(dim), **self.model_kwargs)
        self.identity_weights = None
        if not self.has_teacher and self.hparams.num_identities > 0:
            self.identity_weights = nn.Parameter(torch.randn(self.hparams.num_identities, int(dim)) * 0.01)
        self._val_embeddings: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.last_report: dict | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # ---- training ------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        super().on_fit_start()
        if not self.has_teacher and self.identity_weights is None:
            raise DataError("teacher=none trains on identities: put the images in <data.root>/<identity>/ folders "
                            "(2+ identities), or give a teacher (teacher=/path/to/teacher.ckpt)")

    def training_step(self, batch: dict, batch_idx: int):
        self.log_skipped(batch, "train")
        if "image" not in batch:
            return None
        emb = self(batch["image"])
        if self.has_teacher:
            target = F.normalize(self.teacher_outputs(batch).float(), dim=1)
            loss = embedding_distillation_loss(emb, target)
        else:
            labels = batch["label"]
            if (labels < 0).any():
                raise DataError(f"teacher=none: {batch['path'][int((labels < 0).nonzero()[0])]} lies outside an identity folder")
            with torch.autocast(emb.device.type, enabled=False):  # scaled cosines: a bf16 matmul would round them
                logits = self.hparams.identity_scale * emb @ F.normalize(self.identity_weights.float(), dim=1).T
            loss = F.cross_entropy(logits, labels)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=emb.shape[0])
        return loss

    # ---- verification --------------------------------------------------------------------------
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self.log_skipped(batch, "val")
        if "image" not in batch:
            return
        self._val_embeddings.append((batch["index"].detach(), self(batch["image"]).detach().float()))

    def on_validation_epoch_end(self) -> None:
        dataset = self.trainer.val_dataloaders.dataset
        parts, self._val_embeddings = self._val_embeddings, []
        if parts:
            index, emb = torch.cat([i for i, _ in parts]), torch.cat([e for _, e in parts])
        else:  # every batch of this rank was skipped: it still takes part in the gather below
            index = torch.zeros(0, dtype=torch.long, device=self.device)
            emb = torch.zeros(0, self.hparams.embedding_dim, device=self.device)
        if self.trainer.world_size > 1:  # every rank scored its own, unpadded shard (sizes differ): gather before pairing
            index = torch.cat(gather_all_tensors(index))
            emb = torch.cat(gather_all_tensors(emb))
        if not len(index):
            return
        table = torch.full((len(dataset), emb.shape[1]), float("nan"), device=emb.device)
        table[index] = emb
        table = table.cpu().numpy()
        pairs = dataset.pairs
        usable = ~np.isnan(table[pairs[:, 0], 0]) & ~np.isnan(table[pairs[:, 1], 0])  # skipped images drop their pairs
        if self.trainer.sanity_checking or not usable.any():
            return
        scores = np.sum(table[pairs[usable, 0]] * table[pairs[usable, 1]], axis=1)  # cosine: embeddings are unit length
        folds = dataset.folds[usable] if dataset.folds is not None else None
        report = verification_report(scores, dataset.same[usable], folds, self.fars, self.hparams.folds)
        report["pairs_skipped"] = int((~usable).sum())
        self.last_report = report
        self.log("val/accuracy", report["accuracy"], prog_bar=True)
        self.log("val/accuracy_std", report["accuracy_std"])
        self.log("val/auc", report["auc"])
        for point in report["tar_at_far"]:
            self.log(f"val/tar@far{point['far']:g}", point["tar"], prog_bar=point["far"] == self.fars[0])

    def write_eval_outputs(self, metrics: dict[str, float], output_dir: Path) -> None:
        """`verification.json` (folds, thresholds, TAR@FAR), `roc.csv` and `roc.png`."""
        report = self.last_report
        if report is None:
            return
        roc = report["roc"]
        with atomic_path(output_dir / "roc.csv") as tmp, tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["threshold", "far", "tar"])
            writer.writerows(zip(roc["threshold"].tolist(), roc["fpr"].tolist(), roc["tpr"].tolist(), strict=True))
        summary = {k: v for k, v in report.items() if k != "roc"}
        write_text_atomic(output_dir / "verification.json", json_text(summary, indent=2, default=float) + "\n")
        plot_roc(report, output_dir / "roc.png")
        for point in report["tar_at_far"]:
            if not point["resolvable"]:
                print(f"note: FAR {point['far']:g} needs >= {int(np.ceil(1 / point['far']))} impostor pairs; this pairs file has "
                      f"{point['impostor_pairs']}, so TAR@FAR{point['far']:g} is measured at FAR 0")

    # ---- prediction ----------------------------------------------------------------------------
    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        if "image" not in batch:
            return []
        return [{"path": p, "embedding": e} for p, e in zip(batch["path"], self(batch["image"]).float().tolist(), strict=True)]

    def prediction_files(self, output_dir: Path) -> EmbeddingFiles:
        return EmbeddingFiles(output_dir)

