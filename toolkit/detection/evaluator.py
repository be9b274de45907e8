"""COCO box evaluation (all 12 AP/AR numbers) with faster-coco-eval or pycocotools, gathered across DDP ranks.

Usage: `ev = CocoEvaluator(coco_gt)`; per batch `ev.update(results, image_ids)` with COCO-format results
(`{"image_id", "category_id", "bbox": [x, y, w, h] in original pixels, "score"}`) and the ids of every
image seen (so images with no detection still count); at epoch end `ev.compute()` gathers every rank's
images, evaluates them against the original annotation file (the whole val set in a full pass) and returns
`STAT_NAMES -> float`. After `compute`, `ev.results` holds the merged detections, `ev.per_class` AP per
category id and `ev.summary` the COCO printout.

Backends: `faster_coco_eval` (the default when installed: the same numbers, several times faster; see
benchmarks/speed/coco_eval_speed.py) or `pycocotools`; `auto` picks the first available.

Why not `torchmetrics.detection.MeanAveragePrecision`: its DDP sync gathers its per-image list states one
tensor at a time, so ranks holding different numbers of images issue different numbers of collectives and
hang or crash (torchmetrics issues #2170, #3336). Evaluation here shards the val set without padding
(`toolkit.data.base.evaluation_sampler`), so ranks do hold different numbers of images; padding them equal
would make every metric count the repeated images. One `all_gather_object` of the per-image results keyed by
image id has neither problem, and COCOeval then scores against the annotation file itself (no float32 copy).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch.distributed as dist
from pycocotools.coco import COCO

from toolkit.errors import ConfigError
from toolkit.io import write_json_atomic

#: the order of COCOeval.stats (torchmetrics' names)
STAT_NAMES = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large",
              "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large")
STAT_TITLES = ("AP @[.50:.95] all", "AP @.50 all", "AP @.75 all", "AP small", "AP medium", "AP large",
               "AR maxDets=1", "AR maxDets=10", "AR maxDets=100", "AR small", "AR medium", "AR large")
BACKENDS = ("auto", "faster_coco_eval", "pycocotools")


def resolve_backend(backend: str) -> str:
    """`auto` -> faster_coco_eval when it is installed, else pycocotools; other names are checked and kept."""
    if backend not in BACKENDS:
        raise ConfigError("task.eval_backend", backend, f"allowed: {', '.join(BACKENDS)}")
    if backend == "auto":
        return "faster_coco_eval" if importlib.util.find_spec("faster_coco_eval") else "pycocotools"
    return backend


def gather_objects(obj):
    """[obj of every rank] (just [obj] outside torch.distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _quiet(fn, *args, **kwargs):
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        value = fn(*args, **kwargs)
    return value, buffer.getvalue()


class CocoEvaluator:
    def __init__(self, coco_gt: COCO, backend: str = "auto"):
        self.coco_gt, self.backend = coco_gt, resolve_backend(backend)
        self.reset()

    def reset(self) -> None:
        self._by_image: dict[int, list[dict]] = {}
        self.image_ids: list[int] = []
        self.results: list[dict] = []
        self.per_class: dict[int, float] = {}
        #: after compute: AP@0.5 per category id, and COCOeval's precision at its 101 recall points (IoU 0.5, all
        #: areas, 100 detections) per category, [101, K] in `category_ids` order (-1: no ground truth)
        self.per_class_50: dict[int, float] = {}
        self.recall_points = None
        self.precision_50 = None
        self.category_ids: list[int] = []
        self.summary = ""

    def update(self, results: Iterable[dict], image_ids: Iterable[int]) -> None:
        """An image's detections replace any earlier ones of the same image: an image counts once."""
        ids = [int(i) for i in image_ids]
        by_image: dict[int, list[dict]] = {i: [] for i in ids}
        for r in results:
            by_image[int(r["image_id"])].append(r)
        self._by_image.update(by_image)

    def compute(self, evaluate: bool = True) -> dict[str, float]:
        """Merge every rank's images (keyed by image id) and evaluate them.

        Every rank must call it (the gather is collective); `evaluate=False` (ranks other than 0) skips
        COCOeval and returns {} -- broadcast rank 0's numbers instead."""
        merged: dict[int, list[dict]] = {}
        for by_image in gather_objects(self._by_image):
            merged.update(by_image)
        self.image_ids = sorted(merged)
        self.results = [r for image_id in self.image_ids for r in merged[image_id]]
        if not evaluate:
            return {}
        return evaluate_coco(self.coco_gt, self.results, self.image_ids, self.backend, into=self)


def evaluate_coco(coco_gt: COCO, results: list[dict], image_ids: list[int] | None = None,
                  backend: str = "auto", into: CocoEvaluator | None = None) -> dict[str, float]:
    """COCOeval(bbox) over `image_ids` (default: every GT image); the 12 summary numbers by name."""
    image_ids = sorted(coco_gt.getImgIds()) if image_ids is None else list(image_ids)
    backend = resolve_backend(backend)
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO as FasterCOCO
        from faster_coco_eval import COCOeval_faster as Eval

        gt = FasterCOCO(copy.deepcopy(coco_gt.dataset))
        dt = gt.loadRes(copy.deepcopy(results)) if results else FasterCOCO(_empty_results(coco_gt))
        evaluator = Eval(gt, dt, "bbox", print_function=print)
    else:
        from pycocotools.cocoeval import COCOeval as Eval

        gt = coco_gt
        dt = _quiet(gt.loadRes, copy.deepcopy(results))[0] if results else _quiet(_coco_from, _empty_results(coco_gt))[0]
        evaluator = Eval(gt, dt, "bbox")
    evaluator.params.imgIds = image_ids
    _, log1 = _quiet(evaluator.evaluate)
    _, log2 = _quiet(evaluator.accumulate)
    _, summary = _quiet(evaluator.summarize)
    stats = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats[: len(STAT_NAMES)], strict=True)}
    if into is not None:
        into.summary = summary
        into.per_class = per_class_ap(evaluator)
        into.per_class_50 = per_class_ap(evaluator, iou=0.5)
        into.recall_points = np.asarray(evaluator.params.recThrs, dtype=float)
        into.precision_50 = np.asarray(evaluator.eval["precision"])[_iou_index(evaluator, 0.5), :, :, 0, -1]
        into.category_ids = [int(c) for c in evaluator.params.catIds]
    return stats


def _iou_index(evaluator, iou: float) -> int:
    return int(np.argmin(np.abs(np.asarray(evaluator.params.iouThrs) - iou)))


def per_class_ap(evaluator, iou: float | None = None) -> dict[int, float]:
    """AP@[.5:.95] (or at one `iou` threshold) per category id (area all, 100 detections); -1 where the category
    has no GT."""
    precision = np.asarray(evaluator.eval["precision"])  # [T, R, K, A, M]
    if iou is not None:
        precision = precision[_iou_index(evaluator, iou): _iou_index(evaluator, iou) + 1]
    out = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        out[int(cat_id)] = float(p.mean()) if p.size else -1.0
    return out


def _empty_results(coco_gt: COCO) -> dict:
    return {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"], "annotations": []}


def _coco_from(data: dict) -> COCO:
    coco = COCO()
    coco.dataset = data
    coco.createIndex()
    return coco


def write_results_json(results: list[dict], path: Path) -> Path:
    """COCO results format: a list of {image_id, category_id, bbox [x, y, w, h], score}."""
    return write_json_atomic(path, results, indent=None)


def ap_table(stats: dict[str, float], per_class: dict[int, float] | None = None,
             names: dict[int, str] | None = None) -> str:
    """Markdown table of the 12 numbers (and per-class AP when given)."""
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {title} (`{name}`) | {stats.get(name, float('nan')):.4f} |" for name, title in zip(STAT_NAMES, STAT_TITLES, strict=True)]
    if per_class:
        lines += ["", "| category id | name | AP @[.50:.95] |", "|---|---|---|"]
        lines += [f"| {cid} | {(names or {}).get(cid, '')} | {ap:.4f} |" for cid, ap in sorted(per_class.items())]
    return "\n".join(lines) + "\n"


def results_from_detections(boxes_xyxy: np.ndarray, scores: np.ndarray, category_ids: Iterable[int],
                            image_id: int) -> list[dict]:
    """COCO results of one image from xyxy boxes in original pixels."""
    out = []
    for (x1, y1, x2, y2), score, cid in zip(np.asarray(boxes_xyxy).tolist(), np.asarray(scores).tolist(), category_ids, strict=True):
        out.append({"image_id": int(image_id), "category_id": int(cid),
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)], "score": round(float(score), 5)})
    return out
