"""MobileNetV3-Large/-Small (Howard et al. 2019) at any width multiplier, reusing torchvision's implementation."""

from __future__ import annotations

import torchvision
from torchvision.models import MobileNet_V3_Large_Weights, MobileNet_V3_Small_Weights

from toolkit.backbones.registry import register_backbone
from toolkit.backbones.torchvision_features import TorchvisionMobileNet
from toolkit.backbones.weights import register_torchvision_weights


@register_backbone
def mobilenet_v3_large(alpha: float = 1.0) -> TorchvisionMobileNet:
    """torchvision's MobileNetV3-Large `features` with `width_mult=alpha`.

    Taps: stage1 (16*alpha ch, stride 2) ... stage5 (160*alpha, stride 32), last_conv (960*alpha).
    """
    return TorchvisionMobileNet(torchvision.models.mobilenet_v3_large(width_mult=alpha), alpha)


@register_backbone
def mobilenet_v3_small(alpha: float = 1.0) -> TorchvisionMobileNet:
    """torchvision's MobileNetV3-Small `features` with `width_mult=alpha`.

    Taps: stage1 (16*alpha ch, stride 2) ... stage5 (96*alpha, stride 32), last_conv (576*alpha).
    """
    return TorchvisionMobileNet(torchvision.models.mobilenet_v3_small(width_mult=alpha), alpha)


# torchvision's weights enums are the metadata (params, GFLOPs, top-1, file); only width 1.0 exists.
# The backbone loads from them; V3's two-layer classifier has no counterpart in ClassifierHead.
register_torchvision_weights("mobilenet_v3_large", MobileNet_V3_Large_Weights)
register_torchvision_weights("mobilenet_v3_small", MobileNet_V3_Small_Weights)
