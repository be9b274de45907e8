"""Which int8 activation type `onnx_int8` uses: the one the target CPU's kernels are fast at.

ONNX Runtime's x86 int8 kernels (VNNI, AMX) multiply unsigned activations by signed weights (U8S8); signed
activations (S8S8) there take a slower path (on a Sapphire Rapids core the same MobileNet ran 1.1x fp32 with S8S8,
about 1.9x with U8S8). ARM's dot-product kernels (SDOT) are signed x signed: S8S8 is the fast pair there.
`export.int8_target` names the target (x86 | arm; null: this machine's), an explicit `export.int8_activations`
(uint8 | int8) wins over it.
"""

from __future__ import annotations

import platform
from typing import Any

from toolkit.errors import ConfigError

#: export.int8_target -> the activation type its kernels are fast at (weights are signed int8 either way)
TARGET_ACTIVATIONS = {"x86": "uint8", "arm": "int8"}
ACTIVATIONS = ("uint8", "int8")
MACHINES = {"x86_64": "x86", "amd64": "x86", "i386": "x86", "i686": "x86", "x86": "x86",
            "aarch64": "arm", "arm64": "arm", "armv7l": "arm", "armv8l": "arm"}


def machine_target(machine: str | None = None) -> str:
    """x86 or arm for `machine` (platform.machine() by default); x86 for a machine of neither family."""
    return MACHINES.get((machine if machine is not None else platform.machine()).lower(), "x86")


def int8_target(settings: Any, machine: str | None = None) -> str:
    target = settings.get("int8_target")
    if target is None:
        return machine_target(machine)
    if str(target) not in TARGET_ACTIVATIONS:
        raise ConfigError("export.int8_target", target, "x86 (U8S8: Intel/AMD) or arm (S8S8: phones, Apple, Graviton), "
                          "or null for this machine's")
    return str(target)


def int8_activations(settings: Any, machine: str | None = None) -> str:
    """`export.int8_activations` when set, else the activation type of `export.int8_target`'s fast kernels."""
    explicit = settings.get("int8_activations")
    if explicit is not None:
        if str(explicit) not in ACTIVATIONS:
            raise ConfigError("export.int8_activations", explicit, "uint8 (U8S8) or int8 (S8S8), or null to follow "
                              "export.int8_target")
        return str(explicit)
    return TARGET_ACTIVATIONS[int8_target(settings, machine)]
