"""The fine cells' (hierarchical) log-scores from a geolocation model's per-partition logits."""

from __future__ import annotations

import torch


def cell_log_scores(logits: tuple[torch.Tensor, ...], ancestors: list[torch.Tensor]) -> torch.Tensor:
    """The finest head's log-probabilities plus, for each coarser head k, the log-probability of each fine cell's
    ancestor `ancestors[k]` (-1: none, adds nothing). Written with ops every exporter takes (index_select, where):
    the task (`GeolocationTask.cell_log_scores`) and its exported file (`toolkit.tasks.inference.GeolocationOutputs`)
    both compute it with this function."""
    scores = logits[-1].float().log_softmax(-1)
    for k, ancestor in enumerate(ancestors):
        gathered = logits[k].float().log_softmax(-1).index_select(1, ancestor.clamp(min=0))
        scores = scores + torch.where(ancestor >= 0, gathered, torch.zeros_like(gathered))
    return scores
