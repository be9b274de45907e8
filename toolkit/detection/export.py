"""Detectors as single-graph modules for export: one image tensor in, `boxes, scores, labels, count` out.

`WholeDetector` keeps torchvision's post-processing (anchor decoding, per-class top-k, batched NMS, top-N;
Faster R-CNN also its RPN and RoIAlign) inside the traced graph: torchvision registers ONNX symbolics for
`nms` and `roi_align` with the TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`), so the
ONNX file holds `NonMaxSuppression`/`RoiAlign` nodes and a user needs nothing but ONNX Runtime. It takes a
batch of one image (torchvision's detectors loop over images in Python, which tracing unrolls).

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
