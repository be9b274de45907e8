"""Task-agnostic heads and the backbone+head classifier every classification-like task uses."""

from __future__ import annotations

import torch
from torch import nn

from toolkit.backbones import Backbone, create_backbone


class ClassifierHead(nn.Module):
    """Global average pool + dropout + FC (the paper's "Avg Pool 7x7, FC, softmax", softmax left to the loss)."""

    def __init__(self, in_features: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(in_features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(features), 1)))


class ImageClassifier(nn.Module):
    """`backbone` then `head`; the state-dict prefixes `backbone.` / `head.` are what `init_from` maps."""

    def __init__(self, backbone: Backbone, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.backbone = backbone
        self.head = ClassifierHead(backbone.num_features, num_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def build_classifier(backbone: dict, num_classes: int, *, dropout: float = 0.0) -> ImageClassifier:
    """Build from a backbone config dict (`{"name": ..., "alpha": ..., ...}`); `dropout` before the FC layer
    (the classification tasks' `task.model`)."""
    return ImageClassifier(create_backbone(**backbone), num_classes, dropout)
