"""PlaNet geolocation: S2 ids vs s2sphere, partition invariants, haversine, Im2GPS metrics, geo CSV checks, CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import s2sphere
import torch
from conftest import FAST, run_cli
from PIL import Image

from toolkit.data.geo import read_geo_csv
from toolkit.errors import ConfigError, DataError
from toolkit.geo.distance import haversine_km
from toolkit.geo.metrics import GeoDistanceAccuracy, distance_accuracy, im2gps_table
from toolkit.geo.s2cells import (
    assign_cells,
    cell_levels,
    cell_ranges,
    ids_to_tokens,
    leaf_cell_ids,
    parent_ids,
    partition_cells,
    read_cells,
    tokens_to_ids,
    write_cells,
)
from toolkit.tasks.geolocation import GeolocationTask

PARIS, LONDON = (48.8566, 2.3522), (51.5074, -0.1278)


def random_points(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return np.degrees(np.arcsin(rng.uniform(-1, 1, n))), rng.uniform(-180, 180, n)


def clustered_points(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Dense clusters (that must be subdivided) plus a sparse uniform scatter (cells to drop)."""
    rng = np.random.default_rng(seed)
    lat, lon = random_points(150, seed)
    for c_lat, c_lon, n, spread in ((48.85, 2.35, 900, 0.05), (40.7, -74.0, 500, 0.5), (-33.9, 151.2, 300, 2.0)):
        lat = np.r_[lat, c_lat + rng.normal(0, spread, n)]
        lon = np.r_[lon, c_lon + rng.normal(0, spread, n)]
    return lat, lon


# ---- S2 ids ------------------------------------------------------------------------------------------------
def test_leaf_ids_match_s2sphere_bit_for_bit():
    lat, lon = random_points(400)
    lat = np.r_[lat, 90, -90, 0, 0, 0, 45, -45, 35.26438968, 89.9999, 0.0]
    lon = np.r_[lon, 0, 0, 180, -180, 90, 45, -135, 45, 179.9999, 0.0]  # poles, antimeridian, face corners
    ours = leaf_cell_ids(lat, lon)
    ref = [s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(a, b)).id() for a, b in zip(lat, lon, strict=True)]
    assert ours.dtype == np.uint64
    assert ours.tolist() == ref


def test_parent_levels_tokens_by_bit_arithmetic():
    leaves = leaf_cell_ids(*random_points(50, seed=1))
    for level in (0, 1, 7, 16, 29, 30):
        parents = parent_ids(leaves, level)
        assert parents.tolist() == [s2sphere.CellId(int(c)).parent(level).id() for c in leaves]
        assert (cell_levels(parents) == level).all()
        lo, hi = cell_ranges(parents)
        assert ((lo <= leaves) & (leaves <= hi)).all()
    tokens = ids_to_tokens(parent_ids(leaves, 9))
    assert tokens == [s2sphere.CellId(int(c)).parent(9).to_token() for c in leaves]
    assert (tokens_to_ids(tokens) == parent_ids(leaves, 9)).all()


# ---- partitioning ------------------------------------------------------------------------------------------
def reference_partition(lat, lon, t_max: int, t_min: int) -> dict[str, int]:
    """PlaNet's recursion written the slow, obvious way with s2sphere: token -> count of kept cells."""
    cells = [s2sphere.CellId.from_lat_lng(s2sphere.LatLng.from_degrees(a, b)) for a, b in zip(lat, lon, strict=True)]
    kept: dict[str, int] = {}

    def visit(cell: s2sphere.CellId, members: list[s2sphere.CellId]) -> None:
        if len(members) > t_max and cell.level() < 30:
            for child in cell.children():
                inside = [m for m in members if child.contains(m)]
                if inside:
                    visit(child, inside)
        elif len(members) >= t_min:
            kept[cell.to_token()] = len(members)

    for face in range(6):
        members = [c for c in cells if c.face() == face]
        if members:
            visit(s2sphere.CellId.from_face_pos_level(face, 0, 0), members)
    return kept


def test_partition_equals_the_plain_recursion():
    lat, lon = clustered_points()
    lat, lon = lat[::4], lon[::4]  # the reference is slow
    part, _ = partition_cells(lat, lon, t_max=40, t_min=3)
    assert dict(zip(part.tokens, part.counts.tolist(), strict=True)) == reference_partition(lat, lon, 40, 3)


def test_partition_invariants():
    lat, lon = clustered_points()
    t_max, t_min = 120, 10
    part, photo_cell = partition_cells(lat, lon, t_max=t_max, t_min=t_min)
    assert len(part) > 10
    assert ((part.counts <= t_max) | (part.levels == 30)).all()
    assert (part.counts >= t_min).all()
    lo, hi = cell_ranges(part.ids)
    assert (lo[1:] > hi[:-1]).all(), "cells must be disjoint"
    leaves = leaf_cell_ids(lat, lon)
    holders = ((leaves[:, None] >= lo[None]) & (leaves[:, None] <= hi[None])).sum(1)
    assert set(holders.tolist()) <= {0, 1}
    assert ((holders == 1) == (photo_cell >= 0)).all()
    assert np.bincount(photo_cell[photo_cell >= 0], minlength=len(part)).tolist() == part.counts.tolist()
    assert part.meta["kept_photos"] + part.meta["dropped_photos"] == len(lat)
    assert part.meta["dropped_photos"] == int((photo_cell < 0).sum()) > 0
    # the mean location of a cell's photos lies inside that cell
    assert (assign_cells(leaf_cell_ids(part.mean_lat, part.mean_lon), part.ids) == np.arange(len(part))).all()


def test_partition_is_deterministic_and_stops_at_max_level():
    lat, lon = clustered_points()
    order = np.random.default_rng(3).permutation(len(lat))
    a, _ = partition_cells(lat, lon, 100, 5)
    b, _ = partition_cells(lat[order], lon[order], 100, 5)
    assert a.tokens == b.tokens and a.counts.tolist() == b.counts.tolist()
    same_spot = np.full(30, 10.0)  # 30 photos at one point cannot be split below t_max=5
    part, cells = partition_cells(same_spot, same_spot, t_max=5, t_min=1, max_level=12)
    assert part.levels.tolist() == [12] and part.counts.tolist() == [30] and (cells == 0).all()


def test_cell_file_round_trip_and_overlap_check(tmp_path):
    part, _ = partition_cells(*clustered_points(), t_max=200, t_min=5)
    path = write_cells(part, tmp_path / "cells.csv")
    back = read_cells(path)
    assert back.tokens == part.tokens and back.counts.tolist() == part.counts.tolist()
    assert np.allclose(back.mean_lat, part.mean_lat, atol=1e-6) and back.meta["t_max"] == 200
    rows = path.read_text().splitlines()[1:]  # as written by hand: no "# ... N cells" line, so a row may be added
    k = int(np.flatnonzero(part.levels > 0)[0])  # a cell that has a parent
    parent = ids_to_tokens(parent_ids(part.ids[k:k + 1], int(part.levels[k]) - 1))[0]
    path.write_text("\n".join([*rows, f"{parent},{int(part.levels[k]) - 1},9,0,0,0,0"]) + "\n")
    with pytest.raises(DataError, match="overlap"):
        read_cells(path)


# ---- distances and metrics -----------------------------------------------------------------------------------
def test_haversine_known_distances():
    assert haversine_km(*PARIS, *LONDON) == pytest.approx(343.5, abs=1.0)
    assert haversine_km(40.7128, -74.0060, 34.0522, -118.2437) == pytest.approx(3936, abs=5)  # New York - Los Angeles
    assert haversine_km(0, 0, 0, 180) == pytest.approx(math.pi * 6371.0)
    assert haversine_km(10, 179.9, 10, -179.9) == pytest.approx(21.9, abs=0.1)  # across the antimeridian
    lat = torch.tensor([PARIS[0], 0.0])
    lon = torch.tensor([PARIS[1], 0.0])
    d = haversine_km(lat, lon, torch.tensor([LONDON[0], 0.0]), torch.tensor([LONDON[1], 0.0]))
    assert isinstance(d, torch.Tensor) and d.tolist() == pytest.approx([343.5, 0.0], abs=1.0)


def test_threshold_metric_on_hand_made_predictions():
    d = np.array([0.5, 1.0, 20.0, 150.0, 700.0, 2600.0, 9000.0, 25.0])
    acc = distance_accuracy(d)
    assert acc["within_1km"] == 2 / 8  # counted as dist <= threshold
    assert acc["within_25km"] == 4 / 8
    assert acc["within_200km"] == 5 / 8 and acc["within_750km"] == 6 / 8 and acc["within_2500km"] == 6 / 8
    assert acc["median_km"] == pytest.approx((25.0 + 150.0) / 2)

    # the same through the torchmetrics metric: predictions due north of the truth by known distances
    true = torch.tensor([[10.0, 20.0]] * 4, dtype=torch.float64)
    km = torch.tensor([0.2, 10.0, 300.0, 3000.0], dtype=torch.float64)
    pred = true.clone()
    pred[:, 0] += km / (6371.0 * math.pi / 180)
    metric = GeoDistanceAccuracy()
    metric.update(pred[:2], true[:2])
    metric.update(pred[2:], true[2:])
    out = {k: float(v) for k, v in metric.compute().items()}
    assert out["within_1km"] == 0.25 and out["within_25km"] == 0.5 and out["within_750km"] == 0.75
    assert out["within_2500km"] == 0.75 and out["median_km"] == pytest.approx(155.0, rel=1e-3)
    table = im2gps_table({f"val/{k}": v for k, v in out.items()}, prefix="val/")
    assert "| city 25 km | 50.0 | 21.9 | 31.7 | 31.7 |" in table


# ---- geo CSV ---------------------------------------------------------------------------------------------
def write_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(path)


def test_geo_csv_validation_names_counts_and_skips_bad_rows(tmp_path):
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        write_image(tmp_path / "img" / name)
    rows = [
        ["image_path", "latitude", "longitude", "id"],
        ["img/a.jpg", "48.85", "2.35", "1"],          # good
        ["img/b.jpg", "95", "2.35", "2"],             # latitude out of range
        ["img/b.jpg", "10", "-200", "3"],             # longitude out of range
        ["img/c.jpg", "north", "2", "4"],             # not a number
        ["img/missing.jpg", "1", "2", "5"],           # file not there
        ["img/c.jpg", "1"],                           # too few fields
        ["", "1", "2", "7"],                          # no path
        ["img/c.jpg", "-33.9", "151.2", "8"],         # good
    ]
    csv_path = tmp_path / "geo.csv"
    with csv_path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    records = read_geo_csv(csv_path)
    assert len(records) == 2 and records.ids == ["1", "8"]
    assert [line for line, _ in records.rejected] == [3, 4, 5, 6, 7, 8]
    reasons = dict(records.rejected)
    assert "latitude 95 outside [-90, 90]" in reasons[3]
    assert "longitude -200 outside [-180, 180]" in reasons[4]
    assert "'north' is not a number" in reasons[5]
    assert "missing.jpg not found" in reasons[6]
    assert "found 2 field(s)" in reasons[7] and "empty image path" in reasons[8]
    assert "6 of 8 rows rejected" in records.rejection_report()
    with pytest.raises(DataError, match=r"geo.csv: 6 of 8 rows rejected: line 3: latitude 95"):
        read_geo_csv(csv_path, bad_rows="error")
    assert len(read_geo_csv(csv_path, check_files=False)) == 3  # missing.jpg accepted without the file check

    plain = tmp_path / "plain.csv"  # no header: path, latitude, longitude
    plain.write_text("img/a.jpg,1.5,2.5\nimg/b.jpg,-3,4\n")
    records = read_geo_csv(plain)
    assert records.lat.tolist() == [1.5, -3.0] and records.paths[0] == str(tmp_path / "img" / "a.jpg")
    bad = tmp_path / "bad.csv"
    bad.write_text("img/a.jpg,100,0\n")
    with pytest.raises(DataError, match="no usable rows"):
        read_geo_csv(bad)


# ---- the task's cells ---------------------------------------------------------------------------------------
def test_hierarchical_scores_and_cell_labels():
    lat, lon = clustered_points()
    coarse, _ = partition_cells(lat, lon, 600, 5)
    fine, _ = partition_cells(lat, lon, 60, 5)
    task = GeolocationTask(backbone={"name": "mobilenet_v1", "alpha": 0.25}, partitions=[coarse.to_plain(), fine.to_plain()])
    assert task.num_cells == [len(coarse), len(fine)]
    labels = task.cell_labels(torch.tensor([[48.85, 2.35], [float("nan"), float("nan")]], dtype=torch.float64))
    assert labels[0].tolist() == [int(coarse.assign([48.85], [2.35])[0]), int(fine.assign([48.85], [2.35])[0])]
    assert labels[1].tolist() == [-1, -1]

    torch.manual_seed(0)
    logits = (torch.randn(3, len(coarse)), torch.randn(3, len(fine)))
    scores = task.cell_log_scores(logits)
    ancestors = assign_cells(fine.ids, coarse.ids)
    assert (ancestors >= 0).all()  # a finer t_max refines the coarse cells
    expected = logits[1].log_softmax(-1) + logits[0].log_softmax(-1)[:, ancestors]
    assert torch.allclose(scores, expected)
    latlon, cell = task.locate(logits)
    assert torch.allclose(latlon, torch.tensor(fine.to_plain()["mean"], dtype=torch.float64)[expected.argmax(-1)])
    task.hparams.hierarchical = False
    assert torch.equal(task.locate(logits)[1], logits[1].argmax(-1))


# ---- the commands, as a user types them -----------------------------------------------------------
TINY = ["data.n_train=60", "data.n_val=18", "data.image_size=32", "data.resolution=32", "data.batch_size=20",
        "data.cells.t_max=8", "data.cells.t_min=2", "backbone.alpha=0.25"]


def test_cli_partition_train_eval_predict(tmp_path):
    run_dir = tmp_path / "runs"
    done = run_cli(["mode=partition", "data=geo_synthetic", *TINY, f"hydra.run.dir={run_dir}/partition"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    cells_file = next((run_dir / "partition").glob("cells_tmax8_tmin2.csv"))
    meta = json.loads(cells_file.with_suffix(".csv.json").read_text())
    assert meta["cells"] >= 6 and meta["kept_photos"] + meta["dropped_photos"] == 60
    assert "cells (levels" in done.stdout

    train = run_cli(["task=geolocation", "data=geo_synthetic", *TINY, f"data.cells_file={cells_file}",
                     "trainer.max_epochs=1", *FAST, f"hydra.run.dir={run_dir}/train"], cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    ckpt = run_dir / "train" / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    metrics = json.loads((run_dir / "train" / "train_metrics.json").read_text())["metrics"]
    assert {"val/within_25km", "val/within_2500km", "val/median_km", "val/cell_top1"} <= set(metrics)

    val_csv = next(p for p in (tmp_path / "cache").glob("geo_*") if p.is_dir()) / "val.csv"  # not its .lock file
    ev = run_cli(["task=geolocation", "mode=eval", f"ckpt_path={ckpt}", f"data.val_csv={val_csv}", "data.resolution=32",
                  *FAST, f"hydra.run.dir={run_dir}/eval"], cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    table = (run_dir / "eval" / "im2gps_table.md").read_text()
    assert "PlaNet MobileNet" in table and "| continent 2500 km |" in table
    rows = (run_dir / "eval" / "im2gps_table.csv").read_text().splitlines()
    assert rows[0] == "threshold_km,within_fraction" and [r.split(",")[0] for r in rows[1:]] == ["1", "25", "200", "750", "2500", "median_km"]
    assert 0 <= json.loads((run_dir / "eval" / "metrics.json").read_text())["val/within_25km"] <= 1

    images = val_csv.parent / "images" / "val"
    pred = run_cli(["task=geolocation", "mode=predict", f"ckpt_path={ckpt}", f"predict.input={images}",
                    "data.resolution=32", *FAST, f"hydra.run.dir={run_dir}/predict"], cwd=tmp_path)
    assert pred.returncode == 0, pred.stderr[-3000:]
    with (run_dir / "predict" / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len({r["path"] for r in rows}) == 18 and {r["rank"] for r in rows} >= {"1", "2"}
    assert all(-90 <= float(r["latitude"]) <= 90 and r["cell_token"] for r in rows)


def test_partition_rejects_non_geo_data(make_cfg):
    from toolkit.run import run

    with pytest.raises(ConfigError, match="mode=partition needs geo data"):
        run(make_cfg(["mode=partition", "data=shapes"]))


def test_hierarchical_training_in_process(make_cfg):
    from toolkit.run import run

    result = run(make_cfg(["task=geolocation", "data=geo_synthetic", *TINY, "data.cells.t_max=[30,8]", "trainer.max_epochs=1"]))
    assert "val/within_25km" in result["metrics"]
    task = GeolocationTask.load_from_checkpoint(result["best_checkpoint"], weights_only=False)
    assert len(task.partitions) == 2 and task.num_cells[0] < task.num_cells[1]


def test_precise_bn_recomputes_running_statistics():
    from types import SimpleNamespace

    from lightning.pytorch.trainer.states import TrainerFn

    from toolkit.precise_bn import PreciseBN

    class Net(torch.nn.Module):
        device = torch.device("cpu")

        def __init__(self):
            super().__init__()
            self.bn = torch.nn.BatchNorm2d(3, momentum=0.03)

        def forward(self, x):
            return self.bn(x)

    torch.manual_seed(0)
    batches = [{"image": torch.randn(8, 3, 4, 4) * 2 + 5} for _ in range(4)]
    net = Net().eval()
    trainer = SimpleNamespace(sanity_checking=False, state=SimpleNamespace(fn=TrainerFn.FITTING), train_dataloader=batches)
    PreciseBN(num_batches=3).on_validation_start(trainer, net)
    expected = torch.stack([b["image"].mean((0, 2, 3)) for b in batches[:3]]).mean(0)
    assert torch.allclose(net.bn.running_mean, expected, atol=1e-5)
    assert not net.training and net.bn.momentum == 0.03  # mode and momentum restored
    trainer.sanity_checking = True
    net.bn.reset_running_stats()
    PreciseBN().on_validation_start(trainer, net)
    assert torch.equal(net.bn.running_mean, torch.zeros(3))
