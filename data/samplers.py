"""Aspect-ratio grouped batches (torchvision's detection references, group_by_aspect_ratio.py).

Images are binned by width/height; each batch takes images of one bin only, so a padded batch of
keep-aspect resized images wastes little area on padding. `GroupedBatchSampler` subclasses
`BatchSampler` with a `sampler` argument, so Lightning can swap in a DistributedSampler under DDP.
"""

from __future__ import annotations

import bisect
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import BatchSampler, ConcatDataset, DataLoader, Dataset, RandomSampler, Sampler

log = logging.getLogger(__name__)


class GroupedBatchSampler(BatchSampler):
    """Batches of `batch_size` indices from `sampler`, each batch drawn from a single group (`group_ids[i]`).

    It yields `len(sampler) // batch_size` batches an epoch (at least one), like torchvision's: groups left
    incomplete at the end are filled up by repeating samples of the same group, largest leftovers first.
    """

    def __init__(self, sampler: Sampler, group_ids: Sequence[int], batch_size: int):
        if not isinstance(sampler, Sampler):
            raise ValueError(f"sampler should be an instance of torch.utils.data.Sampler, but got {sampler}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.drop_last = True  # read by Lightning when it re-creates the sampler; the tail is always refilled

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = defaultdict(list)
        seen: dict[int, list[int]] = defaultdict(list)
        emitted = 0
        for idx in self.sampler:
            group = self.group_ids[idx]
            buffers[group].append(idx)
            seen[group].append(idx)
            if len(buffers[group]) == self.batch_size:
                yield buffers.pop(group)
                emitted += 1
        remaining = len(self) - emitted
        for group, buffer in sorted(buffers.items(), key=lambda item: len(item[1]), reverse=True):
            if remaining <= 0:
                break
            missing = self.batch_size - len(buffer)
            pool = seen[group]
            yield buffer + [pool[i % len(pool)] for i in range(missing)]
            remaining -= 1

    def __len__(self) -> int:
        # at least one (refilled) batch when the data set is smaller than a batch
        return max(len(self.sampler) // self.batch_size, 1 if len(self.sampler) else 0)


def aspect_ratio_bins(k: int) -> list[float]:
    """Bin edges 2**linspace(-1, 1, 2k+1): 2k+1 edges between ratio 1/2 and 2 (k=0: one edge at 1)."""
    return (2 ** np.linspace(-1, 1, 2 * k + 1)).tolist() if k > 0 else [1.0]


def create_aspect_ratio_groups(aspect_ratios: Sequence[float], k: int = 3) -> list[int]:
    """Group id of each width/height ratio under `aspect_ratio_bins(k)` (torchvision's `--aspect-ratio-group-factor`)."""
    bins = sorted(aspect_ratio_bins(k))
    groups = [bisect.bisect_right(bins, float(r)) for r in aspect_ratios]
    counts = np.bincount(groups, minlength=len(bins) + 1)
    log.info("aspect-ratio groups (edges %s): %s images per group", [round(b, 3) for b in bins], counts.tolist())
    return groups


def dataset_aspect_ratios(dataset: Dataset) -> list[float]:
    """Width / height of every item, from datasets that expose `aspect_ratios()` (and ConcatDatasets of them)."""
    if isinstance(dataset, ConcatDataset):
        return [r for part in dataset.datasets for r in dataset_aspect_ratios(part)]
    if not hasattr(dataset, "aspect_ratios"):
        raise TypeError(f"{type(dataset).__name__} has no aspect_ratios(); aspect-ratio grouping needs image sizes")
    return list(dataset.aspect_ratios())


def grouped_loader(datamodule, dataset: Dataset, group_factor: int) -> DataLoader:
    """A training DataLoader with aspect-ratio grouped, shuffled batches and the datamodule's loader settings."""
    groups = create_aspect_ratio_groups(dataset_aspect_ratios(dataset), group_factor)
    return DataLoader(
        dataset,
        batch_sampler=GroupedBatchSampler(RandomSampler(dataset), groups, datamodule.batch_size),
        num_workers=datamodule.num_workers,
        pin_memory=datamodule.pin_memory,
        persistent_workers=datamodule.persistent_workers,
        collate_fn=datamodule.collate_fn(),
    )
