"""Face data formats: CelebA attribute/partition files, attribute CSV, LFW pairs, generated trees in those formats."""

from pathlib import Path

import numpy as np
import pytest

from toolkit.data.celeba import (
    CELEBA_ATTRIBUTES,
    AttributeCSVDataModule,
    CelebADataModule,
    read_attribute_csv,
    read_celeba_attributes,
    read_celeba_partition,
)
from toolkit.data.faces import FacesFolderDataModule, Pair, make_pairs, read_lfw_pairs, write_lfw_pairs
from toolkit.data.faces_synthetic import generate_celeba_tree, generate_identity_tree
from toolkit.errors import DataError

NAMES3 = "Smiling Male Young"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_attribute_file_parses_celeba_layout(tmp_path):
    # CelebA pads values to width 2 and ends line 2 with a space
    path = write(tmp_path, "list_attr_celeba.txt", f"2\n{NAMES3} \n000001.jpg  1 -1  1\n000002.jpg -1 -1  1\n")
    names, files, labels = read_celeba_attributes(path)
    assert names == ["Smiling", "Male", "Young"]
    assert files == ["000001.jpg", "000002.jpg"]
    assert labels.tolist() == [[1, 0, 1], [0, 0, 1]]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (f"2\n{NAMES3}\n000001.jpg 1 -1\n000002.jpg 1 1 1\n", "list_attr_celeba.txt:3: expected an image name and 3 values"),
        (f"2\n{NAMES3}\n000001.jpg 1 -1 1\n000002.jpg 1 0 1\n", "list_attr_celeba.txt:4: attribute values must be 1 or -1, found '0'"),
        (f"3\n{NAMES3}\n000001.jpg 1 -1 1\n000002.jpg 1 1 1\n", "line 1 says 3 images but 2 rows follow"),
        (f"two\n{NAMES3}\n", "list_attr_celeba.txt:1: expected the number of images"),
        (f"2\n{NAMES3}\n000001.jpg 1 -1 1\n000001.jpg 1 1 1\n", "list_attr_celeba.txt:4: image 000001.jpg is listed twice"),
    ],
)
def test_attribute_file_malformed_rows_name_file_and_line(tmp_path, body, message):
    path = write(tmp_path, "list_attr_celeba.txt", body)
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        read_celeba_attributes(path)


def test_partition_file(tmp_path):
    path = write(tmp_path, "list_eval_partition.txt", "000001.jpg 0\n000002.jpg 2\n")
    assert read_celeba_partition(path) == {"000001.jpg": 0, "000002.jpg": 2}
    bad = write(tmp_path, "bad.txt", "000001.jpg 0\n000002.jpg val\n")
    with pytest.raises(DataError, match=r"bad.txt:2: expected '<image> <0\|1\|2>'"):
        read_celeba_partition(bad)


def test_attribute_csv_with_unknown_cells_and_split(tmp_path):
    path = write(tmp_path, "attrs.csv", "image,Smiling,Hat,split\na.jpg,1,0,train\nb.jpg,-1,,val\nc.jpg,,1,2\n")
    names, files, labels, splits = read_attribute_csv(path)
    assert names == ["Smiling", "Hat"] and files == ["a.jpg", "b.jpg", "c.jpg"]
    assert labels.tolist() == [[1, 0], [0, -1], [-1, 1]]
    assert splits == [0, 1, 2]
    bad = write(tmp_path, "bad.csv", "image,Smiling\na.jpg,maybe\n")
    with pytest.raises(DataError, match=r"bad.csv:2: column 'Smiling' has 'maybe'"):
        read_attribute_csv(bad)


def test_missing_celeba_names_every_file(tmp_path):
    dm = CelebADataModule(root=str(tmp_path / "celeba"), num_workers=0)
    with pytest.raises(DataError) as err:
        dm.setup()
    for name in ("list_attr_celeba.txt", "list_eval_partition.txt", "img_align_celeba"):
        assert name in str(err.value)


def test_generated_celeba_tree_reads_with_the_real_loader(tmp_path):
    root = generate_celeba_tree(tmp_path / "celeba", n_train=6, n_val=4, n_test=2, width=44, height=54, seed=1)
    dm = CelebADataModule(root=str(root), resolution=32, batch_size=4, num_workers=0)
    dm.setup()
    assert dm.attribute_names == list(CELEBA_ATTRIBUTES)
    assert [len(dm.splits[s][0]) for s in ("train", "val", "test")] == [6, 4, 2]
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (4, 3, 32, 32)
    assert batch["labels"].shape == (4, 40) and set(batch["labels"].unique().tolist()) <= {0.0, 1.0}
    assert dm.distill_keys() == [f"{i:06d}.jpg" for i in range(1, 7)]
    # No_Beard is derived exactly as drawn: no goatee and no stubble
    _, _, labels = read_celeba_attributes(root / "list_attr_celeba.txt")
    col = {n: i for i, n in enumerate(CELEBA_ATTRIBUTES)}
    assert np.array_equal(labels[:, col["No_Beard"]], 1 - (labels[:, col["Goatee"]] | labels[:, col["5_o_Clock_Shadow"]]))


def test_csv_datamodule_holds_out_labelled_rows(tmp_path):
    root = generate_celeba_tree(tmp_path / "celeba", n_train=8, n_val=0, n_test=0, width=44, height=54)
    rows = "\n".join(f"img_align_celeba/{i:06d}.jpg,{i % 2},{'' if i > 6 else 1 - i % 2}" for i in range(1, 9))
    write(root, "custom.csv", "image,Smiling,Hat\n" + rows + "\n")
    dm = AttributeCSVDataModule(csv=str(root / "custom.csv"), val_fraction=0.25, resolution=32, num_workers=0)
    dm.setup()
    assert dm.task_kwargs() == {"num_attributes": 2, "attribute_names": ["Smiling", "Hat"]}
    assert len(dm.splits["train"][0]) == 6 and len(dm.splits["val"][0]) == 2


def test_lfw_pairs_round_trip_and_errors(tmp_path):
    pairs = [Pair("A/A_0001.jpg", "A/A_0002.jpg", True, 0), Pair("A/A_0001.jpg", "B/B_0003.jpg", False, 0),
             Pair("B/B_0001.jpg", "B/B_0003.jpg", True, 1), Pair("B/B_0002.jpg", "A/A_0002.jpg", False, 1)]
    path = write_lfw_pairs(tmp_path / "pairs.txt", pairs, sets=2, per_set=1)
    assert path.read_text().splitlines()[:3] == ["2\t1", "A\t1\t2", "A\t1\tB\t3"]
    assert read_lfw_pairs(path) == pairs
    single = write(tmp_path, "dev.txt", "1\nA 1 2\nA 1 B 3\n")
    assert [p.fold for p in read_lfw_pairs(single)] == [None, None]
    for body, message in [("2 1\nA 1 2\nA 1 B 3\n", "header promises 2 set"),
                          ("1 1\nA 1 2\nA one B 3\n", "dev2.txt:3: expected 'Name n1 n2'"),
                          ("1 1\nA 1 B 2\nA 1 3\n", "dev2.txt:2: a different-person pair where each set lists")]:
        with pytest.raises(DataError, match=message):
            read_lfw_pairs(write(tmp_path, "dev2.txt", body))


def test_make_pairs_are_distinct_and_balanced():
    identities = {f"P{i}": [f"P{i}/P{i}_{n:04d}.jpg" for n in range(1, 4)] for i in range(6)}
    pairs, per_fold = make_pairs(identities, folds=3, per_fold=4, seed=0)
    assert per_fold == 4 and len(pairs) == 24
    assert len({(p.a, p.b) for p in pairs}) == 24
    for p in pairs:
        assert (p.a.split("/")[0] == p.b.split("/")[0]) == p.same
    assert [sum(p.same for p in pairs if p.fold == f) for f in range(3)] == [4, 4, 4]


def test_generated_identity_tree_verifies_with_its_pairs(tmp_path):
    root = generate_identity_tree(tmp_path / "faces", n_train_ids=3, n_test_ids=4, images_per_id=3, folds=2,
                                  pairs_per_fold=3, width=40, height=40)
    dm = FacesFolderDataModule(root=str(root / "train"), pairs=str(root / "pairs.txt"), pairs_root=str(root / "lfw"),
                               resolution=32, num_workers=0, batch_size=8)
    dm.setup("fit")
    assert dm.task_kwargs() == {"num_identities": 3}
    assert len(dm.train_dataset) == 9 and dm.train_dataset.labels == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    val = dm.val_dataset
    assert val.pairs.shape == (12, 2) and val.same.sum() == 6 and val.folds.tolist() == [0] * 6 + [1] * 6
    # without a pairs file, pairs come from the identity folders of root
    auto = FacesFolderDataModule(root=str(root / "lfw"), folds=2, pairs_per_fold=3, resolution=32, num_workers=0)
    auto.setup("validate")
    assert len(auto.val_dataset.same) == 12
