"""Backbone registry (timm's `_registry.py` habit): register builders by name, create them from configs."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
import math
import re
from collections.abc import Callable

import torch
from torch import nn

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


def create_backbone(name: str, pretrained: str | None = None, norm_layer: Callable[..., nn.Module] | None = None,
                    **kwargs) -> Backbone:
    """Build backbone `name`. `None` kwargs are dropped so configs can leave options unset.

    `pretrained` is a local checkpoint path or a known weight source (see `toolkit.backbones.weights`).
    `norm_layer` replaces the BatchNorm layers at build time (torchvision's habit), e.g. `FrozenBatchNorm2d`: the
    same buffers, so pretrained weights load into it. This is the one place `alpha` is checked (the config check
    in `toolkit.run` builds through here on the meta device).
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if norm_layer is not None:
        kwargs["norm_layer"] = norm_layer
    if not isinstance(name, str) or not is_backbone(name):
        raise ConfigError("backbone.name", name, f"allowed: {', '.join(list_backbones())} or timm/<model>")
    if name.startswith(TIMM_PREFIX):
        from toolkit.backbones.timm_backbone import TimmBackbone

        return TimmBackbone(name[len(TIMM_PREFIX) :], pretrained=pretrained, **kwargs)
    check_keywords(_BUILDERS[name], kwargs, prefix="backbone", owner=f"backbone {name}")
    alpha = kwargs.get("alpha")
    if alpha is not None and not (isinstance(alpha, int | float) and not isinstance(alpha, bool) and math.isfinite(alpha)
                                  and alpha > 0):  # inf: an OverflowError from int() in the builder; nan: every test false
        raise ConfigError("backbone.alpha", alpha, "the width multiplier must be a number > 0 (paper: 1.0, 0.75, 0.5, 0.25)")
    model = _BUILDERS[name](**kwargs)
    if pretrained:
        from toolkit.backbones.weights import load_pretrained

        load_pretrained(model, name, pretrained, **kwargs)
    return model


def create_backbone_skeleton(name: str, **kwargs) -> Backbone:
    """`create_backbone` on the meta device and without `pretrained`: a configured backbone's structure, taps and
    default input statistics, without allocating weights or reading a file; bad settings raise the same errors."""
    kwargs.pop("pretrained", None)
    try:
        with torch.device("meta"):
            return create_backbone(name, **kwargs)
    except (RuntimeError, NotImplementedError) as error:  # a builder that cannot run on the meta device
        if "overflow" in str(error):  # a weight's byte count past 2^63 (alpha=1e9): never build that for real
            raise ConfigError("backbone.alpha", kwargs.get("alpha"), "a backbone this wide has weights larger than "
                              "any memory (their byte counts overflow); paper widths: 1.0, 0.75, 0.5, 0.25") from error
        return create_backbone(name, **kwargs)


def backbone_settings(name) -> set[str] | None:
    """The `backbone.*` keys a registered backbone takes (its builder's keywords, `name`, `pretrained`); None for
    timm models and names not registered (`create_backbone` names those)."""
    if not isinstance(name, str) or name not in _BUILDERS:
        return None
    accepted = accepted_keywords(_BUILDERS[name])
    return None if accepted is None else accepted | {"name", "pretrained"}


def accepted_keywords(target: Callable) -> set[str] | None:
    """The keyword arguments `target` (a function or a class) takes; None when it takes any (`**kwargs` that go
    nowhere checkable). A class's `__init__(..., **kwargs)` forwards the rest to its base's (torchgeo's habit, the
    tasks' rule), so the bases' keywords count too, up to the first `__init__` without `**kwargs`."""
    functions = [c.__init__ for c in inspect.getmro(target) if "__init__" in vars(c)] if inspect.isclass(target) else [target]
    names: set[str] = set()
    for function in functions:
        parameters = inspect.signature(function).parameters.values()
        names |= {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters):
            return names - {"self"}
    return None


def check_keywords(target: Callable, kwargs: dict, *, prefix: str, owner: str) -> None:
    """A config section's keys against the keyword arguments of what it configures: an unknown one (a typo added
    with `+`, a key from another version) is a ConfigError naming `<prefix>.<key>` and the closest keys, raised
    before the call (a TypeError from inside it would name neither)."""
    accepted = accepted_keywords(target)
    if accepted is None:
        return
    for key, value in kwargs.items():
        if key not in accepted:
            close = difflib.get_close_matches(key, sorted(accepted), n=2)
            did_you_mean = f"did you mean {' or '.join(f'{prefix}.{c}' for c in close)}? " if close else ""
            raise ConfigError(f"{prefix}.{key}", value, f"{owner} takes no such setting; {did_you_mean}"
                              f"its settings: {', '.join(sorted(accepted))}")


def unknown_keyword_error(error: BaseException, settings: dict, *, prefix: str) -> ConfigError | None:
    """`error` (or its cause) is Python's TypeError for a call given a keyword of `settings` it does not take: that
    key as a ConfigError naming `<prefix>.<key>`, the callee and its closest keywords; None for every other error.
    For settings passed on to a callee chosen in code (`task.model` -> the task's model builder), where the
    signature cannot be read before the call: only that message, for one of those keys, counts (any other
    TypeError is a bug and stays a traceback)."""
    while error is not None and not isinstance(error, TypeError):
        error = error.__cause__ or error.__context__
    match = re.fullmatch(r"([\w.]+)\(\) got an unexpected keyword argument '(\w+)'", str(error)) if error else None
    if match is None or match.group(2) not in settings:
        return None
    callee_name, key = match.group(1).removesuffix(".__init__"), match.group(2)
    traceback = error.__traceback__
    while traceback is not None and traceback.tb_next is not None:  # the frame of the call: its module names the callee
        traceback = traceback.tb_next
    frame = traceback.tb_frame if traceback is not None else None
    caller_self = frame.f_locals.get("self") if frame is not None else None
    if caller_self is not None and callee_name in {c.__name__ for c in type(caller_self).__mro__}:
        callee = type(caller_self)  # `super().__init__(**kwargs)`: the keywords of the whole chain count
    else:
        callee = frame.f_globals.get(callee_name) if frame is not None else None
    accepted = accepted_keywords(callee) if callable(callee) else None
    close = difflib.get_close_matches(key, sorted(accepted or ()), n=2)
    did_you_mean = f" did you mean {' or '.join(f'{prefix}.{c}' for c in close)}?" if close else ""
    known = f" its settings: {', '.join(sorted(accepted))}" if accepted else ""
    hint = f"{getattr(callee, '__name__', callee_name)} takes no such setting;{did_you_mean}{known}".rstrip(";")
    return ConfigError(f"{prefix}.{key}", settings[key], hint)
