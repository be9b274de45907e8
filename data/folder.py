"""Class-folder image datasets (`<root>/<class>/*.jpg`): ImageNet layout, custom datasets, generated shapes."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

from torch.utils.data import Dataset

from toolkit.data.base import BaseDataModule
from toolkit.data.decode import read_rgb
from toolkit.data.images import IMAGE_EXTENSIONS, unreadable_reason
from toolkit.data.listfiles import Duplicates, read_lines
from toolkit.data.transforms import classification_eval_transform, classification_train_transform
from toolkit.errors import DataError

log = logging.getLogger(__name__)


def _folder_images(folder: Path) -> tuple[list[Path], list[str]]:
    """(image files, names of other entries) directly inside `folder`; one directory read, no stat per regular file
    (ImageNet's train split is 1.28M files). Entries that cannot be read as files (a broken or looping link, a FIFO
    named `.jpg`: opening it would wait forever) are not samples: named with the others, with the reason."""
    images, others = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            reason = unreadable_reason(entry) if entry.is_symlink() or not _is_plain(entry) else None
            if reason is not None:
                others.append(f"{entry.name} ({reason})")
            elif entry.is_dir():
                others.append(entry.name + "/")
            else:
                (images if Path(entry.name).suffix.lower() in IMAGE_EXTENSIONS else others).append(entry.name)
    return [folder / n for n in sorted(images)], sorted(others)


def _listing(root: Path) -> list[Path]:
    try:
        return list(root.iterdir())
    except OSError as e:
        raise DataError(f"{root}: dataset folder cannot be read ({e.strerror}). Fix its permissions.") from e


def _is_plain(entry: os.DirEntry) -> bool:
    """A regular file or a folder, from the directory listing alone (no stat for a plain entry)."""
    return entry.is_file(follow_symlinks=False) or entry.is_dir(follow_symlinks=False)


def scan_class_folders(root: Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, [(image path, label)]) for `root/<class>/*`, classes sorted by folder name.

    A missing root, a missing or empty class folder, or (with `classes` given) a folder for a class not in
    `classes` is a DataError naming the folder. Files without an image extension are not samples: they are
    counted and named in a warning, never dropped silently.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found. Expected <root>/<class name>/<images>; "
                        "set the data root in the config (e.g. data.root=... or paths.data_dir=...).")
    entries = [p for p in _listing(root) if not p.name.startswith(".")]
    for p in entries:  # a link that cannot be followed may be a class folder: losing a class silently is worse
        if p.is_symlink() and (reason := unreadable_reason(p)) is not None:
            raise DataError(f"{p}: {reason}, where class folders are read. Point the link at a folder of images, "
                            "or remove it.")
    found = sorted(p.name for p in entries if p.is_dir())
    if classes is not None:
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DataError(f"{root}: {len(extra)} class folder(s) not among the {len(classes)} training classes: "
                            f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}. Every split needs the same classes.")
    classes = list(classes) if classes is not None else found
    if not classes:
        raise DataError(f"{root}: no class folders inside. Expected <root>/<class name>/<images>.")
    samples: list[tuple[Path, int]] = []
    ignored: list[str] = []
    for label, name in enumerate(classes):
        folder = root / name
        try:
            images, others = _folder_images(folder) if folder.is_dir() else ([], [])
        except OSError as e:  # no permission to list it (the system's refusal, named with the folder)
            raise DataError(f"{folder}: class folder cannot be read ({e.strerror}). Fix its permissions, or remove "
                            "it from every split.") from e
        if not images:
            only = f"; it holds only {', '.join(others[:5])}{' ...' if len(others) > 5 else ''}" if others else ""
            raise DataError(f"{folder}: class folder {'is missing' if not folder.is_dir() else 'has no images'} "
                            f"(class {label} {name!r}; image extensions: {', '.join(IMAGE_EXTENSIONS)}{only}). "
                            "Add images or remove the class folder from every split.")
        samples += [(p, label) for p in images]
        ignored += [f"{name}/{o}" for o in others]
    if ignored:
        log.warning("%s: ignored %d file(s) that are not readable images (no image extension, unreadable): %s%s", root, len(ignored),
                    ", ".join(ignored[:5]), " ..." if len(ignored) > 5 else "")
    return classes, samples


class ImageListDataset(Dataset):
    """(path, label) samples decoded with `read_rgb`; corrupt files raise, or return None when skipped.

    `min_side`: the shorter side the transform needs at most; large JPEGs decode reduced to it (`load_rgb`).
    """

    def __init__(self, samples: list[tuple[Path, int]], transform, skip_corrupt: bool = False, min_side: int | None = None):
        self.samples = samples
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int):
        """The decoded HxWx3 array of sample `index`; subclasses adapt it here (e.g. crop to a box)."""
        return read_rgb(self.samples[index][0], self.min_side)  # JPEGs via torchvision's decoder (data/decode.py)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        try:
            image = self.load_image(index)
        except DataError as e:
            if not self.skip_corrupt:
                raise
            log.warning("skipped corrupt sample %d: %s", index, e)
            return None
        return {"image": self.transform(image=image)["image"], "label": label, "path": str(path)}


class ClassFolderDataModule(BaseDataModule):
    """Class-folder data in one of three layouts, class names from the folder names (sorted):

    - `root/train/<class>/*` and `root/val/<class>/*` (the default; ImageNet's layout);
    - `root/<class>/*` with `val_list`: a text file of image paths relative to `root`, one per line,
      that form the val split (an explicit split); every other image trains;
    - `root/<class>/*` with `val_fraction`: a seeded random split per class (every class in both splits).
    """

    kind = "classification"

    def __init__(
        self,
        root: str,
        train_dir: str = "train",
        val_dir: str = "val",
        val_fraction: float | None = None,
        val_list: str | None = None,
        split_seed: int = 0,
        crop_scale: tuple[float, float] = (0.35, 1.0),
        crop_fraction: float = 0.875,
        hflip: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.train_dir, self.val_dir = train_dir, val_dir
        self.val_fraction = val_fraction
        self.val_list = val_list
        self.split_seed = split_seed
        self.crop_scale = tuple(crop_scale)
        self.crop_fraction = crop_fraction
        self.hflip = hflip
        self.classes: list[str] | None = None

    def train_transform(self):
        return classification_train_transform(self.resolution, self.mean, self.std, self.crop_scale, self.hflip)

    def eval_transform(self):
        return classification_eval_transform(self.resolution, self.mean, self.std, self.crop_fraction)

    def decode_min_side(self) -> int:
        """Shorter side a JPEG may be decoded down to: twice the resolution covers the eval resize
        (resolution / crop_fraction) and a random crop of 35% of the area at aspect 4:3 without upscaling."""
        return 2 * self.resolution

    def scan(self) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
        """Train and val samples; sets `self.classes`."""
        if self.val_fraction is not None and self.val_list:
            raise DataError(f"data.val_fraction={self.val_fraction} and data.val_list={self.val_list!r}: "
                            "give one way of splitting, not both")
        if self.val_list:
            return self._split_by_list(Path(self.val_list).expanduser())
        if self.val_fraction is None:
            self.classes, train = scan_class_folders(self.root / self.train_dir)
            _, val = scan_class_folders(self.root / self.val_dir, self.classes)
            return train, val
        if not 0 < self.val_fraction < 1:
            raise DataError(f"data.val_fraction={self.val_fraction}: must be between 0 and 1 (exclusive)")
        self.classes, samples = scan_class_folders(self.root)
        rng = random.Random(self.split_seed)
        train, val = [], []
        for label, name in enumerate(self.classes):  # split per class so every class is in both splits
            items = [s for s in samples if s[1] == label]
            if len(items) < 2:
                raise DataError(f"{self.root / name}: {len(items)} image(s); a val_fraction split needs at least 2 "
                                "per class (one to train, one to validate)")
            rng.shuffle(items)
            n_val = min(len(items) - 1, max(1, round(len(items) * self.val_fraction)))
            val += items[:n_val]
            train += items[n_val:]
        return train, val

    def _split_by_list(self, list_file: Path) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
        if not list_file.is_file():
            raise DataError(f"data.val_list={str(list_file)!r}: no such file. Give a text file of image paths relative "
                            f"to {self.root} (e.g. `cat/0001.jpg`), one per line.")
        self.classes, samples = scan_class_folders(self.root)
        wanted = {}
        repeats = Duplicates(list_file, "image")
        for number, line in enumerate(read_lines(list_file, "val list"), start=1):
            rel = line.strip()
            if rel and not rel.startswith("#") and repeats.is_new(Path(rel).as_posix(), None, number):
                wanted[Path(rel).as_posix()] = number
        repeats.report(log)
        by_rel = {p.relative_to(self.root).as_posix(): (p, label) for p, label in samples}
        unknown = [f"line {n}: {rel}" for rel, n in wanted.items() if rel not in by_rel]
        if unknown:
            raise DataError(f"{list_file}: {len(unknown)} listed image(s) not found under {self.root} as <class>/<file>: "
                            f"{'; '.join(unknown[:3])}. Paths are relative to data.root.")
        val = [by_rel[rel] for rel in wanted]
        train = [s for rel, s in by_rel.items() if rel not in wanted]
        empty = sorted({self.classes[label] for _, label in val} ^ set(self.classes))
        missing_train = sorted(set(self.classes) - {self.classes[label] for _, label in train})
        if missing_train:
            raise DataError(f"{list_file}: every image of class(es) {', '.join(missing_train[:5])} is in the val list; "
                            "leave some to train on")
        if empty:
            log.warning("%s: no val images for class(es) %s", list_file, ", ".join(empty[:10]))
        return train, val

    def setup(self, stage: str | None = None) -> None:
        if self.classes is not None:
            return
        train, val = self.scan()
        self.train_dataset = ImageListDataset(train, self.train_transform(), self.skip_corrupt, self.decode_min_side())
        self.val_dataset = ImageListDataset(val, self.eval_transform(), self.skip_corrupt, self.decode_min_side())
        log.info("%s: %d classes, %d train / %d val images", self.root, len(self.classes), len(train), len(val))

    @property
    def num_classes(self) -> int:
        if self.classes is None:
            self.setup()
        return len(self.classes)

    def task_kwargs(self) -> dict:
        return {"num_classes": self.num_classes, "class_names": list(self.classes)}

    def predict_dataset(self, paths: list[Path]) -> Dataset:
        return ImageListDataset([(p, -1) for p in paths], self.eval_transform(), self.skip_corrupt, self.decode_min_side())
