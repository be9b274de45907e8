"""Class-folder image datasets (`<root>/<class>/*.jpg`): ImageNet layout, custom datasets, generated shapes."""

from __future__ import annotations

import logging
import random
from pathlib import Path

from torch.utils.data import Dataset

from toolkit.data.base import BaseDataModule
from toolkit.data.images import list_images, load_rgb
from toolkit.data.transforms import classification_eval_transform, classification_train_transform
from toolkit.errors import DataError

log = logging.getLogger(__name__)


def scan_class_folders(root: Path, classes: list[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, [(image path, label)]) for `root/<class>/*`. Missing root or empty class: DataError."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found. Expected <root>/<class name>/<images>; "
                        "set the data root in the config (e.g. data.root=... or paths.data_dir=...).")
    found = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = list(classes) if classes is not None else found
    if not classes:
        raise DataError(f"{root}: no class folders inside. Expected <root>/<class name>/<images>.")
    samples: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        folder = root / name
        images = list_images(folder) if folder.is_dir() else []
        if not images:
            raise DataError(f"{folder}: class folder {'is missing' if not folder.is_dir() else 'has no images'} "
                            f"(class {label} {name!r}). Add images or remove the class from the dataset.")
        samples += [(p, label) for p in images]
    return classes, samples


class ImageListDataset(Dataset):
    """(path, label) samples decoded with `load_rgb`; corrupt files raise, or return None when skipped."""

    def __init__(self, samples: list[tuple[Path, int]], transform, skip_corrupt: bool = False):
        self.samples = samples
        self.transform = transform
        self.skip_corrupt = skip_corrupt

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, index: int):
        """The decoded HxWx3 array of sample `index`; subclasses adapt it here (e.g. crop to a box)."""
        return load_rgb(self.samples[index][0])

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
    """`root/train/<class>/*` and `root/val/<class>/*`, or one `root/<class>/*` split by `val_fraction`."""

    def __init__(
        self,
        root: str,
        train_dir: str = "train",
        val_dir: str = "val",
        val_fraction: float | None = None,
        split_seed: int = 0,
        crop_scale: tuple[float, float] = (0.35, 1.0),
        crop_fraction: float = 0.875,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.train_dir, self.val_dir = train_dir, val_dir
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.crop_scale = tuple(crop_scale)
        self.crop_fraction = crop_fraction
        self.classes: list[str] | None = None

    def train_transform(self):
        return classification_train_transform(self.resolution, self.mean, self.std, self.crop_scale)

    def eval_transform(self):
        return classification_eval_transform(self.resolution, self.mean, self.std, self.crop_fraction)

    def scan(self) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]]]:
        """Train and val samples; sets `self.classes`."""
        if self.val_fraction is None:
            self.classes, train = scan_class_folders(self.root / self.train_dir)
            _, val = scan_class_folders(self.root / self.val_dir, self.classes)
            return train, val
        if not 0 < self.val_fraction < 1:
            raise DataError(f"data.val_fraction={self.val_fraction}: must be between 0 and 1 (exclusive)")
        self.classes, samples = scan_class_folders(self.root)
        rng = random.Random(self.split_seed)
        train, val = [], []
        for label in range(len(self.classes)):  # split per class so every class is in both splits
            items = [s for s in samples if s[1] == label]
            rng.shuffle(items)
            n_val = max(1, round(len(items) * self.val_fraction))
            val += items[:n_val]
            train += items[n_val:]
        return train, val

    def setup(self, stage: str | None = None) -> None:
        if self.classes is not None:
            return
        train, val = self.scan()
        self.train_dataset = ImageListDataset(train, self.train_transform(), self.skip_corrupt)
        self.val_dataset = ImageListDataset(val, self.eval_transform(), self.skip_corrupt)
        log.info("%s: %d classes, %d train / %d val images", self.root, len(self.classes), len(train), len(val))

    @property
    def num_classes(self) -> int:
        if self.classes is None:
            self.setup()
        return len(self.classes)

    def task_kwargs(self) -> dict:
        return {"num_classes": self.num_classes, "class_names": list(self.classes)}

    def predict_dataset(self, paths: list[Path]) -> Dataset:
        return ImageListDataset([(p, -1) for p in paths], self.eval_transform(), self.skip_corrupt)
