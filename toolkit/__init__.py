"""MobileNet Toolkit: the MobileNets paper (Howard et al. 2017) as a backbone registry plus Lightning tasks."""

from toolkit.backbones import create_backbone, list_backbones, register_backbone

__version__ = "0.1.0"
__all__ = ["create_backbone", "list_backbones", "register_backbone", "__version__"]
