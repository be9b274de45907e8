"""BaseDataModule: loader settings, the skip-corrupt policy and the data side of the data↔task contract."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import ClassVar

import torch.distributed as dist
import yaml
from lightning.pytorch import LightningDataModule
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler, default_collate

from toolkit.conf import CONF_DIR
from toolkit.data.kinds import DataKind
from toolkit.data.samplers import EveryImageBatchSampler, batch_count
from toolkit.errors import DataError

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: the DataLoader settings every data config shares (conf/data_loader.yaml), read once: the defaults of
#: `BaseDataModule` too, so a datamodule built in code loads as a configured one does
LOADER_DEFAULTS: dict = yaml.safe_load((CONF_DIR / "data_loader.yaml").read_text(encoding="utf-8"))
#: fewer optimiser steps an epoch than this gets a warning at the start of training (few updates per epoch)
FEW_STEPS_PER_EPOCH = 20


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

    kind: ClassVar[DataKind]

    def __init__(
        self,
        resolution: int = 224,
        batch_size: int = LOADER_DEFAULTS["batch_size"],
        num_workers: int = LOADER_DEFAULTS["num_workers"],
        pin_memory: bool = LOADER_DEFAULTS["pin_memory"],
        persistent_workers: bool = LOADER_DEFAULTS["persistent_workers"],
        skip_corrupt: bool = LOADER_DEFAULTS["skip_corrupt"],
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
        self._training_plan_logged = False  # train_dataloader logs images, batch size and steps once

    def task_kwargs(self) -> dict:
        """Task constructor arguments only the data knows (class count, class names...)."""
        return {}

    def predict_dataset(self, paths: list[Path]) -> Dataset:
        """A dataset over user images for mode=predict, with the eval transform."""
        raise NotImplementedError(f"{type(self).__name__} does not support mode=predict")

    def collate_fn(self) -> Callable:
        return SkippingCollate()

    def _loader(self, dataset: Dataset | None, shuffle: bool = False, sampler: Sampler | None = None,
                batch_sampler: BatchSampler | None = None) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() did not create this split")
        batching = ({"batch_sampler": batch_sampler} if batch_sampler is not None
                    else {"batch_size": self.batch_size, "shuffle": shuffle, "sampler": sampler})
        return DataLoader(
            dataset,
            **batching,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=self.collate_fn(),
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled batches that show every training image every epoch (`toolkit.data.samplers.batch_count`: no
        partial batch dropped, a last batch of one image folded into the one before), at most as large as the
        images one process trains on; the first call logs images, batch size and steps per epoch."""
        if self.train_dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() did not create this split")
        batch_size = self.train_batch_size()
        if not self._training_plan_logged:
            self._training_plan_logged = True
            self.log_training_plan()
        return self._loader(self.train_dataset, batch_sampler=self.train_batch_sampler(self.train_dataset, batch_size))

    def train_batch_sampler(self, dataset: Dataset, batch_size: int) -> BatchSampler:
        """The training batches (subclasses group them, e.g. by aspect ratio): a BatchSampler over a RandomSampler,
        which Lightning replaces by a DistributedSampler under DDP."""
        return EveryImageBatchSampler(RandomSampler(dataset), batch_size)

    def train_processes(self) -> int:
        """Processes training together (DDP's world size; 1 without a trainer): each takes its share of the split."""
        trainer = self.trainer
        return max(int(trainer.world_size), 1) if trainer is not None else 1

    def train_images_per_process(self) -> int:
        """Training images each process sees an epoch (Lightning's DistributedSampler pads to equal shares)."""
        return math.ceil(len(self.train_dataset) / self.train_processes())

    def train_batch_size(self) -> int:
        """`data.batch_size`, capped at the images one process trains on: a larger batch could only be partial."""
        return max(1, min(self.batch_size, self.train_images_per_process()))

    def log_training_plan(self) -> None:
        """One line: images, batch size, optimiser steps per epoch; a warning when that is few steps."""
        trainer = self.trainer
        if trainer is not None and not trainer.is_global_zero:
            return
        images, processes = len(self.train_dataset), self.train_processes()
        per_process, batch_size = self.train_images_per_process(), self.train_batch_size()
        if batch_size < self.batch_size:
            log.info("data.batch_size=%d is more than the %d training images%s: batches of %d", self.batch_size,
                     per_process, f" per process ({processes} processes)" if processes > 1 else "", batch_size)
        accumulate = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
        batches = batch_count(per_process, batch_size)
        steps = math.ceil(batches / accumulate)
        where = f" per process ({processes} processes, {per_process} images each)" if processes > 1 else ""
        grouped = f", {batches} batches accumulated by {accumulate}" if accumulate > 1 else ""
        log.info("training on %d images, batch size %d%s: %d step%s per epoch%s", images, batch_size, where, steps,
                 "" if steps == 1 else "s", grouped)
        if steps < FEW_STEPS_PER_EPOCH:
            suggested = max(per_process // FEW_STEPS_PER_EPOCH, 4)
            advice = (f"a smaller data.batch_size trains more per epoch (data.batch_size={suggested} gives "
                      f"{math.ceil(batch_count(per_process, suggested) / accumulate)})" if suggested < batch_size
                      else "more images or more epochs train it more")
            log.warning("only %d optimiser step%s per epoch on %d training images (fewer than %d): %s", steps,
                        "" if steps == 1 else "s", images, FEW_STEPS_PER_EPOCH, advice)

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
