"""`task.compile`: run a task's model through `torch.compile`, falling back to eager with one warning.

The model's `forward` is replaced in place by a compiled one, so the module tree and its `state_dict` keys stay
as they are (no `_orig_mod.` prefix in checkpoints). Compilation is lazy: it happens at the first call, and a
failure there (no C++ compiler, an operator inductor cannot lower) switches the model back to eager for the rest
of the run; the same call is then repeated eagerly, so a genuine error in the model still surfaces.

`task.compile=auto` (the default) leaves training eager (compiling costs 30-50 s per model on a CPU and the
training speed-up measured for issue 14 was smaller than bf16's) and compiles eval/predict runs over at least
`COMPILE_PAYS_AFTER_IMAGES` images: on a quiet 2-core Sapphire Rapids machine (issue 14) compiled bf16
inference of MobileNet V1 1.0-224 ran at 237 images/s against 114 eager, i.e. ~4.5 ms saved per image, which
repays a ~40 s compilation after ~9,000 images (docs/performance.md).
"""

from __future__ import annotations

import copy
import logging
import warnings
from typing import Any

import torch
from torch import nn

from toolkit.errors import ConfigError

log = logging.getLogger(__name__)

SETTINGS = (True, False, "auto")
COMPILE_PAYS_AFTER_IMAGES = 10_000


def should_compile(setting: Any, mode: str, n_images: int | None = None) -> bool:
    """Whether a `mode` run (train | eval | predict) compiles under `task.compile=setting`."""
    if setting not in SETTINGS:
        raise ConfigError("task.compile", setting, "allowed: true, false, auto (eval/predict over >= "
                                                  f"{COMPILE_PAYS_AFTER_IMAGES} images)")
    if setting != "auto":
        return bool(setting)
    return mode in ("eval", "predict") and n_images is not None and n_images >= COMPILE_PAYS_AFTER_IMAGES


class CompiledForward:
    """A module's compiled forward that falls back to its eager one, once and with one warning, on failure.

    A deep copy of the module (count_model's CPU copy, an EMA copy) gets the copy's plain eager forward.
    """

    def __init__(self, eager, **compile_kwargs: Any):
        self.eager = eager
        self.compiled = torch.compile(eager, **compile_kwargs)
        self.failed = False

    def __call__(self, *args, **kwargs):
        if self.failed:
            return self.eager(*args, **kwargs)
        try:
            return self.compiled(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 - any compiler failure; an error of the model itself recurs eagerly
            self.failed = True
            message = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
            warnings.warn(f"torch.compile failed for {type(self.eager.__self__).__name__}, running it eagerly "
                          f"instead ({type(error).__name__}: {message})", RuntimeWarning, stacklevel=2)
            return self.eager(*args, **kwargs)

    def __deepcopy__(self, memo):
        return copy.deepcopy(self.eager, memo)  # the bound method, re-bound to the module's copy


def compile_module(module: nn.Module, **compile_kwargs: Any) -> nn.Module:
    """Replace `module.forward` in place by a `CompiledForward` (state_dict keys unchanged); returns `module`."""
    module.forward = CompiledForward(module.forward, **compile_kwargs)
    log.info("torch.compile: %s compiles at its first call (30-50 s on a CPU)", type(module).__name__)
    return module


def compile_task_model(cfg, task, mode: str, n_images: int | None = None) -> bool:
    """Compile `task.model` where `cfg.task.compile` says so for this `mode`; returns whether it did."""
    setting = (cfg.get("task") or {}).get("compile", False)
    if not should_compile(setting, mode, n_images):
        return False
    compile_module(task.model)
    return True
