"""No lost runs, repeatable runs: unique run folders, a crashed run resumed into a new folder (the original's files
untouched, the same learning rate at every step as an uninterrupted run), the same command twice giving the same
metrics, `ckpt_path=last` naming one run and refused in a sweep, cell files that refuse to be overwritten or read
when damaged, and teacher caches refused when they were made from other inputs."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST, run_cli
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch import Callback
from omegaconf import open_dict, read_write

from toolkit.__main__ import unique_dir
from toolkit.checkpoint_io import AtomicCheckpointIO
from toolkit.distill.cache import TeacherCache, images_digest
from toolkit.errors import ConfigError, DataError
from toolkit.geo.s2cells import partition_cells, read_cells, write_cells
from toolkit.io import file_sha256
from toolkit.modes.common import build_trainer, resolve_checkpoint
from toolkit.run import run

# 48 images / batch 8 = 6 steps an epoch, 2 epochs; the learning rate decays every step, logged every step
SHAPES = ["backbone.alpha=0.25", "data.resolution=32", "data.batch_size=8", "data.n_train=48", "data.n_val=12",
          "data.image_size=40", "trainer.max_epochs=2", "trainer.log_every_n_steps=1", "task.scheduler.interval=step",
          "task.scheduler.gamma=0.9", "callbacks.lr_monitor.logging_interval=step",
          "callbacks.last_checkpoint.every_n_train_steps=6"]


# ---- run folders ----------------------------------------------------------------------------------------------
def test_unique_dir_gives_runs_of_the_same_second_their_own_folders(tmp_path):
    same = str(tmp_path / "runs" / "2026-01-01_00-00-00")
    folders = [unique_dir(same) for _ in range(3)]
    assert [Path(f).name for f in folders] == ["2026-01-01_00-00-00", "2026-01-01_00-00-00_1", "2026-01-01_00-00-00_2"]
    assert all(Path(f).is_dir() for f in folders)


@pytest.mark.slow
def test_two_cli_runs_forced_into_one_timestamp_and_a_sweep_keep_their_own_folders(tmp_path):
    """The issue's case: two `mode=profile` runs of one second shared a folder whose overrides said one alpha and
    profile.json another. Forced to the same folder name, each run gets its own; a sweep's jobs share one folder."""
    fixed = f"hydra.run.dir=${{unique_dir:{tmp_path}/runs/same}}"
    for alpha in (0.25, 0.5):
        done = run_cli(["mode=profile", "profile.latency=false", f"backbone.alpha={alpha}", fixed], cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
    for folder, alpha in (("same", 0.25), ("same_1", 0.5)):
        profile = json.loads((tmp_path / "runs" / folder / "profile.json").read_text())
        assert profile["alpha"] == alpha and f"backbone.alpha={alpha}" in (tmp_path / "runs" / folder / ".hydra" /
                                                                          "overrides.yaml").read_text()
    sweep = run_cli(["-m", "mode=profile", "profile.latency=false", "backbone.alpha=0.25,0.5"], cwd=tmp_path)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "outputs" / "classification" / "multiruns").iterdir()  # one folder, not one per job
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == ["0", "1"]


# ---- kill and resume ------------------------------------------------------------------------------------------
class CrashAtStep(Callback):
    """Test helper: the process dies at global step `step` (only what is on disk survives)."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Killed(f"killed at step {self.step}")


class Killed(RuntimeError):
    pass


def lr_by_step(run_dir: Path) -> dict[int, float]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    key = next(k for k in rows[0] if k.startswith("lr-"))
    return {int(r["step"]): float(r[key]) for r in rows if r.get(key)}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_killed_run_resumes_into_a_new_folder_like_an_uninterrupted_run(make_cfg, tmp_path):
    whole = run(make_cfg([*SHAPES, f"paths.output_dir={tmp_path / 'whole'}"]))
    killed_dir = tmp_path / "killed"
    crash = ["+callbacks.crash._target_=test_runs.CrashAtStep", "+callbacks.crash.step=8"]
    with pytest.raises(Killed):
        run(make_cfg([*SHAPES, *crash, f"paths.output_dir={killed_dir}"]))
    last = killed_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 6
    before = snapshot(killed_dir)

    resumed = run(make_cfg([*SHAPES, f"ckpt_path={last}", f"paths.output_dir={tmp_path / 'resumed'}"]))
    assert snapshot(killed_dir) == before  # the original run's files, byte for byte
    record = json.loads((tmp_path / "resumed" / "resumed_from.json").read_text())
    assert record["checkpoint"] == str(last.resolve()) and record["global_step"] == 6
    assert resumed["global_step"] == whole["global_step"] == 12

    # the same learning rate at every step: the killed run's steps before its checkpoint, then the resumed run's
    lrs = {**{s: v for s, v in lr_by_step(killed_dir).items() if s < 6}, **lr_by_step(tmp_path / "resumed")}
    expected = lr_by_step(tmp_path / "whole")
    assert sorted(lrs) == sorted(expected) == list(range(12))
    assert all(lrs[s] == pytest.approx(expected[s], rel=1e-6) for s in expected)
    # the final model: trained as long, on the same data (the batch order after the resume differs)
    for key in ("val/top1", "val/loss"):
        assert np.isfinite(resumed["metrics"][key])
    assert abs(resumed["metrics"]["val/top1"] - whole["metrics"]["val/top1"]) <= 0.5
    assert resumed["metrics"]["val/loss"] == pytest.approx(whole["metrics"]["val/loss"], rel=1.0)


def test_resume_refuses_to_write_into_the_checkpoints_own_run_folder(make_cfg, tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    with pytest.raises(ConfigError, match="belongs to this run's folder"):
        run(make_cfg([*SHAPES, f"ckpt_path={ckpt}"]))  # make_cfg's run folder is tmp_path/run


def test_resume_with_another_width_is_one_line_naming_the_setting(make_cfg, tmp_path):
    first = run(make_cfg([*SHAPES, "trainer.max_epochs=1", f"paths.output_dir={tmp_path / 'first'}"]))
    last = Path(first["output_dir"]) / "checkpoints" / "last.ckpt"
    done = run_cli([*FAST, *SHAPES, "backbone.alpha=0.5", f"ckpt_path={last}", f"hydra.run.dir={tmp_path / 'second'}"],
                   tmp_path)
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "does not fit the checkpoint's" in lines[0], done.stderr
    assert "alpha=0.5 here, 0.25 in the checkpoint" in lines[0] and "init_from=" in lines[0]


# ---- repeatability ---------------------------------------------------------------------------------------------
def test_the_same_command_twice_gives_identical_metrics(tmp_path):
    """The first run generates the data, the second reads it from the cache (make demo's case); one data worker,
    so augmentation runs in a worker process as in real runs. Through the CLI: a worker is a fork of its process,
    and this test process has by now loaded the export runtimes' native thread pools, which a fork copies
    half-initialised (the whole pytest process died with SIGSEGV here)."""
    args = [*FAST, "backbone.alpha=0.25", "data.resolution=32", "data.batch_size=8", "data.n_train=16",
            "data.n_val=8", "data.image_size=40", "trainer.max_epochs=2", "data.num_workers=1"]
    env = {"TOOLKIT_CACHE_DIR": str(tmp_path / "cache")}
    runs = []
    for name in ("a", "b"):
        done = run_cli([*args, f"paths.output_dir={tmp_path / name}"], cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        runs.append(json.loads((tmp_path / name / "train_metrics.json").read_text()))
    first, second = runs
    assert first["metrics"] == second["metrics"] and first["best_score"] == second["best_score"]
    a = torch.load(first["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(second["best_checkpoint"], map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# ---- ckpt_path=last ---------------------------------------------------------------------------------------------
def test_ckpt_path_last_prints_the_run_and_is_refused_in_a_sweep(make_cfg, capsys):
    cfg = make_cfg([])
    logs = Path(cfg.paths.log_dir)
    old, new = (logs / f"classification/runs/{n}/checkpoints/last.ckpt" for n in ("a", "b"))
    for i, path in enumerate((old, new)):
        path.parent.mkdir(parents=True)
        path.write_bytes(b"x")
        stamp = 1_000_000_000 + i
        os.utime(path, (stamp, stamp))
    assert resolve_checkpoint(cfg, "last") == str(new)
    assert f"ckpt_path=last -> {new} (run {new.parent.parent})" in capsys.readouterr().out
    os.utime(old, (1_000_000_001, 1_000_000_001))
    with pytest.raises(ConfigError, match="equally new"):
        resolve_checkpoint(cfg, "last")
    hydra_cfg = HydraConfig.instance().cfg
    with read_write(hydra_cfg.hydra), open_dict(hydra_cfg.hydra):
        hydra_cfg.hydra.mode = RunMode.MULTIRUN
    with pytest.raises(ConfigError, match="ambiguous in a -m sweep"):
        resolve_checkpoint(cfg, "last")


# ---- cell files ---------------------------------------------------------------------------------------------------
def test_partition_refuses_to_overwrite_a_cells_file(make_cfg, tmp_path):
    cells = tmp_path / "cells.csv"
    cells.write_text("training reads this\n")
    args = ["mode=partition", "data=geo_synthetic", "data.n_train=40", "data.n_val=8", "data.image_size=32",
            "data.cells.t_max=8", "data.cells.t_min=2", f"data.cells_file={cells}"]
    with pytest.raises(ConfigError, match=r"exists already .*overwrite=true"):
        run(make_cfg(args))
    assert cells.read_text() == "training reads this\n"
    run(make_cfg([*args, "overwrite=true"]))
    assert len(read_cells(cells)) >= 2


@pytest.fixture
def cell_file(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    lat, lon = rng.normal(48.8, 0.5, 300), rng.normal(2.3, 0.5, 300)
    part, _ = partition_cells(lat, lon, t_max=40, t_min=2)
    return write_cells(part, tmp_path / "cells.csv")


@pytest.mark.parametrize(("damage", "message"), [
    (lambda lines: lines[:-2], r"says \d+ cells but holds \d+: it was cut short"),           # truncated at a line
    (lambda lines: [*lines[:-1], lines[-1][:12]], r"line \d+: \d fields, the header has 7"),  # cut mid-row
    (lambda lines: [*lines[:-1], ",".join([*lines[-1].split(",")[:3], "nan", *lines[-1].split(",")[4:]])],
     r"line \d+: center_lat nan outside \[-90, 90\]"),
    (lambda lines: [*lines[:-1], ",".join([*lines[-1].split(",")[:4], "999", *lines[-1].split(",")[5:]])],
     r"line \d+: center_lon 999 outside \[-180, 180\]"),
])
def test_damaged_cell_files_are_refused_naming_file_and_line(cell_file, damage, message):
    lines = cell_file.read_text().splitlines()
    cell_file.write_text("\n".join(damage(lines)) + "\n")
    with pytest.raises(DataError, match=message) as error:
        read_cells(cell_file)
    assert str(cell_file) in str(error.value)


# ---- teacher caches -------------------------------------------------------------------------------------------------
def test_a_stale_teacher_cache_is_refused_naming_each_difference(tmp_path):
    teacher = tmp_path / "teacher.ckpt"
    teacher.write_bytes(b"teacher v1")
    keys = ["a.jpg", "b.jpg", "c.jpg"]
    meta = {"resolution": 64, "mean": [0.5] * 3, "std": [0.5] * 3, "images": 3, "images_sha256": images_digest(keys),
            "teacher_file": str(teacher), "teacher_sha256": file_sha256(teacher)}
    path = TeacherCache(keys, torch.zeros(3, 4), "embedding", meta=meta).save(tmp_path / "cache.pt")
    cache = TeacherCache.load(path)
    same = {"resolution": 64, "mean": (0.5, 0.5, 0.5), "std": [0.5, 0.5, 0.5]}
    cache.verify(keys, 4, ("embedding",), same)  # the run it was made for

    teacher.write_bytes(b"teacher v2, retrained in place")
    with pytest.raises(DataError) as error:
        cache.verify(keys[:2], 4, ("embedding",), {**same, "resolution": 96, "mean": [0.485, 0.456, 0.406]})
    message = str(error.value)
    assert "resolution: the cache was made with 64, this run uses 96" in message
    assert "mean: the cache was made with [0.5, 0.5, 0.5]" in message and "std" not in message.split("Regenerate")[0]
    assert "image list: the cache was made for 3 images, this run has 2; not in this run: 'c.jpg'" in message
    assert f"teacher file: {teacher} has changed since the cache was made" in message


def test_checkpoints_are_written_whole_or_not_at_all(tmp_path, monkeypatch, make_cfg):
    """A save that dies mid-write (disk full, SIGKILL) leaves the previous best.ckpt as it was, and no temp file;
    every trainer the modes build writes checkpoints this way."""
    io = AtomicCheckpointIO()
    path = tmp_path / "ckpts" / "best.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    good = path.read_bytes()

    def dies_mid_write(obj, f, *args, **kwargs):  # torch_save_atomic passes an open file
        f.write(good[: len(good) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dies_mid_write)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)
    assert path.read_bytes() == good and sorted(p.name for p in path.parent.iterdir()) == ["best.ckpt"]
    monkeypatch.undo()
    cfg = make_cfg([])
    from toolkit.modes.common import build_task

    assert isinstance(build_trainer(cfg, build_task(cfg)).strategy.checkpoint_io, AtomicCheckpointIO)
