"""Post-processing for files without NMS: SSD's box decoding, per-class top-k, class-wise NMS and top-N in numpy.

ONNX exports carry NMS inside the graph by default; ExecuTorch's XNNPACK delegate has no NMS kernel, so an SSD
`.pte` returns every anchor's decoded box and class probabilities, and `export.postprocess=none` files return
the raw head (box regression and class logits per anchor; `decode_ssd_head` decodes it with the anchors and
rule in the file's `raw_head` metadata). `ssd_detections` then finishes exactly as torchvision's
`SSD.postprocess_detections` does (the settings come from the file's `nms` metadata).
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


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float, labels: np.ndarray | None = None,
        max_kept: int | None = None) -> np.ndarray:
    """Greedy NMS: indices of the kept boxes, highest score first (torchvision.ops.nms's rule: drop IoU > thresh).
    `labels`: a box suppresses only boxes of its own label (torchvision's batched_nms), in one pass over all of
    them; `max_kept`: the first that many kept boxes. Whether a box is kept depends only on the boxes scoring
    above it, so those come from the best candidates alone: greedy runs on the 4 x max_kept best first, and on
    more only when that keeps too few."""
    order = np.argsort(-scores, kind="stable")
    if max_kept is None:
        return greedy_nms(boxes, order, iou_thresh, labels, len(order))
    size = 4 * max_kept
    while True:
        keep = greedy_nms(boxes, order[:size], iou_thresh, labels, max_kept)
        if len(keep) >= max_kept or size >= len(order):
            return keep
        size *= 4


def greedy_nms(boxes: np.ndarray, order: np.ndarray, iou_thresh: float, labels: np.ndarray | None,
               max_kept: int) -> np.ndarray:
    """NMS over `order` (indices, best first), stopping at `max_kept` kept boxes."""
    keep = []
    while order.size and len(keep) < max_kept:
        best, order = order[0], order[1:]
        keep.append(best)
        rivals = np.arange(order.size) if labels is None else np.flatnonzero(labels[order] == labels[best])
        if rivals.size:
            order = np.delete(order, rivals[box_iou_one(boxes[best], boxes[order[rivals]]) > iou_thresh])
    return np.asarray(keep, dtype=np.int64)


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def decode_boxes(regression: np.ndarray, anchors: np.ndarray, weights, xform_clip: float,
                 size: tuple[int, int]) -> np.ndarray:
    """(A, 4) xyxy boxes clipped to the `size` (H, W) input: torchvision's BoxCoder.decode_single on (A, 4) codes."""
    regression, anchors = regression.astype(np.float32), anchors.astype(np.float32)
    widths, heights = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    ctr_x, ctr_y = anchors[:, 0] + np.float32(0.5) * widths, anchors[:, 1] + np.float32(0.5) * heights
    wx, wy, ww, wh = (np.float32(w) for w in weights)
    dx, dy = regression[:, 0] / wx, regression[:, 1] / wy
    dw = np.minimum(regression[:, 2] / ww, np.float32(xform_clip))
    dh = np.minimum(regression[:, 3] / wh, np.float32(xform_clip))
    pred_ctr_x, pred_ctr_y = dx * widths + ctr_x, dy * heights + ctr_y
    half_w, half_h = np.float32(0.5) * np.exp(dw) * widths, np.float32(0.5) * np.exp(dh) * heights
    boxes = np.stack([pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h], axis=1)
    height, width = size
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, width)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, height)
    return boxes


def decode_ssd_head(regression: np.ndarray, logits: np.ndarray, raw_head: dict,
                    size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One image's raw head (A x 4 box codes, A x K+1 logits) -> (A x 4 boxes in input pixels, A x K+1 probabilities)."""
    anchors = np.asarray(raw_head["anchors"], dtype=np.float32)
    if len(anchors) != len(regression):
        raise ValueError(f"the file's metadata holds {len(anchors)} anchors for {len(regression)} head rows")
    coder = raw_head["box_coder"]
    boxes = decode_boxes(regression, anchors, coder["weights"], coder["bbox_xform_clip"], size)
    return boxes, softmax(logits.astype(np.float32))


def ssd_detections(boxes: np.ndarray, probs: np.ndarray, score_thresh: float, nms_thresh: float,
                   topk_candidates: int, detections_per_img: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes, scores, labels 1..K) from one image's decoded anchors (A x 4) and class probabilities (A x K+1):
    per class the `topk_candidates` best anchors scoring above `score_thresh`, NMS within each class, the
    `detections_per_img` best (torchvision's SSD.postprocess_detections), without a loop over the classes: one
    top-k over every class, one filter, one NMS pass that stops at `detections_per_img` kept boxes."""
    scores = probs[:, 1:]  # (A, K): background column dropped
    k = min(int(topk_candidates), len(scores))
    if k == 0 or scores.shape[1] == 0:
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
    best = np.argpartition(-scores, k - 1, axis=0)[:k] if k < len(scores) else np.arange(len(scores))[:, None]
    best = np.broadcast_to(best, (k, scores.shape[1]))  # (k, K) anchor indices: each class's k best
    top = np.take_along_axis(scores, best, axis=0)
    labels = np.broadcast_to(np.arange(1, scores.shape[1] + 1, dtype=np.int64), best.shape)
    above = top > score_thresh
    index, top, labels = best[above], top[above], labels[above]
    keep = nms(boxes[index], top, nms_thresh, labels=labels, max_kept=int(detections_per_img))
    return boxes[index[keep]], top[keep], labels[keep]
