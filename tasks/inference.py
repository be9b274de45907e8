"""A task's inference contract: what the task computes once trained, in the form every export format and runtime
takes (torchvision's builders and timm's `pretrained_cfg` keep model-specific knowledge beside the model; so do
these, one class per kind of task).

`task.inference()` returns the task's contract. It declares:
- `module(fmt)`: the module a format writes and its output names (a format the model has no form in:
  `no_form(fmt)` says why, and export skips it);
- `metadata(...)`: what the file says about itself (preprocessing, classes, outputs; `toolkit.deploy.metadata`);
  `decoder` names the torch-free decoder of `toolkit.deploy.decoders` that turns the file's outputs into the
  records `mode=predict` writes (the metadata's `task` value);
- `one_image`: the graph takes one image per run (detectors); calibration and verification feed it so;
  `trace`: its modules are exported by tracing (NMS, RoIAlign inside); `any_size`: the network runs at any square
  input size (detectors' anchors are laid out for one);
- `int8_options(fmt)`: what int8 must keep in float, and whether ranges are collected image by image;
- verification: `scoring(model)` (the task with another model standing in for its network, for the task's own
  validation step; the task itself is not changed), `recorder()` (the PyTorch model, recording its outputs),
  `runtime_model(run, outputs)` (a runtime's outputs as the task's network returns them), `agreement`, and
  `metric_names`.
Export formats (`toolkit.formats`) decide how a module is written; this decides what is written.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from toolkit.errors import ConfigError, ExportError

#: a runtime as verification calls it: a batch of inputs -> {output name: array}, decoded as toolkit.deploy does
Run = Callable[[np.ndarray], dict[str, np.ndarray]]


def eval_preprocessing(datamodule) -> tuple[dict[str, Any] | None, int | None]:
    """(resize rule, JPEG draft min side) of the datamodule's `mode=predict` loader, read from the loader itself
    (its eval transform's `EvalResize` and its dataset's `min_side`), or (None, None) where it has none."""
    from toolkit.data.transforms import EvalResize

    if datamodule is None:
        return None, None
    try:
        dataset = datamodule.predict_dataset([])
    except NotImplementedError:
        return None, None
    transforms = getattr(getattr(dataset, "transform", None), "transforms", None) or []
    rule = next((dict(t.rule) for t in transforms if isinstance(t, EvalResize)), None)
    return rule, getattr(dataset, "min_side", None)


def backbone_stats(task) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the inputs the task's backbone weights expect, built without allocating weights."""
    from toolkit.backbones import create_backbone_skeleton

    backbone = create_backbone_skeleton(**dict(task.hparams.backbone))
    return tuple(backbone.mean), tuple(backbone.std)


class Recorder(nn.Module):
    """The PyTorch model, recording what `record` keeps of each output (for the agreement with a runtime)."""

    def __init__(self, model: nn.Module, record: Callable[[Any], list[Any]]):
        super().__init__()
        self.model, self.record = model, record
        self.outputs: list[Any] = []

    def forward(self, images, *args):
        out = self.model(images, *args)
        self.outputs += self.record(out)
        return out


class RuntimeModel(nn.Module):
    """A runtime behind the task network's interface, so the task's own validation step scores the exported file;
    what `forward` returns for each batch is also recorded (for the agreement with PyTorch)."""

    def __init__(self, forward: Callable[[Any], tuple[Any, list[Any]]]):
        super().__init__()
        self.run = forward
        self.outputs: list[Any] = []

    def forward(self, images):
        out, recorded = self.run(images)
        self.outputs += recorded
        return out


class InferenceContract:
    """A single-output network (`task.model`, one tensor out): the contract every task has unless it declares
    its own. Its files decode with the generic `outputs` decoder (each output's values per image)."""

    decoder = "outputs"  # the toolkit.deploy.decoders entry that reads the files (the metadata's `task`)
    output_names: tuple[str, ...] = ("output",)
    one_image = False  # the exported graph takes one image per run (detectors)
    any_size = True  # the network runs at any square size (mode=select times one file per width at each resolution)
    trace = False  # its modules hold data-dependent ops (NMS, RoIAlign): exporters that trace them (ONNX's TorchScript-based one)
    single_output = True  # legacy TorchScript export traces single-output modules only

    def __init__(self, task):
        self.task = task

    # ---- what is exported ---------------------------------------------------------------------------------------
    def check(self) -> None:
        """Refuse a model that cannot be exported at all (ExportError), before any file is written."""

    def configure(self, settings) -> None:
        """Apply the `export:` settings that change what the files compute (detectors: `export.score_thresh`);
        the PyTorch reference of verification computes the same. The task itself is not changed."""

    def no_form(self, fmt: str, *, nms_in_graph: bool = True) -> str | None:
        """Why the model has no form in format `fmt` (export skips it and says so), or None. `nms_in_graph`: the
        format's runtime has NMS and RoIAlign kernels (False: detectors run NMS after it, `ExportFormat.graph_nms`)."""
        if fmt.startswith("torchscript") and not self.single_output:
            return f"{fmt}: legacy TorchScript export covers single-output models only; use onnx or executorch"
        return None

    def module(self, fmt: str, *, postprocess: str = "nms", nms_in_graph: bool = True) -> tuple[nn.Module, list[str]]:
        """(module in eval mode, output names) of what the task computes at inference, in the form `fmt` holds.
        `postprocess` (export.postprocess): where detectors run NMS; other tasks have none."""
        return self.task.model.eval(), list(self.output_names)

    def int8_options(self, fmt: str) -> dict[str, Any]:
        """What int8 formats need besides calibration images: `float_layers` (node-name parts of the layers kept
        in float), `per_image` (collect activation ranges image by image: shapes that change between images),
        `quantized_modules` (module paths in the exported module of the only parts quantised, for quantisers
        that select by module: LiteRT's)."""
        return {}

    # ---- what the file says about itself ------------------------------------------------------------------------
    def metadata(self, *, fmt: str, resolution: int, datamodule, outputs: list[str], postprocess: str = "nms",
                 nms_in_graph: bool = True) -> dict[str, Any]:
        """Everything a runtime user needs besides the file: preprocessing, classes, outputs (keys: see
        toolkit.deploy.metadata). The resize rule and JPEG decoding are the `mode=predict` loader's own
        (toolkit.data.eval_preprocess)."""
        from toolkit.data import eval_preprocess

        task = self.task
        backbone = dict(task.hparams.get("backbone") or {})
        meta: dict[str, Any] = {
            "task": self.decoder, "task_class": f"{type(task).__module__}.{type(task).__qualname__}",
            "backbone": backbone.get("name"), "alpha": float(backbone.get("alpha") or 1.0), "resolution": resolution,
            "mean": list(getattr(datamodule, "mean", None) or backbone_stats(task)[0]),
            "std": list(getattr(datamodule, "std", None) or backbone_stats(task)[1]),
            "channel_order": "RGB", "layout": "NCHW", "value_range": "RGB/255, then (x - mean) / std",
            "normalize": eval_preprocess.NORMALIZE_RULE,
            "outputs": outputs, "exported_by": "mobilenet-toolkit mode=export",
        }
        rule, min_side = eval_preprocessing(datamodule)
        rule, min_side = self.input_metadata(meta, rule, min_side, resolution, datamodule)
        meta["resize"] = rule
        meta["decode"] = {"library": "Pillow", "jpeg_draft_min_side": None if min_side is None else int(min_side),
                          "rule": "JPEGs decode at libjpeg's reduced scale (PIL Image.draft('RGB', (n, n)) with n = "
                                  "jpeg_draft_min_side) when that is set; other files, and JPEGs when it is null, "
                                  "decode in full; then RGB"}
        meta.update(self.output_metadata(fmt, resolution, postprocess, nms_in_graph))
        return meta

    #: the eval transform's defaults where there is no data: the crop kept, and the JPEG draft side (x resolution)
    default_crop: float | None = None
    draft_side: int | None = None

    def input_metadata(self, meta: dict[str, Any], rule, min_side, resolution: int, datamodule):
        """Set `input_size` (and what precedes the resize rule); return the (resize rule, JPEG draft side)."""
        from toolkit.data import eval_preprocess

        if rule is None:  # no data: the eval transforms' defaults
            crop = self.default_crop or float(getattr(datamodule, "crop_fraction", 0.875))
            rule = eval_preprocess.center_crop_rule(resolution, crop)
            min_side = self.draft_side * resolution if self.draft_side else None
        meta["input_size"] = [int(v) for v in rule["crop"]] if rule["mode"] == "center_crop" else None
        return rule, min_side

    def output_metadata(self, fmt: str, resolution: int, postprocess: str, nms_in_graph: bool) -> dict[str, Any]:
        """What reading the outputs needs (class names, cells, NMS settings...)."""
        return {}

    # ---- verification -------------------------------------------------------------------------------------------
    def metric_names(self) -> list[str]:
        return [self.task.monitor]

    def scoring(self, model: nn.Module):
        """The task with `model` standing in for its network, for the task's own validation step (a shallow copy:
        weights, metrics and settings shared; the task keeps its own network)."""
        task = self.task
        scorer = copy.copy(task)
        scorer.__dict__["_modules"] = {**task._modules, "model": model}
        return scorer

    def recorder(self) -> Recorder:
        return Recorder(self.task.model, lambda out: [(out[-1] if isinstance(out, tuple) else out).detach()])

    def runtime_model(self, run: Run, outputs: list[str]) -> RuntimeModel:
        def forward(images):
            raw = run(images.numpy())
            tensors = tuple(torch.from_numpy(raw[name]) for name in outputs)
            return self.network_output(tensors)

        return RuntimeModel(forward)

    def network_output(self, tensors: tuple[torch.Tensor, ...]) -> tuple[Any, list[Any]]:
        """(what the task's network returns, what is recorded) from the file's outputs, in order."""
        return tensors[0], [tensors[0]]

    def agreement(self, reference: list[Any], other: list[Any]) -> dict[str, float]:
        """How often the export decides as PyTorch does."""
        ref, out = torch.cat(reference).float(), torch.cat(other).float()
        return {"max_abs_diff": float((ref - out).abs().max()), **self.decisions(ref, out)}

    def decisions(self, ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
        return {}


class ClassifierContract(InferenceContract):
    """Logits over the task's classes; files decode to top-k classes."""

    decoder = "classification"
    output_names = ("logits",)
    draft_side = 2

    def output_metadata(self, fmt: str, resolution: int, postprocess: str, nms_in_graph: bool) -> dict[str, Any]:
        return {"class_names": list(self.task.class_names), "predict_top_k": int(self.task.hparams.predict_top_k)}

    def decisions(self, ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
        return {"top1_agreement": float((ref.argmax(1) == out.argmax(1)).float().mean())}


class AttributesContract(InferenceContract):
    """One logit per binary attribute; faces keep the whole shorter side."""

    decoder = "face_attributes"
    output_names = ("logits",)
    default_crop = 1.0

    def output_metadata(self, fmt: str, resolution: int, postprocess: str, nms_in_graph: bool) -> dict[str, Any]:
        return {"attribute_names": list(self.task.attribute_names)}

    def decisions(self, ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
        return {"attribute_agreement": float(((ref > 0) == (out > 0)).float().mean())}


class EmbeddingContract(InferenceContract):
    """An embedding per face: no decision to agree on, the mean cosine to PyTorch's."""

    decoder = "face_embedding"
    output_names = ("embedding",)
    default_crop = 1.0

    def decisions(self, ref: torch.Tensor, out: torch.Tensor) -> dict[str, float]:
        return {"mean_cosine": float(torch.nn.functional.cosine_similarity(ref, out, dim=1).mean())}


class GeolocationOutputs(nn.Module):
    """Per-partition logits, the fine cells' (hierarchical) log-scores and the chosen cell's lat/lon: the file
    alone gives a location. The scores are the task's own (`toolkit.tasks.geolocation.cell_log_scores`)."""

    def __init__(self, task):
        super().__init__()
        self.model = task.model
        ancestors = task.ancestor_maps(len(task.partitions))
        for k, ancestor in enumerate(ancestors):
            self.register_buffer(f"ancestor_{k}", ancestor.clone(), persistent=False)
        self.ancestors = len(ancestors)
        latlon = getattr(task, f"cell_latlon_{len(task.partitions) - 1}").float()
        self.register_buffer("cell_latlon", latlon.clone(), persistent=False)

    def forward(self, x: torch.Tensor):
        from toolkit.geo.cell_scores import cell_log_scores

        logits = self.model(x)
        scores = cell_log_scores(logits, [getattr(self, f"ancestor_{k}") for k in range(self.ancestors)])
        latlon = self.cell_latlon.index_select(0, scores.argmax(-1))
        return (*logits, scores, latlon)


class GeolocationContract(ClassifierContract):
    """Per-partition logits, the fine cells' log-scores and the chosen cell's lat/lon."""

    decoder = "geolocation"
    single_output = False

    def check(self) -> None:
        if not self.task.partitions:
            raise ExportError("a geolocation model built without data has no cells: export a trained checkpoint "
                              "(ckpt_path=...)")

    def module(self, fmt: str, *, postprocess: str = "nms", nms_in_graph: bool = True) -> tuple[nn.Module, list[str]]:
        names = [f"logits_{k}" for k in range(len(self.task.partitions))] + ["cell_log_scores", "latlon"]
        return GeolocationOutputs(self.task).eval(), names

    def output_metadata(self, fmt: str, resolution: int, postprocess: str, nms_in_graph: bool) -> dict[str, Any]:
        task = self.task
        fine = task.partitions[-1]
        return {"cells": {"tokens": list(fine["tokens"]),
                          "latlon": [list(map(float, ll)) for ll in fine[task.hparams.predict_location]],
                          "location": task.hparams.predict_location},
                "predict_top_k": int(task.hparams.predict_top_k)}

    def network_output(self, tensors: tuple[torch.Tensor, ...]) -> tuple[Any, list[Any]]:
        logits = tensors[: len(tensors) - 2]
        return logits, [logits[-1]]


#: how every detector file's boxes are to be read (`detections` in the metadata)
DETECTION_CONVENTIONS = {
    "box_format": "xyxy (x1, y1, x2, y2)",
    "coordinate_frame": "pixels of the network input (the resized image); scale x by original width / input width "
                        "and y by original height / input height for the photo's pixels (toolkit.deploy does)",
    "label_base": 1, "background_label": 0, "labels": "1..K: class_names[label - 1], category_ids[label - 1]",
    "batch": 1,
}


class DetectorContract(InferenceContract):
    """A whole detector (boxes, scores, labels, count: NMS inside the graph) where the format holds it; SSD's
    dense decoded anchors (NMS after the runtime) for ExecuTorch; SSD's raw head with `export.postprocess=none`."""

    decoder = "detection"
    one_image = True
    any_size = False  # the anchors are laid out for one input size
    trace = True  # torchvision registers ONNX symbolics for nms and roi_align with the tracing exporter
    single_output = False

    def __init__(self, task):
        super().__init__(task)
        self.model = task.model  # the detector as exported: `configure` may set its score threshold

    def configure(self, settings) -> None:
        """`export.score_thresh` (null: the detector's own): the lowest score the files return, in place of the
        evaluation threshold (SSD's TF value 1e-8, Faster R-CNN's 0.0, for COCO mAP over up to 100 detections).
        Applied to a shallow copy of the detector (weights shared), which the files and verification's PyTorch
        reference both use, so they predict alike; `mode=eval` keeps the task's own threshold."""
        thresh = settings.get("score_thresh")
        if thresh is None:
            return
        if isinstance(thresh, bool) or not isinstance(thresh, int | float) or not 0 <= thresh < 1:
            raise ConfigError("export.score_thresh", thresh, "a score in [0, 1) (0.01: torchvision's SSD "
                              "deployment threshold), or null for the detector's own")
        model = copy.copy(self.task.model)
        if hasattr(model, "roi_heads"):  # Faster R-CNN: the second stage's threshold
            model._modules = dict(model._modules)
            model._modules["roi_heads"] = copy.copy(model.roi_heads)
            model.roi_heads.score_thresh = float(thresh)
        else:
            model.score_thresh = float(thresh)
        self.model = model

    def is_ssd(self) -> bool:
        from toolkit.detection.ssd import MobileNetSSD

        return isinstance(self.model, MobileNetSSD)

    def no_form(self, fmt: str, *, nms_in_graph: bool = True) -> str | None:
        if not nms_in_graph and not self.is_ssd():
            runtime = ("ExecuTorch", "XNNPACK") if fmt.startswith("executorch") else (fmt, "runtime")
            return (f"{fmt}: {type(self.model).__name__} has no {runtime[0]} form (RoIAlign and NMS have no "
                    f"{runtime[1]} kernel); its ONNX export holds the whole detector")
        return super().no_form(fmt)

    def module(self, fmt: str, *, postprocess: str = "nms", nms_in_graph: bool = True) -> tuple[nn.Module, list[str]]:
        from toolkit.detection.export import SSDDenseOutputs, SSDRawHead, SSDWholeDetector, WholeDetector

        model = self.model
        if postprocess == "none":
            if not self.is_ssd():
                raise ExportError(f"export.postprocess=none: {type(model).__name__} needs NMS between its RPN and "
                                  "RoI stages, so it has no raw-head form; use export.postprocess=nms")
            return SSDRawHead(model).eval(), ["bbox_regression", "cls_logits"]
        if not nms_in_graph:
            if (reason := self.no_form(fmt, nms_in_graph=False)) is not None:
                raise ExportError(reason)
            return SSDDenseOutputs(model).eval(), ["boxes", "scores"]
        whole = SSDWholeDetector(model) if self.is_ssd() else WholeDetector(model)
        return whole.eval(), ["boxes", "scores", "labels", "count"]

    def int8_options(self, fmt: str) -> dict[str, Any]:
        from toolkit.detection.export import PREDICTION_LAYERS

        # Faster R-CNN's second stage sees a different number of proposals in every image
        options = {"float_layers": PREDICTION_LAYERS, "per_image": hasattr(self.model, "roi_heads")}
        if self.is_ssd():  # int8 backbone and extra layers (paths in SSDDenseOutputs); heads and box decoding
            # float: their index arithmetic is out of a quantiser's reach, as onnx_int8 keeps the heads float
            options["quantized_modules"] = ("ssd.backbone", "ssd.extras")
        return options

    def input_metadata(self, meta: dict[str, Any], rule, min_side, resolution: int, datamodule):
        from toolkit.data import eval_preprocess
        from toolkit.data.detection_transforms import keep_aspect_max_size

        task = self.task
        keep_aspect = getattr(datamodule, "transform_name", "ssd") == "keep_aspect"
        rule = rule or (eval_preprocess.shorter_side_rule(resolution, keep_aspect_max_size(resolution)) if keep_aspect
                        else eval_preprocess.square_rule(resolution))
        meta["input_size"] = None if rule["mode"] == "shorter_side" else [int(v) for v in rule["size"]]
        meta.update(class_names=list(task.class_names), category_ids=list(task.category_ids),
                    predict_score_thresh=float(task.hparams.predict_score_thresh),
                    detections=dict(DETECTION_CONVENTIONS))
        return rule, min_side

    def output_metadata(self, fmt: str, resolution: int, postprocess: str, nms_in_graph: bool) -> dict[str, Any]:
        """What the file's outputs hold (`nms`, `detections.rows`, and for the raw head `raw_head`): whole detector
        (ONNX, export.postprocess=nms), decoded anchors (SSD .pte) or the raw head (export.postprocess=none)."""
        from toolkit.detection.export import nms_settings, raw_head_decoding

        model = self.model
        conventions = dict(DETECTION_CONVENTIONS)
        if postprocess == "none":
            conventions["rows"] = ("bbox_regression (1, A, 4) and cls_logits (1, A, K+1): one row per anchor of "
                                   "raw_head.anchors, before decoding; decode as raw_head says (toolkit.deploy does)")
            return {"nms": {"in_graph": False, **nms_settings(model)}, "detections": conventions,
                    "raw_head": raw_head_decoding(model, resolution)}
        if not nms_in_graph:  # XNNPACK (and others) have no NMS: every anchor's decoded box and class probabilities
            conventions["rows"] = ("boxes (1, A, 4) decoded and clipped to the input, scores (1, A, K+1) softmax "
                                   "probabilities (0 = background): one row per anchor; NMS as `nms` says "
                                   "(toolkit.deploy does)")
            return {"nms": {"in_graph": False, **nms_settings(model)}, "detections": conventions}
        conventions["rows"] = ("boxes (N, 4), scores (N), labels (N) with N = count[0] <= detections_per_img rows, "
                               "best score first; not padded (N varies per image, 0 when nothing is found)")
        settings = nms_settings(model) if hasattr(model, "topk_candidates") else {}
        return {"nms": {"in_graph": True, **settings}, "detections": conventions}

    def metric_names(self) -> list[str]:
        return [self.task.monitor, "val/map_50"]

    def recorder(self) -> Recorder:
        return Recorder(self.model, lambda out: [{k: v.detach() for k, v in o.items()} for o in out])

    def runtime_model(self, run: Run, outputs: list[str]) -> RuntimeModel:
        def forward(images):
            results = []
            for image in images:  # one image per run, as the graph takes
                found = run(image[None].contiguous().numpy())
                results.append({"boxes": torch.from_numpy(np.asarray(found["boxes"], np.float32)),
                                "scores": torch.from_numpy(np.asarray(found["scores"], np.float32)),
                                "labels": torch.from_numpy(np.asarray(found["labels"], np.int64))})
            return results, results

        return RuntimeModel(forward)

    def agreement(self, reference: list[Any], other: list[Any]) -> dict[str, float]:
        from torchvision.ops import box_iou

        matched = total = 0
        for ref, out in zip(reference, other, strict=True):
            if len(ref["boxes"]) == 0:
                continue
            iou = box_iou(ref["boxes"], out["boxes"]) if len(out["boxes"]) else torch.zeros(len(ref["boxes"]), 0)
            same = ref["labels"][:, None] == out["labels"][None]
            matched += int(((iou >= 0.9) & same).any(1).sum()) if iou.numel() else 0
            total += len(ref["boxes"])
        return {"box_match_iou0.9": matched / total if total else 1.0, "images": len(reference)}
