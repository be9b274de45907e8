"""The data↔task contract: what a datamodule yields, what a task reads, and the check that the two fit.

A datamodule declares the `kind` of records its batches hold and hands the task what only the data knows
(`task_kwargs()`: class count and names, category ids, cells, identities). A task declares the kind it reads
(`BaseTask.data_kind`). `check_contract` refuses a pair that does not fit before anything is built from it, and
names the data configs that would.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

from toolkit.errors import ConfigError

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

    kind: ClassVar[str]
    resolution: int  # the input side (detection with `transform: keep_aspect`: the shorter side)
    mean: Sequence[float]  # the normalisation the images get: what the backbone's weights expect, unless set
    std: Sequence[float]

    def task_kwargs(self) -> dict[str, Any]:
        """Task constructor arguments only the data knows (class count and names, category ids, cells...)."""
        ...


def check_contract(task_class: type, datamodule: TaskData, task_name: str | None = None,
                   data_name: str | None = None) -> None:
    """Refuse a datamodule whose records the task does not read, naming both and the data configs that fit.

    `task_name`, `data_name`: the config options (`task=...`, `data=...`) to name; the class names when None."""
    wanted = task_class.data_kind
    given = getattr(datamodule, "kind", None)
    if wanted == given:
        return
    task_label = f"task={task_name}" if task_name else task_class.__name__
    data_label = f"data={data_name}" if data_name else type(datamodule).__name__
    if given is None:
        raise ConfigError("data", data_name or type(datamodule).__name__,
                          f"{type(datamodule).__name__} declares no `kind` (the records it yields, "
                          "toolkit.data.contract.DataKind): give the class a `kind` attribute")
    fitting = data_configs_for(wanted)
    hint = (f"data configs that fit: {', '.join(f'data={name}' for name in fitting)}" if fitting
            else f"no config in conf/data/ gives {wanted} records")
    raise ConfigError("data", data_name or type(datamodule).__name__,
                      f"{task_label} reads {wanted} records, {data_label} gives {given} records; {hint}")


def data_configs_for(kind: str) -> list[str]:
    """The options of the `data` config group whose datamodules yield `kind` records."""
    import hydra.utils
    from omegaconf import OmegaConf

    from toolkit.conf import CONF_DIR

    return [path.stem for path in sorted((CONF_DIR / "data").glob("*.yaml"))
            if kind in target_kinds(hydra.utils.get_object(OmegaConf.load(path)["_target_"]))]


def target_kinds(target: Any) -> frozenset[str]:
    """The kinds of records a data config's `_target_` builds: a datamodule class's `kind`; for `data=shapes`,
    which generates the variant the task reads, the kinds of all its variants."""
    from toolkit.data.shapes import shapes_datamodule, shapes_kinds

    if target is shapes_datamodule:
        return shapes_kinds()
    kind = getattr(target, "kind", None)
    return frozenset({kind}) if kind else frozenset()
