"""Wraps the `features` of a torchvision MobileNetV2/V3 as a Backbone with one tap per output stride."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from toolkit.backbones.base import Backbone
from toolkit.backbones.features import FeatureTap

LAST_TAP = "last_conv"


def _stride(layer: nn.Module) -> int:
    """Spatial stride of one `features` entry: the product of its convolutions' strides."""
    stride = 1
    for m in layer.modules():
        if isinstance(m, nn.Conv2d):
            stride *= m.stride[0]
    return stride


class TorchvisionMobileNet(Backbone):
    """torchvision's `features`, regrouped into named stages without copying or re-implementing a layer.

    Taps: `stage1`...`stageN`, the last layer at each output stride (for V2/V3 stage k has stride
    2**k, k = 1..5), then `last_conv`, the final 1x1 expansion conv (stride 32). Inside a stage the
    layers keep torchvision's `features` index as their name, so `features.7.conv.0.0.weight` is
    `stages.stage4.7.conv.0.0.weight` here and torchvision checkpoints map one-to-one.
    """

    def __init__(self, network: nn.Module, alpha: float):
        super().__init__()
        self.alpha = alpha
        features = list(network.features)
        # group consecutive layers that share an output stride; the final 1x1 conv is its own tap
        groups: list[tuple[int, list[int]]] = []
        reduction = 1
        for index, layer in enumerate(features[:-1]):
            reduction *= _stride(layer)
            if groups and groups[-1][0] == reduction:
                groups[-1][1].append(index)
            else:
                groups.append((reduction, [index]))
        groups.append((reduction, [len(features) - 1]))

        stages: OrderedDict[str, nn.Module] = OrderedDict()
        taps: list[FeatureTap] = []
        #: torchvision `features` index -> the stage holding it (the checkpoint key mapping)
        self.feature_stage: dict[int, str] = {}
        for number, (stride, indices) in enumerate(groups, start=1):
            name = LAST_TAP if number == len(groups) else f"stage{number}"
            stages[name] = nn.Sequential(OrderedDict((str(i), features[i]) for i in indices))
            taps.append(FeatureTap(name, features[indices[-1]].out_channels, stride))
            self.feature_stage.update(dict.fromkeys(indices, name))
        self._set_stages(stages, taps)
