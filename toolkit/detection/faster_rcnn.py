"""MobileNet Faster R-CNN as the paper ran it (TF Object Detection API), assembled from torchvision's parts.

The layout the paper ran (§4.6, Table 13; the TF Object Detection API's MobileNet Faster R-CNN): the backbone
up to `conv11` (stride 16) feeds the RPN; grid anchors of 0.25/0.5/1/2 x 256 and ratios 0.5/1/2 at stride 16; RPN NMS 0.7; 300 proposals per
image; RoIAlign 14x14 crops from `conv11`; the SAME backbone's `conv12` (stride 2) and `conv13` run on
every crop as the second stage, average-pooled, then the class and box layers.

Any registry backbone serves through `feature_info`: a stride-16 tap feeds the RPN and the stages
after it (`Backbone.split_at`) become the box head; where a backbone cannot be split, or with
`box_head="mlp"`, torchvision's TwoMLPHead on 7x7 crops does. `fpn=True` builds the torchvision
MobileNetV3-FPN style variant instead (two taps + a feature pyramid, multi-level RoIAlign, MLP head).
"""

from __future__ import annotations

import inspect
import logging
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from toolkit.backbones import Backbone, create_backbone
from toolkit.errors import ConfigError

log = logging.getLogger(__name__)

#: TF OD API grid anchors: scales 0.25/0.5/1/2 of a 256-pixel base box, aspect ratios 0.5/1/2
PAPER_ANCHOR_SIZES = (64, 128, 256, 512)
PAPER_ASPECT_RATIOS = (0.5, 1.0, 2.0)
#: longer side at most resolution x 1000/600: the rule of the `keep_aspect` data pipeline
#: (toolkit.data.detection_transforms), so images it resized are not resized again here
MAX_SIZE_RATIO = 1000 / 600

#: torchvision `FasterRCNN` arguments set to the paper's TF OD API values (faster_rcnn.proto defaults
#: and the model-zoo configs); everything else keeps torchvision's defaults. TF runs NMS over all
#: anchors; 6000 top-scoring boxes before NMS is Detectron's stand-in for that.
PAPER_RCNN_ARGS: dict = {
    "rpn_nms_thresh": 0.7,
    "rpn_pre_nms_top_n_train": 6000,
    "rpn_post_nms_top_n_train": 300,
    "rpn_pre_nms_top_n_test": 6000,
    "rpn_post_nms_top_n_test": 300,  # "Faster-RCNN evaluates 300 RPN proposals per image"
    "rpn_batch_size_per_image": 256,
    "rpn_positive_fraction": 0.5,
    "box_batch_size_per_image": 64,  # TF second_stage_batch_size
    "box_positive_fraction": 0.25,
    "box_score_thresh": 0.0,
    "box_nms_thresh": 0.6,
    "box_detections_per_img": 100,
}

_RCNN_ARG_NAMES = {
    name for name in inspect.signature(FasterRCNN.__init__).parameters
    if name.startswith(("rpn_", "box_")) and name not in {"rpn_anchor_generator", "rpn_head", "box_roi_pool", "box_head", "box_predictor"}
} | {"bbox_reg_weights"}


class _FeatureTrunk:
    """What both trunks share: read the taps, then (FPN variant) merge them into a feature pyramid."""

    taps: list[str]
    fpn: FeaturePyramidNetwork | None

    def _setup_outputs(self, backbone: Backbone, taps: Sequence[str], fpn_channels: int | None) -> None:
        self.taps = list(taps)
        self.fpn = (FeaturePyramidNetwork(backbone.feature_info.channels(self.taps), fpn_channels,
                                          extra_blocks=LastLevelMaxPool()) if fpn_channels else None)
        self.out_channels = fpn_channels or backbone.feature_info.get(self.taps[0]).channels

    def read_taps(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.read_taps(x)
        return self.fpn(features) if self.fpn is not None else features


class DetectorTrunk(_FeatureTrunk, Backbone):
    """The backbone cut after the deepest stage the detector reads; returns the RPN's taps by name.

    A truncated `Backbone` is itself a `Backbone`: its stages keep their own names, so state-dict keys
    (`backbone.stages.conv0...`) are exactly a classifier's and `init_from` maps one to one.
    """

    def __init__(self, backbone: Backbone, taps: Sequence[str], keep_until: str, fpn_channels: int | None = None):
        Backbone.__init__(self)
        names = backbone.feature_info.names()
        kept = names[: names.index(keep_until) + 1]
        self._set_stages(OrderedDict((n, getattr(backbone.stages, n)) for n in kept),
                         [backbone.feature_info.get(n) for n in kept])
        self.mean, self.std = backbone.mean, backbone.std
        self._setup_outputs(backbone, taps, fpn_channels)

    def read_taps(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.forward_taps(x, self.taps)


class WholeBackboneTrunk(_FeatureTrunk, nn.Module):
    """A backbone that cannot be cut at a tap (timm `features_only` models), run whole.

    Its sub-modules are registered here under their own names, so state-dict keys stay the backbone's.
    Every stage runs even when only a shallower tap is read: limit it with the backbone's own options
    (timm: `backbone.out_indices`), or DDP needs `find_unused_parameters`.
    """

    def __init__(self, backbone: Backbone, taps: Sequence[str], fpn_channels: int | None = None):
        nn.Module.__init__(self)
        for name, child in backbone.named_children():
            self.add_module(name, child)
        self._backbone = (backbone,)  # a tuple: its modules are registered above, under the same names
        self.feature_info, self.mean, self.std = backbone.feature_info, backbone.mean, backbone.std
        self._setup_outputs(backbone, taps, fpn_channels)

    def read_taps(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self._backbone[0].forward_taps(x, self.taps)


def can_split(backbone: nn.Module) -> bool:
    """Whether the backbone is a plain stack of stages named like its taps (so it can be cut at any tap)."""
    stages = getattr(backbone, "stages", None)
    return isinstance(stages, nn.Sequential) and set(backbone.feature_info.names()) <= {n for n, _ in stages.named_children()}


class BackboneStagesBoxHead(nn.Module):
    """The second stage from the backbone's own later stages (paper: conv12 stride 2, conv13) on each RoI crop,
    average-pooled to one vector per RoI.

    The stages stay registered under `backbone.stages` only (one copy of each weight, the classifier's
    key names, the backbone's lr scale and freezing); this head keeps a plain reference to them.
    """

    def __init__(self, stages: nn.Sequential, out_channels: int):
        super().__init__()
        self._stages = (stages,)  # a tuple, so nn.Module does not register the shared stages a second time
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_channels = out_channels

    @property
    def stages(self) -> nn.Sequential:
        return self._stages[0]

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.stages(crops)), 1)

    def extra_repr(self) -> str:
        return f"stages={list(dict(self.stages.named_children()))} (shared with backbone.stages), out_channels={self.out_channels}"


class DetectionTransform(GeneralizedRCNNTransform):
    """torchvision's normalise + keep-aspect resize + batch padding, where the resize is skipped for images that
    already have the configured size, or always with `resize=False` (the toolkit's data pipeline resizes:
    `data.resolution` with `data.transform=keep_aspect`), so no image is interpolated twice."""

    def __init__(self, *args, resize: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.resize_images = resize

    def resize(self, image: torch.Tensor, target: dict | None = None):
        if not self.resize_images:
            return image, target
        h, w = image.shape[-2:]
        if self.fixed_size is None and len(self.min_size) == 1:
            scale = min(self.min_size[0] / min(h, w), self.max_size / max(h, w))
            if round(h * scale) == h and round(w * scale) == w:
                return image, target
        return super().resize(image, target)


def default_rpn_tap(backbone: Backbone) -> str:
    """The deepest tap of stride 16 (MobileNet V1: `conv11`), else the deepest one finer than 16."""
    taps = [t for t in backbone.feature_info if t.reduction <= 16]
    if not taps:
        raise ConfigError("task.model.rpn_tap", None, f"backbone has no tap of stride <= 16: {backbone.feature_info.names()}")
    exact = [t for t in taps if t.reduction == 16]
    return (exact or taps)[-1].name


def _make_trunk(net: Backbone, taps: Sequence[str], keep_until: str, fpn_channels: int | None = None) -> nn.Module:
    if can_split(net):
        return DetectorTrunk(net, taps, keep_until, fpn_channels)
    return WholeBackboneTrunk(net, taps, fpn_channels)


def build_faster_rcnn(
    backbone: dict | Backbone,
    num_classes: int,
    *,
    resolution: int | None = 600,
    max_size: int | None = None,
    rpn_tap: str | None = None,
    box_head: str = "auto",
    fpn: bool = False,
    fpn_taps: Sequence[str] | None = None,
    fpn_channels: int = 256,
    anchor_sizes: Sequence[int] = PAPER_ANCHOR_SIZES,
    aspect_ratios: Sequence[float] = PAPER_ASPECT_RATIOS,
    roi_output_size: int = 14,
    sampling_ratio: int = 1,
    representation_size: int = 1024,
    frozen_bn: bool = False,
    image_mean: Sequence[float] | None = None,
    image_std: Sequence[float] | None = None,
    rcnn: dict | None = None,
) -> FasterRCNN:
    """A torchvision `FasterRCNN` for `num_classes` foreground classes (labels 1..K; 0 is background).

    The keyword arguments but `resolution`, `max_size`, `image_mean`, `image_std` (which the task sets from the data
    pipeline) are the Faster R-CNN task's `task.model` settings; the defaults are the paper's layout.
    backbone: a registry config dict (`{"name": "mobilenet_v1", "alpha": 1.0}`) or a built Backbone.
    resolution / max_size: the model resizes images to this shorter side, the longer one capped at max_size
      (default 1000/600 x resolution); `resolution=None`: images come resized (the toolkit's data pipeline).
    rpn_tap: the stride-16 tap the RPN and RoIAlign read (default: the deepest stride-16 tap, V1's conv11).
    box_head: "stages" = the backbone's stages after `rpn_tap` (the paper), "mlp" = TwoMLPHead on 7x7 crops,
      "auto" = stages where the backbone can be split there.
    fpn / fpn_taps / fpn_channels: the feature-pyramid variant (default taps: the deepest stride-16 and stride-32
      taps), with an MLP box head of `representation_size` (also the "mlp" head's).
    anchor_sizes / aspect_ratios: the RPN's grid anchors (TF's 0.25/0.5/1/2 x 256 pixels, ratios 0.5/1/2).
    roi_output_size / sampling_ratio: RoIAlign of the "stages" head (14x14, TF's initial_crop_size; sampling_ratio 1
      is one bilinear sample per cell, as TF's crop_and_resize); the MLP heads take 7x7 crops.
    frozen_bn: build the backbone with torchvision's FrozenBatchNorm2d (torchvision's detection builders' choice for
      pretrained backbones at a few images per GPU): statistics and affine values stay as loaded.
    rcnn: torchvision `FasterRCNN` rpn_*/box_* arguments over `PAPER_RCNN_ARGS`.
    """
    if num_classes < 1:
        raise ConfigError("num_classes", num_classes, "need at least one foreground class")
    if isinstance(backbone, dict):
        net = create_backbone(**backbone, norm_layer=FrozenBatchNorm2d if frozen_bn else None)
    elif frozen_bn and any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules()):
        raise ConfigError("task.model.frozen_bn", frozen_bn, "a built backbone keeps the norm layers it was built with: "
                          "pass its config dict, or build it with create_backbone(..., norm_layer=FrozenBatchNorm2d)")
    else:
        net = backbone
    rcnn_args = {**PAPER_RCNN_ARGS, **(rcnn or {})}
    unknown = set(rcnn_args) - _RCNN_ARG_NAMES
    if unknown:
        raise ConfigError("task.model.rcnn", sorted(unknown), f"allowed keys: {', '.join(sorted(_RCNN_ARG_NAMES))}")
    if rcnn_args.get("bbox_reg_weights") is not None:
        rcnn_args["bbox_reg_weights"] = tuple(rcnn_args["bbox_reg_weights"])
    sizes, ratios = tuple(int(s) for s in anchor_sizes), tuple(float(r) for r in aspect_ratios)

    if fpn:
        taps = list(fpn_taps or [default_rpn_tap(net), net.feature_info[-1].name])
        if len(set(taps)) != len(taps) or any(t not in net.feature_info.names() for t in taps):
            raise ConfigError("task.model.fpn_taps", taps, f"distinct taps of {net.feature_info.names()}")
        trunk = _make_trunk(net, taps, keep_until=taps[-1], fpn_channels=fpn_channels)
        levels = [*taps, "pool"]
        anchor_generator = AnchorGenerator((sizes,) * len(levels), (ratios,) * len(levels))
        roi_pool = MultiScaleRoIAlign(taps, output_size=7, sampling_ratio=sampling_ratio)
        head: nn.Module = TwoMLPHead(fpn_channels * 7 * 7, representation_size)
        head_channels, stride = representation_size, 2 * max(net.feature_info.reductions(taps))
    else:
        tap = rpn_tap or default_rpn_tap(net)
        if tap not in net.feature_info.names():
            raise ConfigError("task.model.rpn_tap", tap, f"one of {net.feature_info.names()}")
        if box_head not in ("auto", "stages", "mlp"):
            raise ConfigError("task.model.box_head", box_head, "auto, stages (the paper) or mlp")
        deepest = net.feature_info[-1].name
        splits = can_split(net) and tap != deepest
        if box_head == "stages" and not splits:
            raise ConfigError("task.model.box_head", box_head, f"{type(net).__name__} cannot run its stages after "
                              f"{tap!r} on the crops ({'no stages after it' if tap == deepest else 'it cannot be cut'}); use mlp")
        if splits and box_head != "mlp":  # the paper: RoIAlign 14x14 from the tap, then the later stages on each crop
            trunk = DetectorTrunk(net, [tap], keep_until=deepest)
            roi_pool = MultiScaleRoIAlign([tap], output_size=roi_output_size, sampling_ratio=sampling_ratio)
            head = BackboneStagesBoxHead(net.split_at(tap)[1], net.feature_info[-1].channels)
            head_channels = net.feature_info[-1].channels
        else:  # later stages unused: cut off where possible (DDP refuses parameters that get no gradient)
            trunk = _make_trunk(net, [tap], keep_until=tap)
            roi_pool = MultiScaleRoIAlign([tap], output_size=7, sampling_ratio=sampling_ratio)
            head = TwoMLPHead(net.feature_info.get(tap).channels * 7 * 7, representation_size)
            head_channels = representation_size
        anchor_generator = AnchorGenerator((sizes,), (ratios,))
        stride = net.feature_info.get(tap).reduction

    model = FasterRCNN(
        trunk,
        rpn_anchor_generator=anchor_generator,
        box_roi_pool=roi_pool,
        box_head=head,
        box_predictor=FastRCNNPredictor(head_channels, num_classes + 1),
        **rcnn_args,
    )
    # Pad batches to a multiple of the coarsest stride, so anchor strides (image size // feature size) are exact.
    model.transform = DetectionTransform(
        min_size=resolution or 1,
        max_size=max_size or int((resolution or 1) * MAX_SIZE_RATIO),
        image_mean=list(image_mean or net.mean),
        image_std=list(image_std or net.std),
        size_divisible=stride,
        resize=resolution is not None,
    )
    return model
