"""The data↔task contract (toolkit.data.contract): declared kinds, the check of a pair, data=shapes' variant, and
the per-(task, data) defaults of conf/task_data/ resolving every documented command as before."""

from __future__ import annotations

import typing

import hydra.utils
import pytest
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from toolkit.conf import CONF_DIR
from toolkit.data.contract import DataKind, TaskData, data_configs_for, target_kinds
from toolkit.errors import ConfigError
from toolkit.modes.common import build_datamodule, build_task, task_class

TASKS = sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml"))
DATA = sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml"))


def task_target(name: str) -> type:
    return hydra.utils.get_class(OmegaConf.load(CONF_DIR / "task" / f"{name}.yaml").task._target_)


def data_target(name: str):
    return hydra.utils.get_object(OmegaConf.load(CONF_DIR / "data" / f"{name}.yaml")._target_)


def test_every_config_declares_a_kind_of_data():
    kinds = set(typing.get_args(DataKind))
    for task in TASKS:
        assert task_target(task).data_kind in kinds, f"conf/task/{task}.yaml"
    for data in DATA:
        declared = target_kinds(data_target(data))
        assert declared and declared <= kinds, f"conf/data/{data}.yaml: {declared}"
    assert data_configs_for("detection") == ["coco", "coco_custom", "shapes"]
    assert data_configs_for("face_embedding") == ["faces_folder", "faces_synthetic"]


def test_a_datamodule_implements_the_protocol(make_cfg):
    datamodule = build_datamodule(make_cfg(["task=detection_ssd", "data=shapes"]))
    assert isinstance(datamodule, TaskData) and datamodule.kind == "detection" and datamodule.resolution == 300
    assert datamodule.mean == (0.5, 0.5, 0.5)  # filled from the MobileNet V1 backbone


def test_a_task_on_data_it_does_not_read_fails_at_once_naming_both(make_cfg):
    from toolkit.run import run

    with pytest.raises(ConfigError, match=r"task=detection_ssd reads detection records, data=imagenet gives "
                                          r"classification records; data configs that fit: data=coco, "
                                          r"data=coco_custom, data=shapes"):
        run(make_cfg(["task=detection_ssd", "data=imagenet", "paths.data_dir=/nonexistent"]))


def test_a_restored_task_refuses_data_it_does_not_read(make_cfg):
    task = build_task(make_cfg(["backbone.alpha=0.25", "task.num_classes=3"]))  # as eval/predict/export restore it
    with pytest.raises(ConfigError, match="task=classification reads classification records, data=coco gives "
                                          "detection records; data configs that fit: data=folder, data=imagenet"):
        build_datamodule(make_cfg(["data=coco"]), task)


@pytest.mark.parametrize(("task", "expected"), [
    ("classification", "ShapesClassificationDataModule"),
    ("detection_frcnn", "ShapesDetectionDataModule"),
    ("fine_grained", "StanfordDogsSyntheticDataModule"),
    ("geolocation", "GeoSyntheticDataModule"),
])
def test_shapes_generates_the_variant_the_task_reads(make_cfg, task, expected):
    datamodule = build_datamodule(make_cfg([f"task={task}", "data=shapes"]))
    assert type(datamodule).__name__ == expected and datamodule.kind == task_class(make_cfg([f"task={task}"])).data_kind


def test_shapes_variant_given_explicitly_and_for_a_task_it_cannot_serve(make_cfg):
    datamodule = build_datamodule(make_cfg(["task=classification", "data=shapes", "data.variant=fine_grained"]))
    assert type(datamodule).__name__ == "StanfordDogsSyntheticDataModule"
    with pytest.raises(ConfigError, match=r"task=face_attributes reads face_attributes records, data=shapes has no "
                                          r"face_attributes variant \(it generates classification, detection, "
                                          r"fine_grained, geolocation data\); data configs that fit: "
                                          r"data=attributes_csv, data=celeba, data=celeba_synthetic"):
        build_datamodule(make_cfg(["task=face_attributes", "data=shapes"]))
    with pytest.raises(InstantiationException, match="data.variant='faces': allowed: classification, detection") as error:
        build_datamodule(make_cfg(["data=shapes", "data.variant=faces"]), check_task=False)
    assert isinstance(error.value.__cause__, ConfigError)  # the CLI prints it as one line


#: command -> (data config, data.resolution, data=shapes variant (None: another data config), run folder), as the
#: commands composed before the contract replaced the global keys task_kind, detection_resolution, shapes_resolution
DOCUMENTED: dict[str, tuple[str, int, str | None, str]] = {
    "task=classification": ("shapes", 64, "classification", "classification"),
    "task=classification data=shapes": ("shapes", 64, "classification", "classification"),
    "task=fine_grained": ("stanford_dogs", 224, None, "fine_grained"),
    "task=fine_grained data=shapes": ("shapes", 64, "fine_grained", "fine_grained"),
    "task=detection_ssd": ("coco", 300, None, "detection_ssd"),
    "task=detection_ssd data=shapes": ("shapes", 300, "detection", "detection_ssd"),
    "task=detection_ssd data=coco": ("coco", 300, None, "detection_ssd"),
    "task=detection_ssd data=coco_custom": ("coco_custom", 300, None, "detection_ssd"),
    "task=detection_frcnn": ("coco", 600, None, "detection_frcnn"),
    "task=detection_frcnn data=shapes": ("shapes", 300, "detection", "detection_frcnn"),
    "task=detection_frcnn data=coco": ("coco", 600, None, "detection_frcnn"),
    "task=detection_frcnn data=coco_custom": ("coco_custom", 600, None, "detection_frcnn"),
    "task=geolocation": ("geo", 224, None, "geolocation"),
    "task=geolocation data=shapes": ("shapes", 64, "geolocation", "geolocation"),
    "task=face_attributes": ("celeba", 224, None, "face_attributes"),
    "task=face_embedding": ("faces_folder", 160, None, "face_embedding"),
    "experiment=face_attributes_mobilenet_v1_025_128": ("celeba", 128, None, "face_attributes"),
    "experiment=face_attributes_mobilenet_v1_025_224": ("celeba", 224, None, "face_attributes"),
    "experiment=face_attributes_mobilenet_v1_050_128": ("celeba", 128, None, "face_attributes"),
    "experiment=face_attributes_mobilenet_v1_050_224": ("celeba", 224, None, "face_attributes"),
    "experiment=face_attributes_mobilenet_v1_100_128": ("celeba", 128, None, "face_attributes"),
    "experiment=face_attributes_mobilenet_v1_100_224": ("celeba", 224, None, "face_attributes"),
    "experiment=face_embedding_mobilenet_v1_075_128": ("faces_folder", 128, None, "face_embedding"),
    "experiment=face_embedding_mobilenet_v1_075_160": ("faces_folder", 160, None, "face_embedding"),
    "experiment=face_embedding_mobilenet_v1_100_128": ("faces_folder", 128, None, "face_embedding"),
    "experiment=face_embedding_mobilenet_v1_100_160": ("faces_folder", 160, None, "face_embedding"),
    "experiment=imagenet_paper_recipe": ("imagenet", 224, None, "classification"),
    "experiment=mobilenet_v1_025_224": ("imagenet", 224, None, "classification"),
    "experiment=mobilenet_v1_050_160": ("imagenet", 160, None, "classification"),
    "experiment=mobilenet_v1_050_224": ("imagenet", 224, None, "classification"),
    "experiment=mobilenet_v1_075_224": ("imagenet", 224, None, "classification"),
    "experiment=mobilenet_v1_100_128": ("imagenet", 128, None, "classification"),
    "experiment=mobilenet_v1_100_160": ("imagenet", 160, None, "classification"),
    "experiment=mobilenet_v1_100_192": ("imagenet", 192, None, "classification"),
    "experiment=mobilenet_v1_100_224": ("imagenet", 224, None, "classification"),
    "experiment=mobilenet_v1_conv_100_224": ("imagenet", 224, None, "classification"),
    "experiment=mobilenet_v1_shallow_100_224": ("imagenet", 224, None, "classification"),
    "experiment=stanford_dogs_mobilenet_v1_075_192": ("stanford_dogs", 192, None, "fine_grained"),
    "experiment=stanford_dogs_mobilenet_v1_075_224": ("stanford_dogs", 224, None, "fine_grained"),
    "experiment=stanford_dogs_mobilenet_v1_100_192": ("stanford_dogs", 192, None, "fine_grained"),
    "experiment=stanford_dogs_mobilenet_v1_100_224": ("stanford_dogs", 224, None, "fine_grained"),
}


@pytest.mark.parametrize("command", sorted(DOCUMENTED))
def test_documented_commands_resolve_as_before(make_cfg, command):
    cfg = make_cfg(command.split(), fast=False)
    choices = HydraConfig.get().runtime.choices
    variant = (cfg.data.variant or task_class(cfg).data_kind) if choices.data == "shapes" else None
    assert (choices.data, cfg.data.resolution, variant, choices.task) == DOCUMENTED[command]
