"""Feature-tap metadata (timm's `feature_info` habit): name, channels and stride of each tap."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureTap:
    name: str  # e.g. "conv11" for MobileNet V1; heads ask for taps by this name
    channels: int
    reduction: int  # stride of the tap relative to the input image


class FeatureInfo(list):
    """The taps of a backbone, shallow to deep, with lookups by name."""

    def names(self) -> list[str]:
        return [t.name for t in self]

    def get(self, name: str) -> FeatureTap:
        for tap in self:
            if tap.name == name:
                return tap
        raise KeyError(f"no feature tap named {name!r}; taps are {self.names()}")

    def channels(self, names: list[str] | None = None) -> list[int]:
        return [self.get(n).channels for n in (names or self.names())]

    def reductions(self, names: list[str] | None = None) -> list[int]:
        return [self.get(n).reduction for n in (names or self.names())]
