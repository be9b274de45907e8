"""PreciseBN callback: re-estimate BatchNorm running statistics with the current weights before each validation.

BatchNorm's running averages (momentum 0.1, PyTorch's default, in the MobileNet body) lag and are noisy in short
runs on small images: with 2x2 final feature maps and small batches, the eval-mode network can be far worse than the same
weights with exact statistics. Averaging the batch statistics of `num_batches` training batches at fixed
weights (`torch.optim.swa_utils.update_bn`, the PreciseBN of pycls/detectron2) removes that gap. Opt in with
`+callbacks.precise_bn={_target_: toolkit.precise_bn.PreciseBN, num_batches: 20}`.
"""

from __future__ import annotations

import logging
from itertools import islice

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from torch.optim.swa_utils import update_bn

log = logging.getLogger(__name__)


class PreciseBN(Callback):
    """Before every validation of `fit`, recompute BN statistics from `num_batches` training batches.

    Works for tasks whose batches hold an image tensor under `"image"` and whose `forward` takes it
    (classification, fine-grained, geolocation); other batches are left alone, said once in the log.
    """

    def __init__(self, num_batches: int = 20):
        self.num_batches = num_batches
        self._warned = False

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        images = [b["image"] for b in islice(trainer.train_dataloader, self.num_batches)
                  if isinstance(b, dict) and isinstance(b.get("image"), torch.Tensor)]
        if not images:
            if not self._warned:
                log.warning("PreciseBN: training batches carry no 'image' tensor; BN statistics left as they are")
                self._warned = True
            return
        with torch.no_grad():
            update_bn(images, pl_module, device=pl_module.device)
