"""Stanford Dogs: .mat lists, official layout, box crops, the prepare command, FineGrainedTask metrics and fine-tuning."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import torch
from conftest import FAST, run_cli

from toolkit.data.prepare_stanford_dogs import main as prepare_main
from toolkit.data.stanford_dogs import StanfordDogsDataModule, breed_name, read_mat_list, read_voc_box
from toolkit.data.stanford_dogs_synthetic import generate_stanford_dogs, write_mat_list, write_official_tars
from toolkit.errors import DataError
from toolkit.tasks.classification import ClassificationTask
from toolkit.tasks.fine_grained import FineGrainedTask

BACKBONE = {"name": "mobilenet_v1", "alpha": 0.25}


@pytest.fixture(scope="module")
def dogs_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("dogs")
    generate_stanford_dogs(root, n_breeds=8, n_train=32, n_test=16, image_size=40, seed=0)
    return root


def test_mat_list_reader_on_scipy_written_cell_arrays(tmp_path):
    path = tmp_path / "train_list.mat"
    write_mat_list(path, ["n02085620-Chihuahua/n02085620_1.jpg", "n02086240-Shih-Tzu/n02086240_7.jpg"], [1, 5])
    raw = scipy.io.loadmat(str(path))
    assert raw["file_list"].shape == (2, 1) and raw["file_list"].dtype == object  # MATLAB cell array, as the originals
    files, annotations, labels = read_mat_list(path)
    assert files == ["n02085620-Chihuahua/n02085620_1.jpg", "n02086240-Shih-Tzu/n02086240_7.jpg"]
    assert annotations == ["n02085620-Chihuahua/n02085620_1", "n02086240-Shih-Tzu/n02086240_7"]
    assert labels.tolist() == [0, 4] and labels.dtype == np.int64

    # a 1-D cell array (row vector) with uint8 labels and no annotation_list reads the same
    cells = np.empty((1, 2), dtype=object)
    cells[0, 0], cells[0, 1] = np.array(["a/x.jpg"]), np.array(["b/y.jpg"])
    scipy.io.savemat(str(tmp_path / "row.mat"), {"file_list": cells, "labels": np.array([[2, 1]], dtype=np.uint8)})
    files, annotations, labels = read_mat_list(tmp_path / "row.mat")
    assert files == ["a/x.jpg", "b/y.jpg"] and annotations is None and labels.tolist() == [1, 0]

    scipy.io.savemat(str(tmp_path / "zero.mat"), {"file_list": cells, "labels": np.array([[0, 1]])})
    with pytest.raises(DataError, match="entry 0 .*label 0.*integers from 1"):
        read_mat_list(tmp_path / "zero.mat")
    scipy.io.savemat(str(tmp_path / "short.mat"), {"file_list": cells, "labels": np.array([[1]])})
    with pytest.raises(DataError, match="2 files but 1 labels"):
        read_mat_list(tmp_path / "short.mat")
    scipy.io.savemat(str(tmp_path / "nokey.mat"), {"files": cells})
    with pytest.raises(DataError, match="no 'file_list' variable"):
        read_mat_list(tmp_path / "nokey.mat")
    with pytest.raises(DataError, match="split list not found.*prepare_stanford_dogs"):
        read_mat_list(tmp_path / "absent.mat")


def test_datamodule_reads_official_layout_and_crops_to_boxes(dogs_tree):
    dm = StanfordDogsDataModule(root=str(dogs_tree), num_workers=0, resolution=32)
    dm.setup()
    assert dm.classes[:3] == ["Chihuahua", "Japanese spaniel", "Maltese dog"] and len(dm.classes) == 8
    assert dm.task_kwargs()["num_classes"] == 8
    assert len(dm.train_dataset) == 32 and len(dm.val_dataset) == 16
    path, label = dm.train_dataset.samples[4]
    assert path.parent.name == "n02086240-Shih-Tzu" and label == 4 and breed_name(path.parent.name) == "Shih-Tzu"
    assert dm.train_dataset[0]["image"].shape == (3, 32, 32)

    cropped = StanfordDogsDataModule(root=str(dogs_tree), num_workers=0, resolution=32, crop_to_box=True)
    cropped.setup()
    path, _ = cropped.train_dataset.samples[0]
    x0, y0, x1, y1 = read_voc_box(dogs_tree / "Annotation" / path.parent.name / path.stem)
    assert cropped.train_dataset.load_image(0).shape == (y1 - y0, x1 - x0, 3)
    assert dm.train_dataset.load_image(0).shape != (y1 - y0, x1 - x0, 3)


def test_datamodule_errors_name_the_files(dogs_tree, tmp_path):
    with pytest.raises(DataError, match=r"Images: Stanford Dogs images not found.*train_list.mat.*ImageNetDogs"):
        StanfordDogsDataModule(root=str(tmp_path / "nowhere")).setup()
    write_mat_list(tmp_path / "wrong.mat", ["n02085620-Chihuahua/n02085620_0.jpg"], [2])
    dm = StanfordDogsDataModule(root=str(dogs_tree), train_list=str(tmp_path / "wrong.mat"))
    with pytest.raises(DataError, match="entry 0 .* has label 2, whose folder is n02085782-Japanese_spaniel"):
        dm.setup()
    write_mat_list(tmp_path / "gone.mat", ["n02085620-Chihuahua/nope.jpg"], [1])
    with pytest.raises(DataError, match="1 listed image.*not found.*nope.jpg"):
        StanfordDogsDataModule(root=str(dogs_tree), train_list=str(tmp_path / "gone.mat")).setup()


def test_prepare_command_from_official_tars(dogs_tree, tmp_path, capsys):
    tars = write_official_tars(dogs_tree, tmp_path / "downloads")
    out = tmp_path / "stanford_dogs"
    cmd = [sys.executable, "-m", "toolkit.data.prepare_stanford_dogs", "--images", str(tars["images"]),
           "--annotations", str(tars["annotations"]), "--lists", str(tars["lists"]), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "8 breeds, 32 train / 16 test images" in done.stdout
    assert (out / "lists" / "test_list.mat").is_file() and (out / "Annotation").is_dir()
    dm = StanfordDogsDataModule(root=str(out), crop_to_box=True, num_workers=0)
    dm.setup()
    assert len(dm.val_dataset) == 16

    code = prepare_main(["--images", str(tmp_path / "missing.tar"), "--lists", str(tars["lists"]), "--out", str(out)])
    assert code == 2 and "missing.tar: images.tar not found" in capsys.readouterr().err


def test_mean_class_accuracy_and_confused_pairs(tmp_path):
    task = FineGrainedTask(backbone=BACKBONE, num_classes=3, class_names=["a", "b", "c"])
    logits = torch.eye(3)[[0, 0, 0, 0, 1, 0, 2, 1]] * 5  # predictions
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    task.val_metrics.update(logits, labels)
    out = {k: float(v) for k, v in task.val_metrics.compute().items()}
    assert out["val/top1"] == pytest.approx(6 / 8)
    assert out["val/mean_class_acc"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    task.val_confusion.update(logits, labels)
    task.on_validation_epoch_end()
    assert task.confusion.tolist() == [[4, 0, 0], [1, 1, 0], [0, 1, 1]]
    rows = task.confused_pair_rows(task.confusion, limit=5)
    assert [(r["class_a"], r["class_b"], r["a_as_b"], r["b_as_a"]) for r in rows] == [("a", "b", 0, 1), ("b", "c", 0, 1)]
    task.write_eval_outputs(out, tmp_path)
    assert "| 1 | a | b | 0 | 1 | 16.7% |" in (tmp_path / "fine_grained_summary.md").read_text()
    assert (tmp_path / "confusion_matrix.csv").read_text().splitlines()[2] == "b,1,1,0"


def test_init_from_loads_backbone_and_reinitialises_the_head(tmp_path):
    source = ClassificationTask(backbone=BACKBONE, num_classes=8)
    torch.nn.init.constant_(source.model.head.fc.weight, 0.5)
    path = tmp_path / "pretrained.pt"
    torch.save(source.model.state_dict(), path)

    task = FineGrainedTask(backbone=BACKBONE, num_classes=8)  # same head shape: re-initialised all the same
    report = task.load_init_weights(path)
    assert "model.head.fc.weight" in report["reinitialised"]
    assert not torch.equal(task.model.head.fc.weight, source.model.head.fc.weight)
    for (name, a), b in zip(task.model.backbone.state_dict().items(), source.model.backbone.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    kept = FineGrainedTask(backbone=BACKBONE, num_classes=8, keep_pretrained_head=True)
    kept.load_init_weights(path)
    assert torch.equal(kept.model.head.fc.weight, source.model.head.fc.weight)


def test_cli_fine_tune_then_eval(tmp_path):
    pretrained = tmp_path / "pretrained.pt"
    torch.save(ClassificationTask(backbone=BACKBONE, num_classes=6).model.state_dict(), pretrained)
    tiny = ["data=stanford_dogs_synthetic", "data.n_breeds=6", "data.n_train=36", "data.n_val=12", "data.image_size=32",
            "data.resolution=32", "data.batch_size=12", "backbone.alpha=0.25", *FAST]
    train = run_cli(["task=fine_grained", *tiny, f"init_from={pretrained}", "task.freeze_backbone_epochs=1",
                     "trainer.max_epochs=1", f"hydra.run.dir={tmp_path}/train"], cwd=tmp_path)
    assert train.returncode == 0, train.stderr[-3000:]
    assert "head re-initialised for 6 classes" in train.stdout + train.stderr
    ckpt = tmp_path / "train" / "checkpoints" / "last.ckpt"
    ev = run_cli(["task=fine_grained", *tiny, "mode=eval", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path}/eval"], cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"val/top1", "val/top5", "val/mean_class_acc"} <= set(metrics)
    assert "Most confused pairs" in ev.stdout
    assert (tmp_path / "eval" / "confused_pairs.csv").is_file() and (tmp_path / "eval" / "per_class_accuracy.csv").is_file()


def test_frozen_backbone_epochs_freeze_weights_and_batchnorm_statistics():
    """freeze_backbone_epochs=1: epoch 0 changes neither the backbone's weights nor its BatchNorm running
    statistics (eval mode, also after Lightning's model.train()); epoch 1 trains both."""
    from lightning.pytorch import Callback, Trainer

    task = FineGrainedTask(backbone=BACKBONE, num_classes=3, freeze_backbone_epochs=1,
                           optimizer={"_target_": "torch.optim.SGD", "lr": 0.1})
    images = torch.randn(8, 3, 32, 32)
    loader = torch.utils.data.DataLoader([{"image": x, "label": i % 3} for i, x in enumerate(images)], batch_size=4)

    def snapshot():
        state = task.model.backbone.state_dict()
        return {k: v.clone() for k, v in state.items() if k.endswith(("running_mean", "weight"))}

    seen = []

    class Record(Callback):
        def on_train_batch_start(self, trainer, module, *_):
            bns = [m for m in module.model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
            seen.append((trainer.current_epoch, {m.training for m in bns}))

        def on_train_epoch_end(self, trainer, module):
            changed = [k for k, v in snapshot().items() if not torch.equal(v, before[k])]
            seen.append((trainer.current_epoch, changed))

    before = snapshot()
    Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[Record()]).fit(task, loader)
    epoch0 = [s for e, s in seen if e == 0]
    assert epoch0[:-1] == [{False}, {False}] and epoch0[-1] == []  # BN in eval mode, nothing changed
    epoch1 = [s for e, s in seen if e == 1]
    assert epoch1[:-1] == [{True}, {True}]
    assert any(k.endswith("running_mean") for k in epoch1[-1]) and any(k.endswith("weight") for k in epoch1[-1])
