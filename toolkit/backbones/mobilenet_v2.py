"""MobileNetV2 (Sandler et al. 2018) at any width multiplier, reusing torchvision's implementation."""

from __future__ import annotations

import torchvision
from torchvision.models import MobileNet_V2_Weights

from toolkit.backbones.registry import register_backbone
from toolkit.backbones.torchvision_features import TorchvisionMobileNet
from toolkit.backbones.weights import register_torchvision_weights


@register_backbone
def mobilenet_v2(alpha: float = 1.0) -> TorchvisionMobileNet:
    """torchvision's MobileNetV2 `features` with `width_mult=alpha` (channels rounded to multiples of 8).

    Taps: stage1 (16*alpha ch, stride 2) ... stage5 (320*alpha, stride 32), last_conv (1280*max(1, alpha)).
    """
    return TorchvisionMobileNet(torchvision.models.mobilenet_v2(width_mult=alpha), alpha)


# torchvision's weights enum is the metadata (params, GFLOPs, top-1, file); only width 1.0 exists.
register_torchvision_weights("mobilenet_v2", MobileNet_V2_Weights)
