"""MobileNetV2 (Sandler et al. 2018) at any width multiplier, reusing torchvision's implementation."""

from __future__ import annotations

from collections.abc import Callable

import torchvision
from torch import nn
from torchvision.models import MobileNet_V2_Weights

from toolkit.backbones.registry import register_backbone
from toolkit.backbones.torchvision_features import TorchvisionMobileNet
from toolkit.backbones.weights import register_torchvision_weights


@register_backbone
def mobilenet_v2(alpha: float = 1.0, norm_layer: Callable[[int], nn.Module] | None = None) -> TorchvisionMobileNet:
    """torchvision's MobileNetV2 `features` with `width_mult=alpha` (channels rounded to multiples of 8).

    Taps: stage1 (16*alpha ch, stride 2) ... stage5 (320*alpha, stride 32), last_conv (1280*max(1, alpha)).
    `norm_layer`: torchvision's own argument (None: BatchNorm2d, eps 1e-5, as FrozenBatchNorm2d's).
    """
    return TorchvisionMobileNet(torchvision.models.mobilenet_v2(width_mult=alpha, norm_layer=norm_layer), alpha)


# torchvision's weights enum is the metadata (params, GFLOPs, top-1, file); only width 1.0 exists.
register_torchvision_weights("mobilenet_v2", MobileNet_V2_Weights)
