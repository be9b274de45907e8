"""The checks every metadata value goes through: one DataError line naming the file, the key, its value and the
rule (shared by `toolkit.deploy.metadata` and the task decoders of `toolkit.deploy.decoders`)."""

from __future__ import annotations

import json
import math
from typing import Any

from toolkit.errors import DataError

#: largest side a file's metadata may resize an image to: far beyond any MobileNet input, while a crafted
#: 100000 would have OpenCV allocate tens of gigabytes
MAX_SIDE = 8192
REEXPORT = "export the model again with `python -m toolkit mode=export ckpt_path=...`"


def bad(source: str, key: str, value: Any, rule: str) -> DataError:
    shown = json.dumps(value)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    return DataError(f"{source}: invalid metadata {key}={shown}: {rule}; {REEXPORT}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def side(source: str, key: str, value: Any) -> None:
    if not is_int(value) or not 1 <= value <= MAX_SIDE:
        raise bad(source, key, value, f"must be a whole number of pixels from 1 to {MAX_SIDE}")


def sides(source: str, key: str, value: Any) -> None:
    if not isinstance(value, list) or len(value) != 2:
        raise bad(source, key, value, "must be [height, width]")
    for v in value:
        side(source, key, v)


def names(source: str, key: str, value: Any) -> None:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise bad(source, key, value, "must be a non-empty list of names (strings)")


def json_object(source: str, key: str, value: Any) -> dict:
    if not isinstance(value, dict):
        raise bad(source, key, value, "must be a JSON object")
    return value


def get(metadata: dict, source: str, key: str) -> Any:
    if key not in metadata:
        raise DataError(f"{source}: the metadata has no {key!r} key; {REEXPORT}")
    return metadata[key]
