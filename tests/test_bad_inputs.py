"""A corpus of malformed inputs fed to every loader: each is a DataError naming the file and record, or a counted skip.

Crafted files stay tiny (16-pixel images, a few lines); one case per loader runs through `run(cfg)`.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from toolkit.data.base import SkippingCollate
from toolkit.data.celeba import (
    AttributeCSVDataModule,
    read_attribute_csv,
    read_celeba_attributes,
    read_celeba_partition,
)
from toolkit.data.coco import CocoDetectionDataset, read_coco_json
from toolkit.data.detection_transforms import detection_transforms
from toolkit.data.faces import read_lfw_pairs, scan_face_folder
from toolkit.data.folder import ClassFolderDataModule, ImageListDataset
from toolkit.data.generated import ensure_generated
from toolkit.data.geo import read_geo_csv
from toolkit.data.imagenet import read_synset_words
from toolkit.data.images import load_rgb
from toolkit.data.prepare_imagenet_val import labels_from_solution_csv, labels_from_text, sort_val_folder
from toolkit.data.prepare_stanford_dogs import main as prepare_stanford_dogs
from toolkit.data.stanford_dogs import read_mat_list, read_voc_box
from toolkit.data.stanford_dogs_synthetic import generate_stanford_dogs, write_mat_list, write_official_tars
from toolkit.errors import DataError
from toolkit.run import run

LATIN1 = "caf\xe9".encode("latin-1")  # a byte that is not UTF-8


def tiny_jpeg(path: Path, size: int = 16, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), (value, 255 - value, 60)).save(path)
    return path


def png_bomb(path: Path, width: int = 30000, height: int = 30000) -> Path:
    """A valid PNG header announcing width x height pixels (2.7 GB decoded) over a few bytes of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


# ---- text files that are not UTF-8: every list reader names the file and the line -----------------------------
def _geo(p: Path):
    return read_geo_csv(p, check_files=False)


def _val_list(p: Path):
    root = p.parent / "photos"
    for c in ("a", "b"):
        for i in range(2):
            tiny_jpeg(root / c / f"{i}.jpg")
    return ClassFolderDataModule(root=str(root), val_list=str(p), num_workers=0).scan()


NON_UTF8_READERS = {
    "geo_csv": ("geo.csv", b"path,lat,lon\na.jpg,1,2\n" + LATIN1 + b".jpg,3,4\n", 3, _geo),
    "celeba_attributes": ("list_attr_celeba.txt", b"1\nSmiling Male\n" + LATIN1 + b".jpg 1 -1\n", 3, read_celeba_attributes),
    "celeba_partition": ("list_eval_partition.txt", b"000001.jpg 0\n" + LATIN1 + b".jpg 1\n", 2, read_celeba_partition),
    "attribute_csv": ("attrs.csv", b"image,Smiling\na.jpg,1\n" + LATIN1 + b".jpg,0\n", 3, read_attribute_csv),
    "lfw_pairs": ("pairs.txt", b"1\nA 1 2\n" + LATIN1 + b" 1 B 2\n", 3, read_lfw_pairs),
    "val_list": ("val.txt", b"a/0.jpg\n" + LATIN1 + b"/0.jpg\n", 2, _val_list),
    "synset_words": ("synset_words.txt", b"n01440764 tench\nn01443537 " + LATIN1 + b"\n", 2, read_synset_words),
    "imagenet_labels": ("labels.txt", b"x.JPEG n01440764\n" + LATIN1 + b".JPEG n01443537\n", 2, labels_from_text),
    "imagenet_solution_csv": ("LOC_val_solution.csv", b"ImageId,PredictionString\n" + LATIN1 + b",n014 1 2 3 4\n", 2,
                              labels_from_solution_csv),
}


@pytest.mark.parametrize("case", sorted(NON_UTF8_READERS))
def test_non_utf8_list_file_names_file_and_line(tmp_path, case):
    name, content, line, reader = NON_UTF8_READERS[case]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"{name}:{line}: not UTF-8"):
        reader(path)


# ---- images: bombs, empty files, folders, truncation ----------------------------------------------------------
def _zero_bytes(p: Path) -> Path:
    p.write_bytes(b"")
    return p


def _folder(p: Path) -> Path:
    p.mkdir()
    return p


def _truncated(p: Path) -> Path:
    data = tiny_jpeg(p.with_suffix(".full.jpg"), size=64).read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def _fifo(p: Path) -> Path:
    os.mkfifo(p)  # reading it would wait forever for a writer
    return p


BAD_IMAGES = {
    "named_pipe": (_fifo, "not a regular file"),
    "png_bomb_30000px": (png_bomb, "decompression bomb"),
    "png_bomb_10000px": (lambda p: png_bomb(p, 10000, 10000), "over the 89 Mpx limit"),
    "zero_bytes": (_zero_bytes, "cannot be decoded as an image"),
    "folder": (_folder, "is a folder, not an image file"),
    "truncated": (_truncated, "cannot be decoded as an image"),
    "text_file": (lambda p: p.write_text("not an image") and p, "cannot be decoded as an image"),
}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_bad_image_is_named_or_counted_when_skipped(tmp_path, case, caplog):
    make, why = BAD_IMAGES[case]
    bad = make(tmp_path / "bad.png")
    with pytest.raises(DataError, match=why) as error:
        load_rgb(bad)
    assert str(bad) in str(error.value) and "data.skip_corrupt=true" in str(error.value)
    # skip_corrupt=true: the sample is dropped, counted in the batch and named in the log
    dataset = ImageListDataset([(tiny_jpeg(tmp_path / "good.jpg"), 0), (bad, 1)], lambda image: {"image": image},
                               skip_corrupt=True)
    with caplog.at_level(logging.WARNING):
        batch = SkippingCollate()([dataset[0], dataset[1]])
    assert batch["skipped"] == 1 and batch["label"].tolist() == [0]
    assert any(str(bad) in r.getMessage() for r in caplog.records)


def test_large_jpeg_decodes_reduced_to_what_the_transform_needs(tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (2048, 1536), (200, 30, 30)).save(photo)
    assert load_rgb(photo).shape == (1536, 2048, 3)
    assert load_rgb(photo, min_side=300).shape == (384, 512, 3)  # 1/4 scale: the shorter side stays >= 300
    png = tmp_path / "photo.png"
    Image.new("RGB", (64, 48)).save(png)
    assert load_rgb(png, min_side=8).shape == (48, 64, 3)  # only JPEG has cheap reduced decoding


def test_class_folder_datasets_decode_large_jpegs_reduced(tmp_path, caplog):
    root = tmp_path / "photos"
    for c in ("a", "b"):
        for i in range(2):
            tiny_jpeg(root / c / f"{i}.jpg")
    Image.new("RGB", (2048, 1536), (10, 200, 10)).save(root / "a" / "big.jpg")
    (root / "b" / "sub").mkdir()
    (root / "b" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")  # a broken link
    dm = ClassFolderDataModule(root=str(root), val_fraction=0.4, resolution=64, num_workers=0)
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert "b/gone.jpg (broken link)" in caplog.text and "b/sub/" in caplog.text  # named, not silently ignored
    dataset = dm.train_dataset if any(p.name == "big.jpg" for p, _ in dm.train_dataset.samples) else dm.val_dataset
    big = next(i for i, (p, _) in enumerate(dataset.samples) if p.name == "big.jpg")
    assert dataset.load_image(big).shape == (192, 256, 3)  # 1/8 scale keeps the shorter side >= 2 x 64
    assert dataset[big]["image"].shape == (3, 64, 64)


# ---- faces: hidden folders above the dataset root are not hidden files --------------------------------------------
def test_face_folder_under_a_hidden_folder_is_found(tmp_path):
    root = tmp_path / ".cache" / "faces"
    for name in ("Ann", "Bob"):
        tiny_jpeg(root / name / f"{name}_0001.jpg")
    tiny_jpeg(root / ".thumbnails" / "x.jpg")  # hidden below the root: skipped
    tiny_jpeg(root / "Ann" / ".Ann_0002.jpg")
    files, identities = scan_face_folder(root)
    assert files == ["Ann/Ann_0001.jpg", "Bob/Bob_0001.jpg"] and sorted(identities) == ["Ann", "Bob"]


@pytest.mark.slow
def test_face_embedding_on_generated_faces_under_dot_cache(make_cfg, tmp_path):
    """`task=face_embedding data=faces_synthetic` with the default cache under ~/.cache (here tmp/.cache)."""
    cache = tmp_path / "home" / ".cache" / "mobilenet-toolkit"
    result = run(make_cfg(["task=face_embedding", "data=faces_synthetic", "teacher=none", f"paths.cache_dir={cache}",
                           "data.n_identities=3", "data.n_test_identities=2", "data.images_per_identity=2",
                           "data.folds=2", "data.pairs_per_fold=1", "data.width=32", "data.height=32",
                           "data.resolution=32", "data.batch_size=4", "backbone.alpha=0.25", "trainer.fast_dev_run=true"]))
    assert result is not None
    assert any(cache.glob("faces_synthetic_*/train/Person_0001/*.jpg"))


@pytest.mark.parametrize(("body", "needle"), [
    ("1\n.. 1 2\nA 1 B 2\n", r"pairs.txt:2: person name '\.\.' is not a folder name"),
    ("1\nA/../../x 1 2\nA 1 B 2\n", r"pairs.txt:2: person name 'A/\.\./\.\./x' is not a folder name"),
    ("1\nA 1 2\nA 1 ../x 2\n", r"pairs.txt:3: person name '\.\./x' is not a folder name"),
    ("1\nA -1 2\nA 1 B 2\n", r"pairs.txt:2: expected 'Name n1 n2'"),
    ("1\nA " + "9" * 400 + " 2\nA 1 B 2\n", r"pairs.txt:2: expected 'Name n1 n2'"),
    ("1\nA 1 2\n", r"pairs.txt: the header promises 1 set\(s\) of 1 same \+ 1 different pairs"),
    ("", r"pairs.txt: empty pairs file"),
    ("0\n", r"pairs.txt:1: the header announces 1 set\(s\) of 0 pairs"),
    ("1 " + "9" * 400 + "\n", r"pairs.txt:1: expected a header"),
])
def test_malformed_lfw_pairs(tmp_path, body, needle):
    path = tmp_path / "pairs.txt"
    path.write_text(body)
    with pytest.raises(DataError, match=needle):
        read_lfw_pairs(path)


# ---- CelebA and attribute CSVs: duplicates, empty files, paths leaving the root -------------------------------------
def test_celeba_partition_duplicates(tmp_path, caplog):
    path = tmp_path / "list_eval_partition.txt"
    path.write_text("000001.jpg 0\n000002.jpg 1\n000001.jpg 2\n")
    with pytest.raises(DataError, match=r"list_eval_partition.txt:3: image 000001.jpg is listed twice \(first on line 1\)"):
        read_celeba_partition(path)
    path.write_text("000001.jpg 0\n000002.jpg 1\n000001.jpg 0\n")
    with caplog.at_level(logging.WARNING):
        assert read_celeba_partition(path) == {"000001.jpg": 0, "000002.jpg": 1}
    assert "dropped 1 identical duplicate line(s) (e.g. line 3 repeats line 1)" in caplog.text
    path.write_text("\n\n")
    with pytest.raises(DataError, match="list_eval_partition.txt: no '<image> <0|1|2>' lines"):
        read_celeba_partition(path)


@pytest.mark.parametrize(("body", "needle"), [
    ("image,Smiling,Male\na.jpg,1,0\nb.jpg,0,0\na.jpg,0,0\n", r"attrs.csv:4: image a.jpg is listed twice \(first on line 2\)"),
    ("image,Smiling,Male\n", r"attrs.csv: a header but no image rows"),
    ("", r"attrs.csv: empty file"),
    ("image,Smiling,Smiling\na.jpg,1,0\n", r"attrs.csv:1: column\(s\) Smiling appear twice"),
    ("image,Smiling\n../../etc/passwd,1\n", r"attrs.csv:2: path '../../etc/passwd' leaves the dataset root"),
    ("image,Smiling\n/etc/passwd,1\n", r"attrs.csv:2: path '/etc/passwd' leaves the dataset root"),
    ("image,Smiling\na.jpg,1,0\n", r"attrs.csv:2: 3 fields but the header has 2"),
    ("image,Smiling\na.jpg,maybe\n", r"attrs.csv:2: column 'Smiling' has 'maybe'"),
])
def test_malformed_attribute_csv(tmp_path, body, needle):
    path = tmp_path / "attrs.csv"
    path.write_text(body)
    with pytest.raises(DataError, match=needle):
        read_attribute_csv(path)


def test_attribute_csv_identical_duplicates_are_dropped_and_counted(tmp_path, caplog):
    path = tmp_path / "attrs.csv"
    path.write_text("image,Smiling\na.jpg,1\nb.jpg,0\na.jpg,1\n")
    with caplog.at_level(logging.WARNING):
        _, files, labels, _ = read_attribute_csv(path)
    assert files == ["a.jpg", "b.jpg"] and labels.tolist() == [[1], [0]]
    assert "attrs.csv: dropped 1 identical duplicate line(s) (e.g. line 4 repeats line 2)" in caplog.text


def test_celeba_attribute_file_leaving_root_and_absurd_count(tmp_path):
    path = tmp_path / "list_attr_celeba.txt"
    path.write_text("1\nSmiling\n../../x.jpg 1\n")
    with pytest.raises(DataError, match=r"list_attr_celeba.txt:3: path '../../x.jpg' leaves the dataset root"):
        read_celeba_attributes(path)
    path.write_text("9" * 400 + "\nSmiling\na.jpg 1\n")
    with pytest.raises(DataError, match=r"list_attr_celeba.txt:1: expected the number of images"):
        read_celeba_attributes(path)


def test_attribute_csv_missing_images_through_run(make_cfg, tmp_path):
    """Entry point: `task=face_attributes data=attributes_csv` names the missing images before training."""
    tiny_jpeg(tmp_path / "faces" / "a.jpg")
    (tmp_path / "faces" / "attrs.csv").write_text("image,Smiling,split\na.jpg,1,train\ngone.jpg,0,val\n")
    with pytest.raises(DataError, match=r"1 listed images are missing from .*faces \(e.g. gone.jpg\)"):
        run(make_cfg(["task=face_attributes", "data=attributes_csv", f"data.csv={tmp_path / 'faces' / 'attrs.csv'}",
                      "teacher=none", "backbone.alpha=0.25", "data.resolution=32"]))
    dm = AttributeCSVDataModule(csv=str(tmp_path / "faces" / "attrs.csv"), skip_corrupt=True, num_workers=0)
    with pytest.raises(DataError, match="the val split is empty"):  # skipping leaves nothing to validate on
        dm.setup()


# ---- geo CSV --------------------------------------------------------------------------------------------------------
@pytest.fixture
def geo_images(tmp_path) -> Path:
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        tiny_jpeg(tmp_path / name)
    return tmp_path


@pytest.mark.parametrize(("body", "needle"), [
    ("path,lat,lon,id\na.jpg,1,2,x\na.jpg,1,3,y\n", r"geo.csv:3: image .*a.jpg is listed twice \(first on line 2\)"),
    ("path,lat,lon,id\na.jpg,1,2,x\nb.jpg,5,6,x\n", r"geo.csv:3: id x is listed twice \(first on line 2\)"),
    ("path,lat,lon\n", r"geo.csv: no usable rows"),
    ("", r"geo.csv: empty file"),
    ("path,lat,lon\na.jpg,nan,1\n", r"geo.csv: no usable rows \(1 rejected\).*latitude 'nan' is not a number"),
    ("path,lat,lon\nb.jpg,1,2\n" + "a" * 200_000 + ",1,2\n", r"geo.csv:3: malformed CSV \(field larger than field limit"),
])
def test_malformed_geo_csv(geo_images, body, needle):
    path = geo_images / "geo.csv"
    path.write_text(body)
    with pytest.raises(DataError, match=needle):
        read_geo_csv(path)


def test_geo_csv_bad_rows_are_counted_and_named(geo_images, caplog):
    path = geo_images / "geo.csv"
    path.write_text("path,lat,lon,id\na.jpg,1,2,x\na.jpg,1,2,x\nb.jpg," + "1" * 400 + ",4,y\n../a.jpg,1,1,z\n"
                    "c.jpg,-33.9,-70.6\nc.jpg,1\n")
    with caplog.at_level(logging.WARNING):
        records = read_geo_csv(path)
    assert len(records) == 2 and records.ids == ["x", ""]  # negative coordinates are fine
    reasons = dict(records.rejected)
    assert sorted(reasons) == [4, 5, 7]
    assert "is not a number" in reasons[4] and "leaves the image root" in reasons[5] and "found 2 field(s)" in reasons[7]
    assert "dropped 1 identical duplicate line(s) (e.g. line 3 repeats line 2)" in caplog.text
    with pytest.raises(DataError, match=r"geo.csv: 3 of 5 rows rejected: line 4: latitude '1111"):
        read_geo_csv(path, bad_rows="error")


# ---- COCO ------------------------------------------------------------------------------------------------------------
def coco_tree(root: Path, images: list[dict] | None = None, annotations: list[dict] | None = None) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    if images is None:
        images = [{"id": i, "file_name": f"{i}.jpg", "width": 16, "height": 16} for i in (1, 2, 3)]
        for i in (1, 2, 3):
            tiny_jpeg(root / "images" / f"{i}.jpg")
    ann = root / "instances.json"
    ann.write_text(json.dumps({"images": images, "categories": [{"id": 7, "name": "thing"}],
                               "annotations": annotations or [{"id": 1, "image_id": images[0]["id"], "category_id": 7,
                                                               "bbox": [1, 1, 8, 8]}]}))
    return ann


def coco_dataset(ann: Path, skip_corrupt: bool = False) -> CocoDetectionDataset:
    _, eval_tf = detection_transforms("ssd", 32, (0.5,) * 3, (0.5,) * 3)
    return CocoDetectionDataset(ann, ann.parent / "images", eval_tf, skip_corrupt=skip_corrupt)


@pytest.mark.parametrize("file_name", ["../../etc/passwd", "/etc/passwd", "a/../../x.jpg"])
def test_coco_file_name_leaving_the_image_folder_is_refused(tmp_path, file_name):
    ann = coco_tree(tmp_path, images=[{"id": 5, "file_name": file_name, "width": 16, "height": 16}])
    with pytest.raises(DataError, match=rf"instances.json: image id 5: path '{file_name}' leaves the dataset root"):
        coco_dataset(ann)


def test_coco_missing_image_files_found_at_setup_or_skipped_with_a_count(tmp_path, caplog):
    ann = coco_tree(tmp_path)
    (tmp_path / "images" / "2.jpg").unlink()
    (tmp_path / "images" / "3.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"2 of 3 image files .* are missing or unreadable \(id 2 2.jpg: not found; "
                                         r"id 3 3.jpg: is empty \(0 bytes\)\)"):
        coco_dataset(ann)
    with caplog.at_level(logging.WARNING):
        dataset = coco_dataset(ann, skip_corrupt=True)
    assert len(dataset) == 1 and "2 of 3 image files" in caplog.text and "left out (data.skip_corrupt=true)" in caplog.text


@pytest.mark.parametrize(("change", "needle"), [
    ({"images": []}, "'images' is empty"),
    ({"bbox": [1, 1, int("9" * 400), 4]}, r"annotations\[0\] \(id 1\): bbox must be 4 finite numbers"),
    ({"bbox": [1, 1, float("nan"), 4]}, r"annotations\[0\] \(id 1\): bbox must be 4 finite numbers"),
    ({"width": int("9" * 400)}, r"images\[0\] \(id 1, 1.jpg\): needs a positive integer 'width'"),
    ({"image_id": 2**70}, r"images\[0\]: needs an integer 'id'"),
])
def test_coco_absurd_values_name_the_record(tmp_path, change, needle):
    image = {"id": change.get("image_id", 1), "file_name": "1.jpg", "width": change.get("width", 16), "height": 16}
    data = {"images": change.get("images", [image]), "categories": [{"id": 7, "name": "thing"}],
            "annotations": [{"id": 1, "image_id": image["id"], "category_id": 7, "bbox": change.get("bbox", [1, 1, 4, 4])}]}
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))  # json writes NaN as the NaN literal Python's json reads back
    with pytest.raises(DataError, match=needle):
        read_coco_json(path)


def test_coco_json_nested_too_deep(tmp_path):
    path = tmp_path / "instances.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="instances.json: JSON nested too deeply"):
        read_coco_json(path)


def test_coco_degenerate_boxes_are_counted_and_named(tmp_path, caplog):
    anns = [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [1, 1, 8, 8]},
            {"id": 2, "image_id": 1, "category_id": 7, "bbox": [1, 1, 0, 5]},      # zero width
            {"id": 3, "image_id": 1, "category_id": 7, "bbox": [4, 4, -3, 5]},     # negative width
            {"id": 4, "image_id": 2, "category_id": 7, "bbox": [40, 40, 5, 5]}]    # outside the 16x16 image
    with caplog.at_level(logging.INFO):
        dataset = coco_dataset(coco_tree(tmp_path, annotations=anns))
    assert dataset.stats.degenerate == 3 and dataset.stats.boxes == 1
    assert "3 degenerate dropped" in caplog.text and "e.g. annotation id 2" in caplog.text


def test_coco_missing_images_through_run(make_cfg, tmp_path):
    """Entry point: `task=detection_ssd data=coco_custom` stops at setup naming the missing file."""
    ann = coco_tree(tmp_path)
    (tmp_path / "images" / "3.jpg").unlink()
    with pytest.raises(DataError, match=r"1 of 3 image files .* \(id 3 3.jpg: not found\)"):
        run(make_cfg(["task=detection_ssd", "data=coco_custom", f"data.train_ann={ann}", f"data.val_ann={ann}",
                      f"data.train_images={tmp_path / 'images'}", f"data.val_images={tmp_path / 'images'}",
                      "backbone.alpha=0.25", "data.resolution=64"]))


# ---- Stanford Dogs -----------------------------------------------------------------------------------------------------
@pytest.fixture
def dogs(tmp_path) -> Path:
    root = tmp_path / "dogs"
    generate_stanford_dogs(root, n_breeds=2, n_train=4, n_test=2, image_size=16, seed=0)
    return root


@pytest.mark.parametrize(("content", "needle"), [
    (b"this is not a MATLAB file at all, just text" * 4, "cannot be read as a MATLAB .mat file"),
    (b"", "cannot be read as a MATLAB .mat file"),
    ("truncated", "cannot be read as a MATLAB .mat file"),
])
def test_stanford_dogs_list_that_is_not_a_mat_file(dogs, content, needle):
    path = dogs / "lists" / "train_list.mat"
    if content == "truncated":
        content = path.read_bytes()[: path.stat().st_size // 2]
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"train_list.mat: {needle}"):
        read_mat_list(path)


def test_stanford_dogs_absurd_numbers(dogs):
    write_mat_list(dogs / "lists" / "bad.mat", ["n02085620-Chihuahua/x.jpg"], [float("inf")])
    with pytest.raises(DataError, match=r"bad.mat: entry 0 \(n02085620-Chihuahua/x.jpg\) has label inf"):
        read_mat_list(dogs / "lists" / "bad.mat")
    box = next((dogs / "Annotation").rglob("*_0"))
    box.write_text(box.read_text().replace("<xmin>", "<xmin>" + "9" * 400, 1))
    with pytest.raises(DataError, match=rf"{box.name}: malformed VOC annotation \(OverflowError"):
        read_voc_box(box)


def test_prepare_stanford_dogs_refuses_a_list_entry_leaving_the_root(dogs, tmp_path, capsys):
    write_mat_list(dogs / "lists" / "train_list.mat", ["../../elsewhere/x.jpg"], [1])
    tars = write_official_tars(dogs, tmp_path / "downloads")
    out = tmp_path / "prepared"
    code = prepare_stanford_dogs(["--images", str(tars["images"]), "--lists", str(tars["lists"]), "--out", str(out)])
    assert code == 2
    assert "train_list.mat: entry 0: path '../../elsewhere/x.jpg' leaves the dataset root" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists()


def test_synset_words_conflicting_duplicates(tmp_path):
    path = tmp_path / "synset_words.txt"
    path.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish\nn01440764 carp\n")
    with pytest.raises(DataError, match=r"synset_words.txt:3: wnid n01440764 is listed twice \(first on line 1\)"):
        read_synset_words(path)


# ---- prepare_imagenet_val: nothing moves outside the validation folder ----------------------------------------------------
@pytest.mark.parametrize(("line", "needle"), [
    ("ILSVRC2012_val_00000001.JPEG ../../elsewhere", r"labels.txt: line 2: wnid '../../elsewhere' is not a plain name"),
    ("../../elsewhere/x.JPEG n01440764", r"labels.txt: line 2: file name '../../elsewhere/x.JPEG' is not a plain name"),
    ("/tmp/x.JPEG n01440764", r"labels.txt: line 2: file name '/tmp/x.JPEG' is not a plain name"),
    ("ILSVRC2012_val_00000002.JPEG n01443537", r"labels.txt: line 2: ILSVRC2012_val_00000002.JPEG is labelled n01443537, "
                                              r"but line 1 labels it n01440764"),
])
def test_prepare_imagenet_val_refuses_lines_leaving_the_folder(tmp_path, line, needle):
    val = tmp_path / "imagenet" / "val"
    tiny_jpeg(val / "ILSVRC2012_val_00000002.JPEG")
    labels = tmp_path / "labels.txt"
    labels.write_text(f"ILSVRC2012_val_00000002.JPEG n01440764\n{line}\n")
    with pytest.raises(DataError, match=needle):
        sort_val_folder(val, labels_from_text(labels))
    assert (val / "ILSVRC2012_val_00000002.JPEG").is_file() and not (tmp_path / "elsewhere").exists()


def test_prepare_imagenet_val_refuses_a_wnid_folder_linking_outside(tmp_path):
    val, outside = tmp_path / "val", tmp_path / "outside"
    tiny_jpeg(val / "a.JPEG")
    outside.mkdir()
    (val / "n01440764").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataError, match="n01440764: links outside"):
        sort_val_folder(val, {"a.JPEG": "n01440764"})
    assert (val / "a.JPEG").is_file() and not any(outside.iterdir())


# ---- generated data: one process generates, the others wait ---------------------------------------------------------------
RACER = """
import logging, sys, time
from pathlib import Path
import numpy as np
from PIL import Image
from toolkit.data.generated import ensure_generated
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
root, go = Path(sys.argv[1]), Path(sys.argv[2])

def generate():  # images drawn over ~1 s: without the lock, the other process would generate too
    rng = np.random.default_rng(0)
    for i in range(25):
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
        time.sleep(0.04)

Path(sys.argv[3]).touch()
while not go.exists():  # both processes ask for the data at the same moment
    time.sleep(0.005)
ensure_generated(root, {"kind": "race"}, generate)
"""


@pytest.mark.slow
def test_two_processes_on_a_cold_cache_generate_once(tmp_path):
    """Two processes (as DDP ranks) ask for one generated folder at once: one generates, the other waits and reads."""
    data, go = tmp_path / "cache" / "race", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(data), str(go), str(tmp_path / f"ready{i}")],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"ready{i}").exists() or p.poll() is not None for i, p in enumerate(procs)):
            assert time.monotonic() < deadline, "the racing processes did not start"
            time.sleep(0.01)
        go.touch()
        outputs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), outputs
    log = "".join(outputs)
    assert log.count("generating race data") == 1, log
    files = sorted(p.name for p in data.iterdir())
    assert files == [f"{i:03d}.png" for i in range(25)] + ["manifest.json"]
    rng = np.random.default_rng(0)  # the files are the one generator's, whole
    for i in range(25):
        assert np.array_equal(np.asarray(Image.open(data / f"{i:03d}.png")), rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))


def test_interrupted_or_damaged_generation_is_redone(tmp_path, caplog):
    calls = []
    root = tmp_path / "data"

    def generate():
        calls.append(1)
        (root / "x.txt").write_text("data")

    assert ensure_generated(root, {"kind": "test"}, generate) is True
    assert ensure_generated(root, {"kind": "test"}, generate) is False and len(calls) == 1
    (root / "manifest.json").write_text('{"kind": "te')  # cut short
    with caplog.at_level(logging.WARNING):
        assert ensure_generated(root, {"kind": "test"}, generate) is True
    assert "its manifest does not match this config (or is damaged); generating again" in caplog.text
    assert json.loads((root / "manifest.json").read_text()) == {"kind": "test"} and len(calls) == 2
    np.testing.assert_equal((root / "x.txt").read_text(), "data")
