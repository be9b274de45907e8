"""Post-processing for runtimes without an NMS operator: SSD's per-class top-k, class-wise NMS and top-N in numpy.

ONNX exports carry NMS inside the graph; ExecuTorch's XNNPACK delegate has no NMS kernel, so an SSD `.pte`
returns every anchor's decoded box and class probabilities and this function finishes the job exactly as
torchvision's `SSD.postprocess_detections` does (the settings come from the file's `nms` metadata).
"""

from __future__ import annotations

import numpy as np


def box_iou_one(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of `boxes`."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, np.finfo(np.float32).tiny)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float) -> np.ndarray:
    """Greedy NMS: indices of the kept boxes, highest score first (torchvision.ops.nms's rule: drop IoU > thresh)."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, order = order[0], order[1:]
        keep.append(best)
        if order.size:
            order = order[box_iou_one(boxes[best], boxes[order]) <= iou_thresh]
    return np.asarray(keep, dtype=np.int64)


def ssd_detections(boxes: np.ndarray, probs: np.ndarray, score_thresh: float, nms_thresh: float,
                   topk_candidates: int, detections_per_img: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes, scores, labels 1..K) from one image's decoded anchors (A x 4) and class probabilities (A x K+1)."""
    kept_boxes, kept_scores, kept_labels = [], [], []
    for label in range(1, probs.shape[1]):
        score = probs[:, label]
        idx = np.nonzero(score > score_thresh)[0]
        idx = idx[np.argsort(-score[idx], kind="stable")[:topk_candidates]]
        if not idx.size:
            continue
        keep = idx[nms(boxes[idx], score[idx], nms_thresh)]  # per class: torchvision's batched_nms
        kept_boxes.append(boxes[keep])
        kept_scores.append(score[keep])
        kept_labels.append(np.full(len(keep), label, dtype=np.int64))
    if not kept_boxes:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    all_boxes, all_scores, all_labels = np.concatenate(kept_boxes), np.concatenate(kept_scores), np.concatenate(kept_labels)
    order = np.argsort(-all_scores, kind="stable")[:detections_per_img]
    return all_boxes[order], all_scores[order], all_labels[order]
