"""Faster R-CNN MobileNet: the paper's layout and counts, 300 proposals, learning, and the CLI round trip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import FAST, run_cli
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from toolkit.backbones import create_backbone
from toolkit.data.detection_transforms import keep_aspect_eval_transform
from toolkit.data.samplers import GroupedBatchSampler, aspect_ratio_bins, create_aspect_ratio_groups
from toolkit.detection.faster_rcnn import BackboneStagesBoxHead, DetectorTrunk, build_faster_rcnn
from toolkit.errors import ConfigError, DataError
from toolkit.heads import ImageClassifier
from toolkit.profiling import count_model
from toolkit.run import run
from toolkit.schedulers import WarmupMultiStepLR
from toolkit.tasks.detection_frcnn import FasterRCNNTask

V1 = {"name": "mobilenet_v1", "alpha": 0.25}
#: one torch thread here and in the CLI subprocesses: on a small shared machine more threads spin and crawl
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small forwards


def build(alpha: float = 0.25, resolution: int | None = 300, num_classes: int = 3, **kwargs):
    torch.manual_seed(0)
    return build_faster_rcnn({"name": "mobilenet_v1", "alpha": alpha}, num_classes, resolution=resolution, **kwargs)


def record_proposals(model) -> list[int]:
    counts: list[int] = []
    model.rpn.register_forward_hook(lambda _m, _i, out: counts.extend(len(b) for b in out[0]))
    return counts


# ---- the paper's layout ----------------------------------------------------------------------------------
@pytest.mark.parametrize("resolution", [300, 600])
def test_300_proposals_per_image_reach_the_second_stage(resolution):
    model = build(resolution=resolution).eval()
    proposals = record_proposals(model)
    crops: list[torch.Size] = []
    model.roi_heads.box_head.register_forward_hook(lambda _m, inputs, _o: crops.append(inputs[0].shape))
    with torch.no_grad():
        out = model(torch.rand(2, 3, resolution, resolution))
    side = -(-resolution // 16)  # conv11 grid at stride 16; 12 anchors per cell: thousands, enough for 300
    assert side * side * 12 > 300
    assert proposals == [300, 300]
    assert crops == [torch.Size([600, 128, 14, 14])]  # 14x14 RoIAlign crops of conv11 (512 x 0.25 channels)
    assert len(out) == 2 and all(o["boxes"].shape[0] <= 100 for o in out)


def test_anchors_are_the_tf_grid_at_stride_16():
    model = build()
    generator = model.rpn.anchor_generator
    assert generator.sizes == ((64, 128, 256, 512),)
    assert generator.aspect_ratios == ((0.5, 1.0, 2.0),)
    assert generator.num_anchors_per_location() == [12]
    assert model.rpn.nms_thresh == 0.7 and model.rpn._post_nms_top_n["testing"] == 300
    assert model.backbone.taps == ["conv11"] and model.backbone.feature_info.get("conv11").reduction == 16


@pytest.mark.parametrize(("alpha", "c11", "c13"), [(0.25, 128, 256), (1.0, 512, 1024)])
def test_box_head_is_conv12_conv13_of_the_same_backbone(alpha, c11, c13):
    model = build(alpha=alpha, num_classes=5)
    head = model.roi_heads.box_head
    assert isinstance(head, BackboneStagesBoxHead) and isinstance(model.backbone, DetectorTrunk)
    assert [n for n, _ in head.stages.named_children()] == ["conv12", "conv13"]
    assert head.stages.conv12 is model.backbone.stages.conv12  # shared, not a copy
    assert not [k for k in model.state_dict() if k.startswith("roi_heads.box_head.")]  # stored once, under backbone
    crops = torch.randn(4, c11, 14, 14)
    with torch.no_grad():
        assert head.stages.conv12(crops).shape == (4, c13, 7, 7)  # conv12 stride 2
        features = head(crops)
        scores, deltas = model.roi_heads.box_predictor(features)
    assert features.shape == (4, c13)
    assert scores.shape == (4, 6) and deltas.shape == (4, 24)  # 5 classes + background


@pytest.mark.parametrize(("resolution", "paper_b"), [(300, 25.2), (600, 30.5)])
def test_mult_adds_and_params_match_table_13(resolution, paper_b):
    """The paper counts 300 proposals through conv12/conv13; so does count_model on the eval-mode model."""
    model = build(alpha=1.0, resolution=resolution, num_classes=80)
    count = count_model(model, torch.rand(1, 3, resolution, resolution))
    assert abs(count.mult_adds / 1e9 - paper_b) < 0.01 * paper_b, f"{count.mult_adds / 1e9:.2f}B"
    assert abs(count.params / 1e6 - 6.1) < 0.15, f"{count.params / 1e6:.3f}M"  # 80 classes here, TF used 90


def test_variants_fpn_mlp_and_other_backbones_run():
    images = [torch.rand(3, 128, 160), torch.rand(3, 128, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 20, 60, 90]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]  # an image without boxes
    for backbone, kwargs in [(V1, {"fpn": True}), (V1, {"box_head": "mlp"}), ({"name": "mobilenet_v2", "alpha": 0.35}, {})]:
        torch.manual_seed(0)
        model = build_faster_rcnn(backbone, 2, resolution=128, **kwargs).train()
        losses = model(images, targets)
        sum(losses.values()).backward()
        assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
        unused = [n for n, p in model.named_parameters() if p.grad is None]
        assert not unused, f"{backbone} {kwargs}: parameters without gradient (DDP would fail): {unused[:3]}"
    with pytest.raises(ConfigError, match="box_head"):
        build_faster_rcnn(V1, 2, box_head="stages", rpn_tap="conv13")
    with pytest.raises(ConfigError, match="rcnn"):
        build_faster_rcnn(V1, 2, rcnn={"rpn_nms": 0.5})


def test_mixed_precision_trains_and_detects():
    """trainer.precision=bf16-mixed / 16-mixed run the model under autocast; torchvision's ops support it."""
    model = build(resolution=None)
    images = [torch.rand(3, 128, 160)]
    targets = [{"boxes": torch.tensor([[10.0, 20, 60, 90]]), "labels": torch.tensor([1])}]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.train()(images, targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        (out,) = model.eval()(images)
    assert out["boxes"].shape[1] == 4 and len(out["boxes"]) == len(out["scores"]) > 0


def trained_looking_backbone_file(path: Path) -> Path:
    """A backbone state dict whose BatchNorm statistics and affine values are not the initial ones."""
    torch.manual_seed(3)
    backbone = create_backbone("mobilenet_v1", alpha=0.25)
    with torch.no_grad():
        for module in backbone.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.1, 0.1)
    torch.save({f"backbone.{k}": v for k, v in backbone.state_dict().items()}, path)
    return path


def test_frozen_bn_is_built_in_loads_pretrained_weights_and_keeps_statistics(tmp_path):
    """`frozen_bn=True` builds the backbone with FrozenBatchNorm2d (no conversion afterwards): a saved backbone loads
    into it (no `num_batches_tracked` needed), the detector gives the outputs of the BatchNorm model in eval mode (what
    the conversion gave), and a training step changes no statistic or affine value."""
    weights = {**V1, "pretrained": str(trained_looking_backbone_file(tmp_path / "backbone.pt"))}
    torch.manual_seed(0)
    reference = build_faster_rcnn(weights, 3, resolution=128).eval()
    torch.manual_seed(0)
    frozen = build_faster_rcnn(weights, 3, resolution=128, frozen_bn=True).eval()
    assert not any(isinstance(m, nn.BatchNorm2d) for m in frozen.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules()) == sum(
        isinstance(m, nn.BatchNorm2d) for m in reference.modules()) == 27
    x = torch.rand(1, 3, 128, 128)
    logits = []
    for model in (reference, frozen):
        model.roi_heads.box_predictor.register_forward_hook(lambda _m, _i, out: logits.append(out[0]))
    with torch.no_grad():
        assert torch.allclose(reference.backbone(x)["conv11"], frozen.backbone(x)["conv11"], atol=1e-5)
        reference(list(x)), frozen(list(x))
    # the class scores of the same proposals (final detections of an untrained head tie, NMS keeps either)
    assert logits[0].shape == logits[1].shape and torch.allclose(logits[0], logits[1], atol=1e-4)

    before = {k: v.clone() for k, v in frozen.backbone.state_dict().items()}
    predictor = frozen.roi_heads.box_predictor.cls_score.weight.clone()
    optimizer = torch.optim.SGD([p for p in frozen.parameters() if p.requires_grad], lr=0.1)
    frozen.train()
    targets = [{"boxes": torch.tensor([[10.0, 20, 60, 90]]), "labels": torch.tensor([1])}]
    sum(frozen(list(x), targets).values()).backward()
    optimizer.step()
    after = frozen.backbone.state_dict()
    norm_keys = [k for k in before if k.endswith(("running_mean", "running_var", ".bn.weight", ".bn.bias"))]
    assert len(norm_keys) == 4 * 27 and all(torch.equal(before[k], after[k]) for k in norm_keys)
    assert not torch.equal(predictor, frozen.roi_heads.box_predictor.cls_score.weight)  # the step did train


def test_frozen_bn_task_takes_init_from_into_frozen_layers(tmp_path):
    state = torch.load(trained_looking_backbone_file(tmp_path / "backbone.pt"), weights_only=True)
    task = FasterRCNNTask(backbone=V1, num_classes=3, model={"frozen_bn": True})
    task.load_init_weights(tmp_path / "backbone.pt")
    bn = task.model.backbone.stages.conv5.pw.bn
    assert isinstance(bn, FrozenBatchNorm2d)
    assert torch.equal(bn.running_var, state["backbone.stages.conv5.pw.bn.running_var"])
    assert torch.equal(bn.weight, state["backbone.stages.conv5.pw.bn.weight"])


def test_loss_decreases_on_a_fixed_batch():
    model = build(resolution=128).train()
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 128, 128, generator=generator) * 0.3 for _ in range(2)]
    boxes = [(20, 30, 80, 90), (50, 10, 120, 60)]
    for image, (x0, y0, x1, y1) in zip(images, boxes, strict=True):
        image[:, y0:y1, x0:x1] = torch.tensor([1.0, 0.2, 0.1])[:, None, None]
    targets = [{"boxes": torch.tensor([b], dtype=torch.float32), "labels": torch.tensor([i + 1])} for i, b in enumerate(boxes)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(10):
        loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert np.mean(losses[-3:]) < 0.8 * losses[0], losses


# ---- data, schedule and fine-tuning pieces -----------------------------------------------------------------
def test_data_pipeline_resize_is_not_repeated_by_the_model():
    model = build(resolution=300).eval()
    mean, std = (0.5,) * 3, (0.5,) * 3
    image = np.zeros((137, 411, 3), np.uint8)
    resized = keep_aspect_eval_transform(300, mean, std)(image=image, bboxes=np.zeros((0, 4)), labels=[])["image"]
    assert tuple(resized.shape[1:]) == (167, 500)  # scale min(300/137, 500/411): the longer side is capped
    batch, _ = model.transform([resized])
    assert tuple(batch.image_sizes[0]) == tuple(resized.shape[1:])  # not interpolated again
    assert batch.tensors.shape[-1] % 16 == 0 and batch.tensors.shape[-2] % 16 == 0
    raw, _ = model.transform([torch.rand(3, 100, 150)])  # a raw image is resized to the shorter side
    assert tuple(raw.image_sizes[0]) == (300, 450)
    no_resize = build(resolution=None).eval()  # what the task builds: the data pipeline owns the size
    assert tuple(no_resize.transform([torch.rand(3, 100, 150)])[0].image_sizes[0]) == (100, 150)


def test_grouped_batch_sampler_keeps_groups_and_covers_every_image():
    ratios = [0.5, 0.75, 1.0, 1.0, 1.33, 1.5, 2.0, 0.6, 1.0, 1.4, 1.0]
    groups = create_aspect_ratio_groups(ratios, k=1)  # edges 0.5, 1, 2
    assert aspect_ratio_bins(1) == pytest.approx([0.5, 1.0, 2.0])
    assert groups == [1, 1, 2, 2, 2, 2, 3, 1, 2, 2, 2]
    sampler = GroupedBatchSampler(torch.utils.data.SequentialSampler(ratios), groups, batch_size=3)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 4  # three full single-group batches, then the two leftovers together
    assert all(len({groups[i] for i in b}) == 1 for b in batches[:3]) and [len(b) for b in batches] == [3, 3, 3, 2]
    assert sorted(i for b in batches for i in b) == list(range(len(ratios)))
    with pytest.raises(ValueError):
        GroupedBatchSampler(list(range(3)), [0, 0, 0], 2)


def test_warmup_multistep_schedule():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = WarmupMultiStepLR(optimizer, milestones=[16, 22], warmup_steps=1000, warmup_factor=0.001,
                                 steps_per_epoch=10, schedule_epochs=26, max_epochs=26)
    assert schedule.factor(0) == pytest.approx(0.001)
    assert schedule.factor(9) == pytest.approx(1.0)  # warm-up capped at the first epoch (9 steps)
    assert schedule.factor(159) == pytest.approx(1.0) and schedule.factor(160) == pytest.approx(0.1)
    assert schedule.factor(220) == pytest.approx(0.01)
    short = WarmupMultiStepLR(optimizer, milestones=[16, 22], steps_per_epoch=10, schedule_epochs=26, max_epochs=13)
    assert short.factor(79) == pytest.approx(1.0) and short.factor(80) == pytest.approx(0.1)  # 16/26 of 13 epochs


def test_lr_scales_with_batch_and_init_from_a_classifier_fills_the_box_head(tmp_path):
    task = FasterRCNNTask(backbone=V1, num_classes=3, batch_size=4, lr_reference_batch=16,
                          optimizer={"_target_": "torch.optim.SGD", "lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4})
    assert all(g["lr"] == pytest.approx(0.005) for g in task.param_groups(1e-4, 0.02))
    # a split of 2 images caps the batch at 2: the lr follows the batch that is really used, on 2 devices
    task._trainer = SimpleNamespace(world_size=2, accumulate_grad_batches=1,
                                    datamodule=SimpleNamespace(train_batch_size=lambda: 2))
    assert all(g["lr"] == pytest.approx(0.02 * 4 / 16) for g in task.param_groups(1e-4, 0.02))
    task._trainer = None

    torch.manual_seed(1)
    classifier = ImageClassifier(create_backbone("mobilenet_v1", alpha=0.25), 1000)
    path = tmp_path / "imagenet.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in classifier.state_dict().items()}}, path)
    report = task.load_init_weights(path)
    assert "model.backbone.stages.conv13.pw.conv.weight" in report["loaded"]
    assert torch.equal(task.model.roi_heads.box_head.stages.conv13.pw.conv.weight,
                       classifier.backbone.stages.conv13.pw.conv.weight)
    assert torch.equal(task.model.backbone.stages.conv0.conv.weight, classifier.backbone.stages.conv0.conv.weight)


# ---- the user's commands ------------------------------------------------------------------------------------
TINY = ["backbone.alpha=0.25", "data=shapes", "data.resolution=128", "data.image_size=64", "data.n_train=8",
        "data.n_val=4", "data.batch_size=4"]


def coco_layout_from_shapes(cache: Path, root: Path) -> Path:
    """The generated val split laid out as COCO's minival2014 (annotations/instances_minival2014.json + val2014/)."""
    shapes = next(p for p in cache.glob("shapes_det_*") if p.is_dir())
    (root / "coco" / "annotations").mkdir(parents=True)
    shutil.copy(shapes / "annotations" / "instances_val.json", root / "coco" / "annotations" / "instances_minival2014.json")
    shutil.copytree(shapes / "val", root / "coco" / "val2014")
    return root


def test_train_eval_minival_predict_and_fine_tune_from_the_cli(make_cfg, tmp_path):
    env = {"TOOLKIT_CACHE_DIR": str(tmp_path / "cache"), "TOOLKIT_LOG_DIR": str(tmp_path / "outputs"), **ONE_THREAD}
    train = run_cli(["task=detection_frcnn", *TINY, *FAST, "trainer.max_epochs=1"], cwd=tmp_path, env=env)
    assert train.returncode == 0, train.stderr[-3000:]
    (best,) = (tmp_path / "outputs").glob("detection_frcnn/**/checkpoints/best*.ckpt")

    # the eval command on the 2014 minival layout (the generated val images stand in for COCO's)
    data_dir = coco_layout_from_shapes(tmp_path / "cache", tmp_path / "datasets")
    evaluate = run_cli(["task=detection_frcnn", "backbone.alpha=0.25", "data.resolution=300", "mode=eval",
                        f"ckpt_path={best}", "data.val_split=minival2014", *FAST],
                       cwd=tmp_path, env={**env, "TOOLKIT_DATA_DIR": str(data_dir)})
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert "val/map_50" in evaluate.stdout
    (metrics_file,) = [p for p in (tmp_path / "outputs").glob("detection_frcnn/**/metrics.json")]
    metrics = json.loads(metrics_file.read_text())
    assert 0.0 <= metrics["val/map"] <= 1.0 and (metrics_file.parent / "detections_val.json").is_file()

    images = data_dir / "coco" / "val2014"
    pred = run(make_cfg(["task=detection_frcnn", *TINY, "mode=predict", f"ckpt_path={best}", f"predict.input={images}"]))
    records = json.loads((Path(pred["output_dir"]) / "predictions.json").read_text())
    assert pred["count"] == len(records) == len(list(images.glob("*.jpg")))
    assert all(set(r) == {"path", "width", "height", "detections"} and (r["width"], r["height"]) == (64, 64)
               for r in records)  # boxes (if any pass the score threshold) are in original 64x64 pixels
    assert all(0 <= v <= 64 for r in records for d in r["detections"] for v in d["box_xyxy"])
    assert sum(f.endswith(".png") for f in pred["files"]) == len(records)

    # a custom COCO-format dataset, fine-tuned from the checkpoint (class count from the file)
    ann = data_dir / "coco" / "annotations" / "instances_minival2014.json"
    custom = run(make_cfg(["task=detection_frcnn", "backbone.alpha=0.25", "data=coco_custom", f"data.train_ann={ann}",
                           f"data.train_images={images}", f"data.val_ann={ann}", f"data.val_images={images}",
                           "data.resolution=128", "data.batch_size=2", "trainer.max_epochs=1", f"init_from={best}"]))
    assert "val/map" in custom["metrics"]


def test_missing_coco_names_the_files(make_cfg, tmp_path):
    with pytest.raises(DataError, match="instances_val2017.json"):
        run(make_cfg(["task=detection_frcnn", "backbone.alpha=0.25", f"paths.data_dir={tmp_path / 'nowhere'}",
                      "trainer.max_epochs=1"]))


def test_profile_mode_reports_both_resolutions(make_cfg):
    totals = {}
    for resolution in (300, 600):
        result = run(make_cfg(["task=detection_frcnn", "mode=profile", "backbone.alpha=0.25",
                               f"data.resolution={resolution}", "profile.latency=false"]))
        assert Path(result["profile_file"]).is_file() and result["profile"]["resolution"] == resolution
        totals[resolution] = result["profile"]["mult_adds"]
    assert totals[600] > totals[300]


def test_shapes_default_to_300_for_faster_rcnn_only(make_cfg):
    """At the shapes default of 64 px the 64-512 px anchors match nothing well: this task asks for 300."""
    assert make_cfg(["task=detection_frcnn", "data=shapes"]).data.resolution == 300
    assert make_cfg(["task=detection_frcnn", "data=shapes", "data.resolution=128"]).data.resolution == 128
    assert make_cfg(["data=shapes"]).data.resolution == 64
    assert make_cfg(["task=detection_frcnn"]).data.resolution == 600  # COCO: the paper's 600 row
