"""Pieces every mode shares: building data, task and trainer from the config; checkpoints; result files."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra.utils
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from toolkit.errors import ConfigError
from toolkit.tasks.base import BaseTask

log = logging.getLogger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    path = Path(cfg.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def task_class(cfg: DictConfig) -> type[BaseTask]:
    return hydra.utils.get_class(cfg.task._target_)


def build_datamodule(cfg: DictConfig):
    return hydra.utils.instantiate(cfg.data, _convert_="all")


def build_task(cfg: DictConfig, datamodule=None) -> BaseTask:
    """Instantiate `cfg.task` as plain data, completed with what the data decides (class count...)."""
    extra = datamodule.task_kwargs() if datamodule is not None else {}
    return hydra.utils.instantiate(cfg.task, _convert_="all", _recursive_=False, **extra)


def build_callbacks(cfg: DictConfig, task: BaseTask) -> list[Callback]:
    callbacks = []
    for name, cb_cfg in (cfg.get("callbacks") or {}).items():
        if cb_cfg is None or "_target_" not in cb_cfg:
            continue
        kwargs: dict[str, Any] = {}
        if hydra.utils.get_class(cb_cfg._target_) is ModelCheckpoint and cb_cfg.get("monitor", "unset") is None:
            kwargs = {"monitor": task.monitor, "mode": task.mode}  # the task declares what "best" means
        log.debug("callback %s", name)
        callbacks.append(hydra.utils.instantiate(cb_cfg, **kwargs))
    return callbacks


def build_trainer(cfg: DictConfig, task: BaseTask, **overrides) -> Trainer:
    """The configured Trainer; `overrides` replace its arguments (eval/predict pass `logger=False`)."""
    if "logger" not in overrides:
        loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
        overrides["logger"] = loggers or False
    return hydra.utils.instantiate(cfg.trainer, callbacks=build_callbacks(cfg, task), **overrides)


def load_task(cfg: DictConfig, ckpt_path: str | None = None) -> BaseTask:
    """Restore a task from a checkpoint written by this toolkit (its class is the configured task's)."""
    path = resolve_checkpoint(cfg, ckpt_path or cfg.get("ckpt_path"), required=True)
    return task_class(cfg).load_from_checkpoint(path, map_location="cpu", weights_only=False)


def resolve_checkpoint(cfg: DictConfig, ckpt_path: str | None, required: bool = False) -> str | None:
    """`ckpt_path=last` means the newest `last.ckpt` of this task's earlier runs under `paths.log_dir`."""
    if ckpt_path in (None, ""):
        if required:
            raise ConfigError("ckpt_path", ckpt_path, "this mode needs a checkpoint: ckpt_path=/path/to/file.ckpt or ckpt_path=last")
        return None
    if ckpt_path == "last":
        candidates = sorted(Path(cfg.paths.log_dir).glob("**/checkpoints/last*.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise ConfigError("ckpt_path", "last", f"no last.ckpt found under {cfg.paths.log_dir}; pass an explicit path")
        log.info("ckpt_path=last -> %s", candidates[-1])
        return str(candidates[-1])
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError("ckpt_path", ckpt_path, "no such checkpoint file")
    return str(path)


def write_json(path: Path, payload: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path


def plain_metrics(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def save_config(cfg: DictConfig, out: Path) -> None:
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
