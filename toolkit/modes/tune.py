"""mode=tune: Lightning's learning-rate finder (`Tuner.lr_find`) on the configured task, data and optimiser.

The configured optimiser trains `tune.num_training` steps while the learning rate grows exponentially from
`tune.min_lr` to `tune.max_lr` (every parameter group at the same rate); the loss curve goes to `lr_find.png` and
`lr_find.json` in the run folder, and the suggested rate (Lightning's: the steepest fall of the loss) is printed as
the override to train with. The model's weights are restored afterwards; nothing is trained or checkpointed.
"""

from __future__ import annotations

import contextlib
import logging
import math

from omegaconf import DictConfig

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


def tune(cfg: DictConfig) -> dict:
    from lightning.pytorch.tuner import Tuner

    settings = cfg.tune
    out = output_dir(cfg)
    datamodule = build_datamodule(cfg)
    datamodule.prepare_data()
    datamodule.setup("fit")
    task = build_task(cfg, datamodule)
    # the precision training would run at (mode=train's `auto`), not evaluation's
    precision, plugins = trainer_precision(cfg.trainer.get("precision"), cfg.trainer.get("accelerator"), training=True)
    trainer = build_trainer(cfg, task, logger=False, precision=precision, plugins=plugins)
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
              "plot": str(out / "lr_find.png"), "output_dir": str(out)}
    write_json(out / "lr_find.json", result)
    print(f"learning-rate finder: {steps} steps from {settings.min_lr:g} to {settings.max_lr:g}; plot: {out / 'lr_find.png'}")
    if value is None:
        print(f"no suggestion: {steps} steps are too few to find the loss's steepest fall; raise tune.num_training "
              f"(or lower tune.max_lr if the loss diverged at once). The configured lr is {configured:g}")
    else:
        print(f"suggested learning rate: {value:g} (configured: {configured:g}); train with\n  task.optimizer.lr={value:g}")
    return result
