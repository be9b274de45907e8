"""Stanford Dogs (120 breeds) in its official layout: `Images/`, `Annotation/` and the `lists/*.mat` splits.

    <root>/Images/n02085620-Chihuahua/n02085620_10074.jpg
    <root>/Annotation/n02085620-Chihuahua/n02085620_10074     (VOC XML, no extension)
    <root>/lists/train_list.mat, test_list.mat                 (file_list, annotation_list, labels 1-based)

Breeds are named from the folder names (label k = the k-th folder in sorted order, as the lists number them).
`crop_to_box=true` crops every image to the union of its annotated dog boxes (off by default, as the paper).
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import scipy.io
from scipy.io.matlab import MatReadError

from toolkit.data.folder import ClassFolderDataModule, ImageListDataset
from toolkit.data.listfiles import path_under
from toolkit.errors import DataError

log = logging.getLogger(__name__)

DOWNLOAD_HINT = ("Download images.tar, annotation.tar and lists.tar from http://vision.stanford.edu/aditya86/ImageNetDogs/ "
                 "and run `python -m toolkit.data.prepare_stanford_dogs --images images.tar --annotations annotation.tar "
                 "--lists lists.tar --out DIR`, then set data.root=DIR (default: <paths.data_dir>/stanford_dogs).")


MAX_COORDINATE = 1_000_000  # pixels; larger VOC box values are corrupt, not photos


def breed_name(folder: str) -> str:
    """`n02085620-Chihuahua` -> `Chihuahua`; `n02097474-Tibetan_terrier` -> `Tibetan terrier`."""
    return folder.split("-", 1)[1].replace("_", " ") if "-" in folder else folder


def _mat_string(value) -> str:
    """A MATLAB string as scipy returns it inside a cell array: unwrap the nested 1-element arrays."""
    while isinstance(value, np.ndarray):
        if value.size != 1:
            if value.dtype.kind == "U" and value.ndim == 1:  # char matrix rows read as an array of strings
                return "".join(value.tolist())
            raise ValueError(f"expected one string, found an array of shape {value.shape}")
        value = value.reshape(-1)[0]
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if not isinstance(value, str):
        raise ValueError(f"expected a string, found {type(value).__name__}")
    return str(value)  # a plain str, not numpy's str_ (whose repr would show in messages)


def read_mat_list(path: str | Path) -> tuple[list[str], list[str] | None, np.ndarray]:
    """(file_list, annotation_list or None, labels 0-based) from `train_list.mat` / `test_list.mat` / `file_list.mat`."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: split list not found. {DOWNLOAD_HINT}")
    try:
        mat = scipy.io.loadmat(str(path))
    # scipy's errors for non-MAT, truncated or v7.3 (HDF5) files
    except (MatReadError, ValueError, OSError, NotImplementedError, TypeError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot be read as a MATLAB .mat file ({type(e).__name__}: {e}); re-extract lists.tar") from e
    for key in ("file_list", "labels"):
        if key not in mat:
            raise DataError(f"{path}: no {key!r} variable (found {sorted(k for k in mat if not k.startswith('__'))}); "
                            "expected the official Stanford Dogs lists")
    try:
        files = [_mat_string(v) for v in np.asarray(mat["file_list"], dtype=object).reshape(-1)]
        annotations = ([_mat_string(v) for v in np.asarray(mat["annotation_list"], dtype=object).reshape(-1)]
                       if "annotation_list" in mat else None)
    except ValueError as e:
        raise DataError(f"{path}: malformed file_list/annotation_list ({e})") from e
    labels = np.asarray(mat["labels"]).reshape(-1)
    if labels.dtype.kind not in "iuf":
        raise DataError(f"{path}: 'labels' holds {labels.dtype} values; expected numbers (breed indices from 1)")
    if len(labels) != len(files) or (annotations is not None and len(annotations) != len(files)):
        raise DataError(f"{path}: {len(files)} files but {len(labels)} labels"
                        + (f" and {len(annotations)} annotations" if annotations is not None else ""))
    wrong = ~np.isfinite(labels) | (labels < 1) | (labels > 1_000_000) | (labels != np.round(labels))
    if wrong.any():
        bad = int(np.flatnonzero(wrong)[0])
        raise DataError(f"{path}: entry {bad} ({files[bad]}) has label {labels[bad].item()!r}; labels are integers from 1")
    return files, annotations, labels.astype(np.int64) - 1


def read_voc_box(path: Path) -> tuple[int, int, int, int]:
    """Union (xmin, ymin, xmax, ymax) of every object box in a VOC XML annotation file."""
    if not path.is_file():
        raise DataError(f"{path}: annotation not found (data.crop_to_box=true needs Annotation/). {DOWNLOAD_HINT}")
    try:
        boxes = [[int(float(obj.find(f"bndbox/{k}").text)) for k in ("xmin", "ymin", "xmax", "ymax")]
                 for obj in ET.parse(path).getroot().iter("object")]
    # OverflowError: a 400-digit coordinate parses as an infinite float
    except (ET.ParseError, AttributeError, TypeError, ValueError, OverflowError) as e:
        raise DataError(f"{path}: malformed VOC annotation ({type(e).__name__}: {str(e)[:100]}); "
                        "expected <object><bndbox><xmin>... boxes of pixel coordinates") from e
    if any(abs(v) > MAX_COORDINATE for box in boxes for v in box):
        raise DataError(f"{path}: a box coordinate beyond {MAX_COORDINATE} pixels; fix the <bndbox> values")
    if not boxes:
        raise DataError(f"{path}: annotation holds no <object> box; set data.crop_to_box=false or fix the file")
    b = np.array(boxes)
    box = (int(b[:, 0].min()), int(b[:, 1].min()), int(b[:, 2].max()), int(b[:, 3].max()))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise DataError(f"{path}: empty box {box}")
    return box


class BoxCropDataset(ImageListDataset):
    """`ImageListDataset` that crops each image to its box (xmin, ymin, xmax, ymax), or keeps it whole for None."""

    def __init__(self, samples, boxes: list[tuple[int, int, int, int] | None], transform, skip_corrupt: bool = False,
                 min_side: int | None = None):
        if min_side is not None and any(b is not None for b in boxes):
            raise ValueError("boxes are in original pixels: crop-to-box datasets decode at full size (min_side=None)")
        super().__init__(samples, transform, skip_corrupt, min_side)
        self.boxes = boxes

    def load_image(self, index: int):
        image = super().load_image(index)
        box = self.boxes[index]
        if box is None:
            return image
        h, w = image.shape[:2]
        x0, y0 = min(max(box[0], 0), w - 1), min(max(box[1], 0), h - 1)
        x1, y1 = max(min(box[2], w), x0 + 1), max(min(box[3], h), y0 + 1)
        return image[y0:y1, x0:x1]


class StanfordDogsDataModule(ClassFolderDataModule):
    """Train on `train_list`, validate on `val_list` (the official test split by default, as the paper reports)."""

    def __init__(
        self,
        root: str,
        train_list: str = "lists/train_list.mat",
        val_list: str = "lists/test_list.mat",
        crop_to_box: bool = False,
        **kwargs,
    ):
        super().__init__(root=root, **kwargs)
        self.train_list, self.val_list = train_list, val_list
        self.crop_to_box = crop_to_box
        self.boxes: dict[str, list] = {}

    def _breeds(self) -> list[str]:
        images = self.root / "Images"
        if not images.is_dir():
            raise DataError(f"{images}: Stanford Dogs images not found (looked for {images}/<wnid>-<breed>/*.jpg "
                            f"and {self.root}/{self.train_list}). {DOWNLOAD_HINT}")
        folders = sorted(p.name for p in images.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise DataError(f"{images}: no breed folders inside. {DOWNLOAD_HINT}")
        return folders

    def _read_split(self, list_file: str, folders: list[str]) -> tuple[list[tuple[Path, int]], list | None]:
        mat_path = self.root / list_file
        files, annotations, labels = read_mat_list(mat_path)
        samples, missing = [], []
        for i, (rel, label) in enumerate(zip(files, labels, strict=True)):
            path = path_under(self.root / "Images", rel, f"{mat_path}: entry {i}")
            folder = rel.replace("\\", "/").split("/")[0]
            if label >= len(folders) or folders[label] != folder:
                expected = folders[label] if label < len(folders) else f"none ({len(folders)} breed folders)"
                raise DataError(f"{mat_path}: entry {i} ({rel}) has label {label + 1}, whose folder is {expected}; "
                                "the lists and Images/ disagree (labels number the sorted breed folders from 1)")
            if not path.is_file():
                missing.append(str(path))
            samples.append((path, int(label)))
        if missing:
            raise DataError(f"{mat_path}: {len(missing)} listed image(s) not found, e.g. {missing[:3]}. {DOWNLOAD_HINT}")
        boxes = None
        if self.crop_to_box:
            names = annotations or [f[: -len(Path(f).suffix)] if Path(f).suffix else f for f in files]
            boxes = [read_voc_box(path_under(self.root / "Annotation", n, f"{mat_path}: entry {i}")) for i, n in enumerate(names)]
        return samples, boxes

    def scan(self) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
        folders = self._breeds()
        train, self.boxes["train"] = self._read_split(self.train_list, folders)
        val, self.boxes["val"] = self._read_split(self.val_list, folders)
        self.folders = folders
        self.classes = [breed_name(f) for f in folders]
        return train, val

    def setup(self, stage: str | None = None) -> None:
        if self.classes is not None:
            return
        train, val = self.scan()
        min_side = None if self.crop_to_box else self.decode_min_side()  # boxes are in full-size pixels
        self.train_dataset = BoxCropDataset(train, self.boxes["train"] or [None] * len(train), self.train_transform(),
                                            self.skip_corrupt, min_side)
        self.val_dataset = BoxCropDataset(val, self.boxes["val"] or [None] * len(val), self.eval_transform(),
                                          self.skip_corrupt, min_side)
        log.info("%s: %d breeds, %d train / %d val images%s", self.root, len(self.classes), len(train), len(val),
                 ", cropped to the annotated boxes" if self.crop_to_box else "")
