"""Pieces every mode shares: building data, task and trainer from the config; checkpoints; result files."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import hydra.utils
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from omegaconf import DictConfig, OmegaConf, open_dict

from toolkit.backbones.registry import check_keywords, unknown_keyword_error
from toolkit.callbacks import DATA_CONFIG_KEY, RememberData
from toolkit.checkpoint_io import AtomicCheckpointIO
from toolkit.data.contract import check_data_config
from toolkit.data.kinds import TaskData
from toolkit.errors import ConfigError
from toolkit.io import json_text, write_text_atomic
from toolkit.precision import trainer_precision
from toolkit.tasks.base import BaseTask, read_checkpoint

log = logging.getLogger(__name__)

#: `data.*` loader keys that describe this machine, not the data: taken from this run's config, never a checkpoint's
MACHINE_DATA_KEYS = ("num_workers", "pin_memory", "persistent_workers")


def output_dir(cfg: DictConfig) -> Path:
    path = Path(cfg.paths.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def task_class(cfg: DictConfig) -> type[BaseTask]:
    """The class `task._target_` names, imported once per run (validation, data and task building all ask;
    `forget_run_caches`)."""
    return _task_class(cfg.task._target_)


@functools.lru_cache(maxsize=16)
def _task_class(target: str) -> type[BaseTask]:
    return hydra.utils.get_class(target)


def backbone_skeleton(settings: dict):
    """The configured backbone on the meta device (no memory, no weight file): built once per run for the config
    check, the memory bound and the input statistics (`run` starts each run with `forget_run_caches`)."""
    from toolkit.backbones import create_backbone_skeleton

    try:
        key = json.dumps(settings, sort_keys=True)
    except TypeError:  # a value only code can give (a norm layer class): built, not remembered
        return create_backbone_skeleton(**settings)
    return _skeleton(key)


@functools.lru_cache(maxsize=4)
def _skeleton(settings: str):
    from toolkit.backbones import create_backbone_skeleton

    return create_backbone_skeleton(**json.loads(settings))


def forget_run_caches() -> None:
    """A new run (tests and benchmarks start several in one process): its task class and backbone are looked up
    anew, so one registered since the last run is found."""
    _task_class.cache_clear()
    _skeleton.cache_clear()


def build_datamodule(cfg: DictConfig, task: BaseTask | None = None, *, check_task: bool = True):
    """Instantiate `cfg.data`, filling what its config leaves to the run: `mean`/`std` set to null mean "what the
    backbone's weights expect"; `variant: null` (data=shapes) means "the kind of data the task reads".

    `task`: a task restored from a checkpoint (else the configured task's class counts); its own backbone decides
    those inputs (eval/predict/export of a MobileNetV2 checkpoint need ImageNet statistics even where the config's
    backbone is V1). Data the task does not read is refused before it is built (toolkit.data.contract), unless
    `check_task` is false: modes that read the data without a task (partition, teacher_cache).
    """
    reader = type(task) if task is not None else task_class(cfg)
    backbone = cfg.get("backbone")
    stored = task.hparams.get("backbone") if task is not None else None
    if stored:
        if backbone is not None and stored.get("name") != backbone.get("name"):
            log.info("the checkpoint's backbone %s (not the config's %s) sets the input normalisation",
                     stored.get("name"), backbone.get("name"))
        backbone = stored
    extra = {}
    if backbone is not None and any(k in cfg.data and cfg.data[k] is None for k in ("mean", "std")):
        mean, std = backbone_input_stats(backbone)
        extra = {k: list(v) for k, v in (("mean", mean), ("std", std)) if k in cfg.data and cfg.data[k] is None}
    if "variant" in cfg.data and cfg.data.variant is None:
        extra["variant"] = reader.data_kind
    if check_task:
        check_data_config(reader, cfg.data._target_, extra.get("variant", cfg.data.get("variant")),
                          *_pair_names(cfg, reader))
    settings = OmegaConf.to_container(cfg.data, resolve=False)
    target = hydra.utils.get_object(cfg.data._target_)  # `+data.x=1` it does not take: named, not a TypeError from it
    check_keywords(target, {k: v for k, v in settings.items() if not k.startswith("_")}, prefix="data",
                   owner=getattr(target, "__name__", "the data module"))
    try:
        return hydra.utils.instantiate(cfg.data, _convert_="all", **extra)
    except Exception as error:  # `+data.x` for a data module chosen in code (data=shapes: by the task's kind)
        unknown = unknown_keyword_error(error, settings, prefix="data")
        if unknown is None:
            raise
        raise unknown from error


def backbone_input_stats(backbone_cfg: DictConfig | dict) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the inputs a configured backbone's weights expect, from its skeleton (no weights)."""
    if isinstance(backbone_cfg, DictConfig):
        backbone_cfg = OmegaConf.to_container(backbone_cfg, resolve=True)
    backbone = backbone_skeleton({"name": None, **backbone_cfg})
    return tuple(backbone.mean), tuple(backbone.std)


def build_task(cfg: DictConfig, datamodule: TaskData | None = None) -> BaseTask:
    """Instantiate `cfg.task` as plain data, completed with what the data decides (class count...). The data↔task
    contract was checked when the datamodule was built (`build_datamodule`, before any data was read)."""
    extra = datamodule.task_kwargs() if datamodule is not None else {}
    task_cfg = OmegaConf.to_container(cfg.task, resolve=True)
    try:  # the task's own keys were checked against its signature (toolkit.run.validate_task); `task.model` here
        return hydra.utils.instantiate(task_cfg, _convert_="all", _recursive_=False, **extra)
    except Exception as error:
        model_error = unknown_keyword_error(error, task_cfg.get("model") or {}, prefix="task.model")
        if model_error is None:
            raise
        raise model_error from error


def build_callbacks(cfg: DictConfig, task: BaseTask) -> list[Callback]:
    callbacks = []
    for name, cb_cfg in (cfg.get("callbacks") or {}).items():
        if cb_cfg is None or "_target_" not in cb_cfg:
            continue
        kwargs: dict[str, Any] = {}
        target = hydra.utils.get_object(cb_cfg._target_)  # a class, or a factory function returning a callback
        if isinstance(target, type) and issubclass(target, ProgressBar) and not cfg.trainer.get("enable_progress_bar", True):
            continue  # trainer.enable_progress_bar=false also turns the configured bar off (Lightning refuses both)
        if target is ModelCheckpoint and cb_cfg.get("monitor", "unset") is None:
            kwargs = {"monitor": task.monitor, "mode": task.monitor_mode}  # the task declares what "best" means
        log.debug("callback %s", name)
        callbacks.append(hydra.utils.instantiate(cb_cfg, **kwargs))
    if cfg.get("mode") == "train" and cfg.get("data") is not None:  # checkpoints remember their data
        callbacks.append(RememberData(OmegaConf.to_container(cfg.data, resolve=True), _choice("data")))
    return callbacks


def build_trainer(cfg: DictConfig, task: BaseTask, **overrides) -> Trainer:
    """The configured Trainer; `overrides` replace its arguments (eval/predict pass `logger=False`)."""
    if "logger" not in overrides:
        loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c and "_target_" in c]
        overrides["logger"] = loggers or False
    precision_plugins = []
    if "precision" not in overrides:  # `auto`: decided here, on the machine that runs the job
        overrides["precision"], precision_plugins = trainer_precision(
            cfg.trainer.get("precision"), cfg.trainer.get("accelerator"), training=cfg.get("mode") == "train")
    if not cfg.trainer.get("plugins"):  # checkpoints written whole or not at all (a kill mid-write keeps the old one)
        overrides["plugins"] = [*overrides.get("plugins", [AtomicCheckpointIO()]), *precision_plugins]
    elif precision_plugins:  # the configured plugins replace ours: plain bf16, without the fp32 warm-up
        overrides["precision"] = precision_plugins[0].precision
    return hydra.utils.instantiate(cfg.trainer, callbacks=build_callbacks(cfg, task), **overrides)


def load_task(cfg: DictConfig, ckpt_path: str | None = None) -> BaseTask:
    """Restore a task from a checkpoint written by this toolkit (its class is the configured task's), and take the
    data config it was trained with into `cfg.data` (`restore_data_config`).

    The task keeps the checkpoint's hyper-parameters, except the `task.*` keys given on this run's command line
    (`task.predict_score_thresh=0.1`, `task.model.rcnn.box_score_thresh=0.05`): those replace the checkpoint's values.
    """
    path = resolve_checkpoint(cfg, ckpt_path or cfg.get("ckpt_path"), required=True)
    checkpoint = read_checkpoint(path, mmap=True)
    restore_data_config(cfg, checkpoint, path)
    hparams = checkpoint.get("hyper_parameters") or {}
    return task_class(cfg).restore(path, checkpoint=checkpoint, **command_line_task_overrides(cfg, hparams))


def restore_data_config(cfg: DictConfig, checkpoint: dict, path: str | Path) -> None:
    """Set `cfg.data` to the data config the checkpoint's run trained with (`toolkit.callbacks.RememberData`), with
    the `data.*` keys given on this command line replacing the stored values. `data=<option>` on the command line
    chooses other data: then the composed `cfg.data` is used as it is. So is a config that did not come from a
    command line (a plain `run(cfg)`: the caller's config says what it means) and a checkpoint without the entry.
    The loader keys of this machine (`MACHINE_DATA_KEYS`: workers, pinned memory) always come from this run."""
    stored = checkpoint.get(DATA_CONFIG_KEY)
    given = _command_line_overrides()
    if not isinstance(stored, dict) or not isinstance(stored.get("config"), dict) or given is None:
        return
    origin = f"data={stored.get('choice')}" if stored.get("choice") else "its data"
    keys = [o.split("=", 1)[0] for o in given]
    if any(k.lstrip("+~") == "data" for k in keys):
        log.info("data: the command line's data=%s (the checkpoint %s was trained on %s)", _choice("data"), path, origin)
        return
    data = OmegaConf.create(stored["config"])
    for key in MACHINE_DATA_KEYS:
        if key in cfg.data:
            data[key] = cfg.data[key]
    overridden = []
    for key in keys:
        name = key.lstrip("+~")
        if not name.startswith("data."):
            continue
        name = name.removeprefix("data.")
        if key.startswith("~"):
            parent, _, leaf = name.rpartition(".")
            node = OmegaConf.select(data, parent) if parent else data
            if node is not None:
                node.pop(leaf, None)
        else:
            OmegaConf.update(data, name, OmegaConf.select(cfg.data, name), merge=False, force_add=True)
        overridden.append(name)
    with open_dict(cfg):
        cfg.data = data
    where = ", ".join(f"{k}={v}" for k, v in stored["config"].items() if isinstance(v, str) and ("/" in v or "\\" in v))
    log.info("data: %s from the checkpoint %s%s%s", origin, path, f" ({where})" if where else "",
             f"; from the command line: {', '.join(f'data.{k}' for k in overridden)}" if overridden else "")


def _command_line_overrides() -> list[str] | None:
    """The overrides typed on this run's command line (`data.root=...`), or None when not run through Hydra."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return list(HydraConfig.get().overrides.task)
    except ValueError:  # not under Hydra (a plain run(cfg)): nothing was given on a command line
        return None


def command_line_task_overrides(cfg: DictConfig, hparams: dict) -> dict[str, Any]:
    """{top-level task argument: value} for the `task.*` overrides on the command line, each applied to the
    checkpoint's own value of that argument (so `task.model.rcnn.box_score_thresh=...` changes that one entry)."""
    given = _command_line_overrides()
    if given is None:
        return {}
    keys = [o.split("=", 1)[0].lstrip("+") for o in given]
    keys = [k.removeprefix("task.") for k in keys if k.startswith("task.") and k != "task._target_"]
    if not keys:
        return {}
    merged = OmegaConf.create({k: v for k, v in hparams.items() if k in {key.split(".")[0] for key in keys}})
    for key in keys:
        value = OmegaConf.select(cfg.task, key)
        log.info("task.%s=%s from the command line replaces the checkpoint's %s", key, value, OmegaConf.select(merged, key))
        OmegaConf.update(merged, key, value, merge=False)
    return OmegaConf.to_container(merged, resolve=True)


def resolve_checkpoint(cfg: DictConfig, ckpt_path: str | None, required: bool = False) -> str | None:
    """`ckpt_path=last` means the newest `checkpoints/last.ckpt` of this task's runs under `paths.log_dir`
    (`<log_dir>/<task>/...`, the Hydra run folders), other runs' folders when the task is not known. It names
    one run, printed; in a `-m` sweep it is refused (every job would take the same run, or one another's)."""
    if ckpt_path in (None, ""):
        if required:
            raise ConfigError("ckpt_path", ckpt_path, "this mode needs a checkpoint: ckpt_path=/path/to/file.ckpt or ckpt_path=last")
        return None
    if ckpt_path == "last":
        return str(_newest_last_checkpoint(cfg))
    path = Path(ckpt_path).expanduser()
    if not path.is_file():
        raise ConfigError("ckpt_path", ckpt_path, "no such checkpoint file")
    return str(path)


def _newest_last_checkpoint(cfg: DictConfig) -> Path:
    if _in_sweep():
        raise ConfigError("ckpt_path", "last", "is ambiguous in a -m sweep (every job would resume the same run, or "
                          "another job's); give each job its checkpoint file: ckpt_path=/path/to/run/checkpoints/last.ckpt")
    log_dir = Path(cfg.paths.log_dir)
    task_dir = log_dir / _choice("task") if _choice("task") else log_dir
    this_run = Path(cfg.paths.output_dir).resolve() if cfg.paths.get("output_dir") else None
    candidates = [p for p in task_dir.glob("**/checkpoints/last.ckpt") if p.parent.parent.resolve() != this_run]
    if not candidates:
        raise ConfigError("ckpt_path", "last", f"no checkpoints/last.ckpt under {task_dir}; pass an explicit path")
    candidates.sort(key=lambda p: p.stat().st_mtime_ns)
    if len(candidates) > 1 and candidates[-1].stat().st_mtime_ns == candidates[-2].stat().st_mtime_ns:
        raise ConfigError("ckpt_path", "last", f"two runs' last.ckpt are equally new ({candidates[-2]}, {candidates[-1]}); "
                          "pass the one you mean")
    chosen = candidates[-1]
    message = f"ckpt_path=last -> {chosen} (run {chosen.parent.parent})"
    print(message)
    log.info(message)
    return chosen


def _in_sweep() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # not under Hydra
        return False


def _pair_names(cfg: DictConfig, reader: type[BaseTask]) -> tuple[str, str]:
    """How the contract's errors name the task and the data: their config options, or their classes without Hydra."""
    return _choice("task") or reader.__name__, _choice("data") or str(cfg.data.get("_target_"))


def _choice(group: str) -> str | None:
    """The option of config group `group` this run composed (`task=...`: Hydra's run folders are `<log_dir>/<task>/...`)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get().runtime.choices.get(group)
    except ValueError:  # not under Hydra (a plain run(cfg) with a hand-made config)
        return None


def record_resume(ckpt_path: str, out: Path) -> dict:
    """A resumed run trains in its own new folder: refuse the checkpoint's own run folder (its files stay as they
    are), check the file is plain data before Lightning reads it, and write `resumed_from.json` saying where the
    run came from. Returns the checkpoint as read (its data config is the resumed run's: `restore_data_config`)."""
    ckpt = Path(ckpt_path).resolve()
    source_run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    if source_run == out.resolve():
        raise ConfigError("ckpt_path", ckpt_path, f"belongs to this run's folder {out}; a resumed run writes a new "
                          "folder and leaves the original run's files as they are: do not set hydra.run.dir to it")
    checkpoint = read_checkpoint(ckpt, mmap=True)
    record = {"checkpoint": str(ckpt), "run_dir": str(source_run), "global_step": checkpoint.get("global_step"),
              "epoch": checkpoint.get("epoch")}
    write_json(out / "resumed_from.json", record)
    log.info("resuming from %s (step %s, epoch %s of run %s) into the new run folder %s", ckpt,
             record["global_step"], record["epoch"], source_run, out)
    return checkpoint


def check_resume_fits(task, checkpoint: dict, ckpt_path: str) -> None:
    """A resumed run must build the checkpoint's model: otherwise one line naming the settings that differ (Lightning
    would stop in the middle of loading the weights with a long size-mismatch traceback)."""
    saved = checkpoint.get("state_dict") or {}
    built = task.state_dict()
    differ = [k for k in built if k in saved and tuple(saved[k].shape) != tuple(built[k].shape)]
    missing = [k for k in built if k not in saved]
    if not differ and not missing:
        return
    first = (f"{differ[0]} is {list(saved[differ[0]].shape)} in the checkpoint, {list(built[differ[0]].shape)} here"
             if differ else f"{missing[0]} is not in the checkpoint")

    def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(tree, dict):
            return {prefix: tree}
        return {k: v for key, value in tree.items() for k, v in flat(value, f"{prefix}{key}.").items()}

    old = flat(dict(checkpoint.get("hyper_parameters") or {}))
    new = flat(OmegaConf.to_container(OmegaConf.create(dict(task.hparams)), resolve=True))
    changed = sorted((k for k in new if k in old and new[k] != old[k]),  # the model's settings first: they shape weights
                     key=lambda k: not k.startswith(("backbone", "model", "num_classes")))
    settings = [f"{k.rstrip('.')}={new[k]} here, {old[k]} in the checkpoint" for k in changed]
    raise ConfigError("ckpt_path", ckpt_path, "this run's model does not fit the checkpoint's ("
                      + ("; ".join(settings[:3]) + "; " if settings else "") + f"{first}): resume with the settings "
                      "the run was trained with, or start a new run from its weights: init_from=<checkpoint> "
                      "init_from_strict=false")


def write_json(path: Path, payload: Any) -> Path:
    return write_text_atomic(path, json_text(payload, indent=2, default=float) + "\n")


def plain_metrics(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def print_metrics(metrics: dict[str, float]) -> None:
    """One `name  value` line per metric, names right-aligned (what eval and the end of training print)."""
    for key, value in sorted(metrics.items()):
        print(f"{key:>32s}  {value:.4f}")
