"""`timm/<model_name>`: any timm model as a Backbone, through timm's own `features_only` wrapper."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from toolkit.backbones.base import Backbone
from toolkit.backbones.features import FeatureInfo, FeatureTap
from toolkit.backbones.weights import (
    TIMM_SOURCES,
    load_backbone_state,
    read_state_dict,
    resolve_timm_pretrained,
)
from toolkit.errors import ConfigError


class TimmBackbone(Backbone):
    """A timm model built with `features_only=True`; its feature maps are the taps.

    Tap names are timm's module names with dots replaced by underscores (`blocks.4` -> `blocks_4`);
    `out_indices` picks which of timm's feature levels are returned (timm's default: all). Weights:
    `pretrained="timm"` loads timm's default pretrained tag from $TOOLKIT_WEIGHTS_DIR or the Hugging
    Face/torch cache, downloaded into the cache on first use; a path loads a timm or toolkit checkpoint.
    Width is part of the timm model name (`mobilenetv1_125`, `mobilenetv3_large_075`), so there is no `alpha`.

    `norm_layer`: only torchvision's `FrozenBatchNorm2d` (what Faster R-CNN's `frozen_bn` asks for). timm's builders
    fuse BatchNorm with the activation (`BatchNormAct2d`) and refuse torchvision's norm layers, so the built model's
    BatchNorms are frozen with timm's own `freeze_batch_norm_2d` (`FrozenBatchNormAct2d`, the same buffers).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: str | bool | None = None,
        out_indices: Sequence[int] | None = None,
        norm_layer: Callable[..., nn.Module] | None = None,
        **kwargs,
    ):
        super().__init__()
        import timm

        if norm_layer not in (None, FrozenBatchNorm2d):
            raise ConfigError("norm_layer", norm_layer, f"timm/{model_name} takes timm's own norm layers; only "
                              "torchvision's FrozenBatchNorm2d is translated (to timm's FrozenBatchNormAct2d)")
        architecture = model_name.split(".", 1)[0]
        if not timm.is_model(architecture):
            raise ConfigError("backbone.name", f"timm/{model_name}",
                              "not a timm model; list them with `python -c \"import timm; print(timm.list_models('*mobilenet*'))\"`")
        if "alpha" in kwargs:
            raise ConfigError("backbone.alpha", kwargs["alpha"], f"timm/{model_name} takes its width from the timm model "
                              "name (e.g. timm/mobilenetv1_125, timm/mobilenetv3_large_075); remove backbone.alpha")
        self.model_name = model_name
        build = dict(features_only=True, **kwargs)
        if out_indices is not None:
            build["out_indices"] = tuple(out_indices)

        own_checkpoint = None
        if pretrained:
            path = resolve_timm_pretrained(model_name, pretrained)
            own_checkpoint = None if str(pretrained).lower() in TIMM_SOURCES else _own_layout(read_state_dict(path, what="backbone.pretrained file"))
            if own_checkpoint is None:  # timm's weights: timm's loader adapts them to features_only
                build.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
        self.body = timm.create_model(model_name, **build)
        if own_checkpoint is not None:
            load_backbone_state(self.body, {"backbone." + k: v for k, v in own_checkpoint.items()}, str(pretrained))
        if norm_layer is FrozenBatchNorm2d:
            self.body = timm.layers.freeze_batch_norm_2d(self.body)

        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", self.mean))
        self.std = tuple(cfg.get("std", self.std))
        self.feature_info = FeatureInfo(
            FeatureTap(info["module"].replace(".", "_"), info["num_chs"], info["reduction"])
            for info in self.body.feature_info.get_dicts()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)[-1]

    def forward_taps(self, x: torch.Tensor, taps: Sequence[str]) -> OrderedDict[str, torch.Tensor]:
        names = self.feature_info.names()
        unknown = set(taps) - set(names)
        if unknown:
            raise KeyError(f"unknown taps {sorted(unknown)}; taps are {names}")
        outputs = dict(zip(names, self.body(x), strict=True))
        return OrderedDict((name, outputs[name]) for name in taps)

    def split_at(self, tap: str) -> tuple[nn.Sequential, nn.Sequential]:
        raise ConfigError("backbone.name", f"timm/{self.model_name}",
                          "timm backbones run as one features_only module and cannot be cut at a tap "
                          "(needed by Faster R-CNN's per-RoI head); use a built-in backbone such as mobilenet_v1")


def _own_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """The `body.*` tensors of a toolkit checkpoint holding a TimmBackbone (any prefix), else None."""
    marker = "body."
    prefixes = {k[: k.index(marker)] for k in state if k.startswith(marker) or ".backbone.body." in k
                or k.startswith("backbone.body.")}
    if not prefixes:
        return None
    prefix = min(prefixes, key=len)
    return {k[len(prefix) + len(marker):]: v for k, v in state.items() if k.startswith(prefix + marker)}
