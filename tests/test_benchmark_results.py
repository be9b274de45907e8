"""The learning benchmarks' shared pieces: the per-epoch recorder of `run_toolkit` and the bf16 parity table."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from conftest import BENCHMARKS, load_benchmark


def results_file(folder: Path, name: str, precision: str, top1: list[float], **settings) -> None:
    payload = {"benchmark": name, "commit": "abc", "machine": {"torch_threads": 1}, "command": "python x.py",
               "results": {"settings": {"alpha": 0.5, "epochs": len(top1), "precision": precision, "results": name,
                                        **settings},
                           "epochs": [{"epoch": i, "top1": t} for i, t in enumerate(top1)], "cpu_s": 60.0}}
    (folder / f"{name}.json").write_text(json.dumps(payload))


def test_parity_compares_final_and_best_in_points(tmp_path, monkeypatch):
    parity = load_benchmark("bf16_parity")
    monkeypatch.setattr(parity, "RESULTS_DIR", tmp_path)
    results_file(tmp_path, "classification_learning_32", "32-true", [0.5, 0.90, 0.93, 0.92])
    results_file(tmp_path, "classification_learning_bf16", "bf16-mixed", [0.5, 0.91, 0.935, 0.925])
    results_file(tmp_path, "classification_learning_32_seed1", "32-true", [0.4, 0.85, 0.90, 0.88], seed=1)
    (row,) = parity.measure()["rows"]  # the other benchmarks' files are missing: skipped, said on stdout
    assert row["diff_final_points"] == pytest.approx(0.5) and row["diff_best_points"] == pytest.approx(0.5)
    assert row["seed_diff_final_points"] == pytest.approx(-4.0) and row["within_tolerance"]
    table = parity.tables({"rows": [row]})["parity"].splitlines()
    assert table[2].startswith("| classification") and "+0.5 / +0.5" in table[2] and "-4.0 / -3.0" in table[2]

    results_file(tmp_path, "classification_learning_bf16_seed1", "bf16-mixed", [0.4, 0.8, 0.85, 0.85], seed=1)
    (row,) = parity.measure()["rows"]  # the comparison again at seed 1: 3 points lower, so no longer within 1 point
    assert row["seed1_diff_final_points"] == pytest.approx(-3.0) and not row["within_tolerance"]

    (tmp_path / "classification_learning_bf16_seed1.json").unlink()
    results_file(tmp_path, "classification_learning_bf16", "bf16-mixed", [0.5, 0.90, 0.91, 0.91])
    (row,) = parity.measure()["rows"]
    assert not row["within_tolerance"] and "**no**" in parity.tables({"rows": [row]})["parity"]


def test_parity_refuses_pairs_with_other_settings(tmp_path, monkeypatch):
    parity = load_benchmark("bf16_parity")
    monkeypatch.setattr(parity, "RESULTS_DIR", tmp_path)
    results_file(tmp_path, "classification_learning_32", "32-true", [0.9])
    results_file(tmp_path, "classification_learning_bf16", "bf16-mixed", [0.9], alpha=0.25)
    with pytest.raises(SystemExit, match="classification_learning_32.json and classification_learning_bf16.json.*alpha"):
        parity.measure()


@pytest.mark.slow
def test_run_toolkit_records_every_validation_epoch(tmp_path):
    """The real `python -m toolkit` path with the recorder callback: one row per epoch, metrics and clocks."""
    sys.path.insert(0, str(BENCHMARKS))  # as in the scripts: Hydra imports the recorder's `_runner.epoch_recorder`
    try:
        runner = importlib.import_module("_runner")
        result, wall = runner.run_toolkit(
            [*runner.QUIET, "task=classification", "data=shapes", "backbone.alpha=0.25", "data.resolution=32",
             "data.n_train=32", "data.n_val=16", "data.batch_size=16", "trainer.max_epochs=2",
             "trainer.precision=32-true", f"paths.cache_dir={tmp_path / 'cache'}", f"paths.log_dir={tmp_path}"],
            tmp_path / "run", record=["val/top1"])
    finally:
        sys.path.remove(str(BENCHMARKS))
    assert [r["epoch"] for r in result["epochs"]] == [0, 1]
    assert all(0.0 <= r["val/top1"] <= 1.0 for r in result["epochs"])
    assert 0 < result["epochs"][0]["cpu_s"] <= result["epochs"][1]["cpu_s"] <= result["cpu_s"]
    assert result["epochs"][1]["wall_s"] <= wall
