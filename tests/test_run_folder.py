"""A run folder is a run's alone (toolkit/run_folder.py): a run claims its folder before Hydra writes into it; a
folder that holds anything is refused with one line and left byte-identical; of two runs started into one folder
at the same moment exactly one proceeds; sweeps claim their folder and each job its sub-folder; ranks 1, 2... of
a DDP run claim nothing."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FAST, assert_one_line_error, run_cli

from toolkit.run_folder import MARKER, RunFolderTaken, claim_run_folder, is_further_rank

PROFILE = ["mode=profile", "profile.latency=false", "debug=cpu"]  # the cheapest run that succeeds (no data, no timing)
TINY_TRAIN = [*FAST, "backbone.alpha=0.25", "data.resolution=32", "data.n_train=16", "data.n_val=8", "data.batch_size=4",
              "data.image_size=32", "trainer.max_epochs=1", "trainer.log_every_n_steps=1"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- claiming, in-process ------------------------------------------------------------------------------------
def test_a_new_or_empty_folder_is_claimed_with_a_marker_naming_the_run(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "new" / "deeper", tmp_path / "empty"):
        assert claim_run_folder(folder) == folder
        record = json.loads((folder / MARKER).read_text())
        assert record["pid"] == os.getpid() and record["argv"] == sys.argv and record["host"] and record["started"]


def test_a_folder_holding_anything_is_refused_naming_what_it_holds_and_the_fix(tmp_path):
    claim_run_folder(tmp_path / "run")
    with pytest.raises(RunFolderTaken, match=rf"run folder {tmp_path / 'run'} holds another run's files "
                       rf"\({MARKER}; claimed by pid {os.getpid()} .*hydra.run.dir"):
        claim_run_folder(tmp_path / "run")
    older = tmp_path / "older"  # a run from before the marker, or any other files: refused as well
    (older / "checkpoints").mkdir(parents=True)
    (older / "metrics.json").write_text("{}")
    with pytest.raises(RunFolderTaken, match=r"\(checkpoints/, metrics.json\)"):
        claim_run_folder(older)
    assert not (older / MARKER).exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderTaken, match="is a file, not a folder"):
        claim_run_folder(tmp_path / "file")
    with pytest.raises(RunFolderTaken, match="cannot be created: .* is not a folder"):
        claim_run_folder(tmp_path / "file" / "run")


def test_a_sweep_job_claims_the_folder_that_holds_only_its_own_hydra_record(tmp_path):
    job = tmp_path / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / "toolkit.log").write_text("")
    claim_run_folder(job, own=(".hydra", "toolkit.log"))
    assert (job / MARKER).is_file()


def test_further_ranks_of_a_launched_run_do_not_claim(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not is_further_rank()
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert not is_further_rank()
    monkeypatch.setenv("LOCAL_RANK", "1")  # what Lightning's DDP launcher sets in the processes it starts
    assert is_further_rank()


CLAIMER = """
import json, sys, time
from pathlib import Path
from toolkit.run_folder import RunFolderTaken, claim_run_folder
FOLDERS = int(sys.argv[4])
root, go, me = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
(root / f"ready{me}").touch()
while not go.exists():
    pass
won = []
for n in range(FOLDERS):
    try:
        claim_run_folder(root / f"run{n}")
        won.append(n)
    except RunFolderTaken:
        pass
print(json.dumps(won))
"""


def test_of_four_processes_claiming_the_same_folders_at_once_exactly_one_wins_each(tmp_path):
    """The lock itself, under more contention than two CLI runs give: four processes, once all are ready, claim the
    same 1000 folders one after another as fast as they can, so each folder is raced for by all four."""
    go, folders = tmp_path / "go", 1000
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, str(tmp_path), str(go), str(i), str(folders)],
                              stdout=subprocess.PIPE, text=True) for i in range(4)]
    while not all((tmp_path / f"ready{i}").exists() for i in range(4)):
        time.sleep(0.01)
    go.touch()
    won = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4
    for n in range(folders):
        (winner,) = [p for p, claimed in zip(procs, won, strict=True) if n in claimed]
        folder = tmp_path / f"run{n}"
        assert json.loads((folder / MARKER).read_text())["pid"] == winner.pid
        assert sorted(p.name for p in folder.iterdir()) == [MARKER]


# ---- through the CLI -----------------------------------------------------------------------------------------
def test_a_folder_of_an_older_run_is_refused_through_the_cli_before_any_work(tmp_path):
    """A run folder from before the marker (checkpoints, metrics, Hydra's record, a log): refused in the Hydra callback,
    before the toolkit imports torch, and left byte-identical (its log gains no line)."""
    folder = tmp_path / "runs" / "old"
    for name, text in ((".hydra/overrides.yaml", "- seed=1\n"), ("checkpoints/last.ckpt", "weights"),
                       ("csv/metrics.csv", "epoch,step\n0,1\n"), ("toolkit.log", "first run\n")):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    before = snapshot(folder)
    done = run_cli(["seed=7", f"hydra.run.dir={folder}"], cwd=tmp_path)
    assert_one_line_error(done, f"run folder {folder} holds another run's files (.hydra/, checkpoints/, csv/, toolkit.log)",
                          "nothing in it was changed", "hydra.run.dir")
    assert snapshot(folder) == before


@pytest.mark.slow
def test_a_second_run_into_the_same_folder_is_refused_and_the_first_runs_files_stay_byte_identical(tmp_path):
    """The issue's case: a second `hydra.run.dir=runs/x` run replaced the first one's files. Now it stops before
    Hydra writes anything: not even the first run's `.hydra/` record or log changes."""
    folder = tmp_path / "runs" / "x"
    first = run_cli([*PROFILE, "backbone.alpha=0.25", f"hydra.run.dir={folder}"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(folder)
    assert {MARKER, "profile.json", ".hydra/config.yaml", "toolkit.log"} <= set(before)
    for args in ([*PROFILE, "backbone.alpha=0.5", f"hydra.run.dir={folder}"],  # the Hydra run folder
                 [*PROFILE, "backbone.alpha=0.5", f"paths.output_dir={folder}"]):  # the outputs sent there apart
        second = run_cli(args, cwd=tmp_path)
        assert_one_line_error(second, f"run folder {folder} holds another run's files", MARKER, "profile.json",
                              "hydra.run.dir")
        assert snapshot(folder) == before


def race(args: list[str], cwd: Path) -> list[subprocess.CompletedProcess]:
    """Two `python -m toolkit ARGS` started together; both finished."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "toolkit", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    done = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        done[-1].pid = proc.pid
    return done


def winner_and_loser(done: list[subprocess.CompletedProcess], folder: Path) -> subprocess.CompletedProcess:
    codes = sorted(p.returncode for p in done)
    assert codes == [0, 2], "\n".join(p.stderr[-2000:] for p in done)
    winner, loser = sorted(done, key=lambda p: p.returncode)
    assert_one_line_error(loser, f"run folder {folder}", "hydra.run.dir")
    assert json.loads((folder / MARKER).read_text())["pid"] == winner.pid
    log = (folder / "toolkit.log").read_text()
    assert "run folder" not in log  # the loser wrote nothing into the winner's folder, not even its log
    return winner


@pytest.mark.slow
def test_two_runs_started_together_into_one_folder_one_runs_the_other_stops_ten_times_in_a_row(tmp_path):
    for round_ in range(10):
        folder = tmp_path / f"same{round_}"
        winner = winner_and_loser(race([*PROFILE, f"hydra.run.dir={folder}"], tmp_path), folder)
        assert json.loads((folder / "profile.json").read_text())["alpha"] == 1.0, winner.stderr[-2000:]


@pytest.mark.slow
def test_two_trainings_started_together_into_one_folder_the_winner_keeps_its_training_rows(tmp_path):
    """The issue's case: one crashed with a CSV ValueError, the other's metrics.csv lost its training rows."""
    folder = tmp_path / "same"
    winner_and_loser(race([*TINY_TRAIN, f"hydra.run.dir={folder}"], tmp_path), folder)
    with (folder / "csv" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows if r.get("train/loss_step")] == [str(s) for s in range(4)]  # 16 images / 4, 1 epoch
    assert sorted(p.name for p in (folder / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


@pytest.mark.slow
def test_a_sweep_claims_its_folder_and_each_job_its_own(tmp_path):
    sweep = tmp_path / "sweep"
    args = ["-m", *PROFILE, "backbone.alpha=0.25,0.5", f"hydra.sweep.dir={sweep}"]
    done = run_cli(args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for folder in (sweep, sweep / "0", sweep / "1"):
        assert json.loads((folder / MARKER).read_text())["pid"] > 0
    before = snapshot(sweep)
    assert_one_line_error(run_cli(args, cwd=tmp_path), f"run folder {sweep} holds another run's files", "multirun.yaml")
    assert snapshot(sweep) == before
