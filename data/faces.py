"""Face images for embeddings: any image folder (distillation), identity folders and LFW `pairs.txt` (verification).

LFW layout (http://vis-www.cs.umass.edu/lfw/): `<root>/<Name>/<Name>_0001.jpg`; `pairs.txt` starts
with `<sets> <pairs per set>` (e.g. `10 300`), then each set lists its same-identity pairs
(`Name n1 n2`) followed by its different-identity pairs (`Name1 n1 Name2 n2`); a one-number header
(`pairsDevTrain.txt`: `1100`) means one set. Sets are the folds of the 10-fold protocol.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from toolkit.data.base import BaseDataModule
from toolkit.data.face_transforms import face_eval_transform, face_train_transform
from toolkit.data.folder import ImageListDataset
from toolkit.data.images import IMAGE_EXTENSIONS
from toolkit.data.listfiles import read_lines
from toolkit.errors import DataError

log = logging.getLogger(__name__)

_LFW_NAME = re.compile(r"^(?P<name>[^/]+)/(?P=name)_(?P<num>\d{4})\.jpg$")


@dataclass(frozen=True)
class Pair:
    a: str       # image path relative to the image root
    b: str
    same: bool
    fold: int | None = None


def lfw_image(name: str, number: int) -> str:
    return f"{name}/{name}_{number:04d}.jpg"


def read_lfw_pairs(path: str | Path) -> list[Pair]:
    """Pairs of an LFW-format pairs file; a malformed line raises naming the file, line and expected form."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"pairs file {path}: not found. Give data.pairs=<LFW pairs.txt> (from "
                        "http://vis-www.cs.umass.edu/lfw/pairs.txt) or leave it null to draw pairs from identity folders")
    lines = [(i, line.split()) for i, line in enumerate(read_lines(path, "pairs file"), start=1) if line.strip()]
    if not lines:
        raise DataError(f"{path}: empty pairs file")
    header_no, header = lines[0]
    if not (1 <= len(header) <= 2 and all(h.isdecimal() and len(h) <= 9 for h in header)):
        raise DataError(f"{path}:{header_no}: expected a header '<sets> <pairs per set>' or '<pairs>', found {' '.join(header)!r}")
    sets, per_set = (int(header[0]), int(header[1])) if len(header) == 2 else (1, int(header[0]))
    if sets < 1 or per_set < 1:
        raise DataError(f"{path}:{header_no}: the header announces {sets} set(s) of {per_set} pairs; verification needs at "
                        "least one set of one same-person and one different-person pair")
    body = lines[1:]
    if len(body) != 2 * sets * per_set:
        raise DataError(f"{path}: the header promises {sets} set(s) of {per_set} same + {per_set} different pairs "
                        f"({2 * sets * per_set} lines), found {len(body)} pair lines")
    pairs = []
    for k, (lineno, fields) in enumerate(body):
        fold = k // (2 * per_set) if sets > 1 else None
        expect_same = (k % (2 * per_set)) < per_set
        try:
            if len(fields) not in (3, 4):
                raise ValueError
            numbers = [fields[i] for i in ((1, 2) if len(fields) == 3 else (1, 3))]
            if not all(n.isdecimal() and len(n) <= 9 for n in numbers):  # no '-1', no 400-digit numbers
                raise ValueError
            if len(fields) == 3:
                pair = Pair(lfw_image(fields[0], int(fields[1])), lfw_image(fields[0], int(fields[2])), True, fold)
            else:
                pair = Pair(lfw_image(fields[0], int(fields[1])), lfw_image(fields[2], int(fields[3])), False, fold)
        except ValueError:
            raise DataError(f"{path}:{lineno}: expected 'Name n1 n2' (same person) or 'Name1 n1 Name2 n2' (different), "
                            f"found {' '.join(fields)!r}") from None
        bad_names = [n for n in (fields[0], fields[-2]) if "/" in n or "\\" in n or n in (".", "..")]
        if bad_names:  # such a name would lead outside the image root
            raise DataError(f"{path}:{lineno}: person name {bad_names[0]!r} is not a folder name (no '/', '\\', "
                            "'.' or '..'); LFW names look like George_W_Bush")
        if pair.same != expect_same:
            raise DataError(f"{path}:{lineno}: a {'same' if pair.same else 'different'}-person pair where each set lists "
                            f"{per_set} same-person pairs, then {per_set} different-person pairs")
        pairs.append(pair)
    return pairs


def write_lfw_pairs(path: str | Path, pairs: list[Pair], sets: int, per_set: int) -> Path:
    """Write pairs (LFW-named images, ordered set by set: same then different) in the LFW format."""
    lines = [f"{sets}\t{per_set}"]
    for pair in pairs:
        ma, mb = _LFW_NAME.match(pair.a), _LFW_NAME.match(pair.b)
        if not (ma and mb):
            raise ValueError(f"pairs.txt needs LFW-named images (<Name>/<Name>_0001.jpg); got {pair.a}, {pair.b}")
        if pair.same:
            lines.append(f"{ma['name']}\t{int(ma['num'])}\t{int(mb['num'])}")
        else:
            lines.append(f"{ma['name']}\t{int(ma['num'])}\t{mb['name']}\t{int(mb['num'])}")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def make_pairs(identities: dict[str, list[str]], folds: int, per_fold: int, seed: int = 0) -> tuple[list[Pair], int]:
    """Draw distinct same/different pairs, `per_fold` of each per fold (fewer if the identities run out).

    Returns (pairs ordered fold by fold, same then different, as in pairs.txt; pairs per fold used).
    """
    rng = np.random.default_rng(seed)
    names = sorted(identities)
    multi = [n for n in names if len(identities[n]) >= 2]
    if len(names) < 2 or not multi:
        raise DataError("verification pairs need at least 2 identity folders, one of them with 2+ images")
    possible_same = sum(len(identities[n]) * (len(identities[n]) - 1) // 2 for n in multi)
    per_fold = min(per_fold, possible_same // folds)
    if per_fold < 1:
        raise DataError(f"only {possible_same} same-identity pairs exist; too few for {folds} folds")
    same, diff, used = [], [], set()
    weights = np.array([len(identities[n]) - 1 for n in multi], dtype=np.float64)
    while len(same) < per_fold * folds:
        name = multi[rng.choice(len(multi), p=weights / weights.sum())]
        i, j = sorted(rng.choice(len(identities[name]), size=2, replace=False))
        key = (identities[name][i], identities[name][j])
        if key not in used:
            used.add(key)
            same.append(Pair(*key, True))
    attempts = 0
    while len(diff) < per_fold * folds and attempts < 100 * per_fold * folds:
        attempts += 1
        na, nb = (names[k] for k in rng.choice(len(names), size=2, replace=False))
        key = (identities[na][rng.integers(len(identities[na]))], identities[nb][rng.integers(len(identities[nb]))])
        if key not in used:
            used.add(key)
            diff.append(Pair(*key, False))
    pairs = []
    for f in range(folds):
        block = slice(f * per_fold, (f + 1) * per_fold)
        pairs += [Pair(p.a, p.b, p.same, f) for p in same[block] + diff[block]]
    return pairs, per_fold


def scan_face_folder(root: Path) -> tuple[list[str], dict[str, list[str]]]:
    """(every image under `root`, relative; identity folder -> its images) for `root/<identity>/*.jpg`."""
    if not root.is_dir():
        raise DataError(f"{root}: face image folder not found; set data.root=... (images anywhere below it; "
                        "<root>/<identity>/<images> also gives identities)")
    # hidden files and folders are skipped by their path *below* root: root itself may sit under ~/.cache
    relative = (p.relative_to(root) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    files = sorted(r.as_posix() for r in relative if not any(s.startswith(".") for s in r.parts) and (root / r).is_file())
    if not files:
        raise DataError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) found below this folder")
    identities: dict[str, list[str]] = {}
    for f in files:
        if "/" in f:
            identities.setdefault(f.split("/", 1)[0], []).append(f)
    return files, identities


class FaceImageDataset(ImageListDataset):
    """Images under `root` with identity labels (-1 when the folder gives none); adds key (relative path) and index."""

    def __init__(self, root: Path | None, files: list[str], labels: list[int], transform, skip_corrupt: bool = False):
        super().__init__([(root / f if root is not None else Path(f), label) for f, label in zip(files, labels, strict=True)],
                         transform, skip_corrupt)
        self.files, self.labels = files, labels

    def __getitem__(self, index: int):
        sample = super().__getitem__(index)
        if sample is not None:
            sample.update(index=index, key=self.files[index])
        return sample


class VerificationDataset(FaceImageDataset):
    """The distinct images of a pair list; `pairs` (P x 2 indices), `same` and `folds` describe the pairs."""

    def __init__(self, root: Path, pairs: list[Pair], transform, skip_corrupt: bool = False):
        files = sorted({p.a for p in pairs} | {p.b for p in pairs})
        super().__init__(root, files, [-1] * len(files), transform, skip_corrupt)
        index = {f: i for i, f in enumerate(files)}
        self.pairs = np.array([[index[p.a], index[p.b]] for p in pairs], dtype=np.int64)
        self.same = np.array([p.same for p in pairs], dtype=bool)
        self.folds = None if any(p.fold is None for p in pairs) else np.array([p.fold for p in pairs])


class FacesFolderDataModule(BaseDataModule):
    """Distil on every image under `root`; verify on `pairs` (LFW format, images under `pairs_root`).

    Without a pairs file, verification pairs are drawn (seeded) from the identity folders of `root`.
    """

    kind = "face_embedding"

    def __init__(self, root: str, pairs: str | None = None, pairs_root: str | None = None, folds: int = 10,
                 pairs_per_fold: int = 300, pairs_seed: int = 0, crop_scale: tuple[float, float] = (0.8, 1.0),
                 hflip: bool = True, color_jitter: float = 0.2, **kwargs):
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.pairs = Path(pairs).expanduser() if pairs else None
        self.pairs_root = Path(pairs_root).expanduser() if pairs_root else self.root
        self.folds, self.pairs_per_fold, self.pairs_seed = folds, pairs_per_fold, pairs_seed
        self.crop_scale, self.hflip, self.color_jitter = tuple(crop_scale), hflip, color_jitter
        self.files: list[str] | None = None
        self.identities: dict[str, list[str]] = {}

    def train_transform(self):
        return face_train_transform(self.resolution, self.mean, self.std, self.crop_scale, self.hflip, self.color_jitter)

    def eval_transform(self):
        return face_eval_transform(self.resolution, self.mean, self.std)

    def _scan(self) -> None:
        if self.files is None:
            self.files, self.identities = scan_face_folder(self.root)

    def _labels(self) -> list[int]:
        ids = {name: i for i, name in enumerate(sorted(self.identities))}
        return [ids[f.split("/", 1)[0]] if "/" in f else -1 for f in self.files]

    def verification_pairs(self) -> tuple[Path, list[Pair]]:
        if self.pairs is not None:
            pairs = read_lfw_pairs(self.pairs)
            root = self.pairs_root
        else:
            self._scan()
            pairs, per_fold = make_pairs(self.identities, self.folds, self.pairs_per_fold, self.pairs_seed)
            root = self.root
            log.warning("no data.pairs given: verifying on %d pairs (%d folds x %d same + %d different) drawn from the "
                        "identity folders of %s", len(pairs), self.folds, per_fold, per_fold, root)
        missing = sorted({f for p in pairs for f in (p.a, p.b) if not (root / f).is_file()})
        if missing:
            raise DataError(f"{self.pairs or root}: {len(missing)} images of the pairs are missing under {root} "
                            f"(e.g. {', '.join(missing[:3])}); set data.pairs_root=<folder holding <Name>/<Name>_0001.jpg>")
        return root, pairs

    def setup(self, stage: str | None = None) -> None:
        if self.val_dataset is None:
            root, pairs = self.verification_pairs()
            self.val_dataset = VerificationDataset(root, pairs, self.eval_transform(), self.skip_corrupt)
            log.info("verification: %d pairs over %d images under %s", len(pairs), len(self.val_dataset), root)
        if stage in (None, "fit") and self.train_dataset is None:
            self._scan()
            self.train_dataset = FaceImageDataset(self.root, self.files, self._labels(), self.train_transform(), self.skip_corrupt)
            log.info("%s: %d images, %d identity folders", self.root, len(self.files), len(self.identities))

    def task_kwargs(self) -> dict:
        self._scan()
        return {"num_identities": len(self.identities)}

    def distill_keys(self) -> list[str]:
        self._scan()
        return list(self.files)

    def distill_dataset(self) -> Dataset:
        self._scan()
        return FaceImageDataset(self.root, self.files, self._labels(), self.eval_transform(), self.skip_corrupt)

    def predict_dataset(self, paths: list[Path]) -> Dataset:
        return FaceImageDataset(None, [str(p) for p in paths], [-1] * len(paths), self.eval_transform(), self.skip_corrupt)
