"""mode=select: cost phase in the real runtime (ONNX Runtime), budgets, the device latency table, successive halving
through Hydra's joblib launcher, resume after a kill, the answer (selection.json, plot, the winner exported)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

from toolkit.errors import ConfigError, DataError
from toolkit.modes.select_cost import Candidate
from toolkit.modes.select_search import job_overrides, ranked, rung_schedule, survivors
from toolkit.run import run, validate_config

#: a 2 x 2 grid on tiny generated data; one runtime thread for stable timings on a shared machine
TINY = ["data.n_train=48", "data.n_val=24", "data.batch_size=16", "data.image_size=64", "select.alphas=[0.25,0.5]",
        "select.resolutions=[32,64]", "select.threads=1", "export.formats=[onnx]", "export.latency_repeats=5"]
CLI = ["mode=select", "debug=cpu", "trainer.precision=32-true", *TINY]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cost cache for the module: a grid measured once is read from the cache afterwards (as for a user)."""
    return tmp_path_factory.mktemp("select_cache")


def _env(cache: Path) -> dict[str, str]:
    return {"TOOLKIT_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}


def _record(folder: Path) -> dict:
    return json.loads((folder / "selection.json").read_text())


def test_rung_schedule_and_ranking_ties_to_the_cheaper():
    assert rung_schedule(1, 4, 2) == [1, 2, 4]
    assert rung_schedule(1, 3, 2) == [1, 2, 3]
    assert rung_schedule(2, 2, 3) == [2]
    cheap = Candidate(alpha=0.25, resolution=32, latency_ms=1.0, rungs={"0": {"metric": 0.5}})
    dear = Candidate(alpha=0.5, resolution=64, latency_ms=3.0, rungs={"0": {"metric": 0.5}})
    best = Candidate(alpha=1.0, resolution=64, latency_ms=9.0, rungs={"0": {"metric": 0.6}})
    assert [c.name for c in ranked([dear, best, cheap], "0", "max")] == ["a1_r64", "a0.25_r32", "a0.5_r64"]
    assert [c.name for c in ranked([dear, best, cheap], "0", "min")] == ["a0.25_r32", "a0.5_r64", "a1_r64"]


def test_halving_prunes_only_while_more_than_eta_are_left():
    assert [survivors(n, 2) for n in (1, 2, 3, 4, 5, 16)] == [1, 2, 2, 2, 3, 8]
    assert [survivors(n, 3) for n in (3, 4, 9)] == [3, 2, 3]


def test_training_jobs_repeat_the_users_overrides_but_not_the_selections():
    given = ["mode=select", "data=folder", "data.root=/photos", "select.latency_ms=8", "backbone.alpha=0.5",
             "data.resolution=128", "hydra.run.dir=x", "hydra/launcher=joblib", "trainer.max_epochs=9", "seed=1",
             "+task.model.dropout=0.1", "ckpt_path=a.ckpt"]
    assert job_overrides(given) == ["data=folder", "data.root=/photos", "seed=1", "+task.model.dropout=0.1"]


@pytest.mark.parametrize(("override", "key"), [
    ("select.latency_ms=-1", "select.latency_ms"), ("select.runtime=tflite", "select.runtime"),
    ("select.resolutions=[100]", "select.resolutions"), ("select.alphas=[0]", "select.alphas"),
    ("select.eta=1", "select.eta"), ("select.latency_table=/no/such.json", "select.latency_table"),
])
def test_wrong_select_settings_are_one_line_each(make_cfg, override, key):
    cfg = make_cfg(["mode=select", override])
    with pytest.raises(ConfigError) as error:
        validate_config(cfg)
    assert error.value.key == key and "\n" not in str(error.value)


@pytest.mark.slow
def test_selection_killed_after_the_first_rung_resumes_without_retraining(tmp_path, shared_cache):
    """The whole path: cost in ONNX Runtime, rung 0 (four candidates, two at a time through the joblib launcher),
    a kill, `select.resume`: rung 1 only (the best half), the winner exported and verified, selection.json + plot."""
    first, second = tmp_path / "first", tmp_path / "second"
    args = [*CLI, "select.search_epochs=2", "select.final_epochs=2", "select.n_jobs=2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **_env(shared_cache)}
    process = subprocess.Popen([sys.executable, "-m", "toolkit", *args, f"hydra.run.dir={first}"], cwd=tmp_path,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 500
        while time.monotonic() < deadline and process.poll() is None:
            record = (first / "selection.json").is_file() and _record(first)
            if record and all("0" in c["rungs"] for c in record["candidates"]):
                break
            time.sleep(0.5)
        assert process.poll() is None, process.communicate()[0].decode()[-3000:]
        os.killpg(process.pid, signal.SIGKILL)  # the selection and its training jobs, mid-selection
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL
    record = _record(first)
    assert not record["complete"]
    # rung 0 ran through Hydra's joblib launcher, two candidates at once, each in its own run folder
    log = (first / "rung0" / "launcher.log").read_text()
    assert "Joblib.Parallel(n_jobs=2" in log and "launching 4 jobs" in log
    jobs = sorted((first / "rung0" / "runs").glob("[0-9]"))
    assert len(jobs) == 4 and all((j / "train_metrics.json").is_file() and (j / ".toolkit-run.json").is_file() for j in jobs)
    started = [json.loads((j / ".toolkit-run.json").read_text())["pid"] for j in jobs[:2]]
    assert started[0] != started[1]  # two worker processes
    first_done = min((j / "train_metrics.json").stat().st_mtime for j in jobs[:2])
    second_started = max((j / ".toolkit-run.json").stat().st_mtime for j in jobs[:2])
    assert second_started < first_done  # job 1 started before job 0 ended: they ran at the same time

    # the rest through the basic launcher (one process, no worker start-up): any Hydra launcher runs the rungs
    done = run_cli([*args, "select.launcher=basic", f"select.resume={first}", f"hydra.run.dir={second}"], tmp_path, env=_env(shared_cache))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "4 finished candidate-rung(s) reused" in done.stdout
    assert not (second / "rung0").exists()  # nothing of rung 0 was trained again
    assert len(list((second / "rung1" / "runs").glob("[0-9]"))) == 2  # the best half went on
    record = _record(second)
    assert record["complete"] and record["schedule"]["rung_epochs"] == [1, 2]
    states = sorted(c["state"] for c in record["candidates"])
    assert states == ["chosen", "pruned_at_epoch_1", "pruned_at_epoch_1", "trained"]
    for c in record["candidates"]:
        assert c["rungs"]["0"]["run_dir"].startswith(str(first))  # rung 0: the first selection's runs
        assert c["madds"] > 0 and c["params"] > 0 and c["size_mb"] > 0 and c["latency_ms"] > 0 and c["metric"] is not None
    assert record["rank_correlation"]["ranking_used"].startswith("measured latency")
    winner = record["winner"]
    assert winner["export"]["files"]["onnx"] and Path(winner["export"]["files"]["onnx"]).is_file()
    export = json.loads(Path(winner["export"]["export_file"]).read_text())
    assert export["verified"] and export["formats"]["onnx"]["val/top1"] is not None
    assert (second / "selection.png").stat().st_size > 10_000
    assert "chosen 0.25 mobilenet_v1" in done.stdout or "chosen 0.5 mobilenet_v1" in done.stdout


@pytest.mark.slow
def test_a_budget_nothing_meets_stops_with_one_line_naming_the_cheapest(tmp_path, shared_cache):
    done = run_cli([*CLI, "select.latency_ms=0.000001", f"hydra.run.dir={tmp_path / 'run'}"], tmp_path,
                   env=_env(shared_cache))
    assert done.returncode == 2
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: invalid config select.latency_ms=1e-06")
    assert "the cheapest, 0.25 mobilenet_v1-32, has" in lines[0] and " ms" in lines[0]
    record = _record(tmp_path / "run")  # the table of why each was dropped is kept
    assert {c["state"] for c in record["candidates"]} == {"over_budget"}
    assert all(c["over_budget"] and c["over_budget"][0].startswith("latency_ms") for c in record["candidates"])
    assert not list((tmp_path / "run").glob("rung*"))  # nothing was trained


@pytest.mark.slow
def test_device_latency_table_replaces_local_timings(make_cfg, tmp_path, shared_cache, monkeypatch):
    """export_only writes the candidate files; `python -m toolkit.deploy --benchmark` (torch-free) times them into a
    table; select.latency_table makes the budget use the table's numbers."""
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(shared_cache))
    cfg = make_cfg(["mode=select", "trainer.precision=32-true", *TINY, "select.resolutions=[32]",
                    "select.export_only=true"])
    result = run(cfg)
    files = [Path(f) for f in result["files"]]
    assert len(files) == 2 and all(f.suffix == ".onnx" and f.is_file() for f in files)
    table_file = tmp_path / "table.json"
    script = ("import sys; from toolkit.deploy.__main__ import main; rc = main(sys.argv[1:]); "
              "assert 'torch' not in sys.modules, 'toolkit.deploy --benchmark imported torch'; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", script, "--benchmark", str(tmp_path / "run" / "candidates"),
                           "--out", str(table_file), "--repeats", "3", "--threads", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table = json.loads(table_file.read_text())
    rows = {(r["format"], r["alpha"], r["resolution"]): r for r in table["models"]}
    assert set(rows) == {("onnx", 0.25, 32), ("onnx", 0.5, 32)} and all(r["latency_ms"] > 0 for r in rows.values())
    # the "device" is 100x slower than this machine: with a 1 ms budget nothing fits, by the table's numbers
    for row in table["models"]:
        row["latency_ms"] = 40.0 if row["alpha"] == 0.25 else 90.0
    table_file.write_text(json.dumps(table))
    cfg = make_cfg(["mode=select", "trainer.precision=32-true", *TINY, "select.resolutions=[32]",
                    f"select.latency_table={table_file}", "select.latency_ms=1"])
    with pytest.raises(ConfigError) as error:
        run(cfg)
    assert "the cheapest, 0.25 mobilenet_v1-32, has 40 ms" in str(error.value)
    # a table without a candidate's row: one line naming it
    table["models"] = table["models"][:1]
    table_file.write_text(json.dumps(table))
    cfg = make_cfg(["mode=select", "trainer.precision=32-true", *TINY, "select.resolutions=[32]",
                    f"select.latency_table={table_file}"])
    with pytest.raises(DataError, match="no onnx latency for a0.5_r32"):
        run(cfg)


def _benchmark_cli(inputs: list[Path], table_file: Path) -> dict:
    """`python -m toolkit.deploy --benchmark` as on a device, asserting it never imported torch (ONNX files)."""
    script = ("import sys; from toolkit.deploy.__main__ import main; rc = main(sys.argv[1:]); "
              "assert 'torch' not in sys.modules, 'toolkit.deploy --benchmark imported torch'; sys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", script, "--benchmark", *map(str, inputs), "--out", str(table_file),
                           "--repeats", "3", "--threads", "1"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "peak memory" in done.stdout
    return json.loads(table_file.read_text())


@pytest.mark.slow
def test_one_file_per_width_takes_every_resolution(make_cfg, tmp_path, monkeypatch):
    """2 widths x 2 resolutions: two ONNX files (written two at a time, select.n_jobs=2), each taking both sizes;
    the device benchmark gives one row per size with the runtime's peak memory, and a table from it matches every
    candidate by (format, alpha, resolution)."""
    from toolkit.deploy.runtime import open_model
    from toolkit.modes.select_cost import apply_latency_table, read_latency_table

    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    cfg = make_cfg(["mode=select", "trainer.precision=32-true", *TINY, "select.n_jobs=2", "select.export_only=true"])
    result = run(cfg)
    files = sorted(Path(f) for f in result["files"])
    assert [f.relative_to(tmp_path / "run" / "candidates").as_posix() for f in files] == ["a0.25/model.onnx",
                                                                                          "a0.5/model.onnx"]
    for f in files:
        assert open_model(f, 1)[1]["resolutions"] == [32, 64]
    record = _record(tmp_path / "run")
    by_name = {c["name"]: c for c in record["candidates"]}
    assert by_name["a0.25_r32"]["file"] == by_name["a0.25_r64"]["file"] == str(files[0])
    for c in record["candidates"]:  # each candidate measured at its own size in the shared file
        assert c["latency_ms"] > 0 and c["size_mb"] > 0
        assert 0 < c["peak_memory_mb"] < 200, c  # ONNX Runtime holding a 1-3 MB model: MBs, not the parent process

    table_file = tmp_path / "table.json"
    table = _benchmark_cli([tmp_path / "run" / "candidates"], table_file)
    rows = {(r["format"], r["alpha"], r["resolution"]): r for r in table["models"]}
    assert set(rows) == {("onnx", a, r) for a in (0.25, 0.5) for r in (32, 64)}
    assert all(r["input"] == [r["resolution"]] * 2 and 0 < r["peak_memory_mb"] < 200 for r in rows.values())
    candidates = [Candidate(alpha=a, resolution=r) for a in (0.25, 0.5) for r in (32, 64)]
    apply_latency_table(read_latency_table(table_file), table_file, candidates, "onnx")
    assert all(c.latency_ms == rows[("onnx", c.alpha, c.resolution)]["latency_ms"] for c in candidates)


@pytest.mark.slow
def test_a_width_whose_shared_file_fails_falls_back_to_one_file_per_resolution(make_cfg, tmp_path, monkeypatch, caplog):
    """The exporter refuses the size range for alpha 0.5 (ExportError): that width gets one file per resolution and
    a warning; alpha 0.25 keeps its shared file; every candidate is measured (select.n_jobs=1: written in this
    process, where the refusal is patched in)."""
    import toolkit.modes.select_cost as select_cost
    from toolkit.errors import ExportError

    real_write = select_cost.write_file

    def refusing(config, resolutions):
        if len(resolutions) > 1 and float(config.backbone.alpha) == 0.5:
            raise ExportError("the program does not take a range of sizes")
        return real_write(config, resolutions)

    monkeypatch.setattr(select_cost, "write_file", refusing)
    monkeypatch.setenv("TOOLKIT_CACHE_DIR", str(tmp_path / "cache"))
    cfg = make_cfg(["mode=select", "trainer.precision=32-true", *TINY, "select.n_jobs=1", "select.export_only=true"])
    with caplog.at_level("WARNING", logger="toolkit.modes.select_cost"):
        result = run(cfg)
    files = sorted(Path(f).relative_to(tmp_path / "run" / "candidates").as_posix() for f in result["files"])
    assert files == ["a0.25/model.onnx", "a0.5_r32/model.onnx", "a0.5_r64/model.onnx"]
    assert any("one file for every resolution of alpha 0.5 failed" in r.getMessage() for r in caplog.records)
    record = _record(tmp_path / "run")
    assert sorted(c["name"] for c in record["candidates"]) == ["a0.25_r32", "a0.25_r64", "a0.5_r32", "a0.5_r64"]
    assert all(c["latency_ms"] > 0 and c["peak_memory_mb"] > 0 for c in record["candidates"])


def test_benchmark_finds_and_names_every_runtimes_files(tmp_path):
    """`--benchmark` takes every suffix toolkit.deploy.runtime runs, and names each file's export format as
    export.formats does (`_int8`: the writers record their quantisation in the metadata)."""
    from toolkit.deploy.benchmark import format_name, model_files
    from toolkit.deploy.runtime import RUNTIMES
    from toolkit.errors import ToolkitError

    for name in ("a/model.onnx", "a/model_int8.pte", "b/model.tflite", "b/model_openvino.xml", "b/model_openvino.bin",
                 "b/model.tflite.json", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    found = model_files([str(tmp_path)])
    assert sorted(p.relative_to(tmp_path).as_posix() for p in found) == [
        "a/model.onnx", "a/model_int8.pte", "b/model.tflite", "b/model_openvino.xml"]
    assert {p.suffix for p in found} == set(RUNTIMES)
    int8 = {"quantization": "int8"}
    assert [format_name(p, int8) for p in sorted(found)] == ["onnx_int8", "executorch_int8", "litert_int8",
                                                           "openvino_int8"]
    assert [format_name(p, {}) for p in sorted(found)] == ["onnx", "executorch", "litert", "openvino"]
    with pytest.raises(ToolkitError, match="not an exported model"):
        model_files([str(tmp_path / "notes.txt")])


def test_benchmark_of_a_damaged_file_is_one_line(tmp_path):
    """The file is timed in a child process; its refusal comes back as the CLI's one line (exit 2), naming the file."""
    damaged = tmp_path / "model.onnx"
    damaged.write_bytes(b"not a model")
    done = subprocess.run([sys.executable, "-m", "toolkit.deploy", "--benchmark", str(damaged), "--out",
                           str(tmp_path / "table.json")], capture_output=True, text=True, timeout=120)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and str(damaged) in lines[0], done.stderr
    assert not (tmp_path / "table.json").exists()
