"""BaseDataModule: loader settings, the skip-corrupt policy and the data side of the data↔task contract."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import torch.distributed as dist
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from toolkit.errors import DataError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SkippingCollate:
    """Drop the samples a dataset returned as None (skipped corrupt files) and count them in the batch.

    The batch is a dict; `batch["skipped"]` lets the task log how many samples were skipped.
    """

    def __init__(self, inner: Callable = default_collate):
        self.inner = inner

    def __call__(self, samples: list):
        kept = [s for s in samples if s is not None]
        batch = self.inner(kept) if kept else {}
        batch["skipped"] = len(samples) - len(kept)
        return batch


class BaseDataModule(LightningDataModule):
    """Subclasses set `self.train_dataset`, `self.val_dataset` (and `self.test_dataset`) in `setup`, and declare
    the `kind` of records they yield (`toolkit.data.contract`: the task that reads them declares the same)."""

    kind: ClassVar[str]

    def __init__(
        self,
        resolution: int = 224,
        batch_size: int = 32,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        skip_corrupt: bool = False,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
    ):
        super().__init__()
        self.resolution = resolution
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.skip_corrupt = skip_corrupt
        # None: ImageNet statistics (configs usually fill these from the backbone: toolkit.modes.common)
        self.mean = tuple(mean) if mean is not None else IMAGENET_MEAN
        self.std = tuple(std) if std is not None else IMAGENET_STD
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None

    def task_kwargs(self) -> dict:
        """Task constructor arguments only the data knows (class count, class names...)."""
        return {}

    def predict_dataset(self, paths: list[Path]) -> Dataset:
        """A dataset over user images for mode=predict, with the eval transform."""
        raise NotImplementedError(f"{type(self).__name__} does not support mode=predict")

    def collate_fn(self) -> Callable:
        return SkippingCollate()

    def _loader(self, dataset: Dataset | None, shuffle: bool, drop_last: bool = False,
                sampler: Sampler | None = None) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() did not create this split")
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=self.collate_fn(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, shuffle=True, drop_last=len(self.train_dataset) > self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, shuffle=False, sampler=evaluation_sampler(self.val_dataset, "val"))

    def test_dataloader(self) -> DataLoader:
        dataset = self.test_dataset or self.val_dataset
        return self._loader(dataset, shuffle=False, sampler=evaluation_sampler(dataset, "test"))

    def predict_loader(self, paths: list[Path]) -> DataLoader:
        return self._loader(self.predict_dataset(paths), shuffle=False)


def evaluation_sampler(dataset: Dataset | None, split: str) -> Sampler | None:
    """Under torch.distributed, each rank's disjoint, unpadded share of an evaluation set (None otherwise).

    Lightning's default DistributedSampler pads the set to a multiple of the world size by repeating
    images, and every metric would count those repeats; Lightning leaves a DistributedSampler it finds
    in place. Ranks then run different numbers of batches, which evaluation allows: metrics sync once
    at epoch end. Each rank needs at least one sample, or it would miss that sync."""
    if dataset is None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    if len(dataset) < dist.get_world_size():
        raise DataError(f"the {split} set has {len(dataset)} samples, fewer than the {dist.get_world_size()} "
                        "processes evaluating it: give it at least one sample per process, or run fewer devices")
    return UnrepeatedDistributedSampler(dataset, shuffle=False)
