"""Albumentations pipelines for classification-like tasks: train and eval at `data.resolution`."""

from __future__ import annotations

import albumentations as A
from albumentations.pytorch import ToTensorV2


def classification_train_transform(resolution: int, mean, std, crop_scale=(0.35, 1.0), hflip: bool = True) -> A.Compose:
    """Random-resized crop over a limited scale range (paper §3.2: smaller crops than Inception), flip."""
    ops = [A.RandomResizedCrop(size=(resolution, resolution), scale=tuple(crop_scale))]
    if hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    ops += [A.Normalize(mean=mean, std=std), ToTensorV2()]
    return A.Compose(ops)


def classification_eval_transform(resolution: int, mean, std, crop_fraction: float = 0.875) -> A.Compose:
    """Resize the shorter side to resolution / crop_fraction, then centre-crop `resolution`."""
    return A.Compose(
        [
            A.SmallestMaxSize(max_size=round(resolution / crop_fraction)),
            A.CenterCrop(height=resolution, width=resolution),
            A.Normalize(mean=mean, std=std),
            ToTensorV2(),
        ]
    )
