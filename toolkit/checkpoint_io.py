"""Checkpoint files written whole or not at all.

Lightning's `TorchCheckpointIO` serialises a checkpoint in memory, then writes the bytes over the target file: a
run killed during that write leaves a truncated `best.ckpt` / `last.ckpt` in place of the previous good one
(both names are rewritten every time they improve or an epoch ends). `AtomicCheckpointIO` writes local files
under a temporary name beside the target and renames it into place (`toolkit.io.torch_save_atomic`), so a
checkpoint path always holds a complete file; remote (fsspec URL) paths keep Lightning's own writer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from toolkit.io import torch_save_atomic


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        protocol = get_filesystem(path).protocol
        local = "file" in (protocol if isinstance(protocol, tuple) else (protocol,))
        if storage_options is not None or not local:
            return super().save_checkpoint(checkpoint, path, storage_options)
        torch_save_atomic(checkpoint, path)
        return None
