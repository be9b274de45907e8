"""Albumentations pipelines for classification-like tasks: train and eval at `data.resolution`."""

from __future__ import annotations

from typing import Any

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

from toolkit.data import eval_preprocess


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


class EvalResize(A.DualTransform):
    """The eval pipelines' resize (`toolkit.data.eval_preprocess.resize`, rule by name): the function
    `mode=predict`, export verification and `toolkit.deploy` call, so a deployed file sees the same pixels. Boxes
    (normalised to the image in albumentations) are unchanged by a resize; a centre crop takes no boxes."""

    def __init__(self, rule: dict[str, Any], p: float = 1.0):
        super().__init__(p=p)
        self.rule = dict(rule)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return eval_preprocess.resize(img, self.rule)

    def apply_to_bboxes(self, bboxes: np.ndarray, **params: Any) -> np.ndarray:
        if self.rule["mode"] == "center_crop" and bboxes.size:
            raise ValueError("EvalResize: a centre-crop rule takes images only, not boxes")
        return bboxes


class EvalNormalize(A.ImageOnlyTransform):
    """`toolkit.data.eval_preprocess.normalize`: albumentations' Normalize arithmetic (bit for bit on uint8 images,
    checked by tests/test_deploy_parity.py), from the function `toolkit.deploy` calls."""

    def __init__(self, mean, std, p: float = 1.0):
        super().__init__(p=p)
        self.mean, self.std = tuple(mean), tuple(std)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        return eval_preprocess.normalize(img, self.mean, self.std)


def classification_train_transform(resolution: int, mean, std, crop_scale=(0.35, 1.0), hflip: bool = True) -> A.Compose:
    """Random-resized crop over a limited scale range (paper §3.2: smaller crops than Inception), flip."""
    ops = [A.RandomResizedCrop(size=(resolution, resolution), scale=tuple(crop_scale))]
    if hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    ops += [A.Normalize(mean=mean, std=std), ToTensorV2()]
    return SeededCompose(ops)


def classification_eval_transform(resolution: int, mean, std, crop_fraction: float = 0.875) -> A.Compose:
    """Resize the shorter side to round(resolution / crop_fraction) (OpenCV bilinear), then centre-crop `resolution`:
    `eval_preprocess.center_crop_rule`, the rule exported files carry."""
    return SeededCompose([EvalResize(eval_preprocess.center_crop_rule(resolution, crop_fraction)),
                          EvalNormalize(mean, std), ToTensorV2()])
