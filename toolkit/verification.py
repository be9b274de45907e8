"""Face verification metrics on scored pairs: k-fold accuracy, TAR at fixed FAR, ROC points and plot.

Scores are similarities (higher = more likely the same identity); a pair is accepted when
`score > threshold`. Labels are 1 for same-identity ("genuine") pairs and 0 for different ones.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torchmetrics.functional.classification import binary_roc

from toolkit.io import atomic_path


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """The threshold (a midpoint between neighbouring scores) with the highest accuracy, and that accuracy."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    values = np.unique(scores)
    candidates = np.concatenate([[values[0] - 1.0], (values[:-1] + values[1:]) / 2, [values[-1] + 1.0]])
    genuine, impostor = np.sort(scores[labels]), np.sort(scores[~labels])
    # accepted genuine pairs: score > t; rejected impostors: score <= t
    correct = (len(genuine) - np.searchsorted(genuine, candidates, side="right")) + np.searchsorted(
        impostor, candidates, side="right")
    best = int(np.argmax(correct))
    return float(candidates[best]), float(correct[best] / len(scores))


def kfold_accuracy(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray | None = None, n_folds: int = 10) -> dict:
    """LFW protocol: for each fold, pick the threshold on the other folds, measure accuracy on this one.

    `folds` gives each pair's fold (LFW's pairs.txt sets); without it pairs are dealt round-robin.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    folds = np.arange(len(scores)) % n_folds if folds is None else np.asarray(folds)
    accuracies, thresholds = [], []
    for fold in np.unique(folds):
        test = folds == fold
        if test.all():  # a single fold: nothing to choose the threshold on but itself
            threshold, _ = best_threshold(scores, labels)
        else:
            threshold, _ = best_threshold(scores[~test], labels[~test])
        accuracies.append(float(np.mean((scores[test] > threshold) == labels[test])))
        thresholds.append(threshold)
    return {"accuracy": float(np.mean(accuracies)), "accuracy_std": float(np.std(accuracies)),
            "fold_accuracies": accuracies, "fold_thresholds": thresholds}


def tar_at_far(scores: np.ndarray, labels: np.ndarray, far: float) -> dict:
    """True accept rate at the lowest threshold whose false accept rate is <= `far`.

    With n impostor pairs, FAR can only be resolved down to 1/n: `resolvable` is False when
    far * n < 1, and the threshold then sits at the highest impostor score (measured FAR 0).
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    genuine, impostor = scores[labels], np.sort(scores[~labels])[::-1]
    allowed = int(np.floor(far * len(impostor) + 1e-9))  # impostors that may score above the threshold
    threshold = float(impostor[allowed]) if allowed < len(impostor) else -np.inf
    return {"far": far, "tar": float(np.mean(genuine > threshold)) if len(genuine) else float("nan"),
            "threshold": threshold, "measured_far": float(np.mean(impostor > threshold)) if len(impostor) else float("nan"),
            "impostor_pairs": len(impostor), "resolvable": far * len(impostor) >= 1}


def roc_points(scores: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """False and true positive rates over all thresholds (torchmetrics' binary ROC)."""
    fpr, tpr, thresholds = binary_roc(torch.as_tensor(np.asarray(scores, dtype=np.float32)),
                                      torch.as_tensor(np.asarray(labels).astype(np.int64)))
    return {"fpr": fpr.numpy(), "tpr": tpr.numpy(), "threshold": thresholds.numpy()}


def verification_report(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray | None = None,
                        fars: tuple[float, ...] = (1e-3, 1e-4), n_folds: int = 10) -> dict:
    """Everything `mode=eval` writes for a pairs file."""
    labels = np.asarray(labels).astype(bool)
    report = {"pairs": int(len(labels)), "genuine_pairs": int(labels.sum()), "impostor_pairs": int((~labels).sum())}
    report.update(kfold_accuracy(scores, labels, folds, n_folds))
    report["tar_at_far"] = [tar_at_far(scores, labels, far) for far in fars]
    report["roc"] = roc_points(scores, labels)
    fpr, tpr = report["roc"]["fpr"], report["roc"]["tpr"]
    report["auc"] = float(np.trapezoid(tpr, fpr)) if hasattr(np, "trapezoid") else float(np.trapz(tpr, fpr))
    return report


def plot_roc(report: dict, path: Path, title: str = "verification ROC") -> Path:
    """ROC on a log FAR axis with the TAR@FAR operating points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fpr, tpr = report["roc"]["fpr"], report["roc"]["tpr"]
    floor = 1.0 / max(report["impostor_pairs"], 1) / 2  # log axis: show FAR 0 just left of the finest step
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(np.maximum(fpr, floor), tpr, lw=1.5, label=f"ROC (AUC {report['auc']:.3f})")
    for point in report["tar_at_far"]:
        mark = "" if point["resolvable"] else " (unresolved)"
        ax.scatter([max(point["far"], floor)], [point["tar"]], zorder=3, label=f"TAR@FAR {point['far']:g} = {point['tar']:.3f}{mark}")
    ax.set_xscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"{title}: accuracy {report['accuracy']:.3f} ± {report['accuracy_std']:.3f}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:  # the temporary name ends in .tmp: say the format
        fig.savefig(tmp, dpi=120, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
