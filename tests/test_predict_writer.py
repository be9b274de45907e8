"""mode=predict streams its files: each batch's records go to disk as the batch ends (toolkit.prediction_writer),
the files read as the in-memory writer before them wrote them, an interrupted run leaves no file under a final
name, and DDP ranks' parts merge back into input order."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, run_cli
from PIL import Image

from toolkit.io import JsonArrayFile, JsonLinesFile, NpyRowsFile, merge_json_lines
from toolkit.prediction_writer import PredictionWriter
from toolkit.predictions import (
    AttributeFiles,
    ClassificationFiles,
    DetectionFiles,
    EmbeddingFiles,
    GeolocationFiles,
)
from toolkit.run import run
from toolkit.tasks.classification import ClassificationTask
from toolkit.visualize import contact_sheet

TINY = ["backbone.alpha=0.25", "data.resolution=32", "data.image_size=40", "data.n_train=16", "data.n_val=8",
        "data.batch_size=4", "trainer.max_epochs=1"]


# ---- what the writer before streaming (main at 31ba9b8) wrote, from every record in memory ---------------------
def main_json(records: list[dict]) -> str:
    return json.dumps(records, indent=2) + "\n"


def main_csv(path: Path, header: list[str], rows: list[list]) -> str:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path.read_text()


def main_classification_rows(records):
    return [[r["path"], rank, p["label"], p["name"], f"{p['score']:.6f}"]
            for r in records for rank, p in enumerate(r["top_k"], start=1)]


def photos(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        pixels = np.random.default_rng(i).integers(0, 255, (30 + i, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
        paths.append(folder / f"{i:02d}.png")
    return paths


# ---- the streamed files, alone -------------------------------------------------------------------------------
@pytest.mark.parametrize("items", [[], [{"a": 1}], [{"path": "x.jpg", "top_k": [{"name": "é", "score": 0.5}]}, [1, [2]],
                                                     "s\nt", None]])
def test_json_array_file_is_the_bytes_json_dumps_writes_and_appears_only_when_committed(tmp_path, items):
    stream = JsonArrayFile(tmp_path / "predictions.json")
    for item in items:
        stream.write(item)
    assert not (tmp_path / "predictions.json").exists()
    stream.commit()
    assert (tmp_path / "predictions.json").read_text() == main_json(items)
    assert [p.name for p in tmp_path.iterdir()] == ["predictions.json"]


def test_npy_rows_file_is_what_np_save_writes_for_the_whole_matrix(tmp_path, monkeypatch):
    monkeypatch.setattr(NpyRowsFile, "CHUNK_ROWS", 3)  # the copy behind the header runs in several chunks
    rows = np.random.default_rng(0).normal(size=(10, 5)).astype(np.float32)
    stream = NpyRowsFile(tmp_path / "embeddings.npy")
    for start in range(0, 10, 4):
        stream.write(rows[start:start + 4].tolist())
    stream.commit()
    np.save(tmp_path / "expected.npy", rows)
    assert (tmp_path / "embeddings.npy").read_bytes() == (tmp_path / "expected.npy").read_bytes()
    NpyRowsFile(tmp_path / "empty.npy").commit()
    np.save(tmp_path / "expected_empty.npy", np.asarray([], dtype=np.float32))
    assert (tmp_path / "empty.npy").read_bytes() == (tmp_path / "expected_empty.npy").read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))


def test_ddp_parts_merge_into_input_order_once_each(tmp_path):
    """Rank r holds images r, r+2, ... (Lightning's unrepeated sampler), some skipped as unreadable; the merge
    interleaves them back into input order and drops an index seen twice."""
    parts = {0: [0, 2, 6, 8], 1: [1, 3, 5, 7, 8]}  # 4 skipped on rank 0; 8 on both (a repeat)
    for rank, indices in parts.items():
        stream = JsonLinesFile(tmp_path / f"rank{rank}.jsonl")
        for i in indices:
            stream.write({"index": i, "record": {"path": f"{i}.jpg"}})
        stream.commit()
    merged = list(merge_json_lines([tmp_path / "rank0.jsonl", tmp_path / "rank1.jsonl"]))
    assert [m["index"] for m in merged] == [0, 1, 2, 3, 5, 6, 7, 8]
    assert [m["record"]["path"] for m in merged] == [f"{i}.jpg" for i in (0, 1, 2, 3, 5, 6, 7, 8)]


def test_every_task_kind_writes_what_it_wrote_from_all_records_in_memory(tmp_path):
    """The per-kind files, fed two batches, against the bytes the in-memory writers of main wrote."""
    paths = [str(p) for p in photos(tmp_path / "photos", 5)]
    cls = [{"path": p, "top_k": [{"label": 1, "name": "cat", "score": 0.7 - i / 10}, {"label": 0, "name": "dog",
                                                                                   "score": 0.2}]}
           for i, p in enumerate(paths)]
    geo = [{"path": p, "lat": 10.0 + i, "lon": -3.5, "top_cells": [{"token": "89c", "score": 0.9, "lat": 1.0,
                                                                    "lon": 2.0}]} for i, p in enumerate(paths)]
    att = [{"path": p, "attributes": {"smiling": 0.25 * (i % 4), "eyeglasses": 0.123456}} for i, p in enumerate(paths)]
    emb = [{"path": p, "embedding": [float(i), 0.5, -1.0]} for i, p in enumerate(paths)]
    det = [{"path": p, "width": 40, "height": 30 + i, "detections": [
        {"box_xyxy": [1.0, 2.0, 20.5, 25.0], "score": 0.9, "label": 1, "category_id": 3, "name": "car"}]}
        for i, p in enumerate(paths)]

    def stream(files, records):
        files.add(records[:3])
        files.add(records[3:])
        return [Path(f).relative_to(files.output_dir).as_posix() for f in files.close()]

    out = tmp_path / "cls"
    assert stream(ClassificationFiles(out), cls) == ["predictions.json", "predictions.csv", "predictions.png"]
    assert (out / "predictions.json").read_text() == main_json(cls)
    assert (out / "predictions.csv").read_text() == main_csv(tmp_path / "cls.csv", ["path", "rank", "label", "name", "score"],
                                                             main_classification_rows(cls))
    contact_sheet(paths, [f"{r['top_k'][0]['name']} {r['top_k'][0]['score']:.2f}" for r in cls], tmp_path / "sheet.png")
    assert (out / "predictions.png").read_bytes() == (tmp_path / "sheet.png").read_bytes()

    out = tmp_path / "geo"
    stream(GeolocationFiles(out), geo)
    assert (out / "predictions.json").read_text() == main_json(geo)
    assert (out / "predictions.csv").read_text() == main_csv(
        tmp_path / "geo.csv", ["path", "latitude", "longitude", "rank", "cell_token", "cell_score", "cell_lat", "cell_lon"],
        [[r["path"], f"{r['lat']:.6f}", f"{r['lon']:.6f}", rank, c["token"], f"{c['score']:.6f}", f"{c['lat']:.6f}",
          f"{c['lon']:.6f}"] for r in geo for rank, c in enumerate(r["top_cells"], start=1)])

    out = tmp_path / "att"
    assert stream(AttributeFiles(out, ["smiling", "eyeglasses"]), att) == ["predictions.json", "predictions.csv"]
    assert (out / "predictions.json").read_text() == main_json(att)
    assert (out / "predictions.csv").read_text() == main_csv(
        tmp_path / "att.csv", ["path", "smiling", "eyeglasses"],
        [[r["path"], *(f"{r['attributes'][n]:.4f}" for n in ("smiling", "eyeglasses"))] for r in att])

    out = tmp_path / "emb"
    assert stream(EmbeddingFiles(out), emb) == ["embeddings.npy", "embeddings_paths.txt"]
    np.save(tmp_path / "emb.npy", np.asarray([r["embedding"] for r in emb], dtype=np.float32))
    assert (out / "embeddings.npy").read_bytes() == (tmp_path / "emb.npy").read_bytes()
    assert (out / "embeddings_paths.txt").read_text() == "\n".join(paths) + "\n"

    drawn = []

    def draw(image, detections, png):
        drawn.append((image, detections))
        Image.new("RGB", (4, 4)).save(png)
        return png

    out = tmp_path / "det"
    names = stream(DetectionFiles(out, draw), det)
    stems = [f"{i:05d}_{Path(p).stem}" for i, p in enumerate(paths)]  # numbered across batches
    assert names == ["predictions.json", "coco_results.json", "coco_images.json",
                     *(f"predictions/{s}.{ext}" for s in stems for ext in ("json", "png"))]
    assert (out / "predictions.json").read_text() == main_json(det)
    assert json.loads((out / "coco_results.json").read_text()) == [  # COCO's [x, y, width, height]
        {"image_id": i, "category_id": 3, "bbox": [1.0, 2.0, 19.5, 23.0], "score": 0.9} for i in range(5)]
    images = json.loads((out / "coco_images.json").read_text())
    assert images["images"][4] == {"id": 4, "file_name": paths[4], "width": 40, "height": 34}
    assert images["categories"] == [{"id": 3, "name": "car"}] and images["annotations"] == []
    assert [json.loads((out / "predictions" / f"{s}.json").read_text()) for s in stems] == det
    assert drawn == [(r["path"], r["detections"]) for r in det]


def test_contact_sheet_keeps_only_the_images_it_shows(tmp_path, monkeypatch):
    monkeypatch.setattr("toolkit.predictions.CONTACT_SHEET_IMAGES", 4)
    paths = [str(p) for p in photos(tmp_path / "photos", 6)]
    files = ClassificationFiles(tmp_path / "out")
    for p in paths:
        files.add([{"path": p, "top_k": [{"label": 0, "name": "x", "score": 1.0}]}])
    assert [p for p, _ in files.sheet] == paths[:4]
    files.close()
    with Image.open(tmp_path / "out" / "predictions.png") as sheet:
        # one row of the 4 thumbnails, each with two caption lines (file name, prediction) under it
        assert sheet.width == 4 * 160 and 160 < sheet.height < 2 * 160


# ---- through mode=predict ------------------------------------------------------------------------------------
def test_predict_streams_each_batch_and_writes_the_files_it_wrote_from_memory(make_cfg, tmp_path, monkeypatch):
    best = run(make_cfg(TINY))["best_checkpoint"]
    images = photos(tmp_path / "photos", 7)
    seen: list[dict] = []  # the test's own copy of every record: the reference files are rendered from it
    write_batch = PredictionWriter.write_on_batch_end

    def spy(self, trainer, pl_module, prediction, batch_indices, *args):
        assert len(prediction) <= 3  # one batch
        assert not trainer.predict_loop.predictions  # Lightning keeps nothing either (return_predictions=False)
        assert not (self.output_dir / "predictions.json").exists()  # nothing under a final name mid-run
        seen.extend(prediction)
        write_batch(self, trainer, pl_module, prediction, batch_indices, *args)

    monkeypatch.setattr(PredictionWriter, "write_on_batch_end", spy)
    pred = run(make_cfg(TINY + ["mode=predict", f"ckpt_path={best}", f"predict.input={images[0].parent}",
                                "data.batch_size=3"]))
    out = Path(pred["output_dir"])
    assert pred["count"] == len(seen) == 7 and [r["path"] for r in seen] == [str(p) for p in images]
    assert [Path(f).name for f in pred["files"]] == ["predictions.json", "predictions.csv", "predictions.png"]
    assert (out / "predictions.json").read_text() == main_json(seen)
    assert (out / "predictions.csv").read_text() == main_csv(tmp_path / "expected.csv",
                                                             ["path", "rank", "label", "name", "score"],
                                                             main_classification_rows(seen))
    contact_sheet([r["path"] for r in seen], [f"{r['top_k'][0]['name']} {r['top_k'][0]['score']:.2f}" for r in seen],
                  tmp_path / "expected.png")
    assert (out / "predictions.png").read_bytes() == (tmp_path / "expected.png").read_bytes()
    assert not list(out.glob(".*.tmp"))


def test_interrupted_predict_leaves_no_file_under_a_final_name(make_cfg, tmp_path, monkeypatch):
    best = run(make_cfg(TINY))["best_checkpoint"]
    images = photos(tmp_path / "photos", 7)
    predict_step = ClassificationTask.predict_step

    def fails_on_the_second_batch(self, batch, batch_idx):
        if batch_idx == 1:
            (streamed,) = out.glob(".predictions.json.*.tmp")
            assert streamed.read_text().startswith("[\n  {")  # the first batch is on disk, under a temporary name
            raise RuntimeError("interrupted")
        return predict_step(self, batch, batch_idx)

    monkeypatch.setattr(ClassificationTask, "predict_step", fails_on_the_second_batch)
    cfg = make_cfg(TINY + ["mode=predict", f"ckpt_path={best}", f"predict.input={images[0].parent}", "data.batch_size=3"])
    out = Path(cfg.paths.output_dir)
    with pytest.raises(RuntimeError, match="interrupted"):
        run(cfg)
    assert not [p.name for p in out.glob("predictions*")]  # the first batch was streamed, then thrown away
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_predict_on_two_ddp_processes_writes_what_one_process_writes(make_cfg, tmp_path):
    """trainer=ddp over two CPU processes (gloo): the ranks predict 3 of 7 images each (one unreadable image skipped),
    rank 0 merges their parts into input order: the same files as one process, and no part left behind."""
    best = run(make_cfg(TINY))["best_checkpoint"]
    folder = tmp_path / "photos"
    photos(folder, 7)
    (folder / "03.png").write_bytes(b"not a picture")
    args = TINY + ["mode=predict", f"ckpt_path={best}", f"predict.input={folder}", "data.batch_size=2",
                   "data.skip_corrupt=true"]
    single = run(make_cfg(args))
    env = {"TOOLKIT_CACHE_DIR": str(tmp_path / "cache"), "TOOLKIT_LOG_DIR": str(tmp_path / "outputs")}
    ddp = run_cli(args + FAST + ["trainer=ddp", "trainer.devices=2", f"hydra.run.dir={tmp_path}/ddp"], cwd=tmp_path,
                  env=env)
    assert ddp.returncode == 0, ddp.stdout[-2000:] + ddp.stderr[-3000:]
    assert "MEMBER: 2/2" in ddp.stdout + ddp.stderr  # Lightning started the second process
    one = json.loads((Path(single["output_dir"]) / "predictions.json").read_text())
    two = json.loads((tmp_path / "ddp" / "predictions.json").read_text())
    assert [Path(r["path"]).name for r in two] == ["00.png", "01.png", "02.png", "04.png", "05.png", "06.png"]
    assert [r["path"] for r in two] == [r["path"] for r in one]
    for a, b in zip(one, two, strict=True):  # batches of other sizes: the float sums may differ in the last bits
        assert [p["label"] for p in a["top_k"]] == [p["label"] for p in b["top_k"]]
        assert [p["score"] for p in a["top_k"]] == pytest.approx([p["score"] for p in b["top_k"]], abs=1e-5)
    # one summary line naming the files, printed by rank 0 only; no rank's partial file left behind
    assert ddp.stdout.count("wrote ") == 1 and not list((tmp_path / "ddp").glob(".predictions.rank*"))
