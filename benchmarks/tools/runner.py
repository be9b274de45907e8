"""Run `python -m toolkit` jobs in-process from benchmark scripts: compose the real config, call `run(cfg)`."""

from __future__ import annotations

import resource
import time
from pathlib import Path

from lightning.pytorch import Callback


def cpu_seconds() -> float:
    """CPU seconds of this process (all threads) and of its finished children (data workers of past epochs): the
    figure to read when other jobs share the machine. Workers still running are not counted yet."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class EpochRecorder(Callback):
    """After every validation epoch, the named metrics with cumulative wall and CPU seconds since the recorder was
    made (by Hydra, from the override `run_toolkit(record=...)` adds)."""

    def __init__(self, metrics: list[str]):
        self.metrics = list(metrics)
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        self.rows: list[dict] = []
        _RECORDERS.append(self)

    def on_validation_end(self, trainer, pl_module):  # not *_epoch_end: tasks log some metrics in their own one
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        row = {"epoch": trainer.current_epoch, **{k: float(m[k]) for k in self.metrics},
               "wall_s": time.perf_counter() - self.wall, "cpu_s": cpu_seconds() - self.cpu}
        self.rows.append(row)
        print("  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()), flush=True)


_RECORDERS: list[EpochRecorder] = []


def epoch_recorder(metrics: list[str]) -> EpochRecorder:
    """Hydra target of the recorder callback."""
    return EpochRecorder(list(metrics))


def run_toolkit(overrides: list[str], run_dir: Path, record: list[str] | None = None) -> tuple[dict, float]:
    """Compose `conf/` with `overrides` as the CLI would, run it with outputs in `run_dir`.

    Returns (result, wall seconds) and adds `result["cpu_s"]` (`cpu_seconds()` of the run) and, with `record`
    (metric names such as `val/top1`), `result["epochs"]`: one row per validation epoch (`EpochRecorder`)."""
    from toolkit import compose
    from toolkit.run import run

    if record:
        overrides = [*overrides, f"+callbacks.epoch_recorder={{_target_: benchmarks.tools.runner.epoch_recorder, "
                                 f"metrics: [{','.join(repr(m) for m in record)}]}}"]
    cfg = compose(overrides, output_dir=run_dir)
    start, cpu, recorders = time.perf_counter(), cpu_seconds(), len(_RECORDERS)
    result = run(cfg)
    result["cpu_s"] = cpu_seconds() - cpu
    if record:
        result["epochs"] = _RECORDERS[recorders].rows if len(_RECORDERS) > recorders else []
    return result, time.perf_counter() - start


#: BN statistics recomputed before each validation: short runs on 64 px images otherwise evaluate with lagging,
#: noisy running averages (see toolkit/precise_bn.py)
PRECISE_BN = "+callbacks.precise_bn={_target_: toolkit.precise_bn.PreciseBN, num_batches: 20}"
#: the debug=cpu preset (conf/debug/cpu.yaml), without the learning-rate monitor
QUIET = ["debug=cpu", "callbacks.lr_monitor=null"]
