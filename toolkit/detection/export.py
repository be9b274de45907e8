"""Detectors as single-graph modules for export: one image tensor in, `boxes, scores, labels, count` out.

`WholeDetector` keeps torchvision's post-processing (anchor decoding, per-class top-k, batched NMS, top-N;
Faster R-CNN also its RPN and RoIAlign) inside the traced graph: torchvision registers ONNX symbolics for
`nms` and `roi_align` with the TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`), so the
ONNX file holds `NonMaxSuppression`/`RoiAlign` nodes and a user needs nothing but ONNX Runtime. It takes a
batch of one image (torchvision's detectors loop over images in Python, which tracing unrolls).

`SSDWholeDetector` is SSD's form of it: torchvision's `SSD.postprocess_detections` loops over the classes in
Python (tracing unrolls it into 80 blocks of Gather/NonZero/TopK) and hands NMS every candidate (80 x
topk_candidates at a score threshold of 1e-8), and ONNX Runtime's NMS compares each candidate with every box
kept so far; that post-processing took more time than the network. Here the same rule runs as one TopK over
all classes, one score filter and one class-offset NMS that stops at `detections_per_img` kept boxes
(`NonMaxSuppression`'s `max_output_boxes_per_class`): the same detections, a few operators.

`SSDDenseOutputs` is the SSD network plus anchor decoding without NMS, for runtimes that have no NMS kernel
(ExecuTorch's XNNPACK delegate): every anchor's box in input pixels and its class probabilities;
`toolkit.deploy.postprocess.ssd_detections` finishes with the same rules as torchvision.

`SSDRawHead` is the SSD network alone (`export.postprocess=none`): convolutions, reshapes and a concatenation
that any ONNX consumer runs (OpenCV 4.x's `cv2.dnn` among them: it has neither torchvision's anchor generator
shapes nor `NonZero`). The anchors and the decoding rule travel in the metadata (`raw_head_decoding`), and
`toolkit.deploy.postprocess.decode_ssd_head` decodes them in numpy.
"""

from __future__ import annotations

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import boxes as box_ops

from toolkit.detection.ssd import MobileNetSSD

#: where a detector's prediction layers sit in the exported graph's node names (SSD's classification and regression
#: heads; Faster R-CNN's RPN and box predictors): int8 formats keep them in float (an int8 output rounds every score
#: and box offset to one of 256 levels over the whole range, which reorders near-tied detections and shifts boxes,
#: while these layers are a small part of the computation)
PREDICTION_LAYERS = ("/head/classification_head/", "/head/regression_head/", "/rpn/head/cls_logits",
                     "/rpn/head/bbox_pred", "/box_predictor/")


class WholeDetector(nn.Module):
    """`(1, 3, H, W)` image -> boxes (N, 4) xyxy in input pixels, scores (N,), labels (N,) in 1..K, count (1,)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        out = self.detector([image[0]])[0]
        count = torch.ones(1, dtype=torch.int64) * out["scores"].shape[0]
        return out["boxes"], out["scores"], out["labels"], count


class TopNMS(torch.autograd.Function):
    """`torchvision.ops.nms(boxes, scores, iou)[:max_output]`, exported as one ONNX `NonMaxSuppression` with
    `max_output_boxes_per_class = max_output` (torchvision's symbolic sets no limit), so the runtime stops after
    `max_output` kept boxes: greedy NMS keeps boxes best first, so the first `max_output` are the same."""

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, iou_threshold: float, max_output: int) -> Tensor:
        return torchvision.ops.nms(boxes, scores, iou_threshold)[:max_output]

    @staticmethod
    def symbolic(g, boxes, scores, iou_threshold: float, max_output: int):
        from torch.onnx import symbolic_opset11 as opset11

        nms_out = g.op("NonMaxSuppression", opset11.unsqueeze(g, boxes, 0),
                       opset11.unsqueeze(g, opset11.unsqueeze(g, scores, 0), 0),
                       g.op("Constant", value_t=torch.tensor([max_output], dtype=torch.long)),
                       g.op("Constant", value_t=torch.tensor([iou_threshold], dtype=torch.float)))
        column = g.op("Constant", value_t=torch.tensor([2], dtype=torch.long))
        return opset11.squeeze(g, opset11.select(g, nms_out, 1, column), 1)


class SSDDenseOutputs(nn.Module):
    """`(B, 3, H, W)` images -> boxes (B, A, 4) decoded and clipped to the input, probabilities (B, A, K+1)."""

    def __init__(self, ssd: MobileNetSSD):
        super().__init__()
        self.ssd = ssd

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        size = (int(images.shape[-2]), int(images.shape[-1]))
        features = self.ssd.features(images)
        head = self.ssd.head(features)
        anchors = self.ssd.anchor_generator(ImageList(images[:1], [size]), features)[0]  # the same for every image
        regression = head["bbox_regression"]
        batch, count = regression.shape[:2]
        boxes = self.ssd.box_coder.decode_single(regression.reshape(-1, 4), anchors.repeat(batch, 1))
        boxes = box_ops.clip_boxes_to_image(boxes, size).reshape(batch, count, 4)
        return boxes, head["cls_logits"].softmax(-1)


class SSDWholeDetector(SSDDenseOutputs):
    """`(1, 3, H, W)` image -> boxes (N, 4), scores (N,), labels (N,) in 1..K, count (1,): torchvision's
    `SSD.postprocess_detections` rule (per class: scores > score_thresh, the topk_candidates best; NMS within
    each class; the detections_per_img best) without its per-class loop. The top `topk_candidates` of a class
    among those above the threshold are its top `topk_candidates` that are above it, so one TopK over every
    class then one filter selects the same candidates; NMS runs once on boxes shifted apart by class
    (torchvision's `batched_nms` offset, by the input size: decoded boxes are clipped to it) and stops at
    `detections_per_img`. Settings are the SSD's own (`score_thresh`, `nms_thresh`, ...)."""

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # type: ignore[override]
        ssd = self.ssd
        boxes, probs = super().forward(image)
        boxes, scores = boxes[0], probs[0, :, 1:]  # (A, 4), (A, K): background column dropped
        anchors, classes = scores.shape
        top, index = scores.t().topk(min(int(ssd.topk_candidates), int(anchors)), dim=1)  # (K, k), best first
        labels = torch.arange(1, classes + 1, device=image.device)[:, None].expand_as(index)
        top, index, labels = top.reshape(-1), index.reshape(-1), labels.reshape(-1)
        above = torch.where(top > ssd.score_thresh)[0]
        top, index, labels = top[above], index[above], labels[above]
        candidates = boxes[index]
        offset = labels.to(candidates.dtype)[:, None] * float(max(image.shape[-2:]) + 1)
        keep = TopNMS.apply(candidates + offset, top, float(ssd.nms_thresh), int(ssd.detections_per_img))
        count = torch.ones(1, dtype=torch.int64) * keep.shape[0]
        return candidates[keep], top[keep], labels[keep], count


class SSDRawHead(nn.Module):
    """`(1, 3, R, R)` image -> bbox_regression (1, A, 4), cls_logits (1, A, K+1): the head before any decoding."""

    def __init__(self, ssd: MobileNetSSD):
        super().__init__()
        self.ssd = ssd

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        head = self.ssd.head(self.ssd.features(images))
        return head["bbox_regression"], head["cls_logits"]


def ssd_anchors(ssd: MobileNetSSD, resolution: int) -> Tensor:
    """(A, 4) xyxy anchors in input pixels of a `resolution` x `resolution` input, in the head's output order."""
    images = torch.zeros(1, 3, resolution, resolution)
    with torch.no_grad():
        features = ssd.features(images)
        return ssd.anchor_generator(ImageList(images, [(resolution, resolution)]), features)[0]


def raw_head_decoding(ssd: MobileNetSSD, resolution: int) -> dict:
    """Everything that turns `SSDRawHead`'s outputs into detections, as torchvision's SSD does it."""
    coder = ssd.box_coder
    return {
        "anchors": ssd_anchors(ssd, resolution).tolist(),  # float32 values, exact through JSON
        "anchor_format": "xyxy, input pixels (the resized image the file takes)",
        "box_coder": {"weights": [float(w) for w in coder.weights], "bbox_xform_clip": float(coder.bbox_xform_clip),
                      "rule": "torchvision BoxCoder.decode_single: w, h, cx, cy of the anchor; dx, dy, dw, dh = "
                              "regression / weights; dw, dh clamped to at most bbox_xform_clip; centre = d * size + "
                              "anchor centre; size = exp(d) * anchor size; xyxy = centre -/+ size / 2; then clipped "
                              "to [0, width] x [0, height] of the input"},
        "score": "softmax over the K+1 logits of each anchor",
        "background_index": 0,
        "postprocess": "per class 1..K: scores > score_thresh, the topk_candidates best, NMS at iou_thresh within the "
                       "class; then the detections_per_img best over all classes (torchvision "
                       "SSD.postprocess_detections)",
        **nms_settings(ssd),
    }


def nms_settings(detector: nn.Module) -> dict:
    """The post-processing settings a runtime without NMS must apply (SSD only)."""
    return {"score_thresh": float(detector.score_thresh), "iou_thresh": float(detector.nms_thresh),
            "topk_candidates": int(detector.topk_candidates), "detections_per_img": int(detector.detections_per_img)}
