"""The learning benchmarks' shared pieces: the per-epoch recorder of `run_toolkit` and the bf16 parity table."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import BENCHMARKS, load_benchmark


def results_file(folder: Path, name: str, precision: str, top1: list[float], **settings) -> None:
    payload = {"benchmark": name, "commit": "abc", "machine": {"torch_threads": 1}, "command": "python x.py",
               "results": {"settings": {"alpha": 0.5, "epochs": len(top1), "precision": precision, "results": name,
                                        **settings},
                           "epochs": [{"epoch": i, "top1": t} for i, t in enumerate(top1)], "cpu_s": 60.0}}
    path = folder / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def test_parity_compares_the_means_over_seeds_with_an_interval(tmp_path, monkeypatch):
    parity = load_benchmark("bf16_parity")
    monkeypatch.setattr(parity, "RESULTS_DIR", tmp_path)
    results_file(tmp_path, "classification_learning/32", "32-true", [0.5, 0.90])
    results_file(tmp_path, "classification_learning/bf16", "bf16-mixed", [0.5, 0.91])
    (row,) = parity.measure()["rows"]  # the other benchmarks' files are missing: skipped, said on stdout
    assert row["diff_final_points"] == pytest.approx(1.0)
    assert row["interval_final_points"] is None and not row["within_tolerance"]
    assert row["verdict"] == "one seed per precision: no noise estimate"

    # three seeds a side, bf16 0.2 points above fp32 at each: the interval is narrow and inside +-1 point
    for seed, (fp32, bf16) in enumerate([(0.900, 0.902), (0.902, 0.904), (0.898, 0.900)]):
        suffix = f"_seed{seed}" if seed else ""
        results_file(tmp_path, f"classification_learning/32{suffix}", "32-true", [0.5, fp32], seed=seed)
        results_file(tmp_path, f"classification_learning/bf16{suffix}", "bf16-mixed", [0.5, bf16], seed=seed)
    (row,) = parity.measure()["rows"]
    assert row["fp32"]["seeds"] == row["other"]["seeds"] == 3 and row["precision"] == "bf16-mixed"
    assert row["fp32"]["final_mean"] == pytest.approx(0.900) and row["fp32"]["final_sd_points"] == pytest.approx(0.2)
    assert row["diff_final_points"] == pytest.approx(0.2)
    lo, hi = row["interval_final_points"]
    assert -1 < lo < 0.2 < hi < 1 and row["verdict"] == "same within 1 point"
    line = parity.tables({"rows": [row]})["parity"].splitlines()[-1]
    assert "| bf16-mixed | 3 / 3 |" in line and "0.900 ± 0.002" in line and "+0.2 [" in line and "same within 1 point" in line

    # a seed-to-seed spread of several points: no difference found, but not within 1 point either
    results_file(tmp_path, "classification_learning/32_seed2", "32-true", [0.5, 0.80], seed=2)
    (row,) = parity.measure()["rows"]
    assert row["verdict"] == "no difference found; seed noise wider than the difference"
    assert not row["within_tolerance"] and "**" not in parity.tables({"rows": [row]})["parity"]
    assert parity.verdict((-3.0, 3.4), 0.2) == "no difference found; means within 1 point, seed noise wider"

    # bf16 5 points lower at every seed: a loss the interval resolves
    for seed, fp32 in enumerate([0.90, 0.91, 0.89]):
        suffix = f"_seed{seed}" if seed else ""
        results_file(tmp_path, f"classification_learning/32{suffix}", "32-true", [0.5, fp32], seed=seed)
        results_file(tmp_path, f"classification_learning/bf16{suffix}", "bf16-mixed", [0.5, fp32 - 0.05], seed=seed)
    (row,) = parity.measure()["rows"]
    assert row["verdict"] == "lower than fp32" and row["interval_final_points"][1] < 0
    assert "**lower than fp32**" in parity.tables({"rows": [row]})["parity"]

    # `--precision auto` runs are a second comparison with the same fp32 runs
    results_file(tmp_path, "classification_learning/auto", "auto", [0.5, 0.90])
    results = parity.measure()
    bf16, auto = results["rows"]
    assert auto["precision"] == "auto (fp32 warm-up, then bf16)" and auto["other"]["seeds"] == 1
    epochs = parity.tables(results)["epochs"].splitlines()  # mean per epoch over each precision's seeds
    assert epochs[0] == "| epoch | 32-true (3 seeds) | bf16-mixed (3 seeds) | auto (fp32 warm-up, then bf16) (1 seeds) |"
    assert epochs[2:] == ["| 0 | 0.500 | 0.500 | 0.500 |", "| 1 | 0.900 | 0.850 | 0.900 |"]
    assert auto["diff_final_points"] == pytest.approx(0.0) and bf16["precision"] == "bf16-mixed"


def test_parity_refuses_pairs_with_other_settings(tmp_path, monkeypatch):
    parity = load_benchmark("bf16_parity")
    monkeypatch.setattr(parity, "RESULTS_DIR", tmp_path)
    results_file(tmp_path, "classification_learning/32", "32-true", [0.9])
    results_file(tmp_path, "classification_learning/bf16", "bf16-mixed", [0.9], alpha=0.25)
    with pytest.raises(SystemExit, match="classification_learning/32.json and classification_learning/bf16.json.*alpha"):
        parity.measure()


@pytest.mark.slow
def test_run_toolkit_records_every_validation_epoch(tmp_path):
    """The real `python -m toolkit` path with the recorder callback: one row per epoch, metrics and clocks."""
    sys.path.insert(0, str(BENCHMARKS.parent))  # as from the repo root: Hydra imports benchmarks.tools.runner's recorder
    try:
        runner = importlib.import_module("benchmarks.tools.runner")
        result, wall = runner.run_toolkit(
            [*runner.QUIET, "task=classification", "data=shapes", "backbone.alpha=0.25", "data.resolution=32",
             "data.n_train=32", "data.n_val=16", "data.batch_size=16", "trainer.max_epochs=2",
             "trainer.precision=32-true", f"paths.cache_dir={tmp_path / 'cache'}", f"paths.log_dir={tmp_path}"],
            tmp_path / "run", record=["val/top1"])
    finally:
        sys.path.remove(str(BENCHMARKS.parent))
    assert [r["epoch"] for r in result["epochs"]] == [0, 1]
    assert all(0.0 <= r["val/top1"] <= 1.0 for r in result["epochs"])
    assert 0 < result["epochs"][0]["cpu_s"] <= result["epochs"][1]["cpu_s"] <= result["cpu_s"]
    assert result["epochs"][1]["wall_s"] <= wall


def test_gradient_noise_compares_bf16_and_perturbed_gradients_with_fp32():
    """The real gradient comparison on a small model: fp32 twice is identical, bf16 and input noise are not."""
    from toolkit.tasks.classification import ClassificationTask

    noise = load_benchmark("bf16_gradient_noise")
    torch.manual_seed(0)
    model = ClassificationTask(backbone={"name": "mobilenet_v1", "alpha": 0.25}, num_classes=3).model
    images, labels = torch.randn(8, 3, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    row = noise.measure_at(model, images, labels, seed=0)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # BN running stats restored
    assert row["fp32_rerun_cosine"] == pytest.approx(1.0)
    assert -1.0 <= row["bf16_cosine"] < 0.9999 and -1.0 <= row["input_noise_0.002_cosine"] < 1.0
    assert [b["block"] for b in row["blocks"]] == [f"conv{i}" for i in range(14)]
    results = {"input_noise": list(noise.INPUT_NOISE), "rows": [{"train_steps": 0, **row}]}
    tables = noise.tables(results)
    assert tables["whole"].splitlines()[2].startswith("| 0 | 1.000 |") and len(tables["blocks"].splitlines()) == 16
