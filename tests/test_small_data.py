"""Small data sets see every image each epoch: no dropped partial batch, no batch of one, the batch capped at the
split, and the start of training says how many steps an epoch makes."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import FAST, run_cli
from lightning.fabric.utilities.data import _replace_dunder_methods as replace_dunder_methods
from lightning.pytorch.utilities.data import _update_dataloader
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, RandomSampler

from toolkit.data.base import BaseDataModule
from toolkit.data.samplers import EveryImageBatchSampler, GroupedBatchSampler, batch_count


class ListDataModule(BaseDataModule):
    """`n` tiny training samples (their index as label): the loader logic without any image."""

    kind = "classification"

    def __init__(self, n: int, **kwargs):
        super().__init__(num_workers=0, **kwargs)
        self.n = n

    def setup(self, stage: str | None = None) -> None:
        self.train_dataset = [{"image": torch.zeros(2), "label": i} for i in range(self.n)]


def epoch(loader) -> list[list[int]]:
    return [batch["label"].tolist() for batch in loader]


@pytest.mark.parametrize(("n", "batch_size", "sizes"), [
    (40, 24, [24, 16]),      # SSD's default batch: 2 steps, where dropping the partial batch made 1
    (48, 32, [32, 16]),      # classification's default batch
    (49, 24, [24, 25]),      # 24 + 24 + 1: the single image joins the batch before
    (25, 24, [25]),
    (24, 24, [24]),
    (3, 2, [3]),
    (1, 4, [1]),
])
def test_every_image_once_and_never_a_batch_of_one(n, batch_size, sizes):
    sampler = EveryImageBatchSampler(RandomSampler(range(n)), batch_size)
    batches = list(sampler)
    assert [len(b) for b in batches] == sizes and len(sampler) == batch_count(n, batch_size) == len(sizes)
    assert sorted(i for b in batches for i in b) == list(range(n))
    with pytest.raises(ValueError, match="drop_last"):
        EveryImageBatchSampler(RandomSampler(range(n)), batch_size, drop_last=True)


def test_grouped_batches_cover_every_image_and_keep_the_count():
    groups = [0] * 13 + [1] * 7 + [2] * 5  # 25 images in three aspect-ratio groups
    for seed in range(5):
        sampler = GroupedBatchSampler(RandomSampler(groups, generator=torch.Generator().manual_seed(seed)), groups, 4)
        batches = list(sampler)
        assert len(batches) == len(sampler) == batch_count(25, 4) == 6  # 24 in batches of 4, the 25th folded
        assert sorted(i for b in batches for i in b) == list(range(25)) and min(map(len, batches)) > 1
        # each group's full batches (3 + 1 + 1) hold one group; the leftovers (1 + 3 + 1) make one batch of 5
        assert sorted(len(b) for b in batches) == [4] * 5 + [5]
        assert all(len({groups[i] for i in b}) == 1 for b in batches if len(b) == 4)


def test_batch_is_capped_at_the_split_and_the_plan_is_logged(caplog):
    dm = ListDataModule(10, batch_size=32)
    dm.setup("fit")
    with caplog.at_level(logging.INFO):
        batches = epoch(dm.train_dataloader())
        dm.train_dataloader()  # said once, not on every call
    assert [len(b) for b in batches] == [10] and sorted(batches[0]) == list(range(10))
    messages = [r.message for r in caplog.records]
    assert messages.count("data.batch_size=32 is more than the 10 training images: batches of 10") == 1
    assert messages.count("training on 10 images, batch size 10: 1 step per epoch") == 1
    warning = next(r for r in caplog.records if r.levelno == logging.WARNING)
    assert "only 1 optimiser step per epoch on 10 training images" in warning.message
    assert "a smaller data.batch_size trains more per epoch (data.batch_size=4 gives 3)" in warning.message
    dm = ListDataModule(3, batch_size=3)  # no smaller batch to suggest (4 is the smallest suggested)
    dm.setup("fit")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        dm.train_dataloader()
    assert "training on 3 images, batch size 3: 1 step per epoch" in caplog.text
    assert "(fewer than 20): more images or more epochs train it more" in caplog.text


def test_few_steps_suggest_a_smaller_batch(caplog):
    dm = ListDataModule(200, batch_size=32)
    dm.setup("fit")
    with caplog.at_level(logging.INFO):
        assert len(dm.train_dataloader()) == 7
    assert "training on 200 images, batch size 32: 7 steps per epoch" in caplog.text
    assert "data.batch_size=10 gives 20" in caplog.text
    caplog.clear()
    dm = ListDataModule(640, batch_size=32)
    dm.setup("fit")
    with caplog.at_level(logging.INFO):
        dm.train_dataloader()
    assert "20 steps per epoch" in caplog.text and not any(r.levelno == logging.WARNING for r in caplog.records)


def test_lightning_ddp_swaps_in_a_distributed_sampler_and_ranks_run_equal_batches():
    """What Lightning does under DDP (use_distributed_sampler): re-create the batch sampler around a
    DistributedSampler with the arguments it captured while the datamodule built the loader."""
    dm = ListDataModule(49, batch_size=12)
    dm.setup("fit")
    with replace_dunder_methods(DataLoader, "dataset"), replace_dunder_methods(BatchSampler):
        loader = dm.train_dataloader()
    assert isinstance(loader.batch_sampler.sampler, RandomSampler)  # Lightning reads this as shuffle=True
    seen, counts = [], []
    for rank in range(2):
        sampler = DistributedSampler(loader.dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        ranked = _update_dataloader(loader, sampler)
        assert isinstance(ranked.batch_sampler, EveryImageBatchSampler) and ranked.batch_sampler.sampler is sampler
        batches = epoch(ranked)
        counts.append(len(batches))
        assert len(batches) == len(ranked) and min(map(len, batches)) > 1  # 25 images: 12 + 13
        seen += [i for b in batches for i in b]
    assert counts == [2, 2] and set(seen) == set(range(49))


def test_grouped_loader_of_coco_takes_the_same_rule(tmp_path):
    from toolkit.data.coco import CocoDetectionDataModule

    dm = CocoDetectionDataModule(aspect_ratio_group_factor=1, batch_size=4, num_workers=0)
    dm.train_dataset = type("Ratios", (), {"__len__": lambda self: 9, "aspect_ratios": lambda self: [1.0] * 5 + [2.0] * 4})()
    sampler = dm.train_batch_sampler(dm.train_dataset, 4)
    assert isinstance(sampler, GroupedBatchSampler) and len(sampler) == 2
    assert sorted(len(b) for b in sampler) == [4, 5]


def test_forty_images_at_the_ssd_batch_make_two_steps_and_say_so(tmp_path):
    """The CLI's start-of-training lines, and the steps the trainer really took (40 images, batch 24, 1 epoch)."""
    proc = run_cli([*FAST, "backbone.alpha=0.25", "data.resolution=32", "data.image_size=40", "data.n_train=40",
                    "data.n_val=6", "data.batch_size=24", "trainer.max_epochs=1"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "training on 40 images, batch size 24: 2 steps per epoch" in log
    assert "only 2 optimiser steps per epoch on 40 training images" in log and "data.batch_size=4 gives 10" in log
    (metrics,) = Path(tmp_path / "outputs").glob("**/train_metrics.json")
    assert json.loads(metrics.read_text())["global_step"] == 2
