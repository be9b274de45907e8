"""The jobs `mode=...` selects. Each is `fn(cfg) -> dict of results`, imported only when chosen."""

from __future__ import annotations

import importlib
from collections.abc import Callable

MODES: dict[str, str] = {
    "train": "toolkit.modes.train:train",
    "eval": "toolkit.modes.evaluate:evaluate",
    "predict": "toolkit.modes.predict:predict",
    "profile": "toolkit.modes.profile:profile",
    "export": "toolkit.modes.export:export",
    "teacher_cache": "toolkit.modes.teacher_cache:teacher_cache",
    "partition": "toolkit.modes.partition:partition",
    "tune": "toolkit.modes.tune:tune",
    "select": "toolkit.modes.select:select",
}


def get_mode(name: str) -> Callable:
    module, fn = MODES[name].split(":")
    return getattr(importlib.import_module(module), fn)
