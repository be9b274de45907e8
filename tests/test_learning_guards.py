"""Learning guards: every task, trained for a few seconds from a fixed seed on generated data, beats chance by a
clear margin. A change that silently breaks learning -- a precision switch, a loss or transform change, a
refactor -- fails here instead of waiting for someone to run a benchmark by hand.

Each guard overfits a small generated set (the validation split is generated like the training one) with settings
that learn fast on a CPU: a small backbone, low resolution, AdamW, and BatchNorm statistics re-estimated before
validation (toolkit/precise_bn.py; a few steps leave BN's running averages far behind). Every threshold sits well
below what the guard reaches and well above chance; with `task.optimizer.lr=0` every guard fails (checked by hand
when the thresholds were set).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from toolkit.run import run

pytestmark = pytest.mark.slow

PRECISE_BN = "+callbacks.precise_bn={_target_: toolkit.precise_bn.PreciseBN, num_batches: 8}"
COMMON = ["backbone.alpha=0.25", "callbacks.lr_monitor=null", "seed=0", PRECISE_BN]
ADAMW = ["task.optimizer._target_=torch.optim.AdamW", "~task.optimizer.alpha", "~task.optimizer.momentum",
         "~task.optimizer.eps", "task.scheduler=null"]


@dataclass(frozen=True)
class Guard:
    overrides: list[str]
    metric: str
    threshold: float  # the guard's pass mark
    chance: float  # what a model that learned nothing scores (documentation, and a sanity check of the mark)
    extra: list[str] = field(default_factory=list)
    #: writes data into the test's folder and returns the overrides that read it
    setup: Callable[[Path], list[str]] | None = None


def detection_overfit_set(root: Path, images: int = 8) -> list[str]:
    """Generated shapes images as a COCO custom dataset that validates on its own training images."""
    from toolkit.data.shapes_detection import generate_shapes_detection

    generate_shapes_detection(root, n_train=images, n_val=1, image_size=96, seed=0, empty_fraction=0.0)
    ann, images = root / "annotations" / "instances_train.json", root / "train"
    return ["data=coco_custom", f"data.train_ann={ann}", f"data.train_images={images}", f"data.val_ann={ann}",
            f"data.val_images={images}"]


def face_identity_set(root: Path) -> list[str]:
    """16 generated identities x 6 images; the verification pairs are drawn from the same identity folders."""
    from toolkit.data.faces_synthetic import generate_identity_tree

    generate_identity_tree(root, n_train_ids=16, n_test_ids=2, images_per_id=6, folds=2, pairs_per_fold=2,
                           width=64, height=64, seed=0)
    return ["data=faces_folder", f"data.root={root / 'train'}", "data.folds=4", "data.pairs_per_fold=20"]


GUARDS: dict[str, Guard] = {
    # 6 shape classes: chance 1/6
    "classification": Guard(["task=classification", "data=shapes", "backbone.alpha=0.5", "data.resolution=64",
                             "data.image_size=64", "data.n_train=300", "data.n_val=60", "data.batch_size=16",
                             "trainer.max_epochs=6", *ADAMW, "task.optimizer.lr=0.01"], "val/top1", 0.4, 1 / 6),
    # 12 breeds (pairs differ only in coat colour), trained from scratch: chance 1/12
    "fine_grained": Guard(["task=fine_grained", "data=stanford_dogs_synthetic", "data.resolution=32",
                           "data.image_size=40", "data.n_train=240", "data.n_val=96", "data.batch_size=16",
                           "trainer.max_epochs=6", "task.optimizer.lr=0.01", "task.backbone_lr_scale=1.0"],
                          "val/top1", 0.3, 1 / 12),
    # photos around 6 cities, 200+ km apart: answering one city for every photo puts about 1/6 within 200 km
    "geolocation": Guard(["task=geolocation", "data=geo_synthetic", "data.resolution=32", "data.image_size=40",
                          "data.n_train=300", "data.n_val=60", "data.batch_size=16", "trainer.max_epochs=6",
                          "task.optimizer.lr=0.01"], "val/within_200km", 0.6, 1 / 6),
    # Black_Hair AP on the training images (black hair on about 1 face in 4: chance AP about 0.3; 0.36 with lr=0).
    # The mean AP over all 40 attributes only moves from 0.26 to 0.35 in a few seconds, too narrow to guard.
    # Alone this guard reaches 0.92-0.98; run after the other guards in one process it has scored 0.38 and 0.57
    # (after 10 and 14 epochs): some state carried between runs slows it, not yet found.
    "face_attributes": Guard(["task=face_attributes", "data=celeba_synthetic", "teacher=none", "data.resolution=64",
                              "data.width=64", "data.height=78", "data.n_train=160", "data.n_val=8",
                              "data.eval_split=train", "data.batch_size=16", "trainer.max_epochs=20",
                              "task.optimizer.lr=0.005"], "val/ap/Black_Hair", 0.5, 0.3),
    # same/different pairs of the training identities: chance 0.5
    "face_embedding": Guard(["task=face_embedding", "teacher=none", "data.resolution=64", "data.batch_size=16",
                             "trainer.max_epochs=20", "task.optimizer.lr=0.01"], "val/accuracy", 0.6, 0.5,
                            setup=face_identity_set),
    # mAP@0.5 of a detector that learned nothing is about 0 (0.0002 for Faster R-CNN with lr=0); these reached
    # 0.19 (SSD) and 0.09-0.23 (Faster R-CNN) on 8 and 4 images they train and validate on
    "detection_ssd": Guard(["task=detection_ssd", "data.resolution=160", "data.batch_size=4", "trainer.max_epochs=60",
                            *ADAMW, "task.optimizer.lr=0.01"], "val/map_50", 0.08, 0.0, setup=detection_overfit_set),
    "detection_frcnn": Guard(["task=detection_frcnn", "data.resolution=128", "data.batch_size=4",
                              "trainer.max_epochs=60", "data.aspect_ratio_group_factor=null",
                              "task.lr_reference_batch=null", "task.optimizer._target_=torch.optim.AdamW",
                              "~task.optimizer.momentum", "~task.optimizer.nesterov", "task.optimizer.lr=0.004", "task.scheduler=null",
                              "task.model.anchor_sizes=[16,32,64,128]", "task.model.rcnn.box_batch_size_per_image=16",
                              "task.model.rcnn.rpn_pre_nms_top_n_test=1000", "task.model.rcnn.rpn_post_nms_top_n_test=100",
                              "task.model.rcnn.rpn_pre_nms_top_n_train=1000", "task.model.rcnn.rpn_post_nms_top_n_train=100"],
                             "val/map_50", 0.04, 0.0, setup=partial(detection_overfit_set, images=4)),
}


@pytest.mark.parametrize("name", list(GUARDS))
def test_task_learns(name, make_cfg, tmp_path, one_torch_thread):
    guard = GUARDS[name]
    assert guard.threshold > guard.chance
    data = guard.setup(tmp_path / "data") if guard.setup else []
    result = run(make_cfg([*COMMON, *guard.overrides, *data, *guard.extra]))
    score = result["metrics"][guard.metric]
    assert score >= guard.threshold, f"{name}: {guard.metric} {score:.3f} < {guard.threshold} (chance {guard.chance:.3f})"
