"""SSD detection (paper Table 13: SSD300 MobileNet): the TF OD API ssd_mobilenet_v1 layout on torchvision's SSD."""

from __future__ import annotations

from toolkit.detection.ssd import build_ssd
from toolkit.tasks.base import register_task
from toolkit.tasks.detection import DetectionTask


@register_task
class SSDTask(DetectionTask):
    """`task.model`: anchor, head and loss options, the keyword arguments of `toolkit.detection.ssd.MobileNetSSD`
    (its signature and docstring declare them); every other argument is `DetectionTask`'s."""

    def configure_models(self) -> None:
        self.model = build_ssd(dict(self.hparams.backbone), self.num_classes, **self.model_kwargs)
