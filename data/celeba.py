"""Face attribute data: CelebA's on-disk format, and a generic CSV of image + attribute columns.

CelebA (https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html), under `data.root`:
- `list_attr_celeba.txt`: line 1 the image count, line 2 the 40 attribute names, then one row per
  image: `000001.jpg -1  1  1 -1 ...` (+1 present, -1 absent);
- `list_eval_partition.txt`: `000001.jpg 0` (0 train, 1 val, 2 test);
- `img_align_celeba/`: the aligned and cropped 178x218 JPEGs.
Labels become 1/0 tensors; unknown labels (blank CSV cells) are -1 and are ignored by losses and AP.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from toolkit.data.base import BaseDataModule
from toolkit.data.face_transforms import face_eval_transform, face_train_transform
from toolkit.data.folder import ImageListDataset
from toolkit.data.listfiles import Duplicates, path_under, read_csv_rows, read_lines
from toolkit.errors import ConfigError, DataError

log = logging.getLogger(__name__)

CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs", "Big_Lips", "Big_Nose",
    "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows", "Chubby", "Double_Chin", "Eyeglasses",
    "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache",
    "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks",
    "Sideburns", "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick",
    "Wearing_Necklace", "Wearing_Necktie", "Young",
)
SPLITS = {"train": 0, "val": 1, "test": 2}
_POSITIVE, _NEGATIVE, _UNKNOWN = {"1", "+1", "true", "yes"}, {"0", "-1", "false", "no"}, {"", "?", "nan", "na"}


def read_celeba_attributes(path: str | Path) -> tuple[list[str], list[str], np.ndarray]:
    """(attribute names, image files, N x A int8 labels in {0, 1}) from `list_attr_celeba.txt`."""
    path = Path(path)
    lines = read_lines(path, "CelebA attribute file")
    if len(lines) < 2:
        raise DataError(f"{path}: expected the image count on line 1 and the attribute names on line 2")
    if not (lines[0].strip().isdecimal() and len(lines[0].strip()) <= 12):
        raise DataError(f"{path}:1: expected the number of images, found {lines[0].strip()[:60]!r}")
    count = int(lines[0].strip())
    names = lines[1].split()
    if not names:
        raise DataError(f"{path}:2: expected the attribute names, found an empty line")
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"{path}:2: attribute name(s) {', '.join(twice)} appear twice; name each attribute once")
    files, rows = [], []
    repeats = Duplicates(path, "image")
    for lineno, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(names) + 1:
            raise DataError(f"{path}:{lineno}: expected an image name and {len(names)} values (+1/-1), "
                            f"found {len(fields) - 1} values: {line[:80]!r}")
        bad = [v for v in fields[1:] if v not in ("1", "-1", "+1")]
        if bad:
            raise DataError(f"{path}:{lineno}: attribute values must be 1 or -1, found {bad[0]!r} for {fields[0]}")
        path_under(path.parent, fields[0], f"{path}:{lineno}")
        row = [v != "-1" for v in fields[1:]]
        if not repeats.is_new(fields[0], row, lineno):
            continue
        files.append(fields[0])
        rows.append(row)
    repeats.report(log)
    if len(files) + len(repeats.dropped) != count:
        raise DataError(f"{path}: line 1 says {count} images but {len(files)} rows follow; the file is truncated or "
                        "the count is wrong")
    return names, files, np.asarray(rows, dtype=np.int8).reshape(len(files), len(names))


def read_celeba_partition(path: str | Path) -> dict[str, int]:
    """image file -> split (0 train, 1 val, 2 test) from `list_eval_partition.txt`."""
    path = Path(path)
    split: dict[str, int] = {}
    repeats = Duplicates(path, "image")
    for lineno, line in enumerate(read_lines(path, "CelebA partition file"), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(f"{path}:{lineno}: expected '<image> <0|1|2>' (train/val/test), found {line[:80]!r}")
        if repeats.is_new(fields[0], int(fields[1]), lineno):
            split[fields[0]] = int(fields[1])
    repeats.report(log)
    if not split:
        raise DataError(f"{path}: no '<image> <0|1|2>' lines; the partition file is empty")
    return split


def _parse_label(value: str, path: Path, lineno: int, column: str) -> int:
    v = value.strip().lower()
    if v in _POSITIVE:
        return 1
    if v in _NEGATIVE:
        return 0
    if v in _UNKNOWN:
        return -1
    raise DataError(f"{path}:{lineno}: column {column!r} has {value!r}; use 1 (present), 0 or -1 (absent), "
                    "or leave it blank (unknown)")


def read_attribute_csv(path: str | Path, image_column: str = "image", split_column: str = "split",
                       image_root: str | Path | None = None) -> tuple[list[str], list[str], np.ndarray, list[int] | None]:
    """(attribute names, image paths, N x A int8 labels in {1, 0, -1 unknown}, splits or None) from a CSV.

    The header names the image column, the attribute columns and optionally a split column
    (train/val/test or 0/1/2). Blank attribute cells are unknown (unlabeled images are fine for
    distillation: the teacher labels them).
    """
    path = Path(path)
    rows_in = read_csv_rows(path, "attribute CSV")
    header = rows_in[0] if rows_in else None
    if not header:
        raise DataError(f"{path}: empty file; expected a header '{image_column},<attribute>,...'")
    header = [h.strip() for h in header]
    if image_column not in header:
        raise DataError(f"{path}:1: no {image_column!r} column in the header {header}; set data.image_column=...")
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        raise DataError(f"{path}:1: column(s) {', '.join(twice)} appear twice in the header; name each column once")
    img_i = header.index(image_column)
    split_i = header.index(split_column) if split_column in header else None
    attr_cols = [i for i in range(len(header)) if i not in (img_i, split_i)]
    if not attr_cols:
        raise DataError(f"{path}:1: no attribute columns besides {image_column!r}")
    files, rows, splits = [], [], []
    repeats = Duplicates(path, "image")
    for lineno, fields in enumerate(rows_in[1:], start=2):
        if not fields or not any(f.strip() for f in fields):
            continue
        if len(fields) != len(header):
            raise DataError(f"{path}:{lineno}: {len(fields)} fields but the header has {len(header)}")
        image = fields[img_i].strip()
        path_under(Path(image_root) if image_root else path.parent, image, f"{path}:{lineno}")
        labels = [_parse_label(fields[i], path, lineno, header[i]) for i in attr_cols]
        split = None
        if split_i is not None:
            s = fields[split_i].strip().lower()
            if s not in SPLITS and s not in ("0", "1", "2"):
                raise DataError(f"{path}:{lineno}: split {fields[split_i]!r}; use train/val/test or 0/1/2")
            split = SPLITS.get(s, int(s) if s.isdigit() else 0)
        if not repeats.is_new(image, (labels, split), lineno):
            continue
        files.append(image)
        rows.append(labels)
        if split is not None:
            splits.append(split)
    repeats.report(log)
    if not files:
        raise DataError(f"{path}: a header but no image rows; add rows '<image>,<attribute values>...'")
    names = [header[i] for i in attr_cols]
    return names, files, np.asarray(rows, dtype=np.int8).reshape(len(files), len(names)), (splits if split_i is not None else None)


class AttributeDataset(ImageListDataset):
    """Images with multi-label attributes; adds labels (float, -1 unknown) and key (the file as listed)."""

    def __init__(self, image_dir: Path | None, files: list[str], labels: np.ndarray, transform, skip_corrupt: bool = False):
        paths = [image_dir / f if image_dir is not None else Path(f) for f in files]
        super().__init__([(p, -1) for p in paths], transform, skip_corrupt)
        self.files, self.labels = files, labels

    def __getitem__(self, index: int):
        sample = super().__getitem__(index)
        if sample is not None:
            sample.update(labels=torch.from_numpy(self.labels[index].astype(np.float32)), key=self.files[index])
        return sample


class AttributeDataModule(BaseDataModule):
    """Splits of an attribute dataset; subclasses implement `read()`.

    `eval_split` is what validation and `mode=eval` measure (val, or test for final figures).
    """

    kind = "face_attributes"

    def __init__(self, eval_split: str = "val", crop_scale: tuple[float, float] = (0.8, 1.0), hflip: bool = True,
                 color_jitter: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        if eval_split not in SPLITS:
            raise ConfigError("data.eval_split", eval_split, f"allowed: {', '.join(SPLITS)}")
        self.eval_split = eval_split
        self.crop_scale, self.hflip, self.color_jitter = tuple(crop_scale), hflip, color_jitter
        self.attribute_names: list[str] | None = None
        self.image_dir: Path | None = None
        self.splits: dict[str, tuple[list[str], np.ndarray]] = {}

    def read(self) -> tuple[list[str], Path, dict[str, tuple[list[str], np.ndarray]]]:
        """(attribute names, image folder, {split: (files relative to it, labels)})."""
        raise NotImplementedError

    def train_transform(self):
        return face_train_transform(self.resolution, self.mean, self.std, self.crop_scale, self.hflip, self.color_jitter)

    def eval_transform(self):
        return face_eval_transform(self.resolution, self.mean, self.std)

    def _check_images(self) -> None:
        missing = [f for files, _ in self.splits.values() for f in files if not (self.image_dir / f).is_file()]
        if not missing:
            return
        message = (f"{len(missing)} listed images are missing from {self.image_dir} (e.g. {', '.join(missing[:3])})")
        if not self.skip_corrupt:
            raise DataError(message + "; restore them, or set data.skip_corrupt=true to leave them out (counted in the log)")
        log.warning("%s; left out (data.skip_corrupt=true)", message)
        gone = set(missing)
        for name, (files, labels) in self.splits.items():
            keep = [i for i, f in enumerate(files) if f not in gone]
            self.splits[name] = ([files[i] for i in keep], labels[keep])

    def setup(self, stage: str | None = None) -> None:
        if self.attribute_names is not None:
            return
        self.attribute_names, self.image_dir, self.splits = self.read()
        self._check_images()
        train_files, train_labels = self.splits["train"]
        eval_files, eval_labels = self.splits[self.eval_split]
        if not eval_files:
            raise DataError(f"{self.image_dir}: the {self.eval_split} split is empty; check the partition/split column")
        self.train_dataset = AttributeDataset(self.image_dir, train_files, train_labels, self.train_transform(), self.skip_corrupt)
        self.val_dataset = AttributeDataset(self.image_dir, eval_files, eval_labels, self.eval_transform(), self.skip_corrupt)
        log.info("%s: %d attributes; %s", self.image_dir, len(self.attribute_names),
                 ", ".join(f"{n} {len(f)}" for n, (f, _) in self.splits.items()))

    def task_kwargs(self) -> dict:
        self.setup()
        return {"num_attributes": len(self.attribute_names), "attribute_names": list(self.attribute_names)}

    def distill_keys(self) -> list[str]:
        """Keys of the images a student distils on: the teacher (or its cache) must cover these."""
        self.setup()
        return list(self.splits["train"][0])

    def distill_dataset(self) -> Dataset:
        """The distillation images with the eval transform: what `mode=teacher_cache` runs the teacher on."""
        self.setup()
        files, labels = self.splits["train"]
        return AttributeDataset(self.image_dir, files, labels, self.eval_transform(), self.skip_corrupt)

    def predict_dataset(self, paths: list[Path]) -> Dataset:
        n = len(self.attribute_names) if self.attribute_names else 1
        return AttributeDataset(None, [str(p) for p in paths], -np.ones((len(paths), n), dtype=np.int8),
                                self.eval_transform(), self.skip_corrupt)


class CelebADataModule(AttributeDataModule):
    """CelebA under `root`: `list_attr_celeba.txt`, `list_eval_partition.txt`, `img_align_celeba/`."""

    def __init__(self, root: str, attr_file: str = "list_attr_celeba.txt", partition_file: str = "list_eval_partition.txt",
                 image_dir: str = "img_align_celeba", **kwargs):
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.attr_file, self.partition_file, self.image_subdir = attr_file, partition_file, image_dir

    def read(self):
        attr, part, images = self.root / self.attr_file, self.root / self.partition_file, self.root / self.image_subdir
        missing = [str(p) for p in (attr, part) if not p.is_file()] + ([str(images) + "/"] if not images.is_dir() else [])
        if missing:
            raise DataError(
                f"CelebA not found: missing {', '.join(missing)}. Download img_align_celeba.zip, Anno/list_attr_celeba.txt "
                f"and Eval/list_eval_partition.txt from https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html and place "
                f"them as {self.root}/{{img_align_celeba/,{self.attr_file},{self.partition_file}}} "
                "(or point data.root=... / paths.data_dir=... at them; data=celeba_synthetic generates a miniature copy)")
        names, files, labels = read_celeba_attributes(attr)
        partition = read_celeba_partition(part)
        unlisted = [f for f in files if f not in partition]
        if unlisted:
            raise DataError(f"{part}: no split for {len(unlisted)} images of {attr} (e.g. {', '.join(unlisted[:3])})")
        which = np.array([partition[f] for f in files])
        splits = {}
        for name, code in SPLITS.items():
            idx = np.flatnonzero(which == code)
            splits[name] = ([files[i] for i in idx], labels[idx])
        return names, images, splits


class AttributeCSVDataModule(AttributeDataModule):
    """A CSV of image paths (relative to `image_root`) and attribute columns; custom attribute datasets.

    Without a split column, `val_fraction` of the labelled rows (seeded) become the val split.
    """

    def __init__(self, csv: str, image_root: str | None = None, image_column: str = "image", split_column: str = "split",
                 val_fraction: float = 0.1, split_seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.csv = Path(csv).expanduser()
        self.image_root = Path(image_root).expanduser() if image_root else self.csv.parent
        self.image_column, self.split_column = image_column, split_column
        self.val_fraction, self.split_seed = val_fraction, split_seed

    def read(self):
        if not self.csv.is_file():
            raise DataError(f"{self.csv}: attribute CSV not found; set data.csv=... (header: "
                            f"{self.image_column},<attribute>,...[,{self.split_column}])")
        names, files, labels, splits = read_attribute_csv(self.csv, self.image_column, self.split_column, self.image_root)
        if splits is None:
            labelled = [i for i in range(len(files)) if (labels[i] >= 0).any()]
            rng = random.Random(self.split_seed)
            rng.shuffle(labelled)
            val = set(labelled[: max(1, round(len(labelled) * self.val_fraction))])
            splits = [1 if i in val else 0 for i in range(len(files))]
        which = np.asarray(splits)
        return names, self.image_root, {
            name: ([files[i] for i in np.flatnonzero(which == code)], labels[which == code]) for name, code in SPLITS.items()
        }
