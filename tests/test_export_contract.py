"""Each task owns its inference: export, verification and the torch-free predictor loop over formats and runtimes,
not over task kinds; one task registry decides what a checkpoint may name."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from toolkit.deploy.decoders import DECODERS
from toolkit.errors import DataError
from toolkit.formats import FORMATS
from toolkit.tasks.base import TASKS, register_task, registered_task_class, task_classes
from toolkit.tasks.classification import ClassificationTask

ROOT = Path(__file__).resolve().parents[1]
#: a branch on a task's or data's kind (`kind ==`, `data_kind in (...)`, `metadata["task"] == ...`)
KIND_DISPATCH = re.compile(r"""\b(?:data_)?kind\s*(?:==|!=|\bin\b|\bnot in\b)|\[["']task["']\]\s*(?:==|!=|\bin\b)""")


@pytest.mark.parametrize("package", ["toolkit/modes", "toolkit/deploy", "toolkit/formats", "benchmarks/speed/deploy.py"])
def test_no_task_kind_dispatch_outside_the_tasks(package):
    root = ROOT / package
    assert root.exists(), package
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in ([root] if root.is_file() else sorted(root.rglob("*.py")))
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if KIND_DISPATCH.search(line.split("#", 1)[0])]
    assert found == []


def test_the_dispatch_pattern_catches_what_it_is_for():
    assert KIND_DISPATCH.search('if kind == "detection":')
    assert KIND_DISPATCH.search("if task.data_kind in (\"a\", \"b\"):")
    assert KIND_DISPATCH.search('if metadata["task"] == "detection":')
    assert not KIND_DISPATCH.search('report = {"task": task.data_kind}')


def test_every_task_is_registered_and_has_a_decoder():
    classes = task_classes()
    names = {path.rsplit(".", 1)[1] for path in classes}
    assert {"ClassificationTask", "FineGrainedTask", "SSDTask", "FasterRCNNTask", "FaceAttributesTask",
            "FaceEmbeddingTask", "GeolocationTask"} <= names
    for cls in classes.values():
        assert cls.inference_contract.decoder in DECODERS, cls


def test_only_registered_tasks_are_restorable():
    assert registered_task_class("toolkit.tasks.classification.ClassificationTask", "x.ckpt") is ClassificationTask
    for path in ("toolkit.tasks.detection.DetectionTask",  # a base class: not a task a checkpoint holds
                 "toolkit.tasks.base.BaseTask", "os.system", "toolkit.tasks.nothing_here.Task"):
        with pytest.raises(DataError, match="not one of the toolkit's tasks"):
            registered_task_class(path, "x.ckpt")


def test_registering_a_task_makes_it_restorable(monkeypatch):
    monkeypatch.setattr("toolkit.tasks.base.TASKS", dict(TASKS))

    class LocalTask(ClassificationTask):
        pass

    path = f"{LocalTask.__module__}.{LocalTask.__qualname__}"
    with pytest.raises(DataError, match="refused"):
        registered_task_class(path, "x.ckpt")
    register_task(LocalTask)
    assert registered_task_class(path, "x.ckpt") is LocalTask


def test_formats_register_with_what_export_needs():
    assert list(FORMATS)[:6] == ["onnx", "onnx_int8", "executorch", "executorch_int8", "torchscript",
                                 "torchscript_int8"]
    assert len({fmt.file_name for fmt in FORMATS.values()}) == len(FORMATS)
    assert all(fmt.int8 == name.endswith("_int8") for name, fmt in FORMATS.items())


def test_a_runtime_is_one_line_in_the_suffix_table(tmp_path, monkeypatch):
    from toolkit.deploy.runtime import RUNTIMES, open_model

    class EchoModel:
        @classmethod
        def open(cls, path, threads=None):
            return cls(), {"task": "outputs", "outputs": ["output"]}

        def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
            return {"output": batch.mean(axis=(1, 2, 3))[:, None]}

    path = tmp_path / "model.echo"
    path.write_bytes(b"")
    monkeypatch.setitem(RUNTIMES, ".echo", EchoModel)
    runner, metadata = open_model(path)
    assert isinstance(runner, EchoModel) and metadata["task"] == "outputs"


def test_verification_scores_a_copy_and_leaves_the_task_alone():
    task = ClassificationTask(backbone={"name": "mobilenet_v1", "alpha": 0.25}, num_classes=3).eval()
    network = task.model
    contract = task.inference()
    stand_in = nn.Identity()
    scorer = contract.scoring(stand_in)
    assert scorer.model is stand_in and task.model is network and dict(task.named_children())["model"] is network
    recorder = contract.recorder()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        recorder(images)
    reference = recorder.outputs
    runtime = contract.runtime_model(lambda batch: {"logits": network(torch.from_numpy(batch)).detach().numpy()},
                                     ["logits"])
    runtime(images)
    assert contract.agreement(reference, runtime.outputs)["top1_agreement"] == 1.0


def test_export_score_thresh_sets_the_files_and_the_reference_not_the_task():
    """export.score_thresh: the exported module, its `nms` metadata and verification's PyTorch reference use it,
    on a copy of the detector sharing its weights; the task keeps its evaluation threshold; a bad value is one
    ConfigError naming the key."""
    from toolkit.errors import ConfigError
    from toolkit.tasks.detection_frcnn import FasterRCNNTask
    from toolkit.tasks.detection_ssd import SSDTask

    tiny = {"name": "mobilenet_v1", "alpha": 0.25}
    ssd_task = SSDTask(backbone=tiny, num_classes=2).eval()
    contract = ssd_task.inference()
    contract.configure({"score_thresh": None})
    assert contract.model is ssd_task.model
    contract.configure({"score_thresh": 0.01})
    module, _ = contract.module("onnx")
    meta = contract.output_metadata("onnx", 64, "nms", True)
    assert module.ssd.score_thresh == meta["nms"]["score_thresh"] == 0.01 == contract.recorder().model.score_thresh
    assert contract.output_metadata("executorch", 64, "nms", False)["nms"]["score_thresh"] == 0.01
    assert ssd_task.model.score_thresh == 1e-8 and module.ssd.head is ssd_task.model.head
    frcnn_task = FasterRCNNTask(backbone=tiny, num_classes=2).eval()
    contract = frcnn_task.inference()
    contract.configure({"score_thresh": 0.05})
    assert contract.model.roi_heads.score_thresh == 0.05 and frcnn_task.model.roi_heads.score_thresh == 0.0
    assert contract.model.roi_heads.box_predictor is frcnn_task.model.roi_heads.box_predictor
    for bad in (1.0, -0.1, "high", True):
        with pytest.raises(ConfigError, match="export.score_thresh"):
            contract.configure({"score_thresh": bad})


def test_generic_decoder_writes_every_output_per_image(tmp_path):
    decoder = DECODERS["outputs"]
    read = [(tmp_path / "a.png", np.zeros((3, 4, 4), np.float32), (4, 4)),
            (tmp_path / "b.png", np.zeros((3, 4, 4), np.float32), (4, 4))]
    records = decoder.records(read, {"output": np.asarray([[0.25], [0.5]], np.float32)}, {"outputs": ["output"]},
                              score_thresh=None, top_k=None, source="m")
    assert records == [{"path": str(tmp_path / "a.png"), "output": [0.25]},
                       {"path": str(tmp_path / "b.png"), "output": [0.5]}]
