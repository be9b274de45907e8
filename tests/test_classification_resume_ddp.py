"""SLOW (subprocesses): a training process killed mid-epoch resumes with ckpt_path=last into a new run folder
(the killed run's files untouched), and `trainer=ddp` runs 2 CPU processes (gloo) whose ranks agree on the validation metrics."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import FAST, run_cli
from lightning.pytorch import Callback

CLI_FAST = [*FAST, "backbone.alpha=0.25", "data.resolution=32", "data.image_size=40", "data.batch_size=8"]


class PauseAtStep(Callback):
    """Test helper: at global step `step`, write `marker` and sleep, so the test can kill the process there."""

    def __init__(self, step: int, marker: str):
        self.step, self.marker = step, marker

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            Path(self.marker).write_text(str(os.getpid()))
            time.sleep(600)


def metric_steps(run_dir: Path) -> Counter:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return Counter(int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss_step"))


@pytest.mark.slow
def test_killed_run_resumes_from_last_into_a_new_folder(tmp_path):
    env = {"PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    # 48 images / batch 8 = 6 steps per epoch, 3 epochs = 18 steps; last.ckpt every 4 steps and at epoch ends
    common = CLI_FAST + ["data.n_train=48", "data.n_val=12", "trainer.max_epochs=3", "trainer.log_every_n_steps=1",
                         "callbacks.last_checkpoint.every_n_train_steps=4"]
    marker = tmp_path / "paused"
    pause = ["+callbacks.pause._target_=test_classification_resume_ddp.PauseAtStep", "+callbacks.pause.step=9",
             f"+callbacks.pause.marker={marker}"]
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", *common, *pause], cwd=tmp_path,
                            env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while not marker.exists():
            assert proc.poll() is None, f"training ended before step 9:\n{proc.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, "training did not reach step 9"
            time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)  # no chance to save anything: only what is on disk survives
    finally:
        proc.kill()
        proc.wait()
    runs = tmp_path / "outputs" / "classification" / "runs"
    (killed_dir,) = runs.iterdir()
    last = killed_dir / "checkpoints" / "last.ckpt"
    killed = torch.load(last, map_location="cpu", weights_only=True)
    assert (killed["global_step"], killed["epoch"]) == (8, 1)  # mid-epoch 1: saved after step 8, killed at 9
    files_before = {p: p.read_bytes() for p in killed_dir.rglob("*") if p.is_file()}

    done = run_cli([*common, "ckpt_path=last"], cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    output = done.stdout + done.stderr
    assert f"ckpt_path=last -> {last} (run {killed_dir})" in output
    # Lightning's lines appear once (through Hydra's handlers), and the run ends with its validation numbers
    assert output.count("Restoring states from the checkpoint") == 1 and "💡 Tip" not in output, output[-3000:]
    assert "validation after epoch 2:" in done.stdout and "best val/top1: " in done.stdout
    (new_dir,) = set(runs.iterdir()) - {killed_dir}
    assert {p: p.read_bytes() for p in killed_dir.rglob("*") if p.is_file()} == files_before  # untouched
    assert json.loads((new_dir / "resumed_from.json").read_text())["checkpoint"] == str(last.resolve())
    assert "Restoring states from the checkpoint" in (new_dir / "toolkit.log").read_text()
    result = json.loads((new_dir / "train_metrics.json").read_text())
    assert (result["global_step"], result["epoch"]) == (18, 3)
    assert torch.load(new_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"] == 18

    # the killed run's metrics file holds the steps before its checkpoint, the new one every step after it, once
    new_steps = metric_steps(new_dir)
    assert sorted(new_steps) == list(range(8, 18)) and set(new_steps.values()) == {1}
    assert set(range(8)) <= set(metric_steps(killed_dir))
    with (new_dir / "csv" / "metrics.csv").open() as f:
        assert sorted(int(r["epoch"]) for r in csv.DictReader(f) if r.get("val/top1")) == [1, 2]


@pytest.mark.slow
def test_ddp_two_cpu_processes_agree_on_metrics(tmp_path):
    out = tmp_path / "ddp_run"
    done = run_cli([*CLI_FAST, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.n_train=32",
                    "data.n_val=16", "trainer.max_epochs=1", f"hydra.run.dir={out}"], cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    ranks = [json.loads((out / f"train_metrics.rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == 2  # 32 images over 2 ranks of batch 8
    val = [{k: v for k, v in r["metrics"].items() if k.startswith("val/")} for r in ranks]
    assert set(val[0]) >= {"val/top1", "val/top5", "val/loss"} and val[0] == val[1]
    assert json.loads((out / "train_metrics.json").read_text())["metrics"] == ranks[0]["metrics"]
