"""The issue's commands as a user types them (subprocess), on generated CelebA and LFW-style trees."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import FAST, run_cli

from toolkit.data.faces_synthetic import generate_celeba_tree, generate_identity_tree
from toolkit.distill.cache import TeacherCache
from toolkit.errors import DataError
from toolkit.run import run

pytestmark = pytest.mark.slow
TINY = ["backbone.alpha=0.25", "data.resolution=32", "data.batch_size=8", "trainer.max_epochs=1", "data.num_workers=0"]


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def newest(pattern: str, root: Path) -> Path:
    found = sorted(root.glob(pattern), key=lambda p: p.stat().st_mtime)
    assert found, f"nothing matches {pattern} under {root}"
    return found[-1]


def test_face_attribute_commands(tmp_path, make_cfg):
    data_dir, logs = tmp_path / "data", tmp_path / "outputs"
    generate_celeba_tree(data_dir / "celeba", n_train=16, n_val=8, n_test=0, width=36, height=44)
    # python -m toolkit task=face_attributes data=celeba teacher=none     (data root from TOOLKIT_DATA_DIR)
    ok(run_cli(["task=face_attributes", "data=celeba", "teacher=none", *FAST, *TINY, "backbone.alpha=0.5"], tmp_path,
               env={"TOOLKIT_DATA_DIR": str(data_dir)}))
    teacher = newest("face_attributes/runs/*/checkpoints/best*.ckpt", logs)

    # python -m toolkit task=face_attributes data=celeba paths.data_dir=/data teacher=<teacher checkpoint>
    ok(run_cli(["task=face_attributes", "data=celeba", f"paths.data_dir={data_dir}", f"teacher={teacher}", *FAST, *TINY],
               tmp_path))
    student = json.loads(newest("face_attributes/runs/*/train_metrics.json", logs).read_text())
    assert "train/loss_distill" in student["metrics"] and "val/mAP" in student["metrics"]

    # python -m toolkit mode=teacher_cache teacher=<teacher> data=celeba
    proc = ok(run_cli(["mode=teacher_cache", f"teacher={teacher}", "data=celeba", f"paths.data_dir={data_dir}",
                       *FAST, "data.resolution=32"], tmp_path))
    cache_path = Path(proc.stdout.split("use it with: teacher=")[1].split()[0])
    cache = TeacherCache.load(cache_path)
    assert len(cache) == 16 and cache.dim == 40 and cache.output == "logits"

    # the cache is a teacher: training from it, evaluating the result (per-attribute AP table)
    common = ["task=face_attributes", "data=celeba", f"paths.data_dir={data_dir}", *TINY]
    result = run(make_cfg([*common, "teacher=path", f"teacher.path={cache_path}"]))
    metrics = run(make_cfg([*common, "mode=eval", f"ckpt_path={result['best_checkpoint']}"]))["metrics"]
    assert 0.0 <= metrics["val/mAP"] <= 1.0
    assert "| **mean** |" in (Path(result["output_dir"]) / "attributes.md").read_text()

    # a cache that misses images of the run is refused before training, naming them
    generate_celeba_tree(tmp_path / "more" / "celeba", n_train=18, n_val=8, n_test=0, width=36, height=44)
    with pytest.raises(DataError, match=r"2 of the 18 images of this run are missing from it: '000017.jpg', '000018.jpg'"):
        run(make_cfg(["task=face_attributes", "data=celeba", f"paths.data_dir={tmp_path / 'more'}", *TINY,
                      "teacher=path", f"teacher.path={cache_path}"]))


def test_face_embedding_commands(tmp_path, make_cfg):
    data_dir, logs = tmp_path / "data", tmp_path / "outputs"
    generate_identity_tree(data_dir, n_train_ids=4, n_test_ids=4, images_per_id=3, folds=2, pairs_per_fold=3,
                           width=36, height=36)
    # a 64-d embedding teacher, trained on the identity folders (teacher=none)
    teacher = run(make_cfg(["task=face_embedding", "data=faces_folder", f"data.root={data_dir / 'train'}", "teacher=none",
                            "task.embedding_dim=64", *TINY]))["best_checkpoint"]

    # python -m toolkit task=face_embedding data=faces_folder data.root=... teacher=...
    ok(run_cli(["task=face_embedding", "data=faces_folder", f"data.root={data_dir / 'train'}", f"teacher={teacher}",
                *FAST, *TINY], tmp_path))
    student = newest("face_embedding/runs/*/checkpoints/best*.ckpt", logs)
    import torch

    hparams = torch.load(student, map_location="cpu", weights_only=False)["hyper_parameters"]
    assert hparams["embedding_dim"] == 64  # the teacher's width (projected from the 256-d backbone)

    # python -m toolkit task=face_embedding mode=eval ckpt_path=... data.root=.../lfw data.pairs=lfw_pairs.txt: the
    # checkpoint remembers its training folder, so LFW's folder is named as the data to evaluate on
    shutil.copy(data_dir / "pairs.txt", tmp_path / "lfw_pairs.txt")
    proc = ok(run_cli(["task=face_embedding", "mode=eval", f"ckpt_path={student}", f"data.root={data_dir / 'lfw'}",
                       "data.pairs=lfw_pairs.txt", *FAST, "data.resolution=32"], tmp_path))
    assert "val/accuracy" in proc.stdout
    out = newest("face_embedding/runs/*/verification.json", logs).parent
    report = json.loads((out / "verification.json").read_text())
    assert report["pairs"] == 12 and [p["far"] for p in report["tar_at_far"]] == [0.001, 0.0001]
    assert (out / "roc.png").stat().st_size > 0 and (out / "roc.csv").is_file()
