"""PlaNet geolocation: classify a photo into S2 cells, answer the argmax cell's location, score by distance.

One softmax head per partitioning (coarse to fine), trained with cross-entropy; the true cell of each photo
is looked up from its coordinates with the task's own partitionings, so any geo CSV can be evaluated. With
several partitionings and `hierarchical=true`, a fine cell's score is the product of its probability and
those of its ancestor cells in the coarser partitionings (Müller-Budack et al. 2018's combination).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
import torchmetrics
from torch import nn

from toolkit.backbones import create_backbone
from toolkit.errors import ConfigError
from toolkit.geo.cell_scores import cell_log_scores
from toolkit.geo.metrics import IM2GPS_SCALES, GeoDistanceAccuracy, im2gps_table, metric_key
from toolkit.geo.s2cells import assign_cells, leaf_cell_ids, tokens_to_ids
from toolkit.heads import ClassifierHead
from toolkit.io import atomic_path, write_text_atomic
from toolkit.predictions import GeolocationFiles
from toolkit.tasks.base import BaseTask, register_task
from toolkit.tasks.inference import GeolocationContract

PLANET_NUM_CELLS = 26263  # PlaNet's partitioning (t_max=10000, t_min=50 over 126M photos)
PREDICT_LOCATIONS = ("mean", "center")


class GeoClassifier(nn.Module):
    """`backbone` then one `ClassifierHead` per partitioning; returns a tuple of logits, coarse to fine."""

    def __init__(self, backbone: nn.Module, num_cells: list[int], *, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.heads = nn.ModuleList(ClassifierHead(backbone.num_features, n, dropout) for n in num_cells)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.backbone(x)
        return tuple(head(features) for head in self.heads)


@register_task
class GeolocationTask(BaseTask):
    inference_contract = GeolocationContract
    monitor = "val/within_25km"
    monitor_mode = "max"
    resolution_multiple = 32
    data_kind = "geolocation"

    def __init__(
        self,
        *,
        num_cells: int | list[int] = PLANET_NUM_CELLS,
        partitions: list[dict] | None = None,
        hierarchical: bool = True,
        predict_location: str = "mean",
        label_smoothing: float = 0.0,
        predict_top_k: int = 5,
        **kwargs,
    ):
        """`model`: keyword arguments of `GeoClassifier` (`dropout`); the rest: `BaseTask`."""
        if predict_location not in PREDICT_LOCATIONS:
            raise ConfigError("task.predict_location", predict_location, "mean (mean training photo of the cell) or center")
        self.partitions = list(partitions or [])
        if self.partitions:
            self.num_cells = [len(p["tokens"]) for p in self.partitions]
        else:  # no data (mode=profile/export): the head sizes alone, e.g. PlaNet's 26,263 cells
            self.num_cells = list(num_cells) if isinstance(num_cells, list | tuple) else [int(num_cells)]
        super().__init__(**kwargs)
        self._register_cell_tables()

    # ---- set-up ------------------------------------------------------------------------------
    def configure_models(self) -> None:
        self.model = GeoClassifier(create_backbone(**self.hparams.backbone), self.num_cells, **self.model_kwargs)

    def configure_losses(self) -> None:
        # -1 = the photo's cell was dropped (< t_min photos) in that partitioning: no loss from that head
        self.criterion = nn.CrossEntropyLoss(ignore_index=-1, label_smoothing=self.hparams.label_smoothing)

    def configure_metrics(self) -> None:
        finest = self.num_cells[-1]
        cell_top1 = torchmetrics.classification.MulticlassAccuracy(finest, ignore_index=-1, average="micro")
        self.train_cell_top1, self.val_cell_top1, self.test_cell_top1 = (cell_top1.clone() for _ in range(3))
        self.val_distance, self.test_distance = GeoDistanceAccuracy(), GeoDistanceAccuracy()
        # exact across ranks that score different numbers of photos (self.log(sync_dist=True) rounds the counts)
        self.val_loss, self.test_loss = torchmetrics.MeanMetric(), torchmetrics.MeanMetric()

    def _register_cell_tables(self) -> None:
        """Cell ids, prediction coordinates and ancestor maps as tensors, derived from the plain-data partitions."""
        self.cell_ids: list[np.ndarray] = [tokens_to_ids(p["tokens"]) for p in self.partitions]
        for part, ids in zip(self.partitions, self.cell_ids, strict=True):
            if np.any(ids[1:] <= ids[:-1]):  # lookups bisect the ids
                raise ValueError(f"partition {part.get('name')!r}: cell tokens must be sorted by cell id, without repeats")
        for k, part in enumerate(self.partitions):
            latlon = torch.tensor(part[self.hparams.predict_location], dtype=torch.float64).reshape(-1, 2)
            self.register_buffer(f"cell_latlon_{k}", latlon, persistent=False)
        if self.partitions:
            fine = self.cell_ids[-1]
            for k in range(len(self.partitions) - 1):  # index of each fine cell's ancestor in partitioning k
                ancestors = torch.from_numpy(assign_cells(fine, self.cell_ids[k]))
                self.register_buffer(f"ancestor_{k}", ancestors, persistent=False)

    # ---- cells ----------------------------------------------------------------------------------
    def cell_labels(self, latlon: torch.Tensor) -> torch.Tensor:
        """(B, P) index of each photo's cell in every partitioning; -1 where it lies in no kept cell."""
        ll = latlon.detach().cpu().double().numpy()
        labels = np.full((len(ll), len(self.partitions)), -1, dtype=np.int64)
        known = ~np.isnan(ll).any(1)
        if known.any():
            leaves = leaf_cell_ids(ll[known, 0], ll[known, 1])
            for k, ids in enumerate(self.cell_ids):
                labels[known, k] = assign_cells(leaves, ids)
        return torch.from_numpy(labels).to(latlon.device)

    def cell_log_scores(self, logits: tuple[torch.Tensor, ...]) -> torch.Tensor:
        """(B, cells of the finest partitioning) log-scores: the finest head's log-probabilities, plus its
        ancestors' in every coarser partitioning when hierarchical (a dropped ancestor adds nothing)."""
        return cell_log_scores(logits, self.ancestor_maps(len(logits)))

    def ancestor_maps(self, heads: int) -> list[torch.Tensor]:
        """The fine cells' ancestor index in each coarser partitioning (-1: dropped), [] when not hierarchical."""
        if not self.hparams.hierarchical or heads < 2:
            return []
        return [getattr(self, f"ancestor_{k}") for k in range(heads - 1)]

    def locate(self, logits: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 2) predicted lat/lon and (B,) the index of the chosen fine cell."""
        if not self.partitions:
            raise RuntimeError("this GeolocationTask has no partitions (built without data); train it on a geo dataset")
        cell = self.cell_log_scores(logits).argmax(-1)
        return getattr(self, f"cell_latlon_{len(self.partitions) - 1}")[cell], cell

    # ---- steps ----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model(x)

    def _loss(self, logits: tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
        terms = [self.criterion(lg, labels[:, k]) for k, lg in enumerate(logits) if (labels[:, k] >= 0).any()]
        # mean over partitionings, so adding one does not change the learning-rate scale
        return torch.stack(terms).mean() if terms else logits[-1].sum() * 0.0

    def _step(self, batch: dict, stage: str) -> torch.Tensor | None:
        self.log_skipped(batch, stage)
        if "image" not in batch:  # every sample of this batch was a skipped corrupt file
            return None
        logits = self(batch["image"])
        labels = self.cell_labels(batch["latlon"])
        loss = self._loss(logits, labels)
        bs = len(labels)
        self.log_loss(stage, loss, bs)
        cell_top1 = getattr(self, f"{stage}_cell_top1")
        cell_top1(logits[-1], labels[:, -1])
        self.log(f"{stage}/cell_top1", cell_top1, on_step=False, on_epoch=True, batch_size=bs)
        if stage != "train":
            getattr(self, f"{stage}_distance").update(self.locate(logits)[0], batch["latlon"])
        return loss

    def _log_distances(self, stage: str) -> None:
        metric = getattr(self, f"{stage}_distance")
        if self.updated_on_any_rank(metric):
            results = metric.compute()
            self.log(f"{stage}/within_25km", results.pop("within_25km"), prog_bar=True)
            self.log_dict({f"{stage}/{k}": v for k, v in results.items()})
        metric.reset()

    def training_step(self, batch: dict, batch_idx: int):
        return self._step(batch, "train")

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_distances("val")

    def on_test_epoch_end(self) -> None:
        self._log_distances("test")

    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        if "image" not in batch:
            return []
        logits = self(batch["image"])
        latlon, _ = self.locate(logits)
        scores = self.cell_log_scores(logits).softmax(-1)  # renormalised over the fine cells
        k = min(self.hparams.predict_top_k, self.num_cells[-1])
        top_scores, top_cells = scores.topk(k, dim=-1)
        fine = self.partitions[-1]
        records = []
        for path, (lat, lon), ss, cc in zip(batch["path"], latlon.tolist(), top_scores.tolist(), top_cells.tolist(),
                                             strict=True):
            cells = [{"token": fine["tokens"][c], "score": s, "lat": fine[self.hparams.predict_location][c][0],
                      "lon": fine[self.hparams.predict_location][c][1]} for s, c in zip(ss, cc, strict=True)]
            records.append({"path": path, "lat": lat, "lon": lon, "top_cells": cells})
        return records

    # ---- outputs --------------------------------------------------------------------------------
    def write_eval_outputs(self, metrics: dict[str, float], output_dir: Path) -> None:
        """The Im2GPS table (this run beside the paper's Table 11) as Markdown and CSV."""
        prefix = "val/" if any(k.startswith("val/") for k in metrics) else "test/"
        table = im2gps_table(metrics, prefix=prefix)
        write_text_atomic(output_dir / "im2gps_table.md", table)
        with atomic_path(output_dir / "im2gps_table.csv") as tmp, tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["threshold_km", "within_fraction"])
            for _, km in IM2GPS_SCALES:
                writer.writerow([km, f"{metrics.get(prefix + metric_key(km), float('nan')):.6f}"])
            writer.writerow(["median_km", f"{metrics.get(f'{prefix}median_km', float('nan')):.3f}"])
        print(table)

    def prediction_files(self, output_dir: Path) -> GeolocationFiles:
        return GeolocationFiles(output_dir)
