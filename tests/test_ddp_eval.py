"""SLOW (subprocesses): `mode=eval` over two CPU processes (gloo) on a validation set whose size does not divide by
the world size gives exactly the single-process metrics: each rank scores a disjoint, unpadded share, so no metric
counts an image twice (Lightning's default distributed sampler would repeat one image to pad 13 to 2 x 7)."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

FAST = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
        "callbacks.progress_bar=null", "logger=csv", "data.num_workers=0"]
TINY = ["task=classification", "data=shapes", "backbone.alpha=0.25", "data.resolution=32", "data.image_size=40",
        "data.n_train=16", "data.n_val=13", "data.batch_size=4"]


@pytest.mark.slow
def test_classification_eval_on_two_processes_equals_one(tmp_path):
    env = {"TOOLKIT_CACHE_DIR": str(tmp_path / "cache"), "TOOLKIT_LOG_DIR": str(tmp_path / "outputs")}
    train = run_cli(TINY + FAST + ["trainer.max_epochs=1", f"hydra.run.dir={tmp_path}/train"], cwd=tmp_path, env=env)
    assert train.returncode == 0, train.stderr[-3000:]
    ckpt = json.loads((tmp_path / "train" / "train_metrics.json").read_text())["best_checkpoint"]
    args = TINY + FAST + ["mode=eval", f"ckpt_path={ckpt}"]
    single = run_cli(args + [f"hydra.run.dir={tmp_path}/single"], cwd=tmp_path, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = run_cli(args + ["trainer=ddp", "trainer.devices=2", f"hydra.run.dir={tmp_path}/ddp"], cwd=tmp_path, env=env)
    assert ddp.returncode == 0, ddp.stdout[-2000:] + ddp.stderr[-3000:]
    one, two = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("single", "ddp"))
    assert {"val/top1", "val/top5", "val/loss"} <= set(one)
    assert one.keys() == two.keys()
    # top-1/top-5 count whole images: any repeat or loss would move them by 1/13
    assert two["val/top1"] == one["val/top1"] and two["val/top5"] == one["val/top5"]
    assert two["val/loss"] == pytest.approx(one["val/loss"], rel=1e-5)  # summed in another order
