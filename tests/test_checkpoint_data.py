"""Checkpoints remember their data: eval, predict, export and a resumed run read the data config the checkpoint was
trained with (paths, resolution, classes), `data.*` on the command line replaces single keys, `data=<option>`
chooses other data."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_classification import write_class_folders

from toolkit.callbacks import DATA_CONFIG_KEY
from toolkit.run import run

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 10 training images at batch 4 and 7 validation images: no split is a multiple of the batch
TRAIN = ["backbone.alpha=0.25", "data=folder", "data.resolution=32", "data.batch_size=4", "trainer.max_epochs=1",
         "data.num_workers=0"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    write_class_folders(root / "train", {"cat": 5, "dog": 5})
    write_class_folders(root / "val", {"cat": 3, "dog": 4})
    return root


@pytest.fixture
def trained(make_cfg, folder, tmp_path) -> dict:
    result = run(make_cfg([*TRAIN, f"data.root={folder}"]))
    result["last"] = Path(result["output_dir"]) / "checkpoints" / "last.ckpt"
    return result


def test_checkpoint_stores_the_resolved_data_config(trained, folder):
    stored = torch.load(trained["best_checkpoint"], map_location="cpu", weights_only=True)[DATA_CONFIG_KEY]
    assert stored["choice"] == "folder"
    assert stored["config"]["root"] == str(folder) and stored["config"]["resolution"] == 32
    assert stored["config"]["_target_"] == "toolkit.data.folder.ClassFolderDataModule"


def test_eval_without_data_arguments_reads_the_checkpoints_data(make_cfg, trained, folder, caplog):
    with caplog.at_level(logging.INFO, logger="toolkit.modes.common"):
        cfg = make_cfg(["mode=eval", f"ckpt_path={trained['best_checkpoint']}", "data.batch_size=3"])
        assert cfg.data._target_ == "toolkit.data.shapes.shapes_datamodule"  # what the config alone would have evaluated on
        result = run(cfg)
    assert cfg.data.root == str(folder) and cfg.data.resolution == 32 and cfg.data.batch_size == 3
    # the same images, the same fp32 model: the score that picked best.ckpt
    assert result["metrics"][trained["monitor"]] == pytest.approx(trained["best_score"], abs=1e-6)
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("data: data=folder"))
    assert f"root={folder}" in line and "from the command line: data.batch_size" in line


def test_data_option_on_the_command_line_chooses_other_data(make_cfg, trained):
    cfg = make_cfg(["mode=eval", f"ckpt_path={trained['best_checkpoint']}", "data=shapes", "data.n_val=6",
                    "data.n_train=6", "data.image_size=40"])
    from toolkit.modes.common import load_task

    load_task(cfg)
    assert cfg.data._target_ == "toolkit.data.shapes.shapes_datamodule"


def test_resume_and_export_read_the_checkpoints_data(make_cfg, trained, folder, tmp_path):
    cfg = make_cfg(["backbone.alpha=0.25", "trainer.max_epochs=2", f"ckpt_path={trained['last']}"])
    OmegaConf.update(cfg, "paths.output_dir", str(tmp_path / "resumed"))
    resumed = run(cfg)
    assert resumed["epoch"] == 2 and cfg.data.root == str(folder)

    cfg = make_cfg(["mode=export", f"ckpt_path={trained['best_checkpoint']}", "export.formats=[onnx]",
                    "export.latency_repeats=1"])
    OmegaConf.update(cfg, "paths.output_dir", str(tmp_path / "export"))
    report = run(cfg)["export"]
    assert report["calibration"].startswith("ClassFolderDataModule")  # real images, not random ones
    assert report["formats"]["onnx"]["val/top1"] == pytest.approx(report["pytorch"]["val/top1"])
