"""mode=export: the model a task runs at inference, whole, as files a phone or server runtime loads, each verified
in that runtime on the validation split.

Formats (`export.formats`):
- `onnx`: fp32 ONNX with its preprocessing and meaning in `metadata_props`; detectors keep anchor decoding and
  NMS inside the graph. Run with ONNX Runtime.
- `onnx_int8`: static post-training quantisation of that file with `onnxruntime.quantization` (QDQ, per-channel
  int8 weights, int8 activations calibrated on `export.calibration` images: the training split by default, with
  the eval transform; ranges by `export.calibration_method`, the 99.999th percentile by default).
- `executorch` / `executorch_int8`: `.pte` files for ExecuTorch (`torch.export` + the XNNPACK delegate; int8 by
  PT2E quantisation with the XNNPACK quantizer), metadata in `<file>.pte.json`. SSD's NMS runs after the
  runtime (`toolkit.deploy.postprocess`); Faster R-CNN has no ExecuTorch form (RoIAlign and NMS have no XNNPACK kernel).
- `torchscript` / `torchscript_int8`: legacy, classifier-style tasks only (torch.jit and FX quantisation are
  deprecated in torch 2.14); opt-in.

Verification: every written file runs in its runtime on `export.verify_batches` validation batches (all by
default) through the task's own validation step, so the report gives the task's metric beside PyTorch's,
agreement with the PyTorch outputs, file size and latency (`export.json` and a printed table).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig
from torch import nn

from toolkit.deploy.metadata import encode, sidecar_path
from toolkit.errors import ToolkitError
from toolkit.modes.common import build_datamodule, build_task, load_task, output_dir, write_json

log = logging.getLogger(__name__)

EXPORT_FORMATS = ("onnx", "onnx_int8", "executorch", "executorch_int8", "torchscript", "torchscript_int8")
FILE_NAMES = {"onnx": "model.onnx", "onnx_int8": "model_int8.onnx", "executorch": "model.pte",
              "executorch_int8": "model_int8.pte", "torchscript": "model_fp32.pt", "torchscript_int8": "model_int8.pt"}
#: the largest batch a .pte takes in one call (its input is memory-planned for it; toolkit.deploy splits larger ones)
MAX_PTE_BATCH = 32
EXTRAS = {"onnx": "export", "onnx_int8": "export", "executorch": "mobile", "executorch_int8": "mobile"}


class ExportError(ToolkitError):
    """The model could not be exported in the requested format."""


# ---- what each task runs at inference --------------------------------------------------------------------
class GeolocationOutputs(nn.Module):
    """Per-partition logits, the fine cells' (hierarchical) log-scores and the chosen cell's lat/lon: the file
    alone gives a location."""

    def __init__(self, task):
        super().__init__()
        self.model = task.model
        self.hierarchical = bool(task.hparams.hierarchical) and len(task.partitions) > 1
        for k in range(len(task.partitions) - 1):
            self.register_buffer(f"ancestor_{k}", getattr(task, f"ancestor_{k}").clone(), persistent=False)
        latlon = getattr(task, f"cell_latlon_{len(task.partitions) - 1}").float()
        self.register_buffer("cell_latlon", latlon.clone(), persistent=False)

    def forward(self, x: torch.Tensor):
        logits = self.model(x)
        scores = logits[-1].log_softmax(-1)
        if self.hierarchical:  # the task's cell_log_scores, written with ops every exporter takes
            for k in range(len(logits) - 1):
                ancestors = getattr(self, f"ancestor_{k}")
                gathered = logits[k].log_softmax(-1).index_select(1, ancestors.clamp(min=0))
                scores = scores + torch.where(ancestors >= 0, gathered, torch.zeros_like(gathered))
        latlon = self.cell_latlon.index_select(0, scores.argmax(-1))
        return (*logits, scores, latlon)


def inference_module(task, kind: str, fmt: str, postprocess: str = "nms") -> tuple[nn.Module, list[str]]:
    """(module, output names) of what `task` computes at inference, in the form `fmt` can hold. Detectors with
    `postprocess="none"` (export.postprocess): the raw SSD head, decoded after the runtime."""
    if kind == "detection":
        from toolkit.detection.export import SSDDenseOutputs, SSDRawHead, WholeDetector
        from toolkit.detection.ssd import MobileNetSSD

        if postprocess == "none":
            if not isinstance(task.model, MobileNetSSD):
                raise ExportError(f"export.postprocess=none: {type(task.model).__name__} needs NMS between its RPN and "
                                  "RoI stages, so it has no raw-head form; use export.postprocess=nms")
            return SSDRawHead(task.model).eval(), ["bbox_regression", "cls_logits"]
        if fmt.startswith("executorch"):
            if not isinstance(task.model, MobileNetSSD):
                raise ExportError(f"{fmt}: {type(task.model).__name__} has no ExecuTorch form (RoIAlign and NMS have no "
                                  "XNNPACK kernel); its ONNX export holds the whole detector")
            return SSDDenseOutputs(task.model).eval(), ["boxes", "scores"]
        return WholeDetector(task.model).eval(), ["boxes", "scores", "labels", "count"]
    if kind == "geolocation":
        names = [f"logits_{k}" for k in range(len(task.partitions))] + ["cell_log_scores", "latlon"]
        return GeolocationOutputs(task).eval(), names
    return task.model.eval(), ["embedding" if kind == "face_embedding" else "logits"]


def predict_preprocessing(datamodule) -> tuple[dict[str, Any] | None, int | None]:
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


#: how every detector file's boxes are to be read (`detections` in the metadata)
DETECTION_CONVENTIONS = {
    "box_format": "xyxy (x1, y1, x2, y2)",
    "coordinate_frame": "pixels of the network input (the resized image); scale x by original width / input width "
                        "and y by original height / input height for the photo's pixels (toolkit.deploy does)",
    "label_base": 1, "background_label": 0, "labels": "1..K: class_names[label - 1], category_ids[label - 1]",
    "batch": 1,
}


def export_metadata(task, kind: str, cfg: DictConfig, datamodule, outputs: list[str]) -> dict[str, Any]:
    """Everything a runtime user needs besides the file: preprocessing, classes, outputs (see toolkit.deploy.metadata).
    The resize rule and JPEG decoding are the `mode=predict` loader's own (toolkit.data.eval_preprocess)."""
    from toolkit.data import eval_preprocess
    from toolkit.data.detection_transforms import keep_aspect_max_size

    backbone = dict(task.hparams.get("backbone") or {})
    resolution = int(cfg.data.resolution)
    meta: dict[str, Any] = {
        "task": kind, "task_class": f"{type(task).__module__}.{type(task).__qualname__}",
        "backbone": backbone.get("name"), "alpha": float(backbone.get("alpha") or 1.0), "resolution": resolution,
        "mean": list(getattr(datamodule, "mean", None) or backbone_stats(task)[0]),
        "std": list(getattr(datamodule, "std", None) or backbone_stats(task)[1]),
        "channel_order": "RGB", "layout": "NCHW", "value_range": "RGB/255, then (x - mean) / std",
        "normalize": eval_preprocess.NORMALIZE_RULE,
        "outputs": outputs, "exported_by": "mobilenet-toolkit mode=export",
    }
    rule, min_side = predict_preprocessing(datamodule)
    if kind == "detection":
        keep_aspect = getattr(datamodule, "transform_name", "ssd") == "keep_aspect"
        rule = rule or (eval_preprocess.shorter_side_rule(resolution, keep_aspect_max_size(resolution)) if keep_aspect
                        else eval_preprocess.square_rule(resolution))
        meta["input_size"] = None if rule["mode"] == "shorter_side" else [int(v) for v in rule["size"]]
        meta.update(class_names=list(task.class_names), category_ids=list(task.category_ids),
                    predict_score_thresh=float(task.hparams.predict_score_thresh), detections=dict(DETECTION_CONVENTIONS))
    else:
        if rule is None:  # no data: the eval transforms' defaults (faces keep the whole shorter side)
            crop = 1.0 if kind in ("face_attributes", "face_embedding") else float(getattr(datamodule, "crop_fraction", 0.875))
            rule = eval_preprocess.center_crop_rule(resolution, crop)
            min_side = 2 * resolution if kind in ("classification", "geolocation") else None
        meta["input_size"] = [int(v) for v in rule["crop"]] if rule["mode"] == "center_crop" else None
    meta["resize"] = rule
    meta["decode"] = {"library": "Pillow", "jpeg_draft_min_side": None if min_side is None else int(min_side),
                      "rule": "JPEGs decode at libjpeg's reduced scale (PIL Image.draft('RGB', (n, n)) with n = "
                              "jpeg_draft_min_side) when that is set; other files, and JPEGs when it is null, decode "
                              "in full; then RGB"}
    if kind == "classification":
        meta.update(class_names=list(task.class_names), predict_top_k=int(task.hparams.predict_top_k))
    elif kind == "face_attributes":
        meta["attribute_names"] = list(task.attribute_names)
    elif kind == "geolocation":
        fine = task.partitions[-1]
        meta["cells"] = {"tokens": list(fine["tokens"]), "latlon": [list(map(float, ll)) for ll in fine[task.hparams.predict_location]],
                         "location": task.hparams.predict_location}
        meta["predict_top_k"] = int(task.hparams.predict_top_k)
    return meta


def backbone_stats(task) -> tuple[tuple[float, ...], tuple[float, ...]]:
    from toolkit.modes.common import backbone_input_stats

    return backbone_input_stats(dict(task.hparams.backbone))


# ---- input images --------------------------------------------------------------------------------------------
def image_batches(loader, count: int | None, kind: str) -> list[torch.Tensor]:
    """Up to `count` batches of input tensors from a loader (detection: one image per batch, as its graph takes)."""
    batches: list[torch.Tensor] = []
    for batch in loader:
        if kind == "detection":
            batches += [image[None].contiguous() for image in batch.get("images") or []]
        elif "image" in batch:  # contiguous: torch.export records a tensor's dim order (ToTensorV2 gives HWC strides)
            batches.append(batch["image"].contiguous())
        if count is not None and len(batches) >= count:
            return batches[:count]
    return batches


def load_data(cfg: DictConfig, task) -> tuple[Any, str | None]:
    """(datamodule set up for fit and validate, None) or (None, why the configured data cannot be used).
    `task`: the checkpoint's task (its backbone sets the input statistics), or None for a config-built model."""
    try:
        datamodule = build_datamodule(cfg, task)
        datamodule.prepare_data()
        datamodule.setup("fit")
        return datamodule, None
    except (ToolkitError, InstantiationException, OSError, RuntimeError, ValueError) as e:
        return None, str(e).splitlines()[0]


def calibration_loader(datamodule, split: str):
    """The `split`'s images with the EVAL transform, in a fixed shuffled order: int8 ranges must come from the
    images the deployed model sees (random crops, flips and colour jitter widen them), and folder datasets are
    sorted by class, so their first batches alone would hold one or two classes."""
    from torch.utils.data import DataLoader

    dataset = datamodule.train_dataset if split == "train" else datamodule.val_dataset
    evaluated = datamodule.val_dataset
    if split == "train" and hasattr(dataset, "transform") and hasattr(evaluated, "transform"):
        dataset = copy.copy(dataset)
        dataset.transform = evaluated.transform
    return DataLoader(dataset, batch_size=datamodule.batch_size, shuffle=True, num_workers=0,
                      generator=torch.Generator().manual_seed(0), collate_fn=datamodule.collate_fn())


def calibration_inputs(cfg: DictConfig, datamodule, kind: str) -> tuple[list[torch.Tensor], str]:
    settings = cfg.export
    count = int(settings.calibration_batches)
    if datamodule is not None and settings.calibration != "random":
        loader = calibration_loader(datamodule, settings.calibration)
        batches = image_batches(loader, count * (int(cfg.data.batch_size) if kind == "detection" else 1), kind)
        if batches:
            return batches, f"{type(datamodule).__name__} {settings.calibration} split"
    generator = torch.Generator().manual_seed(0)
    size = int(cfg.data.resolution)
    shape = (1 if kind == "detection" else int(settings.batch_size), 3, size, size)
    return [torch.randn(*shape, generator=generator) for _ in range(count)], "random images"


# ---- writers ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def quiet_exporter():
    """The ONNX exporters print optimisation steps and log INFO lines that drown the report."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export")]
    levels = [q.level for q in loggers]
    try:
        for q in loggers:
            q.setLevel(logging.WARNING)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for q, level in zip(loggers, levels, strict=True):
            q.setLevel(level)


def write_onnx_metadata(path: Path, metadata: dict[str, Any]) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, encode(metadata))
    onnx.save(model, str(path))


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, opset: int, outputs: list[str], kind: str,
                dynamic_size: bool = False) -> Path:
    """Classifier-style modules: the dynamo exporter with a dynamic batch axis. Detectors: the TorchScript-based
    exporter, for which torchvision registers NonMaxSuppression/RoiAlign symbolics (batch of one image;
    `dynamic_size`: any height and width, as Faster R-CNN's keep-aspect inputs)."""
    import onnx

    try:
        with quiet_exporter():
            if kind == "detection":
                axes = {name: [0] for name in outputs[:3]}
                if dynamic_size:
                    axes["image"] = [2, 3]
                torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=min(opset, 17),
                                  input_names=["image"], output_names=outputs, dynamic_axes=axes)
            else:
                torch.onnx.export(module, (example,), str(path), input_names=["image"], output_names=outputs,
                                  dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset,
                                  external_data=False, verbose=False)
    except Exception as e:  # the exporter's errors are long; keep the first line
        raise ExportError(f"ONNX export of {type(module).__name__} failed: {str(e).splitlines()[0]}") from e
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


#: export.calibration_method -> the name of ONNX Runtime's calibrator (onnxruntime.quantization.CalibrationMethod)
CALIBRATION_METHODS = {"percentile": "Percentile", "minmax": "MinMax", "entropy": "Entropy"}


def quantize_onnx(fp32: Path, path: Path, calibration: list[torch.Tensor], method: str = "percentile") -> Path:
    """QDQ static quantisation: per-channel int8 weights, int8 activations with ranges from `calibration` by
    `method` (ONNX Runtime's MinMax, Percentile or Entropy calibrator). Only convolutions and matrix products are
    quantised: box decoding and NMS stay in float."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"image": x.numpy()} for x in calibration])

        def get_next(self):
            return next(self.items, None)

    prepared = path.with_name(path.stem + "_prep.onnx")
    with quiet_exporter():
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["Conv", "Gemm", "MatMul"],
                        calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
    prepared.unlink(missing_ok=True)
    return path


def export_executorch(module: nn.Module, example: torch.Tensor, path: Path, calibration: list[torch.Tensor] | None,
                      dynamic_batch: bool) -> Path:
    """`torch.export` -> (PT2E int8 with the XNNPACK quantizer when `calibration` is given) -> XNNPACK-lowered .pte."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_PTE_BATCH)},) if dynamic_batch else None
    if dynamic_batch and len(example) < 2:
        example = example.repeat(2, 1, 1, 1)  # torch.export specialises a dimension of size 1
    with quiet_exporter():
        if calibration is not None:
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
                XNNPACKQuantizer,
                get_symmetric_quantization_config,
            )
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            prepared = prepare_pt2e(torch.export.export(module, (example,), dynamic_shapes=shapes).module(), quantizer)
            with torch.no_grad():
                for images in calibration:
                    prepared(images)
            module = convert_pt2e(prepared)
        program = torch.export.export(module, (example,), dynamic_shapes=shapes)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(lowered.buffer)
    return path


def quantize_fx(module: nn.Module, calibration: list[torch.Tensor], backend: str = "qnnpack") -> nn.Module:
    """Legacy int8: FX graph-mode static quantisation (deprecated in torch 2.14; `torchscript_int8` only)."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = backend
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(module).eval(), get_default_qconfig_mapping(backend), (calibration[0],))
        with torch.inference_mode():
            for images in calibration:
                prepared(images)
        return convert_fx(prepared)


def save_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated
        torch.jit.save(torch.jit.trace(module, example), str(path))
    return path


class TorchScriptModel:
    """A legacy TorchScript file behind the deploy runners' interface."""

    def __init__(self, path: Path, output_names: list[str], threads: int | None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # TorchScript is code: this opens only the file this export has just written (never a user's file)
            self.module = torch.jit.load(str(path))
        self.output_names = output_names

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(batch)))
        out = out if isinstance(out, tuple) else (out,)
        return {n: o.numpy() for n, o in zip(self.output_names, out, strict=True)}


def write_format(fmt: str, task, kind: str, cfg: DictConfig, out: Path, calibration: list[torch.Tensor],
                 metadata_for) -> tuple[Path, dict[str, Any]]:
    """Write one format; returns (file, its metadata)."""
    postprocess = str(cfg.export.get("postprocess", "nms")) if kind == "detection" else "nms"
    module, outputs = inference_module(task, kind, fmt, postprocess)
    path = out / FILE_NAMES[fmt]
    example = calibration[0]
    metadata = metadata_for(outputs)
    if kind == "detection":
        metadata = {**metadata, **detector_outputs(task, fmt, postprocess, int(cfg.data.resolution))}
    if fmt in ("onnx", "onnx_int8"):
        fp32 = out / FILE_NAMES["onnx"]
        if fmt == "onnx" or not fp32.is_file():
            if kind != "detection" and len(example) < 2:
                example = example.repeat(2, 1, 1, 1)  # a batch of 1 would be specialised
            export_onnx(module, example, fp32, int(cfg.export.opset), outputs, kind,
                        dynamic_size=metadata.get("input_size") is None)
            write_onnx_metadata(fp32, metadata)
        if fmt == "onnx_int8":
            method = str(cfg.export.calibration_method)
            quantize_onnx(fp32, path, calibration, method)
            write_onnx_metadata(path, {**metadata, "quantization": f"onnxruntime QDQ static int8, per-channel weights, "
                                                                   f"{method} activation ranges"})
        return path, metadata
    if fmt.startswith("executorch"):
        example = example[:1]
        int8 = fmt == "executorch_int8"
        export_executorch(module, example, path, calibration if int8 else None, dynamic_batch=kind != "detection")
        if int8:
            metadata["quantization"] = "PT2E XNNPACKQuantizer int8, per-channel weights"
    else:  # legacy TorchScript
        if kind in ("detection", "geolocation"):
            raise ExportError(f"{fmt}: legacy TorchScript export covers single-output models only; use onnx or executorch")
        traced = quantize_fx(module, calibration) if fmt == "torchscript_int8" else module
        save_torchscript(traced, example, path)
    from toolkit.io import write_json_atomic

    write_json_atomic(sidecar_path(path), metadata)
    return path, metadata


def detector_outputs(task, fmt: str, postprocess: str, resolution: int) -> dict[str, Any]:
    """What a detector file's outputs hold (`nms`, `detections.rows`, and for the raw head `raw_head`): whole
    detector (ONNX, export.postprocess=nms), decoded anchors (SSD .pte) or the raw head (export.postprocess=none)."""
    from toolkit.detection.export import nms_settings, raw_head_decoding

    conventions = dict(DETECTION_CONVENTIONS)
    if postprocess == "none":
        conventions["rows"] = ("bbox_regression (1, A, 4) and cls_logits (1, A, K+1): one row per anchor of "
                               "raw_head.anchors, before decoding; decode as raw_head says (toolkit.deploy does)")
        return {"nms": {"in_graph": False, **nms_settings(task.model)}, "detections": conventions,
                "raw_head": raw_head_decoding(task.model, resolution)}
    if fmt.startswith("executorch"):  # XNNPACK has no NMS: every anchor's decoded box and class probabilities
        conventions["rows"] = ("boxes (1, A, 4) decoded and clipped to the input, scores (1, A, K+1) softmax "
                               "probabilities (0 = background): one row per anchor; NMS as `nms` says (toolkit.deploy does)")
        return {"nms": {"in_graph": False, **nms_settings(task.model)}, "detections": conventions}
    conventions["rows"] = ("boxes (N, 4), scores (N), labels (N) with N = count[0] <= detections_per_img rows, best "
                           "score first; not padded (N varies per image, 0 when nothing is found)")
    settings = nms_settings(task.model) if hasattr(task.model, "topk_candidates") else {}
    return {"nms": {"in_graph": True, **settings}, "detections": conventions}


def missing_dependency(fmt: str) -> str | None:
    modules = {"export": ("onnx", "onnxruntime"), "mobile": ("executorch",)}.get(EXTRAS.get(fmt, ""), ())
    for name in modules:
        try:
            __import__(name)
        except ImportError:
            return f"export.formats={fmt} needs the '{name}' package: pip install 'mobilenet-toolkit[{EXTRAS[fmt]}]'"
    return None


# ---- verification --------------------------------------------------------------------------------------------
class RuntimeModel(nn.Module):
    """A runtime behind `task.model`'s interface, so the task's own validation step scores the exported file.
    Every output is also recorded (for the agreement with PyTorch)."""

    def __init__(self, runner, kind: str, metadata: dict[str, Any]):
        super().__init__()
        self.runner, self.kind, self.metadata = runner, kind, metadata
        self.outputs: list[Any] = []

    def forward(self, images):
        from toolkit.deploy.predict import detections

        if self.kind == "detection":
            results = []
            for image in images:
                boxes, scores, labels = detections(self.runner.run(image[None].contiguous().numpy()), self.metadata,
                                                   tuple(image.shape[-2:]))
                results.append({"boxes": torch.from_numpy(np.asarray(boxes, np.float32)),
                                "scores": torch.from_numpy(np.asarray(scores, np.float32)),
                                "labels": torch.from_numpy(np.asarray(labels, np.int64))})
            self.outputs += results
            return results
        raw = self.runner.run(images.numpy())
        tensors = tuple(torch.from_numpy(raw[name]) for name in self.metadata["outputs"])
        if self.kind == "geolocation":
            logits = tensors[: len(tensors) - 2]
            self.outputs.append(logits[-1])
            return logits
        self.outputs.append(tensors[0])
        return tensors[0]


class Recorder(nn.Module):
    """The PyTorch model, recording its outputs as `RuntimeModel` does."""

    def __init__(self, model: nn.Module, kind: str):
        super().__init__()
        self.model, self.kind = model, kind
        self.outputs: list[Any] = []

    def forward(self, images, *args):
        out = self.model(images, *args)
        if self.kind == "detection":
            self.outputs += [{k: v.detach() for k, v in o.items()} for o in out]
        else:
            self.outputs.append((out[-1] if isinstance(out, tuple) else out).detach())
        return out


def agreement(kind: str, reference: list[Any], other: list[Any]) -> dict[str, float]:
    """How often the export decides as PyTorch does."""
    if kind == "detection":
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
    ref, out = torch.cat(reference).float(), torch.cat(other).float()
    result = {"max_abs_diff": float((ref - out).abs().max())}
    if kind == "face_attributes":
        result["attribute_agreement"] = float(((ref > 0) == (out > 0)).float().mean())
    elif kind == "face_embedding":
        result["mean_cosine"] = float(torch.nn.functional.cosine_similarity(ref, out, dim=1).mean())
    else:
        result["top1_agreement"] = float((ref.argmax(1) == out.argmax(1)).float().mean())
    return result


def metric_names(task, kind: str) -> list[str]:
    return [task.monitor, "val/map_50"] if kind == "detection" else [task.monitor]


def validate_with(task, model: nn.Module, datamodule, cfg: DictConfig, root: Path) -> dict[str, float]:
    """The task's validation metrics with `model` standing in for `task.model` (restored afterwards)."""
    from lightning.pytorch import Trainer

    original = task.model
    limit = cfg.export.verify_batches
    chatty = logging.getLogger("lightning.pytorch")
    level = chatty.level
    chatty.setLevel(logging.WARNING)  # "GPU available: ..." once per format
    try:
        trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, enable_checkpointing=False, callbacks=[],
                          default_root_dir=str(root), limit_val_batches=1.0 if limit is None else int(limit),
                          num_sanity_val_steps=0)
        task.model = model
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            (metrics,) = trainer.validate(task, datamodule=datamodule, verbose=False)
    finally:
        task.model = original
        chatty.setLevel(level)
    return {k: float(v) for k, v in metrics.items()}


def latency(run, batch: np.ndarray, repeats: int) -> float:
    """Median seconds of `run(batch)` after two warm-up calls."""
    for _ in range(2):
        run(batch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(batch)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def speed(runner, kind: str, example: torch.Tensor, settings, metadata: dict[str, Any] | None = None) -> dict[str, float | None]:
    """ms per image at batch 1, and images/s at export.batch_size (detector graphs take one image per call).
    Detectors are timed up to their final boxes: with the NMS that runs after the runtime where it has none."""
    from toolkit.deploy.predict import detections

    repeats = int(settings.latency_repeats)
    single = example[:1].contiguous().numpy()
    run = runner.run
    if metadata is not None and kind == "detection":
        def run(batch):
            return detections(runner.run(batch), metadata)
    result: dict[str, float | None] = {"latency_ms_batch1": 1000 * latency(run, single, repeats)}
    batch = int(settings.batch_size)
    if kind == "detection":
        result[f"images_per_s_batch{batch}"] = None
    else:
        images = np.repeat(single, batch, axis=0)
        result[f"images_per_s_batch{batch}"] = batch / latency(runner.run, images, max(3, repeats // 4))
    return result


class TorchRunner:
    """The PyTorch model behind the runners' `run` interface (for the reference latency)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def run(self, batch: np.ndarray):
        with torch.inference_mode():
            return self.module(torch.from_numpy(batch))


def open_runner(fmt: str, path: Path, metadata: dict[str, Any], threads: int | None):
    from toolkit.deploy.runtime import ExecuTorchModel, OnnxModel

    if fmt.startswith("onnx"):
        return OnnxModel(path, threads)
    if fmt.startswith("executorch"):
        return ExecuTorchModel(path, metadata["outputs"], threads)
    return TorchScriptModel(path, metadata["outputs"], threads)


# ---- the mode ------------------------------------------------------------------------------------------------
def export(cfg: DictConfig) -> dict:
    out = output_dir(cfg)
    settings = cfg.export
    formats = list(settings.formats)
    for fmt in formats:
        if (problem := missing_dependency(fmt)) is not None:
            raise ExportError(problem)
    if cfg.get("ckpt_path"):
        task = load_task(cfg)
        datamodule, reason = load_data(cfg, task)
    else:  # weights from the config (random or backbone.pretrained); the data decides the class count
        datamodule, reason = load_data(cfg, None)
        task = build_task(cfg, datamodule)
    task.eval()
    kind = task.data_kind  # the records it reads decide its inference outputs (toolkit.data.contract)
    if kind == "geolocation" and not task.partitions:
        raise ExportError("a geolocation model built without data has no cells: export a trained checkpoint (ckpt_path=...)")
    if datamodule is None:
        log.warning("export: the configured data cannot be used (%s): calibrating on random images and skipping the "
                    "accuracy check; int8 files calibrated this way lose accuracy", reason)
    calibration, source = calibration_inputs(cfg, datamodule, kind)
    threads = settings.threads
    if threads:
        torch.set_num_threads(int(threads))

    def metadata_for(outputs: list[str]) -> dict[str, Any]:
        meta = export_metadata(task, kind, cfg, datamodule, outputs)
        if kind == "detection":
            meta["nms"] = {"in_graph": True}
        return meta

    report: dict[str, Any] = {"task": kind, "task_class": type(task).__name__, "resolution": int(cfg.data.resolution),
                              "calibration": source, "calibration_images": sum(len(x) for x in calibration),
                              "threads": threads, "batch_size": int(settings.batch_size), "formats": {}, "skipped": {}}
    verify = bool(settings.verify) and datamodule is not None
    reference_outputs: list[Any] = []
    if verify:
        recorder = Recorder(task.model, kind)
        metrics = validate_with(task, recorder, datamodule, cfg, out / "verify" / "pytorch")
        reference_outputs = recorder.outputs
        report["pytorch"] = {name: metrics.get(name) for name in metric_names(task, kind)}
    torch_module, _ = inference_module(task, kind, "onnx")
    report["pytorch"] = {**report.get("pytorch", {}), **speed(TorchRunner(torch_module), kind, calibration[0], settings)}

    for fmt in formats:
        try:
            path, metadata = write_format(fmt, task, kind, cfg, out, calibration, metadata_for)
        except ExportError as e:
            if fmt.startswith("executorch") and kind == "detection" or fmt.startswith("torchscript"):
                print(f"export: {fmt} skipped: {e}")
                report["skipped"][fmt] = str(e)
                continue
            raise
        entry: dict[str, Any] = {"file": str(path), "size_mb": path.stat().st_size / 1e6}
        runner = open_runner(fmt, path, metadata, threads)
        if verify:
            model = RuntimeModel(runner, kind, metadata)
            metrics = validate_with(task, model, datamodule, cfg, out / "verify" / fmt)
            entry.update({name: metrics.get(name) for name in metric_names(task, kind)})
            entry["agreement"] = agreement(kind, reference_outputs, model.outputs)
        entry.update(speed(runner, kind, calibration[0], settings, metadata))
        report["formats"][fmt] = entry
    path = write_json(out / "export.json", report)
    print(format_export_report(report, metric_names(task, kind)))
    print(f"export report written to {path}")
    return {"export": report, "export_file": str(path), "output_dir": str(out)}


def format_export_report(report: dict[str, Any], metrics: list[str]) -> str:
    batch = report["batch_size"]
    header = ["format", "size MB", *metrics, "agreement", "ms/img @1", f"img/s @{batch}"]
    rows = []

    def cells(name: str, entry: dict[str, Any], size: float | None) -> list[str]:
        agree = entry.get("agreement") or {}
        key = next((k for k in ("top1_agreement", "box_match_iou0.9", "attribute_agreement", "mean_cosine") if k in agree), None)
        throughput = entry.get(f"images_per_s_batch{batch}")
        return [name, "-" if size is None else f"{size:.2f}",
                *("-" if entry.get(m) is None else f"{entry[m]:.4f}" for m in metrics),
                "-" if key is None else f"{100 * agree[key]:.2f}% {key.split('_')[0]}",
                f"{entry['latency_ms_batch1']:.2f}", "-" if throughput is None else f"{throughput:.1f}"]

    rows.append(cells("pytorch (fp32)", report["pytorch"], None))
    rows += [cells(name, entry, entry["size_mb"]) for name, entry in report["formats"].items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"export of {report['task_class']} at {report['resolution']} px; int8 calibrated on "
             f"{report['calibration_images']} images ({report['calibration']}); threads {report['threads'] or 'default'}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in [header, *rows]]
    lines += [f"{fmt}: skipped: {why}" for fmt, why in report["skipped"].items()]
    return "\n".join(lines)
