"""`python -m toolkit` as a user runs it: from another folder, as a sweep, --help, bad overrides, a non-editable install."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import FAST, run_cli
from omegaconf import open_dict

from toolkit.errors import ConfigError
from toolkit.run import validate_config

REPO = Path(__file__).resolve().parents[1]
QUICK_PROFILE = ["mode=profile", "profile.budget_s=0.2", "profile.batch_size=2"]


def test_profile_from_another_folder(tmp_path):
    proc = run_cli(QUICK_PROFILE + ["backbone.alpha=0.75", "data.resolution=192", "profile.threads=1"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "0.75 mobilenet_v1-192" in proc.stdout and "Conv DW (depthwise)" in proc.stdout
    assert "239.27 M" in proc.stdout  # Table 10's 0.75 MobileNet-192: 239M mult-adds
    written = Path(proc.stdout.split("profile written to ")[1].split()[0])
    assert written.is_file() and (tmp_path / "outputs") in written.parents  # TOOLKIT_LOG_DIR from conftest


def test_profile_sweep_writes_csv_and_plot(tmp_path):
    results = tmp_path / "results.csv"
    results.write_text("model,alpha,resolution,top1\nmobilenet_v1,0.5,160,60.2\nmobilenet_v1,0.25,128,41.5\n")
    proc = run_cli(["-m", *QUICK_PROFILE, "profile.latency=false", "backbone.alpha=0.5,0.25",
                    "data.resolution=160,128", f"profile.results_file={results}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    csv_path = Path(proc.stdout.split("profile sweep table: ")[1].split()[0])
    png_path = Path(proc.stdout.split("profile sweep plot: ")[1].split()[0])
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["alpha"], r["resolution"]) for r in rows] == [("0.5", "160"), ("0.5", "128"), ("0.25", "160"),
                                                             ("0.25", "128")]
    assert [r["top1"] for r in rows] == ["60.2", "", "", "41.5"]
    assert abs(int(rows[0]["mult_adds"]) / 1e6 - 76) < 1  # Table 9: 0.50 MobileNet-160
    assert png_path.read_bytes()[:4] == b"\x89PNG"


def test_train_sweep_plots_each_jobs_score_against_its_cost(tmp_path):
    """`-m backbone.alpha=... data.resolution=...` in train mode: train_sweep.csv/png with each job's best val/top1
    and the per-image counts of the model it trained (the same counts as profiling its checkpoint)."""
    from toolkit.profiling.counting import count_model
    from toolkit.tasks.classification import ClassificationTask

    proc = run_cli(["-m", *FAST, "backbone.alpha=0.25,0.5", "data.resolution=64,96", "data.n_train=16",
                    "data.n_val=8", "data.batch_size=8", "trainer.max_epochs=1"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    csv_path = Path(proc.stdout.split("train sweep table: ")[1].split()[0])
    png_path = Path(proc.stdout.split("train sweep plot: ")[1].split()[0])
    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["alpha"], r["resolution"]) for r in rows] == [("0.25", "64"), ("0.25", "96"), ("0.5", "64"), ("0.5", "96")]
    assert {r["metric"] for r in rows} == {"val/top1"} and all(0.0 <= float(r["best"]) <= 1.0 for r in rows)
    assert png_path.read_bytes()[:4] == b"\x89PNG" and "profile sweep" not in proc.stdout
    task = ClassificationTask.restore(rows[3]["checkpoint"])
    count = count_model(task.model, task.example_input(96, 1))
    assert (int(rows[3]["mult_adds"]), int(rows[3]["params"])) == (count.mult_adds, count.params)
    assert int(rows[0]["mult_adds"]) < int(rows[1]["mult_adds"]) < int(rows[3]["mult_adds"])


def test_help_lists_config_groups(tmp_path):
    proc = run_cli(["--help"], cwd=tmp_path)
    assert proc.returncode == 0
    assert "== Configuration groups ==" in proc.stdout
    for group in ("backbone:", "data:", "task:", "trainer:", "callbacks:", "logger:", "paths:"):
        assert group in proc.stdout
    assert "mobilenet_v1_conv" in proc.stdout and "backbone.alpha" in proc.stdout


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("backbone=resnet50", "backbone"),  # checked before Hydra composes
        ("backbone.alpha=0", "backbone.alpha"),  # checked by validate_config, inside the Hydra job
        ("mode=fly", "mode"),
    ],
)
def test_bad_override_fails_with_one_line(tmp_path, override, key):
    proc = run_cli(["mode=profile", override], cwd=tmp_path)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: invalid config {key}=")
    assert "allowed" in lines[0] or "must be" in lines[0]
    assert not (tmp_path / "outputs").exists() or not list((tmp_path / "outputs").rglob("profile.json"))


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("backbone.name=resnet50", "backbone.name"),
        ("mode=fly", "mode"),
        ("data.resolution=100", "data.resolution"),
        ("backbone.alpha=-0.5", "backbone.alpha"),
        ("backbone.alpha=true", "backbone.alpha"),
        ("backbone.act=gelu", "backbone.act"),
        ("backbone.name=timm/no_such_model", "backbone.name"),
        ("data.resolution=230", "data.resolution"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.num_workers=-1", "data.num_workers"),
        ("data.n_train=0", "data.n_train"),
        ("profile.device=tpu", "profile.device"),
        ("profile.budget_s=0", "profile.budget_s"),
        ("profile.compile=maybe", "profile.compile"),
        ("profile.threads=0", "profile.threads"),
        ("profile.results_file=/no/such.csv", "profile.results_file"),
    ],
)
def test_validation_names_the_key(make_cfg, override, key):
    cfg = make_cfg(["mode=profile", override])
    with pytest.raises(ConfigError) as info:
        validate_config(cfg)
    assert info.value.key == key and "\n" not in str(info.value)


def test_export_and_train_settings_are_validated(make_cfg):
    for override, key in [("export.formats=[onnx,tflite]", "export.formats"), ("export.calibration=data", "export.calibration"),
                          ("export.threads=0", "export.threads")]:
        with pytest.raises(ConfigError) as info:
            validate_config(make_cfg(["mode=export", override]))
        assert info.value.key == key
    cfg = make_cfg(["mode=train"])
    with open_dict(cfg):
        cfg.init_from = "/no/such/file.ckpt"
    with pytest.raises(ConfigError, match="init_from"):
        validate_config(cfg)


def test_progress_bar_off_drops_the_configured_bar_callback(make_cfg):
    """`trainer.enable_progress_bar=false` alone (the bar callback still configured) must not make Lightning refuse."""
    from toolkit.modes.common import build_task, build_trainer

    for enabled in (True, False):
        cfg = make_cfg([f"trainer.enable_progress_bar={enabled}", "trainer.accelerator=cpu"], fast=False)
        trainer = build_trainer(cfg, build_task(cfg), logger=False)
        assert (trainer.progress_bar_callback is not None) is enabled


def _clean_copy(dest: Path) -> Path:
    """The repo's source as a fresh clone has it (no build outputs), so building does not touch the repo."""
    ignore = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "outputs",
                                    "multirun", ".pytest_cache", ".ruff_cache", ".ci-*", "tests", "benchmarks", "docs")
    shutil.copytree(REPO, dest, ignore=ignore)
    return dest


def _fresh_venv_with_our_dependencies(where: Path) -> Path:
    """A new venv whose only extra paths are the current environment's site-packages folders: the dependencies
    are reused (no download), but no .pth runs there, so the repo's editable install is not visible."""
    import venv

    venv.create(where, with_pip=False)
    python = where / "bin" / "python"
    site_dir = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
    reused = [p for p in sys.path if "-packages" in p and Path(p).is_dir()]
    (site_dir / "reuse_test_dependencies.pth").write_text("\n".join(reused) + "\n")
    return python


def test_wheel_installs_into_a_fresh_venv_and_runs_from_anywhere(tmp_path):
    """`pip install .` (not editable) from a clean copy builds without a warning from our configuration (SPDX
    license, packages found by setup.py), tasks/, data/ and conf/ land inside the toolkit package as plain files, and `python -m toolkit` runs the installed copy from another folder."""
    src = _clean_copy(tmp_path / "src")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w",
                            str(tmp_path / "dist"), str(src)], check=True, capture_output=True, text=True, timeout=300)
    log = build.stdout + build.stderr  # -v: the build backend's own output, where setuptools warns
    ours = [line for line in log.splitlines() if any(w in line for w in (
        "Warning", "absent from the `packages`", "project.license", "license classifier", "!!"))]
    assert ours == [], "the build warns about our packaging configuration:\n" + "\n".join(ours[:20])
    (wheel,) = (tmp_path / "dist").glob("mobilenet_toolkit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = {f"toolkit/{p.relative_to(src)}" for folder in ("tasks", "data", "conf") for p in (src / folder).rglob("*")
               if p.suffix in (".py", ".yaml")}
    sources |= {str(p.relative_to(src)) for p in (src / "toolkit").rglob("*.py")}
    assert sources - names == set(), "missing from the wheel (setup.py finds the packages)"
    assert "toolkit/conf/hydra/help/toolkit.yaml" in names and not any(n.startswith(("tasks/", "data/", "conf/"))
                                                                       for n in names)

    python = _fresh_venv_with_our_dependencies(tmp_path / "venv")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(python), "-c", "import toolkit.tasks; print(toolkit.tasks.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, check=True)
    assert Path(where.stdout.strip()).is_relative_to(tmp_path / "venv")  # the installed copy, not the repo
    proc = subprocess.run([str(python), "-m", "toolkit", *QUICK_PROFILE, "profile.latency=false",
                           "backbone=mobilenet_v1_shallow", "data.resolution=224"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "307.32 M" in proc.stdout  # Table 5: Shallow MobileNet, 307M mult-adds


def test_repo_folders_import_only_through_the_toolkit_package():
    """From the repo root `tasks`, `data`, `conf` are plain folders on sys.path; importing them there would give
    each module a second identity (two BaseTask classes), so they refuse with the name to use."""
    for name in ("tasks", "data", "conf"):
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode != 0 and f"import toolkit.{name}, not {name}" in proc.stderr
