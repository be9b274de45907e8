"""`run(cfg)`: validate the composed config, then run the job `cfg.mode` names. Tests call this directly."""

from __future__ import annotations

import logging

import hydra.utils
from lightning.pytorch import seed_everything
from omegaconf import DictConfig

from toolkit.backbones import is_backbone, list_backbones
from toolkit.errors import ConfigError
from toolkit.modes import MODES, get_mode

log = logging.getLogger(__name__)


def validate_config(cfg: DictConfig) -> None:
    """Fail before any work, with one line naming the key and the allowed values."""
    if cfg.mode not in MODES:
        raise ConfigError("mode", cfg.mode, f"allowed: {', '.join(MODES)}")
    backbone = cfg.get("backbone")
    if backbone is not None:
        if not is_backbone(backbone.name):
            raise ConfigError("backbone.name", backbone.name, f"allowed: {', '.join(list_backbones())} or timm/<model_name>")
        alpha = backbone.get("alpha")
        if alpha is not None and not (isinstance(alpha, int | float) and alpha > 0):
            raise ConfigError("backbone.alpha", alpha, "the width multiplier must be a number > 0 (paper: 1.0, 0.75, 0.5, 0.25)")
    resolution = cfg.get("data", {}).get("resolution")
    if resolution is not None:
        multiple = getattr(hydra.utils.get_class(cfg.task._target_), "resolution_multiple", 1) if cfg.get("task") else 1
        if not isinstance(resolution, int) or resolution < 32 or resolution % multiple:
            allowed = f"a multiple of {multiple} (paper: 224, 192, 160, 128)" if multiple > 1 else "an integer >= 32"
            raise ConfigError("data.resolution", resolution, f"must be {allowed}")


def run(cfg: DictConfig) -> dict:
    validate_config(cfg)
    if cfg.get("seed") is not None:
        seed_everything(cfg.seed, workers=True)
    return get_mode(cfg.mode)(cfg)
