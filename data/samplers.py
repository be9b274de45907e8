"""Training batches that cover every image, and aspect-ratio grouped ones (torchvision's detection references,
group_by_aspect_ratio.py).

The rule for every training loader (`batch_count`): each epoch takes every index of its sampler once, the last
batch partial, except that a last batch of a single image joins the batch before it (BatchNorm cannot train on a
batch of one: a classifier's pooled features would have one value per channel). 40 images at batch 24 make two
steps (24 + 16), 49 make two (24 + 25), where dropping the partial batch made one and never showed 16 of the 40.

Aspect-ratio grouping bins images by width/height; each batch takes images of one bin only, so a padded batch
of keep-aspect resized images wastes little area on padding. Both samplers subclass `BatchSampler` with a
`sampler` argument, so Lightning can swap in a DistributedSampler under DDP; their length depends only on the
sampler's length, so every rank runs the same number of batches.
"""

from __future__ import annotations

import bisect
import logging
from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import BatchSampler, ConcatDataset, Dataset, Sampler

log = logging.getLogger(__name__)


def batch_count(samples: int, batch_size: int) -> int:
    """Batches an epoch of `samples` indices makes under the rule above: ceil(samples / batch_size), one fewer
    when the last batch would hold a single index (folded into the batch before)."""
    full, rest = divmod(samples, batch_size)
    return full + (rest > 1 or (rest == 1 and full == 0))


def fold_single_tail(batches: list[list[int]]) -> list[list[int]]:
    """`batches` with a last batch of one index merged into the batch before it (where there is one)."""
    if len(batches) > 1 and len(batches[-1]) == 1:
        tail = batches.pop()
        batches[-1] = batches[-1] + tail
    return batches


class EveryImageBatchSampler(BatchSampler):
    """Batches of `batch_size` indices of `sampler`, in its order, the last one partial; a last batch of one index
    is folded into the one before (`batch_count`). `drop_last` exists for Lightning, which passes it when it
    re-creates a batch sampler: only False is accepted."""

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool = False):
        if drop_last:
            raise ValueError("EveryImageBatchSampler keeps every index: drop_last must be False")
        super().__init__(sampler, batch_size, drop_last=False)

    def __iter__(self) -> Iterator[list[int]]:
        yield from fold_single_tail(list(super().__iter__()))

    def __len__(self) -> int:
        return batch_count(len(self.sampler), self.batch_size)


class GroupedBatchSampler(BatchSampler):
    """Batches of `batch_size` indices from `sampler`, each full batch drawn from a single group (`group_ids[i]`).

    Every index is used once an epoch: after the full single-group batches, the groups' incomplete leftovers
    (largest first) are batched together, so a batch may mix groups there; a last batch of one index is folded
    into the one before. The count is `batch_count(len(sampler), batch_size)` whatever the groups, so DDP ranks
    with different images run the same number of batches.
    """

    def __init__(self, sampler: Sampler, group_ids: Sequence[int], batch_size: int):
        if not isinstance(sampler, Sampler):
            raise ValueError(f"sampler should be an instance of torch.utils.data.Sampler, but got {sampler}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler = sampler
        self.group_ids = list(group_ids)
        self.batch_size = batch_size
        self.drop_last = False  # read by Lightning when it re-creates the sampler: nothing is dropped

    def __iter__(self) -> Iterator[list[int]]:
        buffers: dict[int, list[int]] = defaultdict(list)
        batches = []
        for idx in self.sampler:
            group = self.group_ids[idx]
            buffers[group].append(idx)
            if len(buffers[group]) == self.batch_size:
                batches.append(buffers.pop(group))
        leftovers = [i for _, buffer in sorted(buffers.items(), key=lambda item: len(item[1]), reverse=True)
                     for i in buffer]
        batches += [leftovers[i:i + self.batch_size] for i in range(0, len(leftovers), self.batch_size)]
        yield from fold_single_tail(batches)

    def __len__(self) -> int:
        return batch_count(len(self.sampler), self.batch_size)


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
