"""DistillationTask: a BaseTask that may learn from a frozen teacher instead of (or besides) labels.

The teacher is built from the `teacher` config only when training starts, kept outside the
module tree (it is neither saved in the student's checkpoint nor touched by the optimizer or by
`.train()`), moved to the student's device, and checked against the run before the first step:
output kind and width, and for a cache every image of the distillation set.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from toolkit.tasks.base import BaseTask
from toolkit.tasks.teachers import FrozenTeacher, build_teacher, teacher_enabled

log = logging.getLogger(__name__)


class DistillationTask(BaseTask):
    #: what this task asks of a teacher, and what its own checkpoints give when used as one
    distill_output: str = "logits"
    #: the output kinds a teacher may give this task
    accepted_teacher_outputs: Sequence[str] = ("logits",)

    def __init__(self, *, teacher: dict | None = None, **kwargs):
        """`teacher`: the teacher config (`conf/teacher/*`; None or `kind: none` trains on labels). The rest: `BaseTask`."""
        super().__init__(**kwargs)

    @property
    def has_teacher(self) -> bool:
        return teacher_enabled(self.hparams.get("teacher"))

    @property
    def teacher(self) -> FrozenTeacher | None:
        """The frozen teacher (built on first use), or None for `teacher=none`."""
        if not self.has_teacher:
            return None
        if self.__dict__.get("_teacher") is None:
            # __dict__, not setattr: an nn.Module attribute would become a submodule of the student
            self.__dict__["_teacher"] = build_teacher(self.hparams.teacher, self.accepted_teacher_outputs)
        return self.__dict__["_teacher"]

    def expected_teacher_dim(self) -> int | None:
        """The width of the teacher outputs this student was built for."""
        return None

    def on_fit_start(self) -> None:
        teacher = self.teacher
        if teacher is None:
            return
        teacher.to(self.device)
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "mean"):
            teacher.set_input_stats(datamodule.mean, datamodule.std)
        keys = datamodule.distill_keys() if hasattr(datamodule, "distill_keys") else None
        teacher.verify(keys, self.expected_teacher_dim(), self.accepted_teacher_outputs,
                       getattr(datamodule, "resolution", None))

    def teacher_outputs(self, batch: dict) -> torch.Tensor:
        """The teacher's outputs for this batch: the same augmented images the student sees."""
        teacher = self.teacher
        images = batch["image"]
        if any(b.device != images.device for b in teacher.buffers()):
            teacher.to(images.device)
        return teacher(images, batch.get("key"))
