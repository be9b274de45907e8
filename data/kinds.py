"""The two sides of the data↔task contract as types: the kinds of records (`DataKind`) and what a task may rely
on in a datamodule (`TaskData`). A module of its own, importing nothing of the toolkit, so `BaseDataModule` and
`BaseTask` annotate with them and toolkit.data.contract checks them without an import cycle."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

#: The kinds of records the built-in datamodules yield and the built-in tasks read (every sample is a dict with
#: `image` and `path`; `skipped` counts the samples `data.skip_corrupt` dropped from a batch):
#:   classification  + `label` (class index)
#:   detection       `images`, `targets` (boxes in pixels, labels 1..K), `paths`: lists, images of any size
#:   geolocation     + `latlon` (degrees); the task turns it into cell labels with the data's partitionings
#:   face_attributes + `labels` (one float per attribute, -1 unknown), `key`
#:   face_embedding  + `label` (identity, -1 unknown), `key`, `index`; the val split holds verification pairs
#: A task that reads a new kind of records (docs/architecture.md's brightness example) names it on both sides.
DataKind = Literal["classification", "detection", "geolocation", "face_attributes", "face_embedding"]


@runtime_checkable
class TaskData(Protocol):
    """What a task may rely on in the datamodule it is trained, evaluated or exported with (`BaseDataModule`
    implements all but `kind`, which each datamodule declares)."""

    kind: ClassVar[DataKind]
    resolution: int  # the input side (detection with `transform: keep_aspect`: the shorter side)
    mean: Sequence[float]  # the normalisation the images get: what the backbone's weights expect, unless set
    std: Sequence[float]

    def task_kwargs(self) -> dict[str, Any]:
        """Task constructor arguments only the data knows (class count and names, category ids, cells...)."""
        ...
