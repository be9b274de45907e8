"""Albumentations pipelines for aligned face crops: mild augmentation that keeps the whole face in view."""

from __future__ import annotations

import albumentations as A
from albumentations.pytorch import ToTensorV2

from toolkit.data import eval_preprocess
from toolkit.data.transforms import EvalNormalize, EvalResize, SeededCompose


def face_train_transform(resolution: int, mean, std, crop_scale=(0.8, 1.0), hflip: bool = True,
                         color_jitter: float = 0.2) -> A.Compose:
    """Square crop of most of the face (attributes and identity survive it), flip, light colour jitter."""
    ops = [
        A.SmallestMaxSize(max_size=resolution),
        A.RandomResizedCrop(size=(resolution, resolution), scale=tuple(crop_scale), ratio=(0.9, 1.1)),
    ]
    if hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    if color_jitter:
        ops.append(A.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter, hue=0.0, p=0.8))
    return SeededCompose([*ops, A.Normalize(mean=mean, std=std), ToTensorV2()])


def face_eval_transform(resolution: int, mean, std) -> A.Compose:
    """Shorter side to `resolution`, centre square crop (CelebA's 178x218 -> the central 178x178):
    `eval_preprocess.center_crop_rule` with crop_fraction 1, the rule exported files carry."""
    return SeededCompose([EvalResize(eval_preprocess.center_crop_rule(resolution, 1.0)), EvalNormalize(mean, std),
                          ToTensorV2()])
