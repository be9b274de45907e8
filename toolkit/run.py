"""`run(cfg)`: validate the composed config, then run the job `cfg.mode` names. Tests call this directly."""

from __future__ import annotations

import logging
from pathlib import Path

import hydra.utils
from lightning.pytorch import seed_everything
from omegaconf import DictConfig, OmegaConf

from toolkit.backbones import create_backbone_skeleton
from toolkit.backbones.weights import check_pretrained
from toolkit.compilation import SETTINGS as COMPILE_SETTINGS
from toolkit.errors import ConfigError
from toolkit.io import trusted_files
from toolkit.modes import MODES, get_mode

log = logging.getLogger(__name__)

PAPER_RESOLUTIONS = "paper: 224, 192, 160, 128"
EXPORT_FORMATS = ("onnx", "onnx_int8", "executorch", "executorch_int8", "torchscript", "torchscript_int8")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_int(section: DictConfig | dict, prefix: str, key: str, minimum: int) -> None:
    value = section.get(key)
    if value is not None and not (_is_int(value) and value >= minimum):
        raise ConfigError(f"{prefix}.{key}", value, f"must be an integer >= {minimum}")


def _check_choice(section: DictConfig | dict, prefix: str, key: str, allowed: tuple[str, ...]) -> None:
    value = section.get(key)
    if value is not None and value not in allowed:
        raise ConfigError(f"{prefix}.{key}", value, f"allowed: {', '.join(allowed)}")


def validate_backbone(backbone: DictConfig, *, weights: bool = True) -> None:
    """Build the configured backbone on the meta device (no memory, no weight file read), so the registry and the
    builders, where each backbone setting is checked once, name a wrong `backbone.*` value before any work; then,
    with `weights`, find (or download, once) the `backbone.pretrained` file, so a missing one stops the run here."""
    pretrained = backbone.get("pretrained")
    if pretrained not in (None, "") and not isinstance(pretrained, str):
        raise ConfigError("backbone.pretrained", pretrained, "a local checkpoint path or a known weight source name")
    settings = {"name": None, **OmegaConf.to_container(backbone, resolve=True)}
    create_backbone_skeleton(**settings)
    if weights:
        check_pretrained(settings)


def validate_data(cfg: DictConfig) -> None:
    data = cfg.get("data") or {}
    resolution = data.get("resolution")
    if resolution is not None:
        multiple = getattr(hydra.utils.get_class(cfg.task._target_), "resolution_multiple", 1) if cfg.get("task") else 1
        if not _is_int(resolution) or resolution < 32 or resolution % multiple:
            allowed = f"a multiple of {multiple} (>= 32; {PAPER_RESOLUTIONS})" if multiple > 1 else f"an integer >= 32 ({PAPER_RESOLUTIONS})"
            raise ConfigError("data.resolution", resolution, f"must be {allowed}")
    _check_int(data, "data", "batch_size", 1)
    _check_int(data, "data", "num_workers", 0)
    for key in ("n_train", "n_val"):  # sizes of generated data sets
        _check_int(data, "data", key, 1)
    _check_int(data, "data", "image_size", 16)


def validate_mode_settings(cfg: DictConfig) -> None:
    """The settings of the chosen mode; files it reads must exist (before any data is generated or loaded)."""
    if cfg.mode == "profile":
        settings = cfg.get("profile") or {}
        from toolkit.profiling.latency import DEVICES

        _check_int(settings, "profile", "batch_size", 1)
        budget = settings.get("budget_s")
        if not (_is_number(budget) and budget > 0):
            raise ConfigError("profile.budget_s", budget, "seconds of timing per batch size: a number > 0 (e.g. 6)")
        if not isinstance(settings.get("compile"), bool):
            raise ConfigError("profile.compile", settings.get("compile"), "true or false")
        _check_int(settings, "profile", "threads", 1)
        _check_choice(settings, "profile", "device", DEVICES)
        results = settings.get("results_file")
        if results and not Path(results).expanduser().is_file():
            raise ConfigError("profile.results_file", results, "no such file; give a CSV with columns model,alpha,resolution,top1")
    if cfg.mode == "export":
        settings = cfg.get("export") or {}
        formats = settings.get("formats") or []
        unknown = [f for f in formats if f not in EXPORT_FORMATS]
        if unknown or not formats:
            raise ConfigError("export.formats", list(formats), f"a non-empty list from: {', '.join(EXPORT_FORMATS)}")
        _check_choice(settings, "export", "calibration", ("train", "val", "random"))
        _check_choice(settings, "export", "calibration_method", ("percentile", "minmax", "entropy"))
        _check_choice(settings, "export", "postprocess", ("nms", "none"))  # detectors: NMS in the file, or the raw head
        if settings.get("postprocess") == "none" and cfg.get("task"):  # before any export work: only SSD has a raw head
            from toolkit.tasks.detection_ssd import SSDTask

            task_class = hydra.utils.get_class(cfg.task._target_)
            if getattr(task_class, "data_kind", None) == "detection" and not issubclass(task_class, SSDTask):
                raise ConfigError("export.postprocess", "none", f"{task_class.__name__} needs NMS between its RPN and "
                                  "RoI stages, so it has no raw-head form; use export.postprocess=nms")
        _check_int(settings, "export", "calibration_batches", 1)
        _check_int(settings, "export", "verify_batches", 1)
        _check_int(settings, "export", "batch_size", 1)
        _check_int(settings, "export", "threads", 1)
        _check_int(settings, "export", "latency_repeats", 1)
        _check_int(settings, "export", "opset", 7)
    if cfg.mode == "tune":
        settings = cfg.get("tune") or {}
        low, high = settings.get("min_lr"), settings.get("max_lr")
        if not (_is_number(low) and low > 0):
            raise ConfigError("tune.min_lr", low, "the finder's first learning rate: a number > 0 (e.g. 1e-6)")
        if not (_is_number(high) and high > low):
            raise ConfigError("tune.max_lr", high, f"the finder's last learning rate: a number > tune.min_lr ({low})")
        steps = settings.get("num_training")
        if not (_is_int(steps) and steps >= 2):
            raise ConfigError("tune.num_training", steps, "optimizer steps of the search: an integer >= 2 (e.g. 100)")
        threshold = settings.get("early_stop_threshold")
        if threshold is not None and not (_is_number(threshold) and threshold > 1):
            raise ConfigError("tune.early_stop_threshold", threshold, "a number > 1 (stop once the loss exceeds it "
                              "times the best so far), or null to run every step")
    if cfg.mode == "train" and cfg.get("init_from") and not Path(cfg.init_from).expanduser().is_file():
        raise ConfigError("init_from", cfg.init_from, "no such file; give a .ckpt of this toolkit or a state-dict file")
    if not isinstance(cfg.get("init_from_strict", True), bool):
        raise ConfigError("init_from_strict", cfg.init_from_strict, "true (the backbone must load) or false")


def validate_config(cfg: DictConfig) -> None:
    """Fail before any work, with one line naming the key and the allowed values."""
    if cfg.mode not in MODES:
        raise ConfigError("mode", cfg.mode, f"allowed: {', '.join(MODES)}")
    if cfg.get("backbone") is not None:  # a checkpoint holds every trained weight: its pretrained file is not read
        validate_backbone(cfg.backbone, weights=cfg.mode == "train" or not cfg.get("ckpt_path"))
    validate_data(cfg)
    compile_setting = (cfg.get("task") or {}).get("compile", False)
    if compile_setting not in COMPILE_SETTINGS:
        raise ConfigError("task.compile", compile_setting, "allowed: true, false, auto")
    validate_mode_settings(cfg)


def run(cfg: DictConfig) -> dict:
    validate_config(cfg)
    if cfg.get("seed") is not None:
        seed_everything(cfg.seed, workers=True)
    with trusted_files(bool(cfg.get("trust_file", False))):  # every file this job loads: as data, unless trusted
        return get_mode(cfg.mode)(cfg)
