"""A generated miniature Stanford Dogs (`data=stanford_dogs_synthetic`) in the exact official on-disk format.

Real breed folder names, JPEGs under `Images/`, VOC XML boxes under `Annotation/`, and `lists/*.mat` written
with scipy as MATLAB cell arrays, like the originals. A "breed" is a coat colour and a shape on a grey noisy
background; breeds come in pairs of nearby hues (2k and 2k+1), the look-alikes the confusion summary should find.
"""

from __future__ import annotations

import colorsys
import math
import tarfile
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, ImageDraw

from toolkit.data.generated import ensure_generated
from toolkit.data.shapes import SHAPE_NAMES, draw_shape, random_background
from toolkit.data.stanford_dogs import StanfordDogsDataModule
from toolkit.errors import ConfigError

#: the first breed folders of the real dataset (sorted wnid order, as its labels count them)
BREED_FOLDERS = (
    "n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog", "n02086079-Pekinese",
    "n02086240-Shih-Tzu", "n02086646-Blenheim_spaniel", "n02086910-papillon", "n02087046-toy_terrier",
    "n02087394-Rhodesian_ridgeback", "n02088094-Afghan_hound", "n02088238-basset", "n02088364-beagle",
    "n02088466-bloodhound", "n02088632-bluetick", "n02089078-black-and-tan_coonhound", "n02089867-Walker_hound",
    "n02089973-English_foxhound", "n02090379-redbone",
)
PAIR_HUE_STEP = 0.07  # hue difference within a pair of look-alike breeds (about 25 degrees)


def coat_colour(label: int) -> np.ndarray:
    """RGB coat of breed `label`: pairs (2k, 2k+1) share a hue family, pairs are spread around the wheel."""
    hue = ((label // 2) * 0.618034 + (label % 2) * PAIR_HUE_STEP) % 1.0
    return np.array(colorsys.hsv_to_rgb(hue, 0.85, 0.9)) * 255


def _cell_array(strings: list[str]) -> np.ndarray:
    """An (N, 1) object array of strings: savemat writes it as a MATLAB cell array, as in the real lists."""
    cells = np.empty((len(strings), 1), dtype=object)
    for i, s in enumerate(strings):
        cells[i, 0] = np.array([s])
    return cells


def write_mat_list(path: Path, files: list[str], labels: list[int]) -> None:
    """`file_list`, `annotation_list` (file without .jpg) and 1-based `labels`, as Stanford Dogs ships them."""
    scipy.io.savemat(str(path), {
        "file_list": _cell_array(files),
        "annotation_list": _cell_array([f.rsplit(".", 1)[0] for f in files]),
        "labels": np.asarray(labels, dtype=np.float64).reshape(-1, 1),  # the originals store doubles
    })


def voc_xml(folder: str, name: str, breed: str, width: int, height: int, box: tuple[int, int, int, int]) -> str:
    x0, y0, x1, y1 = box
    return (f"<annotation><folder>{folder.split('-')[0][1:]}</folder><filename>{name}</filename>"
            "<source><database>ImageNet database</database></source>"
            f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size><segment>0</segment>"
            f"<object><name>{breed}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
            f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object></annotation>")


def generate_stanford_dogs(root: Path, n_breeds: int, n_train: int, n_test: int, image_size: int, seed: int) -> None:
    """Write `Images/`, `Annotation/` and `lists/{file_list,train_list,test_list}.mat` under `root`."""
    rng = np.random.default_rng(seed)
    folders = BREED_FOLDERS[:n_breeds]
    splits: dict[str, tuple[list[str], list[int]]] = {"train": ([], []), "test": ([], [])}
    counter = 0
    for split, count in (("train", n_train), ("test", n_test)):
        for i in range(count):
            label = i % n_breeds
            folder = folders[label]
            shape, coat = SHAPE_NAMES[label % len(SHAPE_NAMES)], coat_colour(label)
            size = (int(image_size * rng.uniform(1.0, 1.3)), image_size)  # non-square, like photos
            grey = np.asarray(random_background(rng, max(size)), dtype=np.float32).mean(-1, keepdims=True)
            img = Image.fromarray(np.repeat(grey, 3, -1).astype(np.uint8)).crop((0, 0, *size))  # colour = the dog's
            r = rng.uniform(0.25, 0.45) * min(size)  # big enough to survive the random crop
            cx, cy = rng.uniform(r, size[0] - r), rng.uniform(r, size[1] - r)
            color = tuple(int(c) for c in np.clip(coat + rng.normal(0, 20, 3), 0, 255))
            draw_shape(ImageDraw.Draw(img), shape, cx, cy, r, rng.uniform(0, 2 * math.pi), color)
            image_id = f"{folder.split('-')[0]}_{counter}"
            counter += 1
            (root / "Images" / folder).mkdir(parents=True, exist_ok=True)
            (root / "Annotation" / folder).mkdir(parents=True, exist_ok=True)
            img.save(root / "Images" / folder / f"{image_id}.jpg", quality=90)
            box = (int(max(cx - r, 0)), int(max(cy - r, 0)), int(min(cx + r, size[0])), int(min(cy + r, size[1])))
            (root / "Annotation" / folder / image_id).write_text(
                voc_xml(folder, image_id, folder.split("-", 1)[1], size[0], size[1], box))
            splits[split][0].append(f"{folder}/{image_id}.jpg")
            splits[split][1].append(label + 1)
    (root / "lists").mkdir(parents=True, exist_ok=True)
    for split, (files, labels) in splits.items():
        write_mat_list(root / "lists" / f"{split}_list.mat", files, labels)
    write_mat_list(root / "lists" / "file_list.mat", splits["train"][0] + splits["test"][0],
                   splits["train"][1] + splits["test"][1])


def write_official_tars(root: Path, out: Path) -> dict[str, Path]:
    """Pack a tree as the three official downloads: images.tar, annotation.tar, lists.tar (lists at top level)."""
    out.mkdir(parents=True, exist_ok=True)
    tars = {"images": out / "images.tar", "annotations": out / "annotation.tar", "lists": out / "lists.tar"}
    with tarfile.open(tars["images"], "w") as tar:
        tar.add(root / "Images", arcname="Images")
    with tarfile.open(tars["annotations"], "w") as tar:
        tar.add(root / "Annotation", arcname="Annotation")
    with tarfile.open(tars["lists"], "w") as tar:
        for mat in sorted((root / "lists").glob("*.mat")):
            tar.add(mat, arcname=mat.name)
    return tars


class StanfordDogsSyntheticDataModule(StanfordDogsDataModule):
    """`StanfordDogsDataModule` over a tree generated under `cache_dir` (n_train / n_val images in all)."""

    def __init__(self, cache_dir: str, n_breeds: int = 12, n_train: int = 600, n_val: int = 240, image_size: int = 64,
                 seed: int = 0, **kwargs):
        if not (isinstance(n_breeds, int) and not isinstance(n_breeds, bool) and 2 <= n_breeds <= len(BREED_FOLDERS)):
            raise ConfigError("data.n_breeds", n_breeds, f"an integer from 2 to {len(BREED_FOLDERS)} (the breed folders this generator knows)")
        self.spec = {"kind": "stanford_dogs_synthetic", "n_breeds": n_breeds, "n_train": n_train, "n_val": n_val,
                     "image_size": image_size, "seed": seed, "coats": "hue-pairs", "radius": [0.25, 0.45], "background": "grey"}
        root = Path(cache_dir).expanduser() / f"stanford_dogs_{n_breeds}breeds_{image_size}px_{n_train}_{n_val}_seed{seed}"
        super().__init__(root=str(root), **kwargs)

    def prepare_data(self) -> None:
        s = self.spec
        ensure_generated(self.root, s, lambda: generate_stanford_dogs(
            self.root, s["n_breeds"], s["n_train"], s["n_val"], s["image_size"], s["seed"]))

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()  # idempotent; also covers callers that skip prepare_data (tests, predict)
        super().setup(stage)
