"""Settings declared once: the debug=cpu preset and the loader keys every data config shares."""

from __future__ import annotations

import pytest
from conftest import FAST

from toolkit.conf import CONF_DIR

LOADER_KEYS = ("batch_size", "num_workers", "pin_memory", "persistent_workers", "skip_corrupt")


def test_debug_preset_makes_a_quiet_cpu_run_and_command_line_keys_still_win(make_cfg):
    cfg = make_cfg([], fast=False)
    assert cfg.trainer.enable_progress_bar is True and "tensorboard" in cfg.logger
    cfg = make_cfg(FAST + ["experiment=mobilenet_v1_100_224"], fast=False)  # applied after the experiment
    assert cfg.trainer.accelerator == "cpu" and cfg.data.num_workers == 0
    assert not cfg.trainer.enable_progress_bar and not cfg.trainer.enable_model_summary
    assert cfg.callbacks.progress_bar is None and list(cfg.logger) == ["csv"]
    cfg = make_cfg(FAST + ["data.num_workers=3", "logger=none"], fast=False)
    assert cfg.data.num_workers == 3 and not cfg.logger


@pytest.mark.parametrize("data", sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml")))
def test_every_data_config_takes_the_shared_loader_keys(data, make_cfg):
    text = (CONF_DIR / "data" / f"{data}.yaml").read_text()
    assert "/data_loader@_here_" in text, f"conf/data/{data}.yaml: add `- /data_loader@_here_` to its defaults"
    cfg = make_cfg([f"data={data}"], fast=False)
    assert all(key in cfg.data for key in LOADER_KEYS)
