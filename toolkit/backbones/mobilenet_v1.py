"""MobileNet V1 (paper Table 1) and the paper's two baselines: full-convolution (Table 4) and shallow (Table 5)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from torch import nn

from toolkit.backbones.base import Backbone
from toolkit.backbones.features import FeatureTap
from toolkit.backbones.registry import register_backbone
from toolkit.backbones.weights import (
    Weights,
    register_weights,
    timm_mobilenetv1_matches,
    timm_mobilenetv1_to_toolkit,
)
from toolkit.errors import ConfigError

# (stride, output channels) of the 13 depthwise-separable blocks; block 13's dw stride is 1 (the
# paper's "s2" there is a typo: TF-slim's _CONV_DEFS and every implementation use 1).
V1_BLOCKS: tuple[tuple[int, int], ...] = (
    (1, 64), (2, 128), (1, 128), (2, 256), (1, 256), (2, 512),
    (1, 512), (1, 512), (1, 512), (1, 512), (1, 512),  # blocks 7-11: the 14x14x512 layers
    (2, 1024), (1, 1024),
)
SHALLOW_REMOVED = (7, 8, 9, 10, 11)  # Table 5 removes the five 14x14x512 blocks
STEM_CHANNELS = 32


def scaled_channels(channels: int, alpha: float, min_depth: int = 8) -> int:
    """TF-slim's width rule: `max(int(d * alpha), min_depth)`."""
    return max(int(channels * alpha), min_depth)


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU(inplace=True)
    if name == "relu6":
        return nn.ReLU6(inplace=True)
    raise ConfigError("backbone.act", name, "relu (the paper) or relu6 (TF-slim)")


#: the normalisation layer: called with the channel count (torchvision's `norm_layer` habit)
NormLayer = Callable[[int], nn.Module]


class ConvBNAct(nn.Sequential):
    """Conv (no bias) + BatchNorm + activation: every layer of the paper's body.

    `norm_layer` replaces the BatchNorm (e.g. torchvision's `FrozenBatchNorm2d`, whose eps is also 1e-5: the
    same buffers, so the same weights load)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int = 1, act: str = "relu",
                 norm_layer: NormLayer | None = None):
        # eps 1e-5 (PyTorch's and timm's) so timm's mobilenetv1_100 weights load exactly; TF-slim's
        # 1e-3 would only matter for TF checkpoints. Momentum 0.1 (PyTorch's and timm's): TF-slim's
        # 0.9997 decay suits 100k-step ImageNet runs but leaves short runs evaluating with stale stats.
        norm = norm_layer(cout) if norm_layer is not None else nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
        super().__init__(
            OrderedDict(
                conv=nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
                bn=norm,
                act=_activation(act),
            )
        )


class DepthwiseSeparable(nn.Sequential):
    """3x3 depthwise conv + 1x1 pointwise conv, each with BN and activation (paper Figure 3)."""

    def __init__(self, cin: int, cout: int, stride: int, act: str = "relu", norm_layer: NormLayer | None = None):
        super().__init__(
            OrderedDict(
                dw=ConvBNAct(cin, cin, 3, stride, groups=cin, act=act, norm_layer=norm_layer),
                pw=ConvBNAct(cin, cout, 1, 1, act=act, norm_layer=norm_layer),
            )
        )


class MobileNetV1(Backbone):
    """The MobileNet body without pool and FC. Taps: `conv0` (the stem) and `conv1`...`conv13`.

    `separable=False` swaps every depthwise-separable block for a full 3x3 conv (Table 4's
    "Conv MobileNet"); `skip_blocks` drops blocks (Table 5's shallow variant drops 7-11); `norm_layer` replaces
    every BatchNorm (None: BatchNorm2d, eps 1e-5, momentum 0.1). `alpha` is checked by the registry
    (`create_backbone`), the one entry point of the configs.
    """

    mean = (0.5, 0.5, 0.5)  # the paper's TF weights take inputs scaled to [-1, 1]
    std = (0.5, 0.5, 0.5)

    def __init__(
        self,
        alpha: float = 1.0,
        act: str = "relu",
        min_depth: int = 8,
        separable: bool = True,
        skip_blocks: tuple[int, ...] = (),
        norm_layer: NormLayer | None = None,
    ):
        super().__init__()
        self.alpha = alpha
        cin = scaled_channels(STEM_CHANNELS, alpha, min_depth)
        stages: OrderedDict[str, nn.Module] = OrderedDict(conv0=ConvBNAct(3, cin, 3, 2, act=act, norm_layer=norm_layer))
        taps = [FeatureTap("conv0", cin, 2)]
        reduction = 2
        for index, (stride, channels) in enumerate(V1_BLOCKS, start=1):
            if index in skip_blocks:
                continue
            cout = scaled_channels(channels, alpha, min_depth)
            block = (DepthwiseSeparable(cin, cout, stride, act, norm_layer) if separable
                     else ConvBNAct(cin, cout, 3, stride, act=act, norm_layer=norm_layer))
            reduction *= stride
            stages[f"conv{index}"] = block
            taps.append(FeatureTap(f"conv{index}", cout, reduction))
            cin = cout
        self._set_stages(stages, taps)
        _init_weights(self)


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@register_backbone
def mobilenet_v1(alpha: float = 1.0, act: str = "relu", min_depth: int = 8,
                 norm_layer: NormLayer | None = None) -> MobileNetV1:
    """MobileNet V1, Table 1, at width multiplier `alpha`."""
    return MobileNetV1(alpha=alpha, act=act, min_depth=min_depth, norm_layer=norm_layer)


@register_backbone
def mobilenet_v1_conv(alpha: float = 1.0, act: str = "relu", min_depth: int = 8,
                      norm_layer: NormLayer | None = None) -> MobileNetV1:
    """Table 4's baseline: the same body with full 3x3 convolutions instead of depthwise separable ones."""
    return MobileNetV1(alpha=alpha, act=act, min_depth=min_depth, separable=False, norm_layer=norm_layer)


@register_backbone
def mobilenet_v1_shallow(alpha: float = 1.0, act: str = "relu", min_depth: int = 8,
                         norm_layer: NormLayer | None = None) -> MobileNetV1:
    """Table 5's baseline: blocks 7-11 (the five 14x14x512 layers) removed."""
    return MobileNetV1(alpha=alpha, act=act, min_depth=min_depth, skip_blocks=SHALLOW_REMOVED, norm_layer=norm_layer)


# Published weights (metadata beside the builder, torchvision's weights-enum habit). timm trained
# them with ReLU6, so loading them needs `act=relu6`; BN eps and padding already match timm's.
TIMM_MOBILENETV1_100 = register_weights(
    Weights(
        backbone="mobilenet_v1",
        source="timm",
        name="mobilenetv1_100.ra4_e3600_r224_in1k",
        file_name="model.safetensors",
        url="https://huggingface.co/timm/mobilenetv1_100.ra4_e3600_r224_in1k/resolve/main/model.safetensors",
        hf_hub_id="timm/mobilenetv1_100.ra4_e3600_r224_in1k",
        converter=timm_mobilenetv1_to_toolkit,
        matches=timm_mobilenetv1_matches,
        alpha=1.0,
        num_params=4_231_976,
        mult_adds=568_740_352,
        resolution=224,
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        top1=75.4,
        requires={"act": "relu6"},
        fetch_hint="python -c \"import timm; timm.create_model('mobilenetv1_100.ra4_e3600_r224_in1k', pretrained=True)\"",
    )
)
