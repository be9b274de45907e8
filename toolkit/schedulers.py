"""Learning-rate schedules the torch set lacks as config-friendly classes: linear warm-up + step decay or + cosine."""

from __future__ import annotations

import math
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


class WarmupCosineLR(LambdaLR):
    """Linear warm-up from `warmup_factor` x lr over the first `warmup_epochs`, then cosine decay to `min_lr_ratio` x
    lr at the end of `max_epochs` (timm's `--sched cosine --warmup-epochs`), set every optimizer step
    (`interval: step`). `steps_per_epoch` turns epochs into steps; left None, the task fills it from the trainer
    before training starts. The warm-up never takes more than half the run."""

    def __init__(self, optimizer: Optimizer, max_epochs: int, warmup_epochs: float = 1.0, warmup_factor: float = 0.01,
                 min_lr_ratio: float = 0.0, steps_per_epoch: int | None = None, last_epoch: int = -1):
        if not max_epochs or max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1 (trainer.max_epochs), got {max_epochs}")
        if warmup_epochs < 0 or not 0 < warmup_factor <= 1 or not 0 <= min_lr_ratio <= 1:
            raise ValueError(f"need warmup_epochs >= 0, 0 < warmup_factor <= 1, 0 <= min_lr_ratio <= 1; got "
                             f"{warmup_epochs}, {warmup_factor}, {min_lr_ratio}")
        self.max_epochs, self.warmup_epochs = max_epochs, min(float(warmup_epochs), max_epochs / 2)
        self.warmup_factor, self.min_lr_ratio = warmup_factor, min_lr_ratio
        self.steps_per_epoch = steps_per_epoch
        super().__init__(optimizer, self.factor, last_epoch)

    def factor(self, step: int) -> float:
        """The multiplier of the base lr at optimizer step `step` (0-based)."""
        per_epoch = self.steps_per_epoch or 1  # unknown: steps count as epochs
        warmup, total = self.warmup_epochs * per_epoch, self.max_epochs * per_epoch
        if step < warmup:
            return self.warmup_factor + (1 - self.warmup_factor) * step / warmup
        progress = min((step - warmup) / max(total - warmup, 1), 1.0)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
