"""Face metrics: TAR@FAR and 10-fold accuracy on hand-made scores; the tasks' mean AP and verification vs references."""

import numpy as np
import pytest
import torch
from lightning import Trainer
from sklearn.metrics import average_precision_score, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Dataset

from toolkit.tasks.face_attributes import FaceAttributesTask
from toolkit.tasks.face_embedding import FaceEmbeddingTask
from toolkit.verification import best_threshold, kfold_accuracy, tar_at_far, verification_report

TINY = {"name": "mobilenet_v1", "alpha": 0.25}
GENUINE = [0.9, 0.8, 0.7, 0.3]
IMPOSTOR = [0.85, 0.6, 0.5, 0.4, 0.2, 0.1, 0.05, 0.0, -0.1, -0.2]


def scored():
    return np.array(GENUINE + IMPOSTOR), np.array([1] * len(GENUINE) + [0] * len(IMPOSTOR))


def test_tar_at_far_on_hand_made_scores():
    scores, labels = scored()
    # FAR 0.1 of 10 impostors: one may pass -> threshold at the 2nd highest impostor (0.6)
    point = tar_at_far(scores, labels, 0.1)
    assert point["threshold"] == 0.6 and point["tar"] == 0.75 and point["measured_far"] == 0.1 and point["resolvable"]
    point = tar_at_far(scores, labels, 0.5)
    assert point["threshold"] == 0.1 and point["tar"] == 1.0 and point["measured_far"] == 0.5
    # FAR 0.01 cannot be resolved with 10 impostors: threshold above every impostor, FAR 0
    point = tar_at_far(scores, labels, 0.01)
    assert point["threshold"] == 0.85 and point["tar"] == 0.25 and point["measured_far"] == 0.0
    assert not point["resolvable"]


def test_threshold_and_kfold_accuracy_on_hand_made_scores():
    threshold, accuracy = best_threshold(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    assert accuracy == 0.75
    assert best_threshold(np.array([0.2, 0.3, 0.6, 0.9]), np.array([0, 0, 1, 1])) == pytest.approx((0.45, 1.0))
    # fold 0 (0.6 vs 0.4) takes its threshold from fold 1 (0.8) and vice versa (0.5): each gets one pair wrong
    result = kfold_accuracy(np.array([0.6, 0.4, 0.9, 0.7]), np.array([1, 0, 1, 0]), folds=np.array([0, 0, 1, 1]))
    assert result["fold_thresholds"] == pytest.approx([0.8, 0.5])
    assert result["fold_accuracies"] == [0.5, 0.5] and result["accuracy"] == 0.5
    # separable scores: every fold perfect, also when dealt round-robin into 10 folds
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 200)
    assert kfold_accuracy(labels + rng.uniform(-0.4, 0.4, 200), labels)["accuracy"] == 1.0


def test_report_auc_matches_scikit_learn():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    scores = labels * 0.5 + rng.normal(0, 0.5, 300)
    report = verification_report(scores, labels)
    assert report["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    assert report["genuine_pairs"] + report["impostor_pairs"] == 300 and len(report["fold_accuracies"]) == 10


class Encoded(Dataset):
    """Images that carry their index, so a lookup model returns fixed outputs for them."""

    def __init__(self, n, extra=None):
        self.n, self.extra = n, extra or (lambda i: {})

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return {"image": torch.full((3, 32, 32), float(i)), "index": i, **self.extra(i)}


class Lookup(nn.Module):
    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", torch.as_tensor(table, dtype=torch.float32))

    def forward(self, x):
        return self.table[x[:, 0, 0, 0].long()]


def trainer():
    return Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


def test_mean_ap_matches_scikit_learn(tmp_path):
    rng = np.random.default_rng(2)
    n, names = 40, ["Smiling", "Hat", "Bald", "Young"]
    target = rng.integers(0, 2, (n, 4))
    target[:, 2] = 0                           # no positives: AP undefined, left out of the mean
    target[rng.random((n, 4)) < 0.1] = -1      # unknown labels are ignored
    logits = rng.normal(0, 1, (n, 4)) + 1.5 * target
    task = FaceAttributesTask(backbone=TINY, num_attributes=4, attribute_names=names)
    task.model = Lookup(logits)
    loader = DataLoader(Encoded(n, lambda i: {"labels": torch.tensor(target[i], dtype=torch.float32)}), batch_size=16)
    (metrics,) = trainer().validate(task, loader)
    expected = {}
    for j in (0, 1, 3):
        keep = target[:, j] >= 0
        expected[names[j]] = average_precision_score(target[keep, j], logits[keep, j])
        assert metrics[f"val/ap/{names[j]}"] == pytest.approx(expected[names[j]], abs=1e-5)
    assert "val/ap/Bald" not in metrics and metrics["val/attributes_scored"] == 3
    assert metrics["val/mAP"] == pytest.approx(np.mean(list(expected.values())), abs=1e-5)
    task.write_eval_outputs(metrics, tmp_path)
    table = (tmp_path / "attributes.md").read_text()
    assert f"| Smiling | {100 * expected['Smiling']:.1f} |" in table and "| Bald | n/a" in table
    assert (tmp_path / "attributes.csv").read_text().count("\n") == 5


def test_verification_metrics_of_the_embedding_task(tmp_path):
    rng = np.random.default_rng(3)
    n = 30
    emb = rng.normal(size=(n, 8))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    pairs = np.array([[i, (i * 7 + 3) % n] for i in range(n)] + [[i, (i + 1) % n] for i in range(n)])
    same = rng.random(len(pairs)) < 0.5
    dataset = Encoded(n)
    dataset.pairs, dataset.same, dataset.folds = pairs, same, None
    task = FaceEmbeddingTask(backbone=TINY, embedding_dim=8, fars=[0.1, 0.01])
    task.model = Lookup(emb)
    (metrics,) = trainer().validate(task, DataLoader(dataset, batch_size=7))
    scores = np.sum(emb[pairs[:, 0]] * emb[pairs[:, 1]], axis=1)
    assert metrics["val/accuracy"] == pytest.approx(kfold_accuracy(scores, same)["accuracy"], abs=1e-6)
    assert metrics["val/tar@far0.1"] == pytest.approx(tar_at_far(scores, same, 0.1)["tar"], abs=1e-6)
    task.write_eval_outputs(metrics, tmp_path)
    assert (tmp_path / "roc.png").stat().st_size > 0
    assert (tmp_path / "roc.csv").read_text().startswith("threshold,far,tar")
    assert "fold_accuracies" in (tmp_path / "verification.json").read_text()
