"""Backbone registry (timm's `_registry.py` habit): register builders by name, create them from configs."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

from toolkit.backbones.base import Backbone
from toolkit.errors import ConfigError

_BUILDERS: dict[str, Callable[..., Backbone]] = {}
TIMM_PREFIX = "timm/"


def register_backbone(fn: Callable[..., Backbone] | None = None, *, name: str | None = None):
    """Decorator: `@register_backbone` or `@register_backbone(name="...")`. Duplicate names are refused."""

    def wrap(builder: Callable[..., Backbone]) -> Callable[..., Backbone]:
        key = name or builder.__name__
        if key in _BUILDERS:
            raise ValueError(f"backbone {key!r} is already registered (by {_BUILDERS[key].__module__})")
        if key.startswith(TIMM_PREFIX):
            raise ValueError(f"backbone names starting with {TIMM_PREFIX!r} are reserved for timm models")
        _BUILDERS[key] = builder
        return builder

    return wrap(fn) if fn is not None else wrap


def list_backbones(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern (timm models are reachable as `timm/<name>`)."""
    return sorted(n for n in _BUILDERS if fnmatch.fnmatch(n, pattern))


def is_backbone(name: str) -> bool:
    return name in _BUILDERS or name.startswith(TIMM_PREFIX)


def create_backbone(name: str, pretrained: str | None = None, **kwargs) -> Backbone:
    """Build backbone `name`. `None` kwargs are dropped so configs can leave options unset.

    `pretrained` is a local checkpoint path or a known weight source (see `toolkit.backbones.weights`).
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if name.startswith(TIMM_PREFIX):
        from toolkit.backbones.timm_backbone import TimmBackbone

        return TimmBackbone(name[len(TIMM_PREFIX) :], pretrained=pretrained, **kwargs)
    if name not in _BUILDERS:
        raise ConfigError("backbone.name", name, f"known backbones are {', '.join(list_backbones())} or timm/<model>")
    alpha = kwargs.get("alpha")
    if alpha is not None and not float(alpha) > 0:
        raise ConfigError("backbone.alpha", alpha, "the width multiplier must be > 0 (the paper uses 1, 0.75, 0.5, 0.25)")
    model = _BUILDERS[name](**kwargs)
    if pretrained:
        from toolkit.backbones.weights import load_pretrained

        load_pretrained(model, name, pretrained, **kwargs)
    return model
