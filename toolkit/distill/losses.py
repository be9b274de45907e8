"""Distillation losses: sigmoid BCE against teacher probabilities (attributes), squared L2 (embeddings)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from toolkit.errors import ConfigError


def attribute_distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Mean over samples and attributes of BCE(sigmoid(s/T), sigmoid(t/T)), scaled by T².

    Each attribute is its own two-class problem, so Hinton et al.'s softened targets become
    per-attribute sigmoids; the T² factor keeps gradient magnitudes comparable across temperatures.
    """
    if temperature <= 0:
        raise ConfigError("task.temperature", temperature, "must be > 0 (1 = the teacher's own probabilities)")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape")
    target = torch.sigmoid(teacher_logits.float() / temperature)
    loss = F.binary_cross_entropy_with_logits(student_logits.float() / temperature, target)
    return loss * temperature**2


def masked_label_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE against 0/1 ground-truth labels; entries labelled -1 (unknown) are ignored."""
    known = labels >= 0
    if not known.any():
        return logits.sum() * 0.0  # keeps the graph (and DDP) alive when a batch has no labels
    return F.binary_cross_entropy_with_logits(logits.float()[known], labels.float()[known])


def embedding_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over samples of the squared L2 distance ||s - t||² (the paper's FaceNet distillation)."""
    if student.shape != teacher.shape:
        raise ValueError(f"student embeddings {tuple(student.shape)} and teacher embeddings "
                         f"{tuple(teacher.shape)} differ in shape")
    return (student.float() - teacher.float()).pow(2).sum(dim=1).mean()
