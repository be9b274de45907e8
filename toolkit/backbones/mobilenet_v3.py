"""MobileNetV3-Large/-Small (Howard et al. 2019) at any width multiplier, reusing torchvision's implementation."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torchvision
from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, MobileNet_V3_Small_Weights

from toolkit.backbones.registry import register_backbone
from toolkit.backbones.torchvision_features import TorchvisionMobileNet
from toolkit.backbones.weights import register_torchvision_weights

#: V3's BatchNorm eps (torchvision's default norm layer for it), part of what its weights were trained with
V3_BN_EPS = 0.001


def _v3_norm_layer(norm_layer: Callable[..., nn.Module] | None) -> Callable[..., nn.Module] | None:
    """A given `norm_layer` with V3's eps (FrozenBatchNorm2d's own 1e-5 would shift every pretrained layer);
    None keeps torchvision's default (BatchNorm2d, eps 0.001, momentum 0.01)."""
    return partial(norm_layer, eps=V3_BN_EPS) if norm_layer is not None else None


@register_backbone
def mobilenet_v3_large(alpha: float = 1.0, norm_layer: Callable[..., nn.Module] | None = None) -> TorchvisionMobileNet:
    """torchvision's MobileNetV3-Large `features` with `width_mult=alpha`.

    Taps: stage1 (16*alpha ch, stride 2) ... stage5 (160*alpha, stride 32), last_conv (960*alpha).
    """
    network = torchvision.models.mobilenet_v3_large(width_mult=alpha, norm_layer=_v3_norm_layer(norm_layer))
    return TorchvisionMobileNet(network, alpha)


@register_backbone
def mobilenet_v3_small(alpha: float = 1.0, norm_layer: Callable[..., nn.Module] | None = None) -> TorchvisionMobileNet:
    """torchvision's MobileNetV3-Small `features` with `width_mult=alpha`.

    Taps: stage1 (16*alpha ch, stride 2) ... stage5 (96*alpha, stride 32), last_conv (576*alpha).
    """
    network = torchvision.models.mobilenet_v3_small(width_mult=alpha, norm_layer=_v3_norm_layer(norm_layer))
    return TorchvisionMobileNet(network, alpha)


# torchvision's weights enums are the metadata (params, GFLOPs, top-1, file); only width 1.0 exists.
# The backbone loads from them; V3's two-layer classifier has no counterpart in ClassifierHead.
register_torchvision_weights("mobilenet_v3_large", MobileNet_V3_Large_Weights)
register_torchvision_weights("mobilenet_v3_small", MobileNet_V3_Small_Weights)
