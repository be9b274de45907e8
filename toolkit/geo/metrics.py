"""The Im2GPS metrics of PlaNet (paper Table 11): share of images within 1/25/200/750/2500 km, median error."""

from __future__ import annotations

import numpy as np
import torch
import torchmetrics

from toolkit.geo.distance import haversine_km

#: (scale, threshold in km) rows of the paper's Table 11, finest first
IM2GPS_SCALES: tuple[tuple[str, int], ...] = (
    ("street", 1), ("city", 25), ("region", 200), ("country", 750), ("continent", 2500),
)
#: Table 11, % of the 237 Im2GPS test images within each distance of the truth
PAPER_TABLE11: dict[str, dict[int, float]] = {
    "Im2GPS": {1: 2.5, 25: 21.9, 200: 32.1, 750: 35.4, 2500: 51.9},
    "PlaNet": {1: 11.0, 25: 31.7, 200: 51.1, 750: 64.0, 2500: 77.6},
    "PlaNet MobileNet": {1: 11.4, 25: 31.7, 200: 45.2, 750: 60.3, 2500: 79.3},
}


def metric_key(threshold_km: float) -> str:
    return f"within_{threshold_km:g}km"


def distance_accuracy(distances_km, thresholds=tuple(t for _, t in IM2GPS_SCALES)) -> dict[str, float]:
    """{"within_<t>km": share of distances <= t, ..., "median_km": median}; the paper counts `dist <= threshold`."""
    d = np.asarray(distances_km, dtype=np.float64).ravel()
    if d.size == 0:
        raise ValueError("no distances to score")
    out = {metric_key(t): float(np.mean(d <= t)) for t in thresholds}
    out["median_km"] = float(np.median(d))
    return out


class GeoDistanceAccuracy(torchmetrics.Metric):
    """Accumulates great-circle errors over an epoch; `compute()` gives `distance_accuracy` as tensors."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, thresholds=tuple(t for _, t in IM2GPS_SCALES)):
        super().__init__()
        self.thresholds = tuple(thresholds)
        self.add_state("distances", default=[], dist_reduce_fx="cat")

    def update(self, pred_latlon: torch.Tensor, true_latlon: torch.Tensor) -> None:
        self.distances.append(haversine_km(pred_latlon[:, 0], pred_latlon[:, 1], true_latlon[:, 0], true_latlon[:, 1]).float())

    def compute(self) -> dict[str, torch.Tensor]:
        d = torchmetrics.utilities.dim_zero_cat(self.distances)
        out = {metric_key(t): (d <= t).float().mean() for t in self.thresholds}
        out["median_km"] = torch.quantile(d.double(), 0.5).float()  # interpolated, as numpy's median
        return out


def im2gps_table(metrics: dict[str, float], prefix: str = "", label: str = "this run") -> str:
    """Markdown table of this run's `within_<t>km` shares (as %) beside the paper's Table 11 columns."""
    names = list(PAPER_TABLE11)
    lines = [f"| scale | {label} | " + " | ".join(names) + " |", "|---" * (len(names) + 2) + "|"]
    for scale, t in reversed(IM2GPS_SCALES):  # the paper lists continent first
        ours = metrics.get(f"{prefix}{metric_key(t)}")
        cell = f"{100 * ours:.1f}" if ours is not None else "-"
        lines.append(f"| {scale} {t} km | {cell} | " + " | ".join(f"{PAPER_TABLE11[n][t]:.1f}" for n in names) + " |")
    median = metrics.get(f"{prefix}median_km")
    if median is not None:
        lines.append(f"| median error | {median:.1f} km |" + " |" * len(names))
    return "\n".join(lines) + "\n"
