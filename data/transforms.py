"""Albumentations pipelines for classification-like tasks: train and eval at `data.resolution`."""

from __future__ import annotations

import albumentations as A
import torch
from albumentations.pytorch import ToTensorV2


class SeededCompose(A.Compose):
    """An albumentations pipeline whose randomness follows `seed` (Lightning's `seed_everything`).

    Albumentations draws from a generator of its own, seeded from the operating system unless `seed` is given, so
    `seed=42` alone left every augmentation (and the trained model) different from run to run. This pipeline takes
    its seed from torch's global generator when it is built, and in each DataLoader worker re-seeds from that
    worker's torch seed (the loader draws a new base seed from the global generator every epoch): repeatable runs,
    different crops in every worker and every epoch."""

    def __init__(self, transforms, **kwargs):
        kwargs.setdefault("seed", int(torch.randint(0, 2**31 - 1, ())))
        super().__init__(transforms, **kwargs)
        self._worker_seed: int | None = None

    def __call__(self, *args, **data):
        worker = torch.utils.data.get_worker_info()
        if worker is not None and worker.seed != self._worker_seed:
            self._worker_seed = worker.seed
            self.set_random_seed((self.seed + worker.seed) % 2**32)
        return super().__call__(*args, **data)


def classification_train_transform(resolution: int, mean, std, crop_scale=(0.35, 1.0), hflip: bool = True) -> A.Compose:
    """Random-resized crop over a limited scale range (paper §3.2: smaller crops than Inception), flip."""
    ops = [A.RandomResizedCrop(size=(resolution, resolution), scale=tuple(crop_scale))]
    if hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    ops += [A.Normalize(mean=mean, std=std), ToTensorV2()]
    return SeededCompose(ops)


def classification_eval_transform(resolution: int, mean, std, crop_fraction: float = 0.875) -> A.Compose:
    """Resize the shorter side to resolution / crop_fraction, then centre-crop `resolution`."""
    return SeededCompose(
        [
            A.SmallestMaxSize(max_size=round(resolution / crop_fraction)),
            A.CenterCrop(height=resolution, width=resolution),
            A.Normalize(mean=mean, std=std),
            ToTensorV2(),
        ]
    )
