"""The data↔task contract: what a datamodule yields, what a task reads, and the check that the two fit.

A datamodule declares the `kind` of records its batches hold and hands the task what only the data knows
(`task_kwargs()`: class count and names, category ids, cells, identities). A task declares the kind it reads
(`BaseTask.data_kind`). `check_contract` refuses a pair that does not fit before anything is built from it, and
names the data configs that would.
"""

from __future__ import annotations

from typing import Any

from toolkit.data.kinds import DataKind, TaskData  # noqa: F401 - the contract's two sides, named here too
from toolkit.errors import ConfigError


def check_contract(task_class: type, data_kind: DataKind | None, task_name: str, data_name: str) -> None:
    """Refuse data whose records the task does not read, naming both and the data configs that fit.

    `task_name`, `data_name`: how to name them (the config options, `task=...` and `data=...`)."""
    if data_kind != task_class.data_kind:
        gives = (f"gives {data_kind} records" if data_kind else
                 "declares no kind of records (its datamodule needs a `kind` class attribute)")
        refuse(task_class, task_name, data_name, gives)


def check_data_config(task_class: type, target: str, variant: str | None, task_name: str, data_name: str) -> None:
    """`check_contract` on a data config before it is built, from its `_target_` class (so a task's data keys never
    reach a datamodule that cannot take them); data=shapes: from its `variant`."""
    import hydra.utils

    from toolkit.data.shapes import SHAPES_VARIANTS, shapes_datamodule, variant_class

    built = hydra.utils.get_object(target)
    if built is shapes_datamodule:
        if variant not in SHAPES_VARIANTS:
            refuse(task_class, task_name, data_name,
                   f"has no {variant} variant (it generates {', '.join(SHAPES_VARIANTS)} data)")
        built = variant_class(variant)
    check_contract(task_class, getattr(built, "kind", None), task_name, data_name)


def refuse(task_class: type, task_name: str, data_name: str, gives: str) -> None:
    wanted = task_class.data_kind
    fitting = data_configs_for(wanted)
    hint = (f"data configs that fit: {', '.join(f'data={name}' for name in fitting)}" if fitting
            else f"no config in conf/data/ gives {wanted} records")
    raise ConfigError("data", data_name, f"task={task_name} reads {wanted} records, data={data_name} {gives}; {hint}")


def data_configs_for(kind: str) -> list[str]:
    """The options of the `data` config group whose datamodules yield `kind` records."""
    import hydra.utils
    from omegaconf import OmegaConf

    from toolkit.conf import CONF_DIR

    return [path.stem for path in sorted((CONF_DIR / "data").glob("*.yaml"))
            if kind in target_kinds(hydra.utils.get_object(OmegaConf.load(path)["_target_"]))]


def target_kinds(target: Any) -> frozenset[str]:
    """The kinds of records a data config's `_target_` can build: a datamodule class's `kind`; for `data=shapes`,
    which generates the variant the task reads, the kinds of all its variants."""
    from toolkit.data.shapes import shapes_datamodule, shapes_kinds

    if target is shapes_datamodule:
        return shapes_kinds()
    kind = getattr(target, "kind", None)
    return frozenset({kind}) if kind else frozenset()
