"""MobileNet Toolkit: the MobileNets paper (Howard et al. 2017) as a backbone registry plus Lightning tasks.

The registry functions load on first use (PEP 562), so `import toolkit` itself imports no torch: the CLI's
`--help` and the torch-free deployment predictor (`toolkit.deploy`) stay light.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["compose", "create_backbone", "list_backbones", "register_backbone", "__version__"]


def __getattr__(name: str):
    if name == "compose":  # the config `python -m toolkit ARGS` runs: toolkit.compose(ARGS, output_dir=...)
        from toolkit.run import compose

        return compose
    if name in ("create_backbone", "list_backbones", "register_backbone"):
        from toolkit import backbones

        return getattr(backbones, name)
    raise AttributeError(f"module 'toolkit' has no attribute {name!r}")
