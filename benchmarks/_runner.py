"""Run `python -m toolkit` jobs in-process from benchmark scripts: compose the real config, call `run(cfg)`."""

from __future__ import annotations

import time
from pathlib import Path


def compose_config(overrides: list[str], run_dir: Path):
    """The config `python -m toolkit OVERRIDES` would run, with its outputs in `run_dir` (Hydra's runtime set)."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="toolkit.conf", version_base="1.3"):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def run_toolkit(overrides: list[str], run_dir: Path) -> tuple[dict, float]:
    """Compose `conf/` with `overrides` as the CLI would, run it with outputs in `run_dir`.

    Returns (result, wall seconds) and adds `result["cpu_s"]`: CPU seconds of this process (all threads;
    data workers not counted), the figure to read when other jobs share the machine."""
    from toolkit.run import run

    cfg = compose_config(overrides, run_dir)
    start, cpu = time.perf_counter(), time.process_time()
    result = run(cfg)
    result["cpu_s"] = time.process_time() - cpu
    return result, time.perf_counter() - start


#: BN statistics recomputed before each validation: short runs on 64 px images otherwise evaluate with lagging,
#: noisy running averages (see toolkit/precise_bn.py)
PRECISE_BN = "+callbacks.precise_bn={_target_: toolkit.precise_bn.PreciseBN, num_batches: 20}"
#: the debug=cpu preset (conf/debug/cpu.yaml), without the learning-rate monitor
QUIET = ["debug=cpu", "callbacks.lr_monitor=null"]
