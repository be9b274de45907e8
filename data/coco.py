"""COCO-format detection data on pycocotools: `instances_*.json` + image folders, shared by every detector.

Where the files come from
    `data=coco`: `<root>/annotations/instances_<split>.json` and `<root>/<image folder>/` with
    `root = ${paths.data_dir}/coco`; splits in `COCO_SPLITS` (train2017, val2017, minival2014 -> images
    in val2014/, ...). `data=coco_custom`: explicit `train_ann/train_images/val_ann/val_images`.
    A missing file stops `setup` at once with a message naming every file looked for.

Labels
    Categories are sorted by their file id and mapped to contiguous labels 1..K (0 = background, the
    torchvision convention); `category_ids[label - 1]` maps back to the file's id for COCO results.
    `task_kwargs()` hands `num_classes=K`, `class_names`, `category_ids` to the task.

Box policy (counted and logged once per file at setup, never a crash mid-epoch)
    crowd boxes (`iscrowd=1`) are left out of training targets (the evaluator reads them from the GT
    file); boxes partly outside the image are clipped; boxes with no area after clipping are dropped;
    images without boxes are kept (they give SSD negatives; `drop_empty_train=true` removes them from
    training, torchvision's reference habit). A malformed annotation file raises `DataError` naming the
    file and the record.

Transforms (pluggable per task)
    `transform` names a pipeline of `toolkit.data.detection_transforms.DETECTION_TRANSFORMS`: `ssd`
    (square resize, SSD crop, flip, photometric) or `keep_aspect` (shorter side = `resolution`, for
    Faster R-CNN). Task configs set it as `data.transform` (data configs leave it unset so the task's
    choice survives the merge); eval pipelines are pure resizes. `aspect_ratio_group_factor=k` (Faster
    R-CNN) makes training batches of images of similar width/height (`toolkit.data.samplers`).

Batches (`detection_collate`)
    {"images": list[3xHxW float], "targets": list[{"boxes": float[N,4] xyxy in network-input pixels,
    "labels": int64[N], "image_id": int, "orig_size": (h, w)}], "paths": list[str], "skipped": int}.
    `boxes_to_original(boxes, image.shape[-2:], target["orig_size"])` maps predictions back to the
    original image for COCO results. Predict batches have the same form with empty targets, image_id -1.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import BatchSampler, ConcatDataset, Dataset, RandomSampler

from toolkit.data.base import BaseDataModule, SkippingCollate
from toolkit.data.detection_transforms import detection_transforms
from toolkit.data.images import load_rgb
from toolkit.data.listfiles import path_under
from toolkit.data.samplers import GroupedBatchSampler, create_aspect_ratio_groups, dataset_aspect_ratios
from toolkit.errors import DataError

log = logging.getLogger(__name__)

#: split name -> (annotation file, image folder), relative to the COCO root
COCO_SPLITS: dict[str, tuple[str, str]] = {
    "train2017": ("annotations/instances_train2017.json", "train2017"),
    "val2017": ("annotations/instances_val2017.json", "val2017"),
    "train2014": ("annotations/instances_train2014.json", "train2014"),
    "val2014": ("annotations/instances_val2014.json", "val2014"),
    "minival2014": ("annotations/instances_minival2014.json", "val2014"),
    "valminusminival2014": ("annotations/instances_valminusminival2014.json", "val2014"),
}


# ---- reading and checking annotation files -----------------------------------------------------------
def _bad(path: Path, record: str, problem: str) -> DataError:
    return DataError(f"{path}: {record}: {problem}. Fix or remove this record (COCO format: "
                     "https://cocodataset.org/#format-data).")


def _is_number(x) -> bool:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # a 400-digit integer: JSON allows it, floats do not
        return False


def _is_id(x) -> bool:
    """An id that fits the int64 tensors targets and results carry."""
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63


MAX_IMAGE_SIDE = 1_000_000  # pixels; larger width/height values in a JSON are typos, not images


def read_coco_json(path: str | Path) -> dict:
    """Load and check a COCO instances file; fill `iscrowd`/`area` defaults. Raises DataError naming the record."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e}). Re-download or regenerate the annotation file.") from e
    except RecursionError:  # arrays nested thousands deep: not an annotation file
        raise DataError(f"{path}: JSON nested too deeply to be a COCO annotation file") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text JSON file ({e}).") from e
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object with images/annotations/categories, found {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DataError(f"{path}: missing or non-list '{key}' (a COCO instances file has images, annotations, categories)")
    if not data["categories"]:
        raise DataError(f"{path}: 'categories' is empty; a detection file needs at least one category")
    if not data["images"]:
        raise DataError(f"{path}: 'images' is empty; a detection split needs at least one image")
    cat_ids = set()
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not _is_id(cat.get("id")):
            raise _bad(path, f"categories[{i}]", "needs an integer 'id' (0 <= id < 2**63)")
        if cat["id"] in cat_ids:
            raise _bad(path, f"categories[{i}] (id {cat['id']})", "duplicate category id")
        if cat["id"] == 0:
            raise _bad(path, f"categories[{i}]", "category id 0 is reserved for the background")
        cat.setdefault("name", str(cat["id"]))
        cat_ids.add(cat["id"])
    image_ids = set()
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not _is_id(img.get("id")):
            raise _bad(path, f"images[{i}]", "needs an integer 'id' (0 <= id < 2**63)")
        if img["id"] in image_ids:
            raise _bad(path, f"images[{i}] (id {img['id']})", "duplicate image id")
        if not isinstance(img.get("file_name"), str):
            raise _bad(path, f"images[{i}] (id {img['id']})", "needs a 'file_name' string")
        for key in ("width", "height"):
            if not _is_id(img.get(key)) or not 0 < img[key] <= MAX_IMAGE_SIDE:
                raise _bad(path, f"images[{i}] (id {img['id']}, {img['file_name']})",
                           f"needs a positive integer '{key}' up to {MAX_IMAGE_SIDE}, got {str(img.get(key))[:40]}")
        image_ids.add(img["id"])
    ann_ids = set()
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise _bad(path, f"annotations[{i}]", "is not an object")
        where = f"annotations[{i}] (id {ann.get('id')})"
        if not _is_id(ann.get("id")) or ann["id"] in ann_ids:
            raise _bad(path, where, "needs a unique integer 'id'")
        ann_ids.add(ann["id"])
        if ann.get("image_id") not in image_ids:
            raise _bad(path, where, f"image_id {ann.get('image_id')!r} is not in 'images'")
        if ann.get("category_id") not in cat_ids:
            raise _bad(path, where, f"category_id {ann.get('category_id')!r} is not in 'categories'")
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise _bad(path, where, f"bbox must be 4 finite numbers [x, y, width, height], got {str(bbox)[:120]}")
        ann["iscrowd"] = int(ann.get("iscrowd", 0) or 0)
        if not _is_number(ann.get("area")):
            ann["area"] = float(max(bbox[2], 0) * max(bbox[3], 0))
    return data


def coco_from_dict(data: dict) -> COCO:
    """A pycocotools COCO index over an in-memory dict (its progress prints are silenced)."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def load_coco(path: str | Path) -> COCO:
    return coco_from_dict(read_coco_json(path))


# ---- labels and boxes --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CategoryMap:
    """File category ids <-> contiguous labels 1..K (0 is the background)."""

    category_ids: tuple[int, ...]
    names: tuple[str, ...]

    @classmethod
    def from_coco(cls, coco: COCO) -> CategoryMap:
        cats = sorted(coco.dataset["categories"], key=lambda c: c["id"])
        return cls(tuple(c["id"] for c in cats), tuple(str(c["name"]) for c in cats))

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def to_label(self, category_id: int) -> int:
        return self.category_ids.index(category_id) + 1

    def to_category(self, label: int) -> int:
        return self.category_ids[int(label) - 1]


def boxes_to_original(boxes: torch.Tensor, input_hw, orig_hw) -> torch.Tensor:
    """Scale xyxy boxes from network-input pixels back to the original image (eval pipelines only resize)."""
    ih, iw = (float(v) for v in input_hw)
    oh, ow = (float(v) for v in orig_hw)
    scale = boxes.new_tensor([ow / iw, oh / ih, ow / iw, oh / ih])
    return boxes * scale


@dataclass
class BoxStats:
    """What the box policy did to one annotation file (logged once at setup)."""

    boxes: int = 0
    crowd: int = 0
    clipped: int = 0
    degenerate: int = 0
    empty_images: int = 0
    first_degenerate: str = ""  # one degenerate annotation named, so the count can be traced to the file

    def summary(self) -> str:
        example = f", e.g. {self.first_degenerate}" if self.first_degenerate else ""
        return (f"{self.boxes} boxes kept, {self.clipped} clipped to the image, {self.degenerate} degenerate dropped "
                f"(no area inside the image: zero/negative size or outside it{example}), {self.crowd} crowd boxes left to the evaluator, "
                f"{self.empty_images} images without boxes")


def image_targets(coco: COCO, image_id: int, cats: CategoryMap, stats: BoxStats) -> tuple[np.ndarray, np.ndarray]:
    """Training boxes (xyxy, clipped, crowd and degenerate removed) and labels of one image."""
    info = coco.imgs[image_id]
    w, h = info["width"], info["height"]
    boxes, labels = [], []
    for ann in coco.imgToAnns.get(image_id, []):
        if ann["iscrowd"]:
            stats.crowd += 1
            continue
        x, y, bw, bh = ann["bbox"]
        x1, y1, x2, y2 = min(max(x, 0), w), min(max(y, 0), h), min(max(x + bw, 0), w), min(max(y + bh, 0), h)
        if x2 - x1 < 1e-3 or y2 - y1 < 1e-3:
            stats.degenerate += 1
            stats.first_degenerate = stats.first_degenerate or f"annotation id {ann['id']} bbox {ann['bbox']} in image id {image_id}"
            continue
        if (x1, y1, x2, y2) != (x, y, x + bw, y + bh):
            stats.clipped += 1
        boxes.append((x1, y1, x2, y2))
        labels.append(cats.to_label(ann["category_id"]))
    stats.boxes += len(boxes)
    stats.empty_images += not boxes
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


# ---- datasets ------------------------------------------------------------------------------------------
def _file_problem(path: Path) -> str | None:
    """Why `path` cannot be an image file (missing, a folder, empty), or None; one stat per image."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "not found"
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    except ValueError:  # a NUL byte in the name
        return "not a valid file name"
    if stat.S_ISDIR(st.st_mode):
        return "is a folder"
    if st.st_size == 0:
        return "is empty (0 bytes)"
    return None


def _sample(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray, transform, image_id: int, path: Path) -> dict:
    h, w = image.shape[:2]
    # a JSON whose width/height disagree with the pixels: clip again to what is really there
    boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
    keep = (boxes[:, 2] - boxes[:, 0] > 1e-3) & (boxes[:, 3] - boxes[:, 1] > 1e-3)
    out = transform(image=image, bboxes=boxes[keep], labels=labels[keep])
    tboxes = torch.as_tensor(np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4))
    tlabels = torch.as_tensor(np.asarray(out["labels"], dtype=np.int64).reshape(-1))
    valid = (tboxes[:, 2] > tboxes[:, 0]) & (tboxes[:, 3] > tboxes[:, 1])  # torchvision refuses empty boxes
    target = {"boxes": tboxes[valid], "labels": tlabels[valid], "image_id": int(image_id), "orig_size": (h, w)}
    return {"image": out["image"], "target": target, "path": str(path)}


class CocoDetectionDataset(Dataset):
    """One annotation file + image folder. `coco` is the checked pycocotools index the evaluator uses too."""

    def __init__(self, ann_file: str | Path, image_dir: str | Path, transform, categories: CategoryMap | None = None,
                 skip_corrupt: bool = False, drop_empty: bool = False):
        self.ann_file, self.image_dir = Path(ann_file).expanduser(), Path(image_dir).expanduser()
        self.coco = load_coco(self.ann_file)
        own = CategoryMap.from_coco(self.coco)
        if categories is not None and set(categories.category_ids) != set(own.category_ids):
            raise DataError(f"{self.ann_file}: its categories {list(own.category_ids)} differ from the training "
                            f"file's {list(categories.category_ids)}; train and val files must share one category list.")
        self.categories = categories or own
        self.transform = transform
        self.skip_corrupt = skip_corrupt
        self.stats = BoxStats()
        self.records = []
        unreadable = []  # "id N file: why" of image files that cannot be read, found now rather than mid-epoch
        for image_id in sorted(self.coco.imgs):
            file_name = self.coco.imgs[image_id]["file_name"]
            path = path_under(self.image_dir, file_name, f"{self.ann_file}: image id {image_id}")
            problem = _file_problem(path)
            if problem:
                unreadable.append(f"id {image_id} {file_name}: {problem}")
                continue
            boxes, labels = image_targets(self.coco, image_id, self.categories, self.stats)
            if drop_empty and not len(boxes):
                continue
            self.records.append((image_id, path, boxes, labels))
        if unreadable:
            message = (f"{self.ann_file}: {len(unreadable)} of {len(self.coco.imgs)} image files under {self.image_dir} "
                       f"are missing or unreadable ({'; '.join(unreadable[:5])}{' ...' if len(unreadable) > 5 else ''})")
            if not skip_corrupt:
                raise DataError(message + ". Restore them, fix their file_name, or set data.skip_corrupt=true to "
                                "leave them out (counted in the log; evaluation covers the images that remain)")
            log.warning("%s; left out (data.skip_corrupt=true)", message)
        if not self.records:
            raise DataError(f"{self.ann_file}: no images left to use ({len(unreadable)} unreadable"
                            + (", the rest without boxes and drop_empty_train=true" if drop_empty else "") + ")")
        log.info("%s: %d images, %d categories; %s%s", self.ann_file, len(self.records), self.categories.num_classes,
                 self.stats.summary(), " (dropped from training)" if drop_empty else "")

    def __len__(self) -> int:
        return len(self.records)

    def aspect_ratios(self) -> list[float]:
        """Width / height of each image, from the annotation file (aspect-ratio grouped batches)."""
        return [self.coco.imgs[image_id]["width"] / self.coco.imgs[image_id]["height"] for image_id, *_ in self.records]

    def __getitem__(self, index: int):
        image_id, path, boxes, labels = self.records[index]
        try:
            image = load_rgb(path)
        except DataError as e:
            if not self.skip_corrupt:
                raise
            log.warning("skipped corrupt sample %d (image id %d): %s", index, image_id, e)
            return None
        self.check_frame(image_id, path, image)
        return _sample(image, boxes, labels, self.transform, image_id, path)

    def check_frame(self, image_id: int, path: Path, image) -> None:
        """Boxes are read in the upright frame: the pixels after the EXIF orientation (`load_rgb`), as annotation
        tools and viewers display a phone photo, and as the JSON's width/height then read. A JSON whose width and
        height are the image's swapped was drawn on the pixels as stored, unturned: its boxes would land on the
        wrong objects, so it is refused, naming the file."""
        info = self.coco.imgs[image_id]
        height, width = image.shape[:2]
        if width != height and (info["width"], info["height"]) == (height, width):
            raise DataError(
                f"{self.ann_file}: image id {image_id} ({path}) is {width}x{height} as displayed (EXIF orientation "
                f"applied), but the JSON gives width={info['width']}, height={info['height']}: its boxes describe "
                "the image turned by 90 degrees (a phone photo's pixels as stored, before their orientation tag). "
                "Re-export the annotations from a tool that shows the photo upright, or save the image upright "
                "(pixels turned, orientation tag removed) and annotate that")


class DetectionImageDataset(Dataset):
    """User images for mode=predict (no annotations), through the eval pipeline."""

    def __init__(self, paths: list[Path], transform, skip_corrupt: bool = False):
        self.paths, self.transform, self.skip_corrupt = list(paths), transform, skip_corrupt

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            image = load_rgb(self.paths[index])
        except DataError as e:
            if not self.skip_corrupt:
                raise
            log.warning("skipped corrupt image %s: %s", self.paths[index], e)
            return None
        return _sample(image, np.zeros((0, 4), np.float32), np.zeros(0, np.int64), self.transform, -1, self.paths[index])


def detection_collate(samples: list[dict]) -> dict:
    """Images of different sizes stay a list (torchvision detectors batch them themselves)."""
    return {"images": [s["image"] for s in samples], "targets": [s["target"] for s in samples],
            "paths": [s["path"] for s in samples]}


# ---- the datamodule -------------------------------------------------------------------------------------
class CocoDetectionDataModule(BaseDataModule):
    """COCO (`root` + split names) or any COCO-format files (`train_ann`, `train_images`, `val_ann`, `val_images`)."""

    kind = "detection"

    def __init__(
        self,
        root: str | None = None,
        train_split: str | list[str] = "train2017",
        val_split: str = "val2017",
        train_ann: str | None = None,
        train_images: str | None = None,
        val_ann: str | None = None,
        val_images: str | None = None,
        transform: str = "ssd",
        augment: str = "paper",
        hflip: bool = True,
        drop_empty_train: bool = False,
        aspect_ratio_group_factor: int | None = None,
        **kwargs,
    ):
        kwargs.setdefault("resolution", 300)
        super().__init__(**kwargs)
        self.root = Path(root).expanduser() if root else None
        self.train_split = [train_split] if isinstance(train_split, str) else list(train_split)
        self.val_split = val_split
        self.explicit = {"train": (train_ann, train_images), "val": (val_ann, val_images)}
        self.transform_name = transform
        self.augment, self.hflip = augment, hflip
        self.drop_empty_train = drop_empty_train
        self.aspect_ratio_group_factor = aspect_ratio_group_factor
        self.train_tf, self.eval_tf = detection_transforms(transform, self.resolution, self.mean, self.std,
                                                           augment=augment, hflip=hflip)
        self.categories: CategoryMap | None = None

    # -- locating files
    def split_files(self, which: str) -> list[tuple[Path, Path]]:
        """[(annotation file, image folder)] of the train or val split."""
        ann, images = self.explicit[which]
        if ann or images:
            if not (ann and images):
                key = f"data.{which}_ann" if not ann else f"data.{which}_images"
                raise DataError(f"{key} is not set: give both data.{which}_ann=<instances json> and "
                                f"data.{which}_images=<image folder>")
            return [(Path(ann).expanduser(), Path(images).expanduser())]
        if self.root is None:
            raise DataError(f"no {which} data: set data.root=<COCO root> or data.{which}_ann/data.{which}_images")
        splits = self.train_split if which == "train" else [self.val_split]
        files = []
        for split in splits:
            if split not in COCO_SPLITS:
                raise DataError(f"data.{which}_split={split!r}: unknown COCO split; known: {', '.join(COCO_SPLITS)} "
                                f"(or use data=coco_custom with explicit files)")
            ann_rel, img_rel = COCO_SPLITS[split]
            files.append((self.root / ann_rel, self.root / img_rel))
        return files

    def check_files(self, which: list[str]) -> None:
        """Fail at once, naming every missing file, where it goes, and the no-download alternative."""
        missing = []
        for w in which:
            for ann, images in self.split_files(w):
                if not ann.is_file():
                    missing.append(f"  {ann}  (annotation file)")
                if not images.is_dir():
                    missing.append(f"  {images}/  (image folder)")
        if missing:
            where = (f"Put COCO under {self.root} (annotations/instances_<split>.json and <split>/ image folders; "
                     "see docs/detection.md for the download links) or set paths.data_dir / TOOLKIT_DATA_DIR"
                     if self.root else "Check data.train_ann/train_images/val_ann/val_images")
            raise DataError("detection data not found; looked for:\n" + "\n".join(missing) + f"\n{where}. "
                            "To run without a download, use the generated dataset: data=shapes")

    # -- Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        wants_train = stage in (None, "fit")
        if self.val_dataset is not None and (self.train_dataset is not None or not wants_train):
            return
        self.check_files(["train", "val"] if wants_train else ["val"])
        if wants_train:
            datasets = []
            for ann, images in self.split_files("train"):
                ds = CocoDetectionDataset(ann, images, self.train_tf, self.categories, self.skip_corrupt, self.drop_empty_train)
                self.categories = self.categories or ds.categories
                datasets.append(ds)
            self.train_dataset = datasets[0] if len(datasets) == 1 else ConcatDataset(datasets)
        ((ann, images),) = self.split_files("val")
        self.val_dataset = CocoDetectionDataset(ann, images, self.eval_tf, self.categories, self.skip_corrupt)
        self.categories = self.categories or self.val_dataset.categories

    def task_kwargs(self) -> dict:
        if self.categories is None:
            self.setup("fit")
        return {"num_classes": self.categories.num_classes, "class_names": list(self.categories.names),
                "category_ids": list(self.categories.category_ids)}

    def collate_fn(self):
        return SkippingCollate(detection_collate)

    def train_batch_sampler(self, dataset: Dataset, batch_size: int) -> BatchSampler:
        if self.aspect_ratio_group_factor is None:
            return super().train_batch_sampler(dataset, batch_size)
        groups = create_aspect_ratio_groups(dataset_aspect_ratios(dataset), self.aspect_ratio_group_factor)
        return GroupedBatchSampler(RandomSampler(dataset), groups, batch_size)

    def predict_dataset(self, paths: list[Path]) -> Dataset:
        return DetectionImageDataset(paths, self.eval_tf, self.skip_corrupt)
