"""Faster R-CNN detection (paper Table 13: Faster-RCNN 300/600 MobileNet), torchvision's FasterRCNN parts."""

from __future__ import annotations

import logging

from toolkit.detection.faster_rcnn import PAPER_ANCHOR_SIZES, PAPER_ASPECT_RATIOS, build_faster_rcnn
from toolkit.schedulers import WarmupMultiStepLR
from toolkit.tasks.detection import DetectionTask

log = logging.getLogger(__name__)


class FasterRCNNTask(DetectionTask):
    """Model options mirror `toolkit.detection.faster_rcnn.build_faster_rcnn` (see its docstring).

    Images arrive resized by the data pipeline (`data.resolution` = the shorter side, `data.transform=keep_aspect`),
    so a checkpoint evaluates or predicts at whatever `data.resolution` says (300 or 600 in the paper).

    `lr_reference_batch`: the optimizer's lr is the lr at this total batch (torchvision's recipe: 0.02 at 16
    images); the lr used is scaled linearly to `batch_size` x devices x nodes x gradient accumulation
    (`lr_reference_batch: null` uses the lr as given).
    """

    def __init__(
        self,
        backbone: dict,
        num_classes: int = 80,
        class_names: list[str] | None = None,
        category_ids: list[int] | None = None,
        rpn_tap: str | None = None,
        box_head: str = "auto",
        fpn: bool = False,
        fpn_taps: list[str] | None = None,
        fpn_channels: int = 256,
        anchor_sizes: list[int] = PAPER_ANCHOR_SIZES,
        aspect_ratios: list[float] = PAPER_ASPECT_RATIOS,
        roi_output_size: int = 14,
        sampling_ratio: int = 2,
        representation_size: int = 1024,
        frozen_bn: bool = False,
        rcnn: dict | None = None,
        batch_size: int | None = None,
        lr_reference_batch: int | None = 16,
        eval_backend: str = "auto",
        predict_score_thresh: float = 0.3,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        backbone_lr_scale: float = 1.0,
        freeze_backbone_epochs: int = 0,
    ):
        super().__init__(backbone, num_classes, class_names, category_ids, eval_backend, predict_score_thresh,
                         optimizer, scheduler, backbone_lr_scale, freeze_backbone_epochs)

    def configure_models(self) -> None:
        h = self.hparams
        self.model = build_faster_rcnn(
            dict(h.backbone), self.num_classes, resolution=None, rpn_tap=h.rpn_tap,
            box_head=h.box_head, fpn=h.fpn, fpn_taps=h.fpn_taps, fpn_channels=h.fpn_channels,
            anchor_sizes=tuple(h.anchor_sizes), aspect_ratios=tuple(h.aspect_ratios), roi_output_size=h.roi_output_size,
            sampling_ratio=h.sampling_ratio, representation_size=h.representation_size, frozen_bn=h.frozen_bn,
            # the data pipeline resizes (data.resolution, keep_aspect) and normalises (data.mean/std), in every
            # mode; the model's transform only pads and batches, so data.resolution alone sets the scale
            image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0), rcnn=dict(h.rcnn or {}),
        )

    def setup(self, stage: str) -> None:
        super().setup(stage)
        resolution = getattr(self.trainer.datamodule, "resolution", None) if self._trainer is not None else None
        smallest = min(self.hparams.anchor_sizes)
        if resolution is not None and resolution < 4 * smallest:
            log.warning("data.resolution=%d is small for anchors of %s pixels (the paper's sizes for 300/600 inputs): "
                        "small objects get no well-matched anchor; use data.resolution=300 or 600, or smaller "
                        "task.anchor_sizes", resolution, list(self.hparams.anchor_sizes))

    # ---- optimisation: torchvision's recipe (linear lr scaling, warm-up, steps) ---------------------------
    def total_batch_size(self) -> int | None:
        """Images per optimizer step over all devices and nodes, or None where `batch_size` is unset."""
        if not self.hparams.batch_size:
            return None
        trainer = self._trainer
        return self.hparams.batch_size * (trainer.world_size * trainer.accumulate_grad_batches if trainer else 1)

    def param_groups(self, weight_decay: float, lr: float) -> list[dict]:
        total, reference = self.total_batch_size(), self.hparams.lr_reference_batch
        if total and reference:
            log.info("lr %g at batch %d -> %g at batch %d (linear scaling)", lr, reference, lr * total / reference, total)
            lr = lr * total / reference
        return super().param_groups(weight_decay, lr)

    def configure_optimizers(self):
        config = super().configure_optimizers()
        scheduler = config["lr_scheduler"]["scheduler"] if isinstance(config, dict) else None
        if isinstance(scheduler, WarmupMultiStepLR) and scheduler.steps_per_epoch is None and self._trainer is not None:
            # epoch milestones -> optimizer steps; reading estimated_stepping_batches sets the train loader up
            _ = self.trainer.estimated_stepping_batches
            per_epoch = self.trainer.num_training_batches // self.trainer.accumulate_grad_batches
            scheduler.steps_per_epoch = max(int(per_epoch), 1) if per_epoch != float("inf") else None
        return config
