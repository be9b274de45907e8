"""SSD detection (paper Table 13: SSD300 MobileNet): the TF OD API ssd_mobilenet_v1 layout on torchvision's SSD."""

from __future__ import annotations

from toolkit.detection.ssd import EXTRA_DEPTHS, build_ssd
from toolkit.tasks.detection import DetectionTask


class SSDTask(DetectionTask):
    """Anchor, head and loss options mirror `toolkit.detection.ssd.MobileNetSSD` (see its docstring)."""

    def __init__(
        self,
        backbone: dict,
        num_classes: int = 80,
        class_names: list[str] | None = None,
        category_ids: list[int] | None = None,
        head: str = "ssd",
        head_kernel_size: int = 1,
        taps: list[str] | None = None,
        extra_depths: list[int] = EXTRA_DEPTHS,
        min_depth: int = 16,
        min_scale: float = 0.2,
        max_scale: float = 0.95,
        aspect_ratios: list[float] = (2.0, 3.0),
        reduce_boxes_in_lowest_layer: bool = True,
        iou_thresh: float = 0.5,
        neg_to_pos_ratio: float = 3.0,
        score_thresh: float = 1e-8,
        nms_thresh: float = 0.6,
        detections_per_img: int = 100,
        topk_candidates: int = 100,
        eval_backend: str = "auto",
        predict_score_thresh: float = 0.3,
        optimizer: dict | None = None,
        scheduler: dict | None = None,
        backbone_lr_scale: float = 1.0,
        freeze_backbone_epochs: int = 0,
    ):
        super().__init__(backbone, num_classes, class_names, category_ids, eval_backend, predict_score_thresh,
                         optimizer, scheduler, backbone_lr_scale, freeze_backbone_epochs)

    def configure_models(self) -> None:
        h = self.hparams
        self.model = build_ssd(
            dict(h.backbone), self.num_classes, taps=h.taps, extra_depths=tuple(h.extra_depths), min_depth=h.min_depth,
            head=h.head, head_kernel_size=h.head_kernel_size, min_scale=h.min_scale, max_scale=h.max_scale,
            aspect_ratios=tuple(h.aspect_ratios), reduce_boxes_in_lowest_layer=h.reduce_boxes_in_lowest_layer,
            iou_thresh=h.iou_thresh, neg_to_pos_ratio=h.neg_to_pos_ratio, score_thresh=h.score_thresh,
            nms_thresh=h.nms_thresh, detections_per_img=h.detections_per_img, topk_candidates=h.topk_candidates,
        )
