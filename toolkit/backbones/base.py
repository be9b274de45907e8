"""Backbone base class: an ordered stack of named stages whose outputs are the feature taps."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from toolkit.backbones.features import FeatureInfo, FeatureTap


class Backbone(nn.Module):
    """Subclasses fill `self.stages` (an `nn.Sequential` of named stages) via `_set_stages`.

    Every stage output is a tap, so detection heads can ask for any of them (`forward_taps`) and
    two-stage detectors can cut the network in two at a tap (`split_at`).
    """

    #: mean/std of the inputs the weights expect; data pipelines read them.
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def _set_stages(self, stages: OrderedDict[str, nn.Module], taps: Sequence[FeatureTap]) -> None:
        self.stages = nn.Sequential(stages)
        self.feature_info = FeatureInfo(taps)

    @property
    def num_features(self) -> int:
        """Channels of the deepest tap (what a classifier head consumes)."""
        return self.feature_info[-1].channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def forward_taps(self, x: torch.Tensor, taps: Sequence[str]) -> OrderedDict[str, torch.Tensor]:
        """Run only as deep as the deepest requested tap and return those outputs by name."""
        wanted = set(taps)
        unknown = wanted - set(self.feature_info.names())
        if unknown:
            raise KeyError(f"unknown taps {sorted(unknown)}; taps are {self.feature_info.names()}")
        out: OrderedDict[str, torch.Tensor] = OrderedDict()
        for name, stage in self.stages.named_children():
            x = stage(x)
            if name in wanted:
                out[name] = x
                if len(out) == len(wanted):
                    break
        return OrderedDict((name, out[name]) for name in taps)

    def split_at(self, tap: str) -> tuple[nn.Sequential, nn.Sequential]:
        """Cut after `tap`: (stages up to and including it, the stages after it).

        Faster R-CNN runs the first part on the whole image and the second on each RoI crop.
        The returned modules share parameters with this backbone.
        """
        names = self.feature_info.names()
        if tap not in names:
            raise KeyError(f"unknown tap {tap!r}; taps are {names}")
        k = names.index(tap) + 1
        children = list(self.stages.named_children())
        return nn.Sequential(OrderedDict(children[:k])), nn.Sequential(OrderedDict(children[k:]))
