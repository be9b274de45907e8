"""The profiler reproduces the paper's counts (Tables 2-7, 9), agrees with torch's FlopCounterMode, and mode=profile works."""

from __future__ import annotations

import csv
import functools
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from toolkit.backbones import create_backbone, list_backbones
from toolkit.errors import ConfigError, DataError
from toolkit.heads import ImageClassifier
from toolkit.profiling import count_model, flop_counter_mult_adds, measure_latency, resolve_device
from toolkit.profiling.sweep import (
    SweepSummaryCallback,
    collect_rows,
    read_results,
    summarize_sweep,
    summarize_train_sweep,
)
from toolkit.run import run


def classifier(name: str = "mobilenet_v1", alpha: float = 1.0, num_classes: int = 1000) -> ImageClassifier:
    return ImageClassifier(create_backbone(name, alpha=alpha), num_classes)


@functools.cache
def count(name: str, alpha: float, resolution: int):
    return count_model(classifier(name, alpha), torch.randn(1, 3, resolution, resolution))


def decimals(reported: float) -> int:
    text = repr(reported)
    return len(text.split(".")[1]) if "." in text else 0


# (table, backbone, alpha, resolution, paper M mult-adds, paper M params)
PAPER_ROWS = [
    ("Table 6", "mobilenet_v1", 1.0, 224, 569, 4.2),
    ("Table 6", "mobilenet_v1", 0.75, 224, 325, 2.6),
    ("Table 6", "mobilenet_v1", 0.5, 224, 149, 1.3),
    ("Table 6", "mobilenet_v1", 0.25, 224, 41, 0.5),
    ("Table 7", "mobilenet_v1", 1.0, 192, 418, 4.2),
    ("Table 7", "mobilenet_v1", 1.0, 160, 290, 4.2),
    ("Table 7", "mobilenet_v1", 1.0, 128, 186, 4.2),
    ("Table 5", "mobilenet_v1_shallow", 1.0, 224, 307, 2.9),
    ("Table 9", "mobilenet_v1", 0.5, 160, 76, 1.32),
]


@pytest.mark.parametrize(("table", "name", "alpha", "resolution", "mult_adds", "params"), PAPER_ROWS)
def test_paper_counts_within_rounding(table, name, alpha, resolution, mult_adds, params):
    c = count(name, alpha, resolution)
    # within one unit of the paper's last printed digit (the paper rounds some rows, truncates others)
    assert abs(c.mult_adds / 1e6 - mult_adds) < 1.0, f"{table}: {c.mult_adds / 1e6:.2f}M mult-adds"
    # the paper's parameter count is the conv/FC weights (see counting.py); it rounds to the printed digits
    assert round(c.weights / 1e6, decimals(params)) == params, f"{table}: {c.weights / 1e6:.4f}M weights"


def test_paper_scaled_the_224_count_by_rho_squared():
    """Tables 7 and 9 print rho^2 x the 224 count (FC included), which rounds to every printed figure;
    the exact counts differ by up to 0.7M because the FC layer's 1.02M mult-adds do not shrink with rho."""
    at_224 = {alpha: count("mobilenet_v1", alpha, 224).mult_adds / 1e6 for alpha in (1.0, 0.5)}
    for _, name, alpha, resolution, mult_adds, _ in PAPER_ROWS:
        if name == "mobilenet_v1" and alpha in at_224:
            assert round(at_224[alpha] * (resolution / 224) ** 2) == mult_adds


def test_all_parameters_round_to_the_paper_except_table9():
    """Counting BN and biases too still gives the 1-decimal figures, but Table 9's 1.32M becomes 1.33M."""
    for _, name, alpha, resolution, _, params in PAPER_ROWS:
        total = count(name, alpha, resolution).params / 1e6
        if decimals(params) == 1:
            assert round(total, 1) == params
    assert round(count("mobilenet_v1", 0.5, 160).params / 1e6, 2) == 1.33


def test_table4_conv_mobilenet():
    """Conv MobileNet: 4867.3M counted vs 4866M printed (0.03% apart), 29.3M params."""
    c = count("mobilenet_v1_conv", 1.0, 224)
    assert abs(c.mult_adds / 1e6 - 4866) / 4866 < 5e-4
    assert round(c.weights / 1e6, 1) == 29.3 and round(c.params / 1e6, 1) == 29.3


def test_table2_shares():
    table = count("mobilenet_v1", 1.0, 224).breakdown()
    # The paper prints 1.19% for the first layer: the column then sums to 99.29%. The layer's 10.8M of 568.7M
    # mult-adds is 1.91% (digits swapped), and with it the column sums to 100%.
    paper_mult_adds = {"conv_1x1": 94.86, "conv_dw": 3.06, "conv_first": 1.91, "fc": 0.18}
    paper_params = {"conv_1x1": 74.59, "conv_dw": 1.06, "conv_first": 0.02, "fc": 24.33}
    for key, share in paper_mult_adds.items():
        assert table[key]["mult_adds_share"] == pytest.approx(share, abs=0.1), key
    for key, share in paper_params.items():
        assert table[key]["params_share"] == pytest.approx(share, abs=0.1), key
    assert table["conv_full"]["mult_adds"] == 0
    assert sum(row["mult_adds_share"] for row in table.values()) == pytest.approx(100.0)


def _single_layer_counts(layers: nn.Module, size: int) -> tuple[float, float]:
    c = count_model(layers, torch.randn(1, layers[0].in_channels, size, size))
    return c.mult_adds / 1e6, c.weights / 1e6


def test_table3_single_layer_rows():
    """Table 3: one 14x14x512 layer, 3x3 kernel, 512 outputs; each row modifies the one above."""
    conv = nn.Sequential(nn.Conv2d(512, 512, 3, padding=1, bias=False))
    assert _single_layer_counts(conv, 14) == (pytest.approx(462, abs=0.5), pytest.approx(2.36, abs=0.005))

    def separable(channels: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
                             nn.Conv2d(channels, channels, 1, bias=False))

    assert _single_layer_counts(separable(512), 14) == (pytest.approx(52.3, abs=0.05), pytest.approx(0.27, abs=0.005))
    alpha = _single_layer_counts(separable(384), 14)  # alpha = 0.75
    assert alpha == (pytest.approx(29.6, abs=0.05), pytest.approx(0.15, abs=0.005))
    # rho = 0.714: 14 * 0.714 = 10. The exact 10x10 layer gives 15.09M, which is also rho^2 x 29.6M: the
    # paper's 15.1M is exact (14.75M is the pointwise part alone).
    rho = _single_layer_counts(separable(384), 10)
    assert rho == (pytest.approx(15.1, abs=0.05), pytest.approx(0.15, abs=0.005))
    assert rho[0] == pytest.approx(0.714**2 * alpha[0], rel=0.01)


@pytest.mark.parametrize("name", list_backbones())
def test_agrees_with_flop_counter_mode(name):
    """An independent count: torch's FlopCounterMode (conv + matmul FLOPs) / 2 on the same models."""
    model = classifier(name, alpha=0.5)
    x = torch.randn(1, 3, 96, 96)
    assert count_model(model, x).mult_adds == flop_counter_mult_adds(model, x)


@pytest.mark.parametrize("name", [n for n in ("mobilenet_v1", "mobilenet_v3_large") if n in list_backbones()])
def test_agrees_with_fvcore(name):
    """A second independent count: fvcore's per-operator counts (1 per multiply-add) of conv + linear."""
    fvcore_nn = pytest.importorskip("fvcore.nn")
    model = classifier(name, alpha=0.5).eval()
    x = torch.randn(1, 3, 96, 96)
    analysis = fvcore_nn.FlopCountAnalysis(model, x)  # (it traces with torch.jit: slow, so two models only)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    by_op = analysis.by_operator()
    assert count_model(model, x).mult_adds == by_op["conv"] + by_op["linear"]


def test_agrees_with_flop_counter_mode_at_paper_size():
    model = classifier("mobilenet_v1", 1.0)
    x = torch.randn(1, 3, 224, 224)
    assert count_model(model, x).mult_adds == flop_counter_mult_adds(model, x)


class TwoImageModel(nn.Module):
    """Like a detector: takes a list of images and runs a shared layer several times."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8, 4)

    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        feats = [self.grouped(self.stem(img[None])).mean((2, 3)) for img in images]
        return self.fc(torch.cat(feats))


def test_list_inputs_shared_layers_and_grouped_convs():
    model = TwoImageModel()
    c = count_model(model, [torch.randn(3, 10, 10), torch.randn(3, 6, 6)])
    stem = (100 + 36) * 8 * 3 * 9
    grouped = (100 + 36) * 8 * 4 * 9
    assert c.mult_adds == stem + grouped + 2 * 8 * 4
    assert c.weights == 8 * 3 * 9 + 8 * 4 * 9 + 8 * 4  # each layer's weights once, though it ran twice
    assert c.params == c.weights + 8 + 8 + 4  # plus biases
    table = c.breakdown()
    assert table["conv_first"]["mult_adds"] == stem  # the first conv that runs, twice over
    assert table["conv_full"]["mult_adds"] == grouped  # grouped (not depthwise) convs are full convs
    assert c.mult_adds == flop_counter_mult_adds(model, [torch.randn(3, 10, 10), torch.randn(3, 6, 6)])


def test_backbone_subtotal():
    c = count("mobilenet_v1", 1.0, 224)
    assert c.subtotal("backbone.")["mult_adds"] == c.mult_adds - 1024 * 1000
    assert c.subtotal("head.")["weights"] == 1024 * 1000


def test_latency_under_a_budget():
    """adaptive_autorange stops within the budget (a 1 ms call gets many timed calls) and reports per-call ms."""
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU())
    result = measure_latency(model, torch.randn(2, 64), torch.device("cpu"), budget_s=0.2)
    assert result["calls"] >= 1 and result["blocks"] >= 1 and 0 < result["min_ms"] <= result["median_ms"]
    assert result["median_ms"] < 200  # a per-call figure, not the whole block
    bf16 = measure_latency(model, torch.randn(2, 64), torch.device("cpu"), budget_s=0.1, bf16=True)
    assert bf16["median_ms"] > 0 and model.training  # the model's mode is restored
    with pytest.raises(ConfigError, match="profile.budget_s"):
        measure_latency(model, torch.randn(2, 64), torch.device("cpu"), budget_s=0)


def test_device_choice_errors():
    with pytest.raises(ConfigError, match="profile.device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            resolve_device("cuda")
    assert resolve_device("cpu").type == "cpu"


def test_profile_mode_writes_json(make_cfg, capsys):
    cfg = make_cfg(["mode=profile", "backbone.alpha=0.5", "data.resolution=160", "profile.budget_s=0.4",
                    "profile.batch_size=2"])
    result = run(cfg)
    printed = capsys.readouterr().out
    saved = json.loads(Path(result["profile_file"]).read_text())
    assert saved["label"] == "0.5 mobilenet_v1-160"
    assert abs(saved["mult_adds"] / 1e6 - 76) < 1 and round(saved["weights"] / 1e6, 2) == 1.32
    latency = saved["latency"]
    assert latency["batch_size"] == 2 and set(latency["variants"]) == {"fp32", "bf16"}  # compiled: profile.compile=true
    for timing in latency["variants"].values():  # batch n is timed, or skipped (a busy machine) saying why
        assert timing["batch_1"]["median_ms"] > 0
        assert timing["batch_n"]["median_ms"] is None and "budget" in timing["batch_n"]["skipped"] or \
            timing["batch_n"]["median_ms"] > 0
    assert "bf16" in printed and "vs fp32" in printed
    assert saved["backbone"]["mult_adds"] == saved["mult_adds"] - 512 * 1000
    assert "Conv 1x1" in printed and f"profile written to {result['profile_file']}" in printed


def _fake_sweep(root: Path) -> Path:
    for job, (alpha, res, mult_adds) in enumerate([(1.0, 224, 569e6), (0.5, 160, 76e6), (0.25, 128, 14e6)]):
        (root / str(job)).mkdir(parents=True)
        (root / str(job) / "profile.json").write_text(json.dumps({
            "label": f"{alpha} mobilenet_v1-{res}", "model": "mobilenet_v1", "alpha": alpha, "resolution": res,
            "task": "classification", "params": 4e6 * alpha, "weights": 4e6 * alpha, "mult_adds": mult_adds,
            "latency": None}))
    return root


def test_sweep_summary_with_and_without_accuracy(tmp_path):
    sweep = _fake_sweep(tmp_path / "sweep")
    rows, csv_path, png_path = summarize_sweep(sweep)
    assert [r["job"] for r in rows] == ["0", "1", "2"] and all(r["top1"] is None for r in rows)
    assert png_path.stat().st_size > 1000
    results = tmp_path / "results.csv"
    results.write_text("model,alpha,resolution,top1\nmobilenet_v1,1.0,224,70.6\nmobilenet_v1,0.50,160,60.2\n")
    rows, csv_path, _ = summarize_sweep(sweep, str(results))
    with csv_path.open() as f:
        table = list(csv.DictReader(f))
    assert [r["top1"] for r in table] == ["70.6", "60.2", ""]
    assert table[1]["mult_adds"] == "76000000.0" and table[1]["alpha"] == "0.5"


def test_train_sweep_summary_reads_each_jobs_counts_and_best_score(tmp_path):
    for job, (alpha, best) in enumerate([(1.0, 0.9), (0.5, 0.8), (0.25, None)]):
        (tmp_path / str(job)).mkdir()
        (tmp_path / str(job) / "train_metrics.json").write_text(json.dumps({
            "monitor": "val/top1", "best_score": best, "epoch": 3, "best_checkpoint": f"{job}/best.ckpt",
            "model": {"label": f"{alpha} mobilenet_v1-64", "model": "mobilenet_v1", "alpha": alpha, "resolution": 64,
                      "task": "classification", "params": 4e6 * alpha, "weights": 4e6 * alpha, "mult_adds": 4e7 * alpha}}))
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "train_metrics.json").write_text(json.dumps({"monitor": "val/top1", "best_score": 0.5}))
    rows, csv_path, png_path = summarize_train_sweep(tmp_path)
    assert [(r["job"], r["alpha"], r["best"]) for r in rows] == [("0", 1.0, 0.9), ("1", 0.5, 0.8), ("2", 0.25, None)]
    with csv_path.open() as f:
        table = list(csv.DictReader(f))
    assert table[1] == {"job": "1", "label": "0.5 mobilenet_v1-64", "model": "mobilenet_v1", "alpha": "0.5",
                        "resolution": "64", "task": "classification", "params": "2000000.0", "weights": "2000000.0",
                        "mult_adds": "20000000.0", "metric": "val/top1", "best": "0.8", "epoch": "3",
                        "checkpoint": "1/best.ckpt"}
    assert png_path.read_bytes()[:4] == b"\x89PNG" and summarize_sweep(tmp_path) is None


def test_sweep_callback_ignores_sweeps_without_profiles(tmp_path):
    from omegaconf import OmegaConf

    (tmp_path / "0").mkdir()
    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}, "profile": {"results_file": None}})
    SweepSummaryCallback().on_multirun_end(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0"]
    assert collect_rows(tmp_path) == []


def test_results_file_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_results(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("model,alpha,top1\nmobilenet_v1,1.0,70.6\n")
    with pytest.raises(DataError, match="missing column"):
        read_results(bad)
    bad.write_text("model,alpha,resolution,top1\nmobilenet_v1,1.0,224,seventy\n")
    with pytest.raises(DataError, match="line 2"):
        read_results(bad)


def test_sweep_rows_have_a_latency_column_per_path(tmp_path):
    (tmp_path / "0").mkdir()
    timing = {"batch_1": {"median_ms": 2.0}, "batch_n": {"median_ms": 9.0}}
    (tmp_path / "0" / "profile.json").write_text(json.dumps({
        "label": "0.25 mobilenet_v1-128", "model": "mobilenet_v1", "alpha": 0.25, "resolution": 128, "task": "classification",
        "params": 1, "weights": 1, "mult_adds": 1,
        "latency": {"device": "cpu (2 threads)", "batch_size": 8, "budget_s": 6, "variants": {"fp32": timing, "bf16": timing}}}))
    (row,) = collect_rows(tmp_path)
    assert row["latency_b1_fp32_ms"] == 2.0 and row["latency_bn_bf16_ms"] == 9.0 and row["batch_size"] == 8
    assert row["latency_b1_fp32_compiled_ms"] is None  # profile.compile=false: not timed


def test_profile_compiled_paths_report_a_failed_compile(monkeypatch):
    """profile.compile=true adds compiled fp32/bf16 rows; where compilation fails they say so and time eager."""
    import warnings

    from toolkit.profiling.report import format_report, profile_model

    def failing_compile(fn, **kwargs):
        def compiled(*args, **kw):
            raise RuntimeError("no C++ compiler")
        return compiled

    monkeypatch.setattr(torch, "compile", failing_compile)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = profile_model(model, lambda n: torch.randn(n, 3, 16, 16), batch_size=2, device="cpu", budget_s=0.4,
                               compile=True)
    variants = result["latency"]["variants"]
    assert list(variants) == ["fp32", "bf16", "fp32_compiled", "bf16_compiled"]
    assert variants["bf16_compiled"]["compile_failed"] is True and variants["fp32_compiled"]["compile_s"] >= 0
    report = format_report({"label": "tiny", "task": "classification", "resolution": 16, **result})
    assert report.count("compile failed: eager") == 2


def test_a_batch_over_budget_is_skipped_not_timed(monkeypatch):
    import toolkit.profiling.report as report

    calls = []

    def slow(model, inputs, device, budget_s, bf16=False):
        calls.append(inputs.shape[0])
        return {"median_ms": 1000.0, "iqr_ms": 0.0, "min_ms": 1000.0, "calls": 1, "blocks": 1}

    monkeypatch.setattr(report, "measure_latency", slow)
    result = report.profile_model(nn.Linear(4, 2), lambda n: torch.randn(n, 4), batch_size=8, device="cpu", budget_s=4)
    assert calls == [1, 1]  # batch 8 would take ~8 s of a 2 s share per path: never run
    skipped = result["latency"]["variants"]["bf16"]["batch_n"]
    assert skipped["median_ms"] is None and skipped["skipped"] == "one call ~8 s > 2.0 s of budget"
    assert "raise profile.budget_s" in report.format_report({"label": "x", "task": None, "resolution": 4, **result})
