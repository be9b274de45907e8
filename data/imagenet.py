"""ImageNet (ILSVRC-2012) from its class folders: `train/<wnid>/*.JPEG` and `val/<wnid>/*.JPEG`."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from toolkit.data.folder import ClassFolderDataModule
from toolkit.data.images import IMAGE_EXTENSIONS
from toolkit.data.listfiles import Duplicates, read_lines
from toolkit.errors import DataError

log = logging.getLogger(__name__)

WNID = re.compile(r"^n\d{8}$")
#: files mapping wnids to names, looked for in the data root when `synset_words` is not given:
#: Kaggle's `LOC_synset_mapping.txt` and Caffe's `synset_words.txt` (both `n01440764 tench, Tinca tinca`)
SYNSET_FILES = ("LOC_synset_mapping.txt", "synset_words.txt")
PREPARE_HINT = ("Sort the official flat validation folder with: python -m toolkit.data.prepare_imagenet_val "
                "<root>/val --devkit ILSVRC2012_devkit_t12.tar.gz (or --solution-csv LOC_val_solution.csv)")
DOWNLOAD_HINT = ("ImageNet needs a licence and a manual download (https://image-net.org/download-images, or "
                 "Kaggle's imagenet-object-localization-challenge); without it, try the built-in generated data: data=shapes")


def read_synset_words(path: Path) -> dict[str, str]:
    """wnid -> first human name, from `wnid name[, synonym, ...]` lines."""
    names = {}
    repeats = Duplicates(path, "wnid")
    for number, line in enumerate(read_lines(path, "synset words file"), start=1):
        if not line.strip():
            continue
        wnid, _, words = line.strip().partition(" ")
        if not WNID.match(wnid) or not words:
            raise DataError(f"{path}: line {number} is {line[:100]!r}; expected `n01440764 tench, Tinca tinca`")
        if repeats.is_new(wnid, words.strip(), number):
            names[wnid] = words.split(",")[0].strip()
    repeats.report(log)
    return names


class ImageNetDataModule(ClassFolderDataModule):
    """The ILSVRC-2012 train and val splits sorted into wnid folders; 1000 classes, named by `synset_words`."""

    def __init__(self, root: str, synset_words: str | None = None, **kwargs):
        super().__init__(root=root, train_dir="train", val_dir="val", **kwargs)
        self.synset_words = synset_words
        self.class_names: list[str] | None = None

    def check_layout(self) -> None:
        """Fail early with the folders expected, and what to do about each problem."""
        train, val = self.root / self.train_dir, self.root / self.val_dir
        missing = [str(d) for d in (train, val) if not d.is_dir()]
        if missing:
            raise DataError(f"ImageNet not found: missing {' and '.join(missing)}. Expected {train}/<wnid>/*.JPEG and "
                            f"{val}/<wnid>/*.JPEG under data.root (default ${{paths.data_dir}}/imagenet). {DOWNLOAD_HINT}")
        flat = next((p for p in val.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS), None)
        if flat is not None:
            raise DataError(f"{val}: images directly in the folder (e.g. {flat.name}): the official flat validation "
                            f"set must be sorted into <wnid> folders first. {PREPARE_HINT}")

    def scan(self):
        self.check_layout()
        train, val = super().scan()
        odd = [c for c in self.classes if not WNID.match(c)]
        if odd:
            log.warning("%s: %d class folder(s) are not WordNet ids (e.g. %s); named by their folder", self.root,
                        len(odd), odd[0])
        names = self._synset_names()
        self.class_names = [names.get(wnid, wnid) for wnid in self.classes]
        if len(self.classes) != 1000:
            log.warning("%s: %d classes (ILSVRC-2012 has 1000)", self.root, len(self.classes))
        return train, val

    def _synset_names(self) -> dict[str, str]:
        if self.synset_words:
            path = Path(self.synset_words).expanduser()
            if not path.is_file():
                raise DataError(f"data.synset_words={str(path)!r}: no such file. Give a `wnid name` file "
                                f"({' or '.join(SYNSET_FILES)}) or leave it null to name classes by wnid.")
            return read_synset_words(path)
        for name in SYNSET_FILES:
            if (self.root / name).is_file():
                log.info("class names from %s", self.root / name)
                return read_synset_words(self.root / name)
        log.info("no %s in %s: classes are named by their wnid", " or ".join(SYNSET_FILES), self.root)
        return {}

    def task_kwargs(self) -> dict:
        if self.classes is None:
            self.setup()
        return {"num_classes": len(self.classes), "class_names": list(self.class_names)}
