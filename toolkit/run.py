"""`compose(overrides)`: the config `python -m toolkit OVERRIDES` runs; `run(cfg)`: validate it, then run the job
`cfg.mode` names. Tests and benchmarks call these directly (`toolkit.compose` is the first, lazily imported)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import hydra.utils
import torch
from lightning.pytorch import seed_everything
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from toolkit.backbones.registry import check_keywords
from toolkit.backbones.weights import check_pretrained
from toolkit.compilation import check_setting as check_compile_setting
from toolkit.conf import moved_key_hint
from toolkit.errors import ConfigError
from toolkit.io import trust_file
from toolkit.modes import MODES, get_mode
from toolkit.modes.common import backbone_skeleton, forget_run_caches, task_class

log = logging.getLogger(__name__)

PAPER_RESOLUTIONS = "paper: 224, 192, 160, 128"


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


def validate_backbone(backbone: DictConfig, *, weights: bool = True):
    """Build the configured backbone on the meta device (no memory, no weight file read), so the registry and the
    builders, where each backbone setting is checked once, name a wrong `backbone.*` value before any work; then,
    with `weights`, find (or download, once) the `backbone.pretrained` file, so a missing one stops the run here."""
    pretrained = backbone.get("pretrained")
    if pretrained not in (None, "") and not isinstance(pretrained, str):
        raise ConfigError("backbone.pretrained", pretrained, "a local checkpoint path or a known weight source name")
    settings = {"name": None, **OmegaConf.to_container(backbone, resolve=True)}
    skeleton = backbone_skeleton(settings)  # the data's input statistics come from this one too
    if weights:
        check_pretrained(settings)
    return skeleton


#: bytes per parameter a training run holds: fp32 weights, gradients and two optimiser statistics (RMSprop's
#: square average and momentum, Adam's two moments); evaluation holds the weights alone
TRAIN_BYTES_PER_PARAMETER, EVAL_BYTES_PER_PARAMETER = 16, 4
#: the resolution the activation count is taken at (on the meta device), scaled by (r / r0)^2 to the configured one
ACTIVATION_PROBE_RESOLUTION = 64


#: where a container's memory limit is (cgroup v2, then v1): a bound above it would be killed by the kernel first
CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


def machine_memory_bytes() -> int:
    """This process's memory: the machine's RAM, or the container's (cgroup) limit where that is lower."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in CGROUP_LIMITS:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (cgroup v2) or a huge v1 number: no limit below the machine's
            return min(physical, int(text))
    return physical


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def activation_floats(backbone: torch.nn.Module, resolution: int) -> tuple[int, int] | None:
    """(sum, largest) of the backbone's layer outputs, in floats per image at `resolution`: training keeps roughly
    the sum for the backward pass, inference the largest pair. Counted with forward hooks on the meta device (no
    memory, no arithmetic); None for a backbone that cannot run there."""
    sizes = []

    def count(_module, inputs, out) -> None:
        if torch.is_tensor(out) and not any(out is i for i in inputs):  # an in-place ReLU keeps no second tensor
            sizes.append(out.numel())

    hooks = [m.register_forward_hook(count) for m in backbone.modules() if not list(m.children())]
    try:
        parameter = next(backbone.parameters(), None)
        if parameter is None or parameter.device.type != "meta":
            return None
        with torch.no_grad():
            backbone(torch.empty(1, 3, resolution, resolution, device="meta"))
    except Exception:  # noqa: BLE001 - a backbone that does not run on the meta device: no estimate, no bound
        return None
    finally:
        for hook in hooks:
            hook.remove()
    return (sum(sizes), max(sizes)) if sizes else None


def validate_memory(cfg: DictConfig, backbone: torch.nn.Module | None) -> None:
    """Settings that cannot fit this machine's memory, refused before any work (alpha=1e9 would try a 128 GB
    allocation; data.resolution=100000 would read the data, then fail in OpenCV). The bounds, against the
    machine's RAM: weights (+ gradients and optimiser state when training: 16 bytes per parameter, 4 otherwise);
    activations of a batch at data.resolution (training: the sum of the backbone's layer outputs, inference: its
    two largest), counted at 64 px on the meta device and scaled by (r / 64)^2. Heads and data loading come on top,
    so passing is no promise; failing is certain."""
    if backbone is None:
        return
    ram = machine_memory_bytes()
    training = cfg.mode == "train"
    parameters = sum(p.numel() for p in backbone.parameters())
    per_parameter = TRAIN_BYTES_PER_PARAMETER if training else EVAL_BYTES_PER_PARAMETER
    weights = parameters * per_parameter
    if weights > ram:
        alpha = cfg.backbone.get("alpha")
        largest = f"; at most about alpha={alpha * math.sqrt(ram / weights):.2g} here" if _is_number(alpha) else ""
        raise ConfigError("backbone.alpha", alpha, f"{parameters / 1e6:,.0f} M parameters need about {_gib(weights)} "
                          f"({per_parameter} bytes each{' when training' if training else ''}), more than this "
                          f"machine's {_gib(ram)} of memory{largest} (paper widths: 1.0, 0.75, 0.5, 0.25)")
    data = cfg.get("data") or {}
    resolution, batch = data.get("resolution"), data.get("batch_size") or 1
    if not _is_int(resolution):
        return
    counts = activation_floats(backbone, ACTIVATION_PROBE_RESOLUTION)
    if counts is None:
        return
    per_image = counts[0] if training else 2 * counts[1]
    scale = (resolution / ACTIVATION_PROBE_RESOLUTION) ** 2
    needed = per_image * scale * batch * 4 + weights
    if needed > ram:
        largest = int(ACTIVATION_PROBE_RESOLUTION * math.sqrt(max(ram - weights, 0) / (per_image * batch * 4)))
        raise ConfigError("data.resolution", resolution, f"{'training' if training else 'running'} a batch of "
                          f"{batch} at {resolution} px needs about {_gib(needed)} (the backbone's layer outputs, "
                          f"{'all kept for the backward pass' if training else 'the largest two'}), more than this "
                          f"machine's {_gib(ram)} of memory; at most about {largest} px here at this data.batch_size "
                          f"({PAPER_RESOLUTIONS})")


def validate_task(cfg: DictConfig) -> None:
    """`task.*` keys the task class does not take (a typo added with `+task.x=...`): one line naming the key and
    the closest ones, before any data is set up. `task.model` keys are the model builder's: toolkit.modes.common
    names an unknown one when the task builds its model."""
    task = cfg.get("task")
    if not task or "_target_" not in task:
        return
    if "compile" in task:  # `+task.compile=...` or a config written before the key moved
        raise ConfigError("task.compile", task.compile, moved_key_hint("task.compile", task.compile))
    reader = task_class(cfg)
    settings = OmegaConf.to_container(task, resolve=False)
    kwargs = {k: v for k, v in settings.items() if not k.startswith("_")}
    check_keywords(reader, kwargs, prefix="task", owner=reader.__name__)
    if "eval_backend" in task:  # read when validation starts (after the data and a training epoch): checked now
        from toolkit.detection.evaluator import resolve_backend

        resolve_backend(task.eval_backend)


def validate_data(cfg: DictConfig) -> None:
    data = cfg.get("data") or {}
    resolution = data.get("resolution")
    if resolution is not None:
        multiple = getattr(task_class(cfg), "resolution_multiple", 1) if cfg.get("task") else 1
        if not _is_int(resolution) or resolution < 32 or resolution % multiple:
            allowed = f"a multiple of {multiple} (>= 32; {PAPER_RESOLUTIONS})" if multiple > 1 else f"an integer >= 32 ({PAPER_RESOLUTIONS})"
            raise ConfigError("data.resolution", resolution, f"must be {allowed}")
    _check_int(data, "data", "batch_size", 1)
    _check_int(data, "data", "num_workers", 0)
    for key in ("n_train", "n_val"):  # sizes of generated data sets
        _check_int(data, "data", key, 1)
    _check_int(data, "data", "image_size", 16)


#: trainer.precision values: the toolkit's `auto` and Lightning's names (lightning.pytorch's precision inputs)
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true", "transformer-engine",
              "transformer-engine-float16", "32", "16", "64", "bf16", 32, 16, 64)


def _check_batches(trainer: DictConfig, key: str) -> None:
    value = trainer.get(key)
    if value is not None and not ((_is_int(value) and value >= 0) or (isinstance(value, float) and 0.0 <= value <= 1.0)):
        raise ConfigError(f"trainer.{key}", value, "a fraction of the batches (0.0-1.0) or a count of them (an integer >= 0)")


def _check_devices(devices) -> None:
    if devices is None or devices == "auto" or (_is_int(devices) and (devices >= 1 or devices == -1)):
        return
    if isinstance(devices, str) and devices.strip():
        parts = [p.strip() for p in devices.rstrip(",").split(",")]
        if all(p.lstrip("-").isdigit() for p in parts) and (devices.strip() == "-1" or all(int(p) >= 0 for p in parts)):
            return
    if isinstance(devices, list | tuple | ListConfig) and devices and all(_is_int(d) and d >= 0 for d in devices):
        return
    raise ConfigError("trainer.devices", devices, "a count >= 1, -1 (all), auto, or a list of device indices (e.g. [0, 1])")


def validate_trainer(cfg: DictConfig) -> None:
    """The Trainer's values, one line each, before any data is set up (Lightning checks some of them only when the
    Trainer is built, after the data; others, like a negative max_epochs, not at all). Keys the Trainer does not
    take (`+trainer.max_epoch=1`) are named too."""
    trainer = cfg.get("trainer")
    if not trainer:
        return
    if "_target_" in trainer:
        kwargs = {k: v for k, v in OmegaConf.to_container(trainer, resolve=False).items() if not k.startswith("_")}
        check_keywords(hydra.utils.get_class(trainer._target_), kwargs, prefix="trainer", owner="the Trainer")
    for key in ("max_epochs", "max_steps"):
        _check_int(trainer, "trainer", key, -1)  # -1: no limit (Lightning's convention)
    for key in ("min_epochs", "min_steps"):
        _check_int(trainer, "trainer", key, 0)
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches"):
        _check_batches(trainer, key)
    _check_devices(trainer.get("devices"))
    for key in ("num_nodes", "accumulate_grad_batches", "check_val_every_n_epoch", "log_every_n_steps"):
        _check_int(trainer, "trainer", key, 1)
    precision = trainer.get("precision")
    if precision is not None and (isinstance(precision, bool) or precision not in PRECISIONS):
        raise ConfigError("trainer.precision", precision, f"allowed: {', '.join(str(p) for p in PRECISIONS[:9])}")
    clip = trainer.get("gradient_clip_val")
    if clip is not None and not (_is_number(clip) and math.isfinite(clip) and clip >= 0):
        raise ConfigError("trainer.gradient_clip_val", clip, "a finite number >= 0 (null: no clipping)")
    fast = trainer.get("fast_dev_run")
    if fast is not None and not (isinstance(fast, bool) or (_is_int(fast) and fast >= 0)):
        raise ConfigError("trainer.fast_dev_run", fast, "true, false or a number of batches >= 0")


def export_format_names() -> tuple[str, ...]:
    """The names `export.formats` takes: the toolkit.formats registry (FORMATS), filled when toolkit.formats
    imports its format modules."""
    from toolkit.formats import FORMATS

    return tuple(FORMATS)


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
        from toolkit.formats.selection import check_gate_settings, known_formats

        if isinstance(formats, str):  # export.formats=all
            formats = [formats]
        unknown = [f for f in formats if f not in known_formats()]
        if unknown or not formats:
            raise ConfigError("export.formats", list(formats), f"a non-empty list from: {', '.join(known_formats())}")
        _check_choice(settings, "export", "int8_target", ("x86", "arm"))
        _check_choice(settings, "export", "int8_activations", ("uint8", "int8"))
        _check_choice(settings, "export", "coreml_precision", ("fp16", "fp32"))
        check_gate_settings(settings)
        _check_choice(settings, "export", "calibration", ("train", "val", "random"))
        _check_choice(settings, "export", "calibration_method", ("percentile", "minmax", "entropy"))
        _check_choice(settings, "export", "postprocess", ("nms", "none"))  # detectors: NMS in the file, or the raw head
        if settings.get("postprocess") == "none" and cfg.get("task"):  # before any export work: only SSD has a raw head
            from toolkit.tasks.detection_ssd import SSDTask

            reader = task_class(cfg)
            if getattr(reader, "data_kind", None) == "detection" and not issubclass(reader, SSDTask):
                raise ConfigError("export.postprocess", "none", f"{reader.__name__} needs NMS between its RPN and "
                                  "RoI stages, so it has no raw-head form; use export.postprocess=nms")
        _check_choice(settings, "export", "int8_activations", ("uint8", "int8"))
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
    if cfg.mode == "select":
        validate_select(cfg)
    if cfg.mode == "train" and cfg.get("init_from") and not Path(cfg.init_from).expanduser().is_file():
        raise ConfigError("init_from", cfg.init_from, "no such file; give a .ckpt of this toolkit or a state-dict file")
    if not isinstance(cfg.get("init_from_strict", True), bool):
        raise ConfigError("init_from_strict", cfg.init_from_strict, "true (the backbone must load) or false")


def validate_select(cfg: DictConfig) -> None:
    """mode=select's keys (docs/select.md), one line per wrong value, before any candidate is built."""
    settings = cfg.get("select") or {}
    _check_choice(settings, "select", "runtime", export_format_names())
    if settings.get("runtime") is None:
        raise ConfigError("select.runtime", None, f"the export format the budget is measured in: {', '.join(export_format_names())}")
    for key in ("latency_ms", "size_mb", "madds_m"):
        value = settings.get(key)
        if value is not None and not (_is_number(value) and math.isfinite(value) and value > 0):
            raise ConfigError(f"select.{key}", value, "a budget > 0, or null for none")
    alphas = settings.get("alphas")
    if alphas is not None and not (isinstance(alphas, ListConfig | list) and alphas
                                   and all(_is_number(a) and 0 < a <= 4 for a in alphas)):
        raise ConfigError("select.alphas", alphas, "a non-empty list of widths in (0, 4], e.g. [1.0, 0.75, 0.5, 0.25]; "
                          "null: the paper's")
    multiple = getattr(hydra.utils.get_class(cfg.task._target_), "resolution_multiple", 1) if cfg.get("task") else 1
    resolutions = settings.get("resolutions")
    if resolutions is not None and not (isinstance(resolutions, ListConfig | list) and resolutions
                                        and all(_is_int(r) and r >= 32 and r % multiple == 0 for r in resolutions)):
        raise ConfigError("select.resolutions", resolutions, f"a non-empty list of integers >= 32"
                          f"{f', multiples of {multiple}' if multiple > 1 else ''} ({PAPER_RESOLUTIONS}); null: the paper's")
    for key, minimum in (("threads", 1), ("rung_epochs", 1), ("search_epochs", 1), ("eta", 2), ("final_epochs", 1),
                         ("n_jobs", 1)):
        _check_int(settings, "select", key, minimum)
    for key in ("rung_epochs", "search_epochs", "eta", "n_jobs"):
        if settings.get(key) is None:
            raise ConfigError(f"select.{key}", None, "an integer (see conf/config.yaml select:)")
    if settings["rung_epochs"] > settings["search_epochs"]:
        raise ConfigError("select.rung_epochs", settings["rung_epochs"],
                          f"must be <= select.search_epochs ({settings['search_epochs']})")
    if not isinstance(settings.get("export_only"), bool):
        raise ConfigError("select.export_only", settings.get("export_only"), "true or false")
    if not isinstance(settings.get("launcher"), str) or not settings.get("launcher"):
        raise ConfigError("select.launcher", settings.get("launcher"), "a Hydra launcher: joblib, basic, submitit_slurm, ...")
    extra = settings.get("launcher_overrides")
    if extra is not None and not (isinstance(extra, ListConfig | list) and all(isinstance(o, str) and "=" in o for o in extra)):
        raise ConfigError("select.launcher_overrides", extra, "a list of Hydra overrides key=value")
    for key, hint in (("latency_table", "a JSON file of python -m toolkit.deploy --benchmark"),
                      ("resume", "the run folder of the selection to resume")):
        value = settings.get(key)
        if value and not (Path(value).expanduser().is_dir() if key == "resume" else Path(value).expanduser().is_file()):
            raise ConfigError(f"select.{key}", value, f"no such {'folder' if key == 'resume' else 'file'}; give {hint}")


def validate_config(cfg: DictConfig) -> None:
    """Fail before any work, with one line naming the key and the allowed values."""
    if cfg.mode not in MODES:
        raise ConfigError("mode", cfg.mode, f"allowed: {', '.join(MODES)}")
    skeleton = None
    if cfg.get("backbone") is not None:  # a checkpoint holds every trained weight: its pretrained file is not read
        skeleton = validate_backbone(cfg.backbone, weights=cfg.mode == "train" or not cfg.get("ckpt_path"))
    validate_task(cfg)
    validate_data(cfg)
    validate_trainer(cfg)
    validate_memory(cfg, skeleton)
    check_compile_setting(cfg.get("compile", False))
    validate_mode_settings(cfg)


def compose(overrides: Sequence[str] = (), *, output_dir: str | Path) -> DictConfig:
    """The config `python -m toolkit OVERRIDES` hands to `run`, composed from the package's conf/ (not the working
    folder's), with the run's outputs in `output_dir` (the Hydra run folder a CLI run would create). Hydra's runtime
    is set as in a CLI run, so `run(compose(...))` resolves `paths.output_dir`, names its config choices
    (`task=...`) and sees the overrides as typed on a command line. `teacher=<file>` expands as on the command line.
    Unknown keys and options raise Hydra's errors (the CLI's one-line checks are in toolkit.__main__)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from toolkit.distill.overrides import expand_teacher_override

    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module="toolkit.conf", version_base="1.3"):
            cfg = hydra_compose("config", overrides=expand_teacher_override(list(overrides)),
                                return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run(cfg: DictConfig) -> dict:
    forget_run_caches()
    validate_config(cfg)
    if cfg.get("seed") is not None:
        seed_everything(cfg.seed, workers=True)
    with trust_file(bool(cfg.get("trust_file", False))):  # every file this job loads: as data, unless trusted
        return get_mode(cfg.mode)(cfg)
