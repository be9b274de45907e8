"""Detection pieces: SSD anchors and loss, the COCO datamodule's box policy and id mapping, the evaluator."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.models.detection.image_list import ImageList

from toolkit.data.coco import (
    CategoryMap,
    CocoDetectionDataModule,
    CocoDetectionDataset,
    boxes_to_original,
    read_coco_json,
)
from toolkit.data.detection_transforms import SSDRandomCrop, detection_transforms
from toolkit.detection.evaluator import STAT_NAMES, CocoEvaluator, resolve_backend, results_from_detections
from toolkit.detection.ssd import SSDAnchorGenerator, build_ssd
from toolkit.errors import DataError

MEAN = STD = (0.5, 0.5, 0.5)


# ---- SSD model ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.25, 1.0])
def test_anchor_count_and_layout_at_300(alpha):
    model = build_ssd({"name": "mobilenet_v1", "alpha": alpha}, num_classes=80).eval()
    with torch.no_grad():
        features = model.features(torch.zeros(1, 3, 300, 300))
    assert [tuple(f.shape[-2:]) for f in features] == [(19, 19), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]
    depth = lambda d: max(int(d * alpha), 16)  # noqa: E731  (TF: extra layers scale with alpha, min depth 16)
    assert [f.shape[1] for f in features] == [int(512 * alpha), int(1024 * alpha), depth(512), depth(256), depth(256), depth(128)]
    assert model.anchor_generator.num_anchors_per_location() == [3, 6, 6, 6, 6, 6]
    anchors = model.anchor_generator(ImageList(torch.zeros(1, 3, 300, 300), [(300, 300)]), features)[0]
    assert anchors.shape == (1917, 4)
    # first location of the 19x19 map: 0.1 @ 1, 0.2 @ 2, 0.2 @ 1/2, centred at (0.5 / 19) * 300
    wh = anchors[:3, 2:] - anchors[:3, :2]
    expected = torch.tensor([[0.1, 0.1], [0.2 * math.sqrt(2), 0.2 / math.sqrt(2)], [0.2 / math.sqrt(2), 0.2 * math.sqrt(2)]]) * 300
    assert torch.allclose(wh, expected, atol=1e-3)
    assert torch.allclose((anchors[0, :2] + anchors[0, 2:]) / 2, torch.tensor([150 / 19, 150 / 19]), atol=1e-4)
    # the 1x1 map: scale 0.95 @ 1, then sqrt(0.95 * 1.0) @ 1, then ratios 2, 1/2, 3, 1/3 (not clipped, as TF)
    last = anchors[-6:]
    assert torch.allclose(last[0], torch.tensor([150 - 142.5, 150 - 142.5, 150 + 142.5, 150 + 142.5]), atol=1e-3)
    assert math.isclose(float(last[1, 2] - last[1, 0]), math.sqrt(0.95) * 300, rel_tol=1e-5)
    assert math.isclose(float(last[4, 2] - last[4, 0]), 0.95 * math.sqrt(3) * 300, rel_tol=1e-5)


def test_anchor_generator_scales_follow_tf():
    gen = SSDAnchorGenerator()
    assert [round(s, 4) for s in gen.scales] == [0.2, 0.35, 0.5, 0.65, 0.8, 0.95, 1.0]
    assert SSDAnchorGenerator(reduce_boxes_in_lowest_layer=False).num_anchors_per_location() == [6] * 6


def _fixed_batch():
    g = torch.Generator().manual_seed(0)
    images = [torch.randn(3, 96, 96, generator=g) for _ in range(2)]
    for img, (x0, y0) in zip(images, [(10, 20), (40, 30)], strict=True):  # bright squares to find
        img[:, y0:y0 + 30, x0:x0 + 30] = 2.0
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 40.0, 50.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.tensor([[40.0, 30.0, 70.0, 60.0]]), "labels": torch.tensor([1])}]
    return images, targets


@pytest.mark.parametrize("head", ["ssd", "ssdlite"])
def test_loss_decreases_on_a_fixed_batch(head):
    torch.manual_seed(0)
    model = build_ssd({"name": "mobilenet_v1", "alpha": 0.25}, num_classes=3, head=head).train()
    images, targets = _fixed_batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(12):
        loss = sum(model(images, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert set(model(images, targets)) == {"bbox_regression", "classification"}
    assert max(losses[-3:]) < 0.6 * losses[0], losses


def test_ssd_eval_output_and_empty_targets():
    model = build_ssd({"name": "mobilenet_v1", "alpha": 0.25}, num_classes=3).train()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    loss = model([torch.randn(3, 96, 96), torch.randn(3, 96, 96)], [empty, empty])
    assert torch.isfinite(sum(loss.values()))  # an image without boxes gives no positives and no crash
    model.eval()
    with torch.no_grad():
        (det,) = model(torch.randn(1, 3, 96, 96))
    assert det["boxes"].shape[1] == 4 and len(det["boxes"]) <= 100
    assert det["labels"].min() >= 1 and det["labels"].max() <= 3


def test_ssd_decodes_boxes_and_scores_in_fp32_under_bf16():
    """torchvision's decoding casts the anchors to the regression's dtype: in bf16, boxes at 300 px are 1-2 px off
    and the softmax scores that rank them keep ~3 digits, which cost the bf16 learning benchmark mAP."""
    model = build_ssd({"name": "mobilenet_v1", "alpha": 0.25}, num_classes=3).eval()
    model.score_thresh = 0.0  # keep detections from an untrained model
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        (det,) = model(torch.randn(1, 3, 96, 96))
    assert len(det["boxes"]) > 0
    assert det["boxes"].dtype == torch.float32 and det["scores"].dtype == torch.float32


def test_other_registry_backbone_through_feature_info():
    model = build_ssd({"name": "mobilenet_v2", "alpha": 0.35}, num_classes=2).eval()
    assert [model.backbone.feature_info.get(t).reduction for t in model.taps] == [16, 32]
    with torch.no_grad():
        assert len(model(torch.randn(1, 3, 128, 128))) == 1


# ---- COCO files: a fixture with crowd, degenerate, outside and empty cases ------------------------------------
def _write_dataset(root: Path, with_images: bool = True) -> Path:
    """Three images (one empty), non-contiguous category ids 7 and 90, awkward boxes."""
    images = [{"id": 11, "file_name": "a.jpg", "width": 64, "height": 48},
              {"id": 12, "file_name": "b.jpg", "width": 40, "height": 40},
              {"id": 13, "file_name": "c.jpg", "width": 50, "height": 30}]
    anns = [
        {"id": 1, "image_id": 11, "category_id": 90, "bbox": [4, 6, 20, 16], "area": 320, "iscrowd": 0},
        {"id": 2, "image_id": 11, "category_id": 7, "bbox": [50, 30, 30, 30], "iscrowd": 0},   # runs outside: clipped
        {"id": 3, "image_id": 11, "category_id": 7, "bbox": [10, 10, 0, 5], "iscrowd": 0},     # zero width: dropped
        {"id": 4, "image_id": 12, "category_id": 7, "bbox": [0, 0, 40, 40], "iscrowd": 1},     # crowd: not trained on
        {"id": 5, "image_id": 12, "category_id": 90, "bbox": [45, 45, 10, 10], "iscrowd": 0},  # fully outside: dropped
        {"id": 6, "image_id": 12, "category_id": 90, "bbox": [5, 5, 12, 10]},                   # no iscrowd/area keys
    ]
    cats = [{"id": 90, "name": "ninety"}, {"id": 7, "name": "seven"}]
    root.mkdir(parents=True, exist_ok=True)
    if with_images:
        for img in images:
            Image.new("RGB", (img["width"], img["height"]), (120, 30, 200)).save(root / img["file_name"])
    ann = root / "instances.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann


def test_box_policy_crowd_degenerate_outside_empty(tmp_path):
    ann = _write_dataset(tmp_path / "d")
    train_tf, _ = detection_transforms("ssd", 64, MEAN, STD)
    ds = CocoDetectionDataset(ann, tmp_path / "d", train_tf)
    assert (ds.stats.boxes, ds.stats.crowd, ds.stats.clipped, ds.stats.degenerate, ds.stats.empty_images) == (3, 1, 1, 2, 1)
    assert ds.categories.category_ids == (7, 90)  # sorted file ids -> labels 1, 2
    by_id = {r[0]: r for r in ds.records}
    np.testing.assert_allclose(by_id[11][2], [[4, 6, 24, 22], [50, 30, 64, 48]])
    assert by_id[11][3].tolist() == [2, 1]
    assert by_id[12][3].tolist() == [2] and len(by_id[13][2]) == 0
    for i in range(len(ds)):  # every sample goes through the random pipeline without degenerate boxes
        target = ds[i]["target"]
        assert ds[i]["image"].shape == (3, 64, 64)
        boxes = target["boxes"]
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert boxes.numel() == 0 or (boxes.min() >= 0 and boxes.max() <= 64)
    dropped = CocoDetectionDataset(ann, tmp_path / "d", train_tf, drop_empty=True)
    assert sorted(r[0] for r in dropped.records) == [11, 12]


@pytest.mark.parametrize("change, needle", [
    (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "annotations[0] (id 1): bbox must be 4 finite numbers"),
    (lambda d: d["annotations"][1].update(image_id=999), "annotations[1] (id 2): image_id 999 is not in 'images'"),
    (lambda d: d["annotations"][1].update(category_id=5), "category_id 5 is not in 'categories'"),
    (lambda d: d["images"][1].pop("width"), "images[1] (id 12, b.jpg): needs a positive integer 'width'"),
    (lambda d: d.pop("categories"), "missing or non-list 'categories'"),
])
def test_malformed_annotation_file_names_file_and_record(tmp_path, change, needle):
    ann = _write_dataset(tmp_path, with_images=False)
    data = json.loads(ann.read_text())
    change(data)
    ann.write_text(json.dumps(data))
    with pytest.raises(DataError) as err:
        read_coco_json(ann)
    assert str(ann) in str(err.value) and needle in str(err.value)


def test_not_json_names_the_file(tmp_path):
    bad = tmp_path / "instances.json"
    bad.write_text("{ not json")
    with pytest.raises(DataError, match="instances.json: not valid JSON"):
        read_coco_json(bad)


def test_missing_coco_names_files_and_points_at_shapes(tmp_path):
    dm = CocoDetectionDataModule(root=str(tmp_path / "coco"), val_split="minival2014")
    with pytest.raises(DataError) as err:
        dm.setup("fit")
    text = str(err.value)
    for expected in ("annotations/instances_train2017.json", "train2017/", "annotations/instances_minival2014.json",
                     "val2014/", "data=shapes"):
        assert expected in text


def test_id_mapping_and_box_scaling_round_trip(tmp_path):
    """GT -> network-input boxes and labels -> back to original pixels and file ids == perfect COCO AP."""
    ann = _write_dataset(tmp_path / "d")
    _, eval_tf = detection_transforms("keep_aspect", 36, MEAN, STD)
    ds = CocoDetectionDataset(ann, tmp_path / "d", eval_tf)
    cats = CategoryMap.from_coco(ds.coco)
    assert [cats.to_category(cats.to_label(c)) for c in (7, 90)] == [7, 90]
    results = []
    for i in range(len(ds)):
        sample = ds[i]
        t = sample["target"]
        boxes = boxes_to_original(t["boxes"], sample["image"].shape[-2:], t["orig_size"])
        results += results_from_detections(boxes.numpy(), np.ones(len(boxes)), [cats.to_category(int(lab)) for lab in t["labels"]],
                                           t["image_id"])
    for ann_id in (1, 6):  # boxes fully inside their image come back where the file put them, with its ids
        a = ds.coco.anns[ann_id]
        match = [r for r in results if r["image_id"] == a["image_id"] and r["category_id"] == a["category_id"]
                 and np.allclose(r["bbox"], a["bbox"], atol=0.05)]
        assert match, (a, results)
    assert {r["category_id"] for r in results} == {7, 90}


# ---- the evaluator against plain pycocotools -------------------------------------------------------------------------
def test_evaluator_reproduces_pycocotools_exactly(tmp_path):
    ann = _write_dataset(tmp_path, with_images=False)
    reference_file = tmp_path / "reference.json"  # pycocotools needs iscrowd on every record: the checked copy
    reference_file.write_text(json.dumps(read_coco_json(ann)))
    rng = np.random.default_rng(1)
    gt = COCO(str(reference_file))
    dets = []
    for a in gt.dataset["annotations"]:
        x, y, w, h = a["bbox"]
        dets.append({"image_id": a["image_id"], "category_id": a["category_id"],
                     "bbox": [x + rng.normal(0, 2), y + rng.normal(0, 2), w + 1, h], "score": float(rng.random())})
        dets.append({"image_id": a["image_id"], "category_id": 7 if a["category_id"] == 90 else 90,
                     "bbox": [x, y, w + 3, h + 3], "score": float(rng.random())})
    dets.append({"image_id": 13, "category_id": 7, "bbox": [1, 1, 10, 10], "score": 0.9})  # on the empty image
    reference = COCOeval(gt, gt.loadRes(json.loads(json.dumps(dets))), "bbox")
    reference.evaluate()
    reference.accumulate()
    reference.summarize()
    expected = dict(zip(STAT_NAMES, (float(v) for v in reference.stats), strict=True))

    from toolkit.data.coco import load_coco

    ours = CocoEvaluator(load_coco(ann), backend="pycocotools")
    for image_id in (11, 12, 13):  # one image per batch, as batches deliver them
        ours.update([d for d in dets if d["image_id"] == image_id], [image_id])
    assert ours.compute() == expected
    assert ours.per_class and set(ours.per_class) == {7, 90}
    faster = CocoEvaluator(load_coco(ann), backend="faster_coco_eval")
    faster.update(dets, [11, 12, 13])
    assert faster.compute() == expected
    assert 0 < expected["map"] < 1
    # an image delivered twice (a re-batched repeat) counts once, and two identical real detections both count
    repeated = CocoEvaluator(load_coco(ann))
    repeated.update(dets, [11, 12, 13])
    repeated.update([d for d in dets if d["image_id"] == 12], [12])
    assert repeated.compute() == expected and len(repeated.results) == len(dets)
    twin = [*dets, dict(dets[0])]
    doubled = CocoEvaluator(load_coco(ann))
    doubled.update(twin, [11, 12, 13])
    doubled.compute()
    assert len(doubled.results) == len(dets) + 1


def test_default_backend_is_faster_coco_eval_when_installed():
    assert resolve_backend("auto") == "faster_coco_eval"
    assert resolve_backend("pycocotools") == "pycocotools"
    with pytest.raises(ValueError, match="task.eval_backend"):
        resolve_backend("cocoapi")


def test_evaluator_without_detections_scores_zero(tmp_path):
    from toolkit.data.coco import load_coco

    ev = CocoEvaluator(load_coco(_write_dataset(tmp_path, with_images=False)))
    ev.update([], [11, 12, 13])
    stats = ev.compute()
    assert stats["map"] == 0.0 and stats["mar_100"] == 0.0


def test_ssd_random_crop_keeps_boxes_centred_inside():
    crop = SSDRandomCrop(min_ious=(0.5,))
    import albumentations as A

    pipeline = A.Compose([crop], bbox_params=A.BboxParams(format="pascal_voc", label_fields=["labels"], clip=True), seed=3)
    image = np.zeros((100, 200, 3), np.uint8)
    boxes = np.array([[10, 10, 60, 60], [120, 20, 190, 90]], np.float32)
    changed = 0
    for _ in range(20):
        out = pipeline(image=image, bboxes=boxes, labels=np.array([1, 2]))
        h, w = out["image"].shape[:2]
        changed += (h, w) != (100, 200)
        assert len(out["bboxes"]) >= 1 and len(out["bboxes"]) == len(out["labels"])
        assert (np.asarray(out["bboxes"])[:, 2:] <= [w, h]).all()
    assert changed > 0
