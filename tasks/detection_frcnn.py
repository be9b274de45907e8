"""Faster R-CNN detection (paper Table 13: Faster-RCNN 300/600 MobileNet), torchvision's FasterRCNN parts."""

from __future__ import annotations

import logging

from toolkit.detection.faster_rcnn import build_faster_rcnn
from toolkit.schedulers import WarmupMultiStepLR
from toolkit.tasks.base import register_task
from toolkit.tasks.detection import DetectionTask

log = logging.getLogger(__name__)


@register_task
class FasterRCNNTask(DetectionTask):
    """`task.model`: the keyword arguments of `toolkit.detection.faster_rcnn.build_faster_rcnn` (its signature and
    docstring declare them: `rpn_tap`, `box_head`, `fpn`, anchors, RoIAlign, `frozen_bn`, the `rcnn` mapping of
    torchvision `FasterRCNN` arguments...).

    Images arrive resized by the data pipeline (`data.resolution` = the shorter side, `data.transform=keep_aspect`),
    so a checkpoint evaluates or predicts at whatever `data.resolution` says (300 or 600 in the paper).

    `lr_reference_batch`: the optimizer's lr is the lr at this total batch (torchvision's recipe: 0.02 at 16
    images); the lr used is scaled linearly to `batch_size` x devices x nodes x gradient accumulation
    (`lr_reference_batch: null` uses the lr as given).
    """

    def __init__(self, *, batch_size: int | None = None, lr_reference_batch: int | None = 16, **kwargs):
        super().__init__(**kwargs)

    def configure_models(self) -> None:
        # the data pipeline resizes (data.resolution, keep_aspect) and normalises (data.mean/std), in every mode;
        # the model's transform only pads and batches, so data.resolution alone sets the scale
        self.model = build_faster_rcnn(dict(self.hparams.backbone), self.num_classes, resolution=None,
                                       image_mean=(0.0, 0.0, 0.0), image_std=(1.0, 1.0, 1.0), **self.model_kwargs)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        rpn = getattr(self.model, "rpn", None)  # absent while export verification stands a runtime in for the model
        if rpn is None:
            return
        resolution = getattr(self.trainer.datamodule, "resolution", None) if self._trainer is not None else None
        sizes = sorted({size for level in rpn.anchor_generator.sizes for size in level})
        if resolution is not None and resolution < 4 * sizes[0]:
            log.warning("data.resolution=%d is small for anchors of %s pixels (the paper's sizes for 300/600 inputs): "
                        "small objects get no well-matched anchor; use data.resolution=300 or 600, or smaller "
                        "task.model.anchor_sizes", resolution, sizes)

    # ---- optimisation: torchvision's recipe (linear lr scaling, warm-up, steps) ---------------------------
    def total_batch_size(self) -> int | None:
        """Images per optimizer step over all devices and nodes, or None where `batch_size` is unset. The batch is
        the data's real one where a trainer's datamodule says it (`data.batch_size` capped at a small split's size)."""
        if not self.hparams.batch_size:
            return None
        trainer = self._trainer
        if trainer is None:
            return self.hparams.batch_size
        datamodule = getattr(trainer, "datamodule", None)
        batch = datamodule.train_batch_size() if hasattr(datamodule, "train_batch_size") else self.hparams.batch_size
        return batch * trainer.world_size * trainer.accumulate_grad_batches

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
