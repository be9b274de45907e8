"""Settings declared once: the debug=cpu preset, the loader keys every data config shares, task values against
the signatures that declare them."""

from __future__ import annotations

import pytest
from conftest import FAST

from toolkit.conf import CONF_DIR

LOADER_KEYS = ("batch_size", "num_workers", "pin_memory", "persistent_workers", "skip_corrupt")


def test_debug_preset_makes_a_quiet_cpu_run_and_command_line_keys_still_win(make_cfg):
    cfg = make_cfg([], fast=False)
    assert cfg.trainer.enable_progress_bar is True and "tensorboard" in cfg.logger
    cfg = make_cfg(FAST + ["experiment=mobilenet_v1_100_224"], fast=False)  # applied after the experiment
    assert cfg.trainer.accelerator == "cpu" and cfg.data.num_workers == 0
    assert not cfg.trainer.enable_progress_bar and not cfg.trainer.enable_model_summary
    assert cfg.callbacks.progress_bar is None and list(cfg.logger) == ["csv"]
    cfg = make_cfg(FAST + ["data.num_workers=3", "logger=none"], fast=False)
    assert cfg.data.num_workers == 3 and not cfg.logger


@pytest.mark.parametrize("data", sorted(p.stem for p in (CONF_DIR / "data").glob("*.yaml")))
def test_every_data_config_takes_the_shared_loader_keys(data, make_cfg):
    text = (CONF_DIR / "data" / f"{data}.yaml").read_text()
    assert "/data_loader@_here_" in text, f"conf/data/{data}.yaml: add `- /data_loader@_here_` to its defaults"
    cfg = make_cfg([f"data={data}"], fast=False)
    assert all(key in cfg.data for key in LOADER_KEYS)


def test_the_loader_defaults_are_the_shared_configs():
    """One default per loader key: `BaseDataModule` (a datamodule built in code) takes conf/data_loader.yaml's."""
    import inspect

    import yaml

    from toolkit.data.base import BaseDataModule

    shared = yaml.safe_load((CONF_DIR / "data_loader.yaml").read_text())
    signature = inspect.signature(BaseDataModule.__init__).parameters
    assert set(shared) == set(LOADER_KEYS)
    assert {key: signature[key].default for key in LOADER_KEYS} == shared


#: task config values that differ from the signature default on purpose (option, dotted key under `task`): why.
#: Any other value a conf/task/*.yaml writes must be the default its builder or task class declares, so the YAML
#: lists the settings users change (each overridable as `task.model.x=...` without a `+`) but decides none of them.
DELIBERATE_CHANGES = {
    ("detection_frcnn", "model.sampling_ratio"): "2 bilinear samples per RoIAlign cell (torchvision's); the builder keeps TF's 1",
    ("detection_frcnn", "batch_size"): "the data's batch size (an interpolation), for the linear lr scaling",
    ("fine_grained", "backbone_lr_scale"): "fine-tuning: the pretrained body learns 10x slower than the new head",
}


def _signature_defaults(*callables) -> dict:
    import inspect

    defaults = {}
    for fn in callables:
        for name, parameter in inspect.signature(fn).parameters.items():
            if parameter.default is not inspect.Parameter.empty:
                defaults.setdefault(name, parameter.default)
    return defaults


def _model_builder_defaults(task_class: type) -> dict:
    """The defaults of what `task.model` is handed to (the builders configure_models calls)."""
    from toolkit.detection.faster_rcnn import PAPER_RCNN_ARGS, build_faster_rcnn
    from toolkit.detection.ssd import MobileNetSSD, build_ssd
    from toolkit.heads import build_classifier
    from toolkit.tasks.classification import ClassificationTask
    from toolkit.tasks.detection_frcnn import FasterRCNNTask
    from toolkit.tasks.detection_ssd import SSDTask
    from toolkit.tasks.face_attributes import FaceAttributesTask
    from toolkit.tasks.face_embedding import EmbeddingNet, FaceEmbeddingTask
    from toolkit.tasks.geolocation import GeoClassifier, GeolocationTask

    if issubclass(task_class, FasterRCNNTask):
        return {**_signature_defaults(build_faster_rcnn), "rcnn": PAPER_RCNN_ARGS}
    builders = {SSDTask: (build_ssd, MobileNetSSD), GeolocationTask: (GeoClassifier,),
                FaceEmbeddingTask: (EmbeddingNet,), ClassificationTask: (build_classifier,),
                FaceAttributesTask: (build_classifier,)}
    for cls, callables in builders.items():
        if issubclass(task_class, cls):
            return _signature_defaults(*callables)
    raise AssertionError(f"{task_class.__name__}: name its model builder in this test")


def _same(value, default) -> bool:
    if isinstance(default, dict) and isinstance(value, dict):  # a nested argument (rcnn): key by key
        return all(key in default and _same(v, default[key]) for key, v in value.items())
    return value == (list(default) if isinstance(default, tuple) else default)


@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml")))
def test_task_config_values_are_their_signature_defaults_or_deliberate(option):
    import hydra.utils
    from omegaconf import OmegaConf

    task = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "task" / f"{option}.yaml").task, resolve=False)
    task_class = hydra.utils.get_class(task["_target_"])
    task_defaults = _signature_defaults(*(c.__init__ for c in task_class.__mro__ if "__init__" in c.__dict__
                                          and c.__module__.startswith("toolkit.")))
    model_defaults = _model_builder_defaults(task_class)
    values = {k: v for k, v in task.items() if k not in ("_target_", "backbone", "teacher", "optimizer", "model")}
    values.update({f"model.{k}": v for k, v in (task.get("model") or {}).items()})
    drifted = []
    for key, value in values.items():
        owner, name = (model_defaults, key.removeprefix("model.")) if key.startswith("model.") else (task_defaults, key)
        assert name in owner, f"conf/task/{option}.yaml: task.{key} is no argument of its task or model builder"
        if (option, key) not in DELIBERATE_CHANGES and not _same(value, owner[name]):
            drifted.append(f"task.{key}: {value!r} here, {owner[name]!r} in the signature")
    assert not drifted, (f"conf/task/{option}.yaml disagrees with the signatures (change the signature, or list the "
                         f"value in DELIBERATE_CHANGES with the reason): {'; '.join(drifted)}")
    for (listed, key), why in DELIBERATE_CHANGES.items():  # a listed change still differs (else: drop the entry)
        if listed == option:
            owner, name = (model_defaults, key[6:]) if key.startswith("model.") else (task_defaults, key)
            assert not _same(values[key], owner.get(name)), f"task.{key} equals its default now: {why}"
