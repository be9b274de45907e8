"""Learning-rate schedules the torch set lacks as one config-friendly class: linear warm-up + step decay."""

from __future__ import annotations

from collections.abc import Sequence

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


class WarmupMultiStepLR(LambdaLR):
    """torchvision's detection recipe as one per-step schedule: a linear warm-up from `warmup_factor` x lr over
    the first `warmup_steps` steps, then lr x `gamma` at each epoch in `milestones` (torchvision: 16 and 22 of 26).

    Step it every optimizer step (`interval: step`). `steps_per_epoch` turns epochs into steps; left None, a
    task fills it from the trainer before training starts. With `schedule_epochs` (26) and `max_epochs` (the
    trainer's), the milestones are stretched to the run's length: 16/26 and 22/26 of it. Like torchvision's
    reference, the warm-up never runs past the first epoch.
    """

    def __init__(self, optimizer: Optimizer, milestones: Sequence[float] = (16, 22), gamma: float = 0.1,
                 warmup_steps: int = 1000, warmup_factor: float = 0.001, steps_per_epoch: int | None = None,
                 schedule_epochs: float | None = None, max_epochs: int | None = None, last_epoch: int = -1):
        if list(milestones) != sorted(milestones):
            raise ValueError(f"milestones must be increasing epochs, got {list(milestones)}")
        if not 0 < warmup_factor <= 1:
            raise ValueError(f"warmup_factor must be in (0, 1], got {warmup_factor}")
        stretch = max_epochs / schedule_epochs if schedule_epochs and max_epochs and max_epochs > 0 else 1.0
        self.milestones = [float(m) * stretch for m in milestones]  # in epochs of this run
        self.gamma = gamma
        self.warmup_steps = warmup_steps
        self.warmup_factor = warmup_factor
        self.steps_per_epoch = steps_per_epoch
        super().__init__(optimizer, self.factor, last_epoch)

    def factor(self, step: int) -> float:
        """The multiplier of the base lr at optimizer step `step` (0-based)."""
        per_epoch = self.steps_per_epoch or 0
        warmup = min(self.warmup_steps, per_epoch - 1) if per_epoch else self.warmup_steps
        scale = 1.0
        if step < warmup:
            alpha = step / warmup
            scale = self.warmup_factor * (1 - alpha) + alpha
        if not per_epoch:  # epochs unknown: no decay yet
            return scale
        epoch = step / per_epoch
        return scale * self.gamma ** sum(epoch >= m for m in self.milestones)
