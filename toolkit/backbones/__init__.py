"""The MobileNet backbone registry: `create_backbone(name, **kwargs)`, `list_backbones()`, `register_backbone`."""

from toolkit.backbones import mobilenet_v1, mobilenet_v2, mobilenet_v3  # noqa: F401  (registers the built-in backbones)
from toolkit.backbones.base import Backbone
from toolkit.backbones.features import FeatureInfo, FeatureTap
from toolkit.backbones.registry import (
    create_backbone,
    create_backbone_skeleton,
    is_backbone,
    list_backbones,
    register_backbone,
)

__all__ = [
    "Backbone",
    "FeatureInfo",
    "FeatureTap",
    "create_backbone",
    "create_backbone_skeleton",
    "is_backbone",
    "list_backbones",
    "register_backbone",
]
