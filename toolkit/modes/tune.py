"""mode=tune: Lightning's tuners on the configured task, data and optimiser: the batch-size finder
(`Tuner.scale_batch_size`, `tune.batch_size=true`) and the learning-rate finder (`Tuner.lr_find`, `tune.lr`).

Batch size (first, so that the learning rate is searched at the batch it suggests): training runs
`tune.steps_per_trial` steps at batch 2, 4, 8, ... (`tune.batch_size_mode=power`; `binsearch` then bisects between
the last batch that fit and the first that did not) until a batch runs out of memory or the next would pass the cap:
`tune.max_batch_size` or the training images one process sees. The largest batch that fit is printed as the
`data.batch_size=` override; `batch_size.json` in the run folder keeps it with each trial's training images per second
(compute only: forward, backward, optimizer step). On a GPU the limit is usually its memory; on a CPU, with the
machine's RAM behind it, usually the cap: there the images per second are what tells the batch sizes apart.

Learning rate: the configured optimiser trains `tune.num_training` steps while the learning rate grows exponentially
from `tune.min_lr` to `tune.max_lr` (every parameter group at the same rate); the loss curve goes to `lr_find.png` and
`lr_find.json` in the run folder, and the suggested rate (Lightning's: the steepest fall of the loss) is printed as
the override to train with. The model's weights are restored after each search; nothing is trained or checkpointed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import time

from omegaconf import DictConfig

from toolkit.errors import ConfigError
from toolkit.modes.common import build_datamodule, build_task, build_trainer, output_dir, write_json
from toolkit.precision import trainer_precision

log = logging.getLogger(__name__)


def lr_override_scale(task) -> float:
    """How the task turns `task.optimizer.lr` into the rate its head trains at (Faster R-CNN scales it from
    `lr_reference_batch` images to the run's batch): the finder's rate divided by this is the value to configure."""
    return max(group["lr"] for group in task.param_groups(0.0, 1.0))


def suggestion(finder, steps: int) -> float | None:
    """Lightning's suggestion, skipping the first tenth of the steps (at most 10: its default) and the last one."""
    return finder.suggestion(skip_begin=min(10, steps // 10), skip_end=1)


def save_plot(finder, suggested: float | None, value: float | None, path) -> None:
    """Loss against learning rate (log scale), the suggestion marked in red and named in the title."""
    import matplotlib

    matplotlib.use("Agg")  # files only, whatever the machine's display
    import matplotlib.pyplot as plt

    figure = finder.plot(suggest=False, show=False)
    axes = figure.axes[0]
    if suggested is not None:
        index = finder.results["lr"].index(suggested)
        axes.plot(suggested, finder.results["loss"][index], marker="o", markersize=10, color="red")
        axes.set_title(f"suggested: task.optimizer.lr={value:g}")
    else:
        axes.set_title("no suggestion: raise tune.num_training")
    figure.savefig(path, dpi=100)
    plt.close(figure)


@contextlib.contextmanager
def _quiet(logger: logging.Logger):
    """Lightning logs an error when its own suggestion (which skips the first 10 steps) has too few points; this
    mode computes the suggestion itself for short searches and says what to do when it cannot."""
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


BATCH_SIZE_MODES = ("power", "binsearch")
FIRST_BATCH_SIZE = 2  # Lightning's init_val


def check_settings(settings) -> None:
    """The batch-size finder's keys and the switches (tune.min_lr etc.: toolkit.run's checks), before any work."""
    for key in ("lr", "batch_size"):
        if not isinstance(settings.get(key), bool):
            raise ConfigError(f"tune.{key}", settings.get(key), "true or false")
    if not (settings.lr or settings.batch_size):
        raise ConfigError("tune.lr", False, "with tune.batch_size=false nothing is left to search: set either true")
    if settings.batch_size_mode not in BATCH_SIZE_MODES:
        raise ConfigError("tune.batch_size_mode", settings.batch_size_mode, f"allowed: {', '.join(BATCH_SIZE_MODES)}")
    for key in ("max_batch_size", "steps_per_trial"):
        value = settings.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ConfigError(f"tune.{key}", value, "an integer >= 1")


def batch_size_trials(cap: int) -> tuple[int, int]:
    """(first batch, trials) so that the doubling batches 2, 4, ... never pass `cap`: Lightning's own `max_val`
    stops before trying a batch and returns it untried, and a batch larger than the data set only trains on all of it."""
    first = min(FIRST_BATCH_SIZE, cap)
    return first, int(math.floor(math.log2(cap / first))) + 1


@contextlib.contextmanager
def _step_timer(task, datamodule, seconds: dict[int, list[float]], tried: set[int]):
    """Time each training step by the batch size it ran at (`seconds`; `tried`: every batch size a step started at,
    finished or not). Lightning sets the trainer's callbacks aside during the batch-size trials, so the timer sits on
    the module's own batch hooks (instance attributes, removed afterwards)."""
    started = {}
    start_hook, end_hook = task.on_train_batch_start, task.on_train_batch_end

    def on_start(batch, batch_idx, *args):
        tried.add(int(datamodule.batch_size))
        started["t"] = time.perf_counter()
        return start_hook(batch, batch_idx, *args)

    def on_end(outputs, batch, batch_idx, *args):
        seconds.setdefault(int(datamodule.batch_size), []).append(time.perf_counter() - started["t"])
        return end_hook(outputs, batch, batch_idx, *args)

    task.on_train_batch_start, task.on_train_batch_end = on_start, on_end
    try:
        yield
    finally:
        del task.on_train_batch_start, task.on_train_batch_end


def set_batch_size(task, datamodule, value: int) -> None:
    """Where Lightning's finder reads and writes `batch_size`: the datamodule, and the task's hyper-parameters where
    it has one (Faster R-CNN scales its learning rate by it)."""
    datamodule.batch_size = value
    if "batch_size" in task.hparams:
        task.hparams.batch_size = value


def find_batch_size(trainer, task, datamodule, settings, out) -> dict:
    from lightning.pytorch.tuner import Tuner

    configured = int(datamodule.batch_size)
    images = int(datamodule.train_images_per_process())
    cap = max(1, min(int(settings.max_batch_size), images))
    first, trials = batch_size_trials(cap)
    # Lightning starts from init_val only when the configured batch is smaller than the data set: start it there
    set_batch_size(task, datamodule, first)
    seconds: dict[int, list[float]] = {}
    tried: set[int] = set()
    with _step_timer(task, datamodule, seconds, tried):
        found = Tuner(trainer).scale_batch_size(task, datamodule=datamodule, mode=settings.batch_size_mode,
                                                steps_per_trial=int(settings.steps_per_trial), init_val=first,
                                                max_trials=trials, max_val=cap + 1)
    if found is None:  # Lightning skips the search under trainer.fast_dev_run
        set_batch_size(task, datamodule, configured)
        return {"suggested_batch_size": None}
    found = min(int(found), cap)
    set_batch_size(task, datamodule, found)  # the learning-rate search, if any, runs at the batch found
    largest = first * 2 ** (trials - 1)
    rows = []
    for size, times in sorted(seconds.items()):
        steady = times[1:] or times  # the first step of a trial also starts the loader and warms the kernels up
        step = statistics.median(steady)
        rows.append({"batch_size": size, "steps": len(times), "seconds_per_step": step,
                     "images_per_s": size / step if step > 0 else None})
    # a step that started and never finished ran out of memory (binsearch's 5 % margin alone leaves it under the cap)
    ran_out = bool(tried - set(seconds)) or (settings.batch_size_mode == "power" and found < largest)
    limited_by = "memory" if ran_out else "cap"
    timed = [row for row in rows if row["images_per_s"] and row["batch_size"] <= found]
    fastest = max(timed, key=lambda row: row["images_per_s"])["batch_size"] if timed else None
    result = {"suggested_batch_size": found, "configured_batch_size": configured, "mode": settings.batch_size_mode,
              "limited_by": limited_by, "fastest_batch_size": fastest, "cap": cap, "max_batch_size": int(settings.max_batch_size),
              "training_images_per_process": images, "steps_per_trial": int(settings.steps_per_trial),
              "device": str(task.device), "trials": rows}
    write_json(out / "batch_size.json", result)
    why = (f"the cap: {'tune.max_batch_size' if cap == settings.max_batch_size else 'the training images'} ({cap}); "
           "no trial ran out of memory" if limited_by == "cap" else "the next batch ran out of memory")
    print(f"batch-size finder ({settings.batch_size_mode}, {settings.steps_per_trial} steps per trial), stopped by {why}:")
    for row in rows:
        speed = f"{row['images_per_s']:.1f} images/s" if row["images_per_s"] else "-"
        print(f"  batch {row['batch_size']:>5}: {row['seconds_per_step'] * 1000:.1f} ms per step, {speed}")
    if fastest is not None and fastest != found:  # a CPU often trains no faster per image at the largest batch
        print(f"most images per second: batch {fastest}")
    print(f"suggested batch size: {found} (configured: {configured}); train with\n  data.batch_size={found}")
    return result


def tune(cfg: DictConfig) -> dict:
    settings = cfg.tune
    check_settings(settings)
    out = output_dir(cfg)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    task = build_task(cfg, datamodule)
    # the precision training would run at (mode=train's `auto`), not evaluation's
    precision, plugins = trainer_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator"), training=True)
    trainer = build_trainer(cfg, task, logger=False, precision=precision, plugins=plugins)
    result = {"output_dir": str(out)}
    if settings.batch_size:
        result["batch_size_finder"] = find_batch_size(trainer, task, datamodule, settings, out)
        result["suggested_batch_size"] = result["batch_size_finder"]["suggested_batch_size"]
    if settings.lr:
        result.update(find_lr(cfg, trainer, task, datamodule, out))
    batch, lr = result.get("suggested_batch_size"), result.get("suggested_lr")
    if batch is not None and lr is not None:
        print(f"together: data.batch_size={batch} task.optimizer.lr={lr:g} (the rate was searched at that batch)")
    return result


def find_lr(cfg: DictConfig, trainer, task, datamodule, out) -> dict:
    from lightning.pytorch.tuner import Tuner

    settings = cfg.tune
    with _quiet(logging.getLogger("lightning.pytorch.tuner.lr_finder")):  # its own suggestion (skipping 10 steps)
        finder = Tuner(trainer).lr_find(task, datamodule=datamodule, min_lr=float(settings.min_lr),
                                        max_lr=float(settings.max_lr), num_training=int(settings.num_training),
                                        early_stop_threshold=settings.get("early_stop_threshold"), update_attr=False)
    if finder is None:  # Lightning skips the search under trainer.fast_dev_run
        print("no learning-rate search under trainer.fast_dev_run: run mode=tune without it")
        return {"suggested_lr": None, "output_dir": str(out)}
    steps = len(finder.results["lr"])
    suggested = suggestion(finder, steps)
    scale = lr_override_scale(task)
    configured = float(cfg.task.optimizer.lr)
    value = None if suggested is None else float(f"{suggested / scale:.3g}")
    save_plot(finder, suggested, value, out / "lr_find.png")
    result = {"suggested_lr": value, "suggested_lr_at_this_batch": suggested, "configured_lr": configured,
              "lr_scale": scale, "steps": steps, "min_lr": float(settings.min_lr), "max_lr": float(settings.max_lr),
              "lr": [float(x) for x in finder.results["lr"]],
              "loss": [float(x) if math.isfinite(x) else None for x in finder.results["loss"]],
              "plot": str(out / "lr_find.png"), "at_batch_size": int(datamodule.batch_size), "output_dir": str(out)}
    write_json(out / "lr_find.json", result)
    print(f"learning-rate finder: {steps} steps from {settings.min_lr:g} to {settings.max_lr:g}; plot: {out / 'lr_find.png'}")
    if value is None:
        print(f"no suggestion: {steps} steps are too few to find the loss's steepest fall; raise tune.num_training "
              f"(or lower tune.max_lr if the loss diverged at once). The configured lr is {configured:g}")
    else:
        print(f"suggested learning rate: {value:g} (configured: {configured:g}); train with\n  task.optimizer.lr={value:g}")
    return result
