"""MobileNet SSD as the TF Object Detection API's ssd_mobilenet_v1, built on torchvision's `SSD`.

Layout (paper §4.6, Table 13; the TF Object Detection API's ssd_mobilenet_v1), every depth scaled by the width multiplier (TF: `max(int(d * alpha), 16)`):
- feature maps: the backbone taps `conv11` (stride 16, 19x19 at 300) and `conv13` (stride 32, 10x10), then
  four extra layers of depth 512/256/256/128, each a 1x1 conv to half depth and a 3x3 stride-2 conv
  (5x5, 3x3, 2x2, 1x1 at 300). Other registry backbones give their last stride-16 and stride-32 taps.
- anchors (`SSDAnchorGenerator`, a `DefaultBoxGenerator`): scales 0.2..0.95 over 6 layers, ratios
  {1, 2, 1/2, 3, 1/3} plus one box of scale sqrt(s_k s_k+1); the lowest layer has 3 boxes
  (0.1 @ 1, 0.2 @ 2, 0.2 @ 1/2): 1,917 anchors at 300x300.
- head: 1x1 conv box predictors (TF's `kernel_size: 1`), or torchvision's `SSDLiteHead` (separable 3x3).
- training: torchvision `SSD.compute_loss`: box coder (10, 10, 5, 5), `SSDMatcher` at IoU 0.5 (each
  ground truth also takes its best anchor), smooth-L1 + softmax cross-entropy with 3:1 hard negative
  mining, normalised by the number of matches. Inference: `SSD.postprocess_detections` (per-class top-k,
  batched NMS 0.6, 100 detections).

`MobileNetSSD.backbone` is the registry Backbone itself (state-dict keys `backbone.stages.*`, the same as a
classifier's), so ImageNet or classification checkpoints initialise it by name. Inputs are images already
normalised and resized by the data pipeline (all of one size); outputs are in input pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.ssd import SSD, SSDScoringHead
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.ops import boxes as box_ops

from toolkit.backbones import Backbone, create_backbone
from toolkit.backbones.mobilenet_v1 import ConvBNAct
from toolkit.errors import ConfigError

EXTRA_DEPTHS = (512, 256, 256, 128)


class SSDAnchorGenerator(DefaultBoxGenerator):
    """torchvision's SSD default boxes with TF's `reduce_boxes_in_lowest_layer` (3 boxes on the first map)."""

    def __init__(self, num_layers: int = 6, min_scale: float = 0.2, max_scale: float = 0.95,
                 aspect_ratios: Sequence[float] = (2.0, 3.0), reduce_boxes_in_lowest_layer: bool = True):
        # ratios r give boxes r and 1/r; scale 1 and the sqrt(s_k s_k+1) box are added by DefaultBoxGenerator
        super().__init__([list(aspect_ratios)] * num_layers, min_ratio=min_scale, max_ratio=max_scale, clip=False)
        self.reduce_boxes_in_lowest_layer = reduce_boxes_in_lowest_layer
        self._wh_pairs = self._generate_wh_pairs(num_layers)

    def _generate_wh_pairs(self, num_outputs: int, dtype: torch.dtype = torch.float32,
                           device: torch.device = torch.device("cpu")) -> list[Tensor]:
        pairs = super()._generate_wh_pairs(num_outputs, dtype, device)
        if getattr(self, "reduce_boxes_in_lowest_layer", False):
            s, r = self.scales[0], math.sqrt(2.0)
            pairs[0] = torch.as_tensor([[0.1, 0.1], [s * r, s / r], [s / r, s * r]], dtype=dtype, device=device)
        return pairs

    def num_anchors_per_location(self) -> list[int]:
        return [len(p) for p in self._wh_pairs]


def default_taps(backbone: Backbone) -> list[str]:
    """`conv11`/`conv13` for MobileNet V1; otherwise the deepest stride-16 and stride-32 taps."""
    info = backbone.feature_info
    if {"conv11", "conv13"} <= set(info.names()):
        return ["conv11", "conv13"]
    taps = []
    for stride in (16, 32):
        names = [t.name for t in info if t.reduction == stride]
        if not names:
            raise ConfigError("task.model.taps", None, f"the backbone has no stride-{stride} tap for SSD; name two of its "
                              f"taps (name/stride: {', '.join(f'{t.name}/{t.reduction}' for t in info)})")
        taps.append(names[-1])
    return taps


class ExtraLayer(nn.Sequential):
    """TF's SSD extra feature layer: 1x1 conv to half depth, then 3x3 stride-2 conv (BN + ReLU6 after each)."""

    def __init__(self, cin: int, depth: int, min_depth: int = 16):
        half = max(depth // 2, min_depth)
        super().__init__(ConvBNAct(cin, half, 1, 1, act="relu6"), ConvBNAct(half, depth, 3, 2, act="relu6"))


class ConvSSDHead(nn.Module):
    """torchvision's SSDHead with a configurable kernel (TF's ssd_mobilenet_v1 uses 1x1 box predictors)."""

    def __init__(self, in_channels: list[int], num_anchors: list[int], num_classes: int, kernel_size: int = 1):
        super().__init__()

        def convs(per_anchor: int) -> nn.ModuleList:
            return nn.ModuleList(nn.Conv2d(c, a * per_anchor, kernel_size, padding=kernel_size // 2)
                                 for c, a in zip(in_channels, num_anchors, strict=True))

        self.classification_head = SSDScoringHead(convs(num_classes), num_classes)
        self.regression_head = SSDScoringHead(convs(4), 4)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: list[Tensor]) -> dict[str, Tensor]:
        return {"bbox_regression": self.regression_head(x), "cls_logits": self.classification_head(x)}


class MobileNetSSD(SSD):
    """torchvision `SSD` whose features are backbone taps + extra layers; `forward` batches pre-sized images.

    The keyword arguments are the SSD task's `task.model` settings (TF ssd_mobilenet_v1's values by default):
    width_multiplier: scales `extra_depths` (`build_ssd`: the backbone's alpha), never below `min_depth`.
    taps: the backbone taps of the two first maps (None: conv11/conv13 for V1, else the deepest stride-16/32 taps).
    extra_depths: depths of the extra layers after the last tap (each a 1x1 to half depth, a 3x3 stride 2).
    head: "ssd" (conv box predictors of `head_kernel_size`, TF's 1) or "ssdlite" (torchvision's SSDLiteHead).
    min_scale / max_scale / aspect_ratios: the anchors (each ratio r gives r and 1/r, plus 1 and the
      sqrt(s_k s_k+1) box); reduce_boxes_in_lowest_layer: 3 boxes on the first map (1,917 anchors at 300).
    iou_thresh / neg_to_pos_ratio: anchor matching and hard negative mining in the loss.
    score_thresh / nms_thresh / detections_per_img / topk_candidates: post-processing (per class top-k, NMS).
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        width_multiplier: float = 1.0,
        taps: Sequence[str] | None = None,
        extra_depths: Sequence[int] = EXTRA_DEPTHS,
        min_depth: int = 16,
        head: str = "ssd",
        head_kernel_size: int = 1,
        min_scale: float = 0.2,
        max_scale: float = 0.95,
        aspect_ratios: Sequence[float] = (2.0, 3.0),
        reduce_boxes_in_lowest_layer: bool = True,
        iou_thresh: float = 0.5,
        neg_to_pos_ratio: float = 3.0,
        score_thresh: float = 1e-8,
        nms_thresh: float = 0.6,
        detections_per_img: int = 100,
        topk_candidates: int = 100,
    ):
        names = backbone.feature_info.names()
        if taps is not None and (isinstance(taps, str) or not all(t in names for t in taps) or len(taps) < 1):
            raise ConfigError("task.model.taps", taps, f"a list of the backbone's taps, shallow to deep (null: the "
                              f"default); its taps: {', '.join(names)}")
        taps = list(taps or default_taps(backbone))
        channels = backbone.feature_info.channels(taps)
        extras = nn.ModuleList()
        for depth in extra_depths:
            depth = max(int(depth * width_multiplier), min_depth)
            extras.append(ExtraLayer(channels[-1], depth, min_depth))
            channels.append(depth)
        anchors = SSDAnchorGenerator(len(channels), min_scale, max_scale, aspect_ratios, reduce_boxes_in_lowest_layer)
        num_anchors = anchors.num_anchors_per_location()
        if head == "ssd":
            head_module = ConvSSDHead(channels, num_anchors, num_classes + 1, head_kernel_size)
        elif head == "ssdlite":
            head_module = SSDLiteHead(channels, num_anchors, num_classes + 1,
                                      partial(nn.BatchNorm2d, eps=1e-3, momentum=0.1))
        else:
            raise ConfigError("task.model.head", head, "ssd (conv box predictors, as TF) or ssdlite")
        super().__init__(backbone, anchors, (300, 300), num_classes + 1, head=head_module, score_thresh=score_thresh,
                         nms_thresh=nms_thresh, detections_per_img=detections_per_img, iou_thresh=iou_thresh,
                         topk_candidates=topk_candidates, positive_fraction=1.0 / (1.0 + neg_to_pos_ratio))
        del self.transform  # the data pipeline normalises and resizes; torchvision's transform would redo it
        self.taps = taps
        self.extras = extras
        self.out_channels = channels

    def features(self, x: Tensor) -> list[Tensor]:
        maps = list(self.backbone.forward_taps(x, self.taps).values())
        for layer in self.extras:
            maps.append(layer(maps[-1]))
        return maps

    def forward(self, images: list[Tensor] | Tensor, targets: list[dict[str, Tensor]] | None = None):
        """Train: dict of losses {"bbox_regression", "classification"}. Eval: per-image detections."""
        if isinstance(images, Tensor):
            images = list(images) if images.dim() == 4 else [images]
        sizes = [tuple(int(s) for s in img.shape[-2:]) for img in images]
        if len(set(sizes)) != 1:
            raise ValueError(f"SSD takes images of one size (the data pipeline resizes them); got {sorted(set(sizes))}")
        batch = ImageList(torch.stack(images), sizes)
        features = self.features(batch.tensors)
        # fp32 from here on under bf16 autocast: the losses, and in eval torchvision's box decoding (it casts the
        # anchors to the regression's dtype: bf16 boxes are 1-2 px off at 300 px) and the softmax scores that rank them
        head_outputs = {k: v.float() for k, v in self.head(features).items()}
        anchors = self.anchor_generator(batch, features)
        if not self.training:
            return self.postprocess_detections(head_outputs, anchors, batch.image_sizes)
        if targets is None:
            raise ValueError("SSD in training mode needs targets")
        matched_idxs = []
        for index, (anchors_per_image, target) in enumerate(zip(anchors, targets, strict=True)):
            boxes = target["boxes"]
            if boxes.numel() == 0:
                matched_idxs.append(torch.full((anchors_per_image.size(0),), -1, dtype=torch.int64,
                                               device=anchors_per_image.device))
                continue
            bad = (boxes[:, 2:] <= boxes[:, :2]).any(dim=1)
            if bad.any():
                raise ValueError(f"target {index} (image id {target.get('image_id')}) has a box with no area: "
                                 f"{boxes[bad][0].tolist()}; the data pipeline should have dropped it")
            matched_idxs.append(self.proposal_matcher(box_ops.box_iou(boxes, anchors_per_image)))
        return self.compute_loss(targets, head_outputs, anchors, matched_idxs)


def build_ssd(backbone: dict, num_classes: int, **kwargs) -> MobileNetSSD:
    """From a backbone config dict (`{"name", "alpha", ...}`); `kwargs`: `MobileNetSSD`'s keyword arguments (its
    signature declares them), `width_multiplier` by default the backbone's `alpha`, so extra layers follow it."""
    kwargs.setdefault("width_multiplier", float(backbone.get("alpha") or 1.0))
    return MobileNetSSD(create_backbone(**backbone), num_classes, **kwargs)
