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
import importlib.util
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
from toolkit.errors import DataError, ToolkitError
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
    """(datamodule set up for fit and validate, None) or (None, why the configured data cannot be used: the whole
    message of the error, on one line). `task`: the checkpoint's task (its backbone sets the input statistics), or
    None for a config-built model."""
    try:
        datamodule = build_datamodule(cfg, task)
        datamodule.prepare_data()
        datamodule.setup("fit")
        return datamodule, None
    except (ToolkitError, InstantiationException, OSError, RuntimeError, ValueError) as e:
        return None, whole_message(toolkit_cause(e) or e)


def toolkit_cause(error: BaseException) -> BaseException | None:
    """The ToolkitError behind `error` (Hydra's instantiate wraps the datamodule's own errors in its message)."""
    while error is not None:
        if isinstance(error, ToolkitError):
            return error
        error = error.__cause__ or error.__context__
    return None


def whole_message(error: BaseException) -> str:
    """An error's message as one line, all of it (a first line alone cut "looked for: ..." lists off)."""
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text or type(error).__name__


def cause_line(error: BaseException) -> str:
    """The first meaningful line of a quantiser's or runtime's error, with its type: what a one-line report can hold."""
    first = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {first[:300]}" if first else type(error).__name__


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
    return DataLoader(dataset, batch_size=datamodule.batch_size, shuffle=len(dataset) > 0, num_workers=0,  # empty: no batches
                      generator=torch.Generator().manual_seed(0), collate_fn=datamodule.collate_fn())


def int8_formats(formats) -> list[str]:
    return [f for f in formats if f.endswith("_int8")]


def calibration_inputs(cfg: DictConfig, datamodule, kind: str) -> tuple[list[torch.Tensor], str]:
    """(input batches, where they come from): int8 calibration images, and the example input of every exporter.
    Random images only when `export.calibration=random` asks for them, or as the mere example input of fp32
    formats (they need a shape, not values); an int8 format with no images to calibrate on stops here."""
    settings = cfg.export
    count = int(settings.calibration_batches)
    int8 = int8_formats(settings.formats)
    if datamodule is not None and settings.calibration != "random":
        loader = calibration_loader(datamodule, settings.calibration)
        batches = image_batches(loader, count * (int(cfg.data.batch_size) if kind == "detection" else 1), kind)
        if batches:
            return batches, f"{type(datamodule).__name__} {settings.calibration} split"
        if int8:
            raise DataError(f"export: the {settings.calibration} split of {type(datamodule).__name__} has no images to "
                            f"calibrate {', '.join(int8)} on: give data with images there, "
                            f"export.calibration={'val' if settings.calibration == 'train' else 'train'}, or "
                            "export.calibration=random (random images: the int8 file loses accuracy)")
    generator = torch.Generator().manual_seed(0)
    size = int(cfg.data.resolution)
    shape = (1 if kind == "detection" else int(settings.batch_size), 3, size, size)
    return [torch.randn(*shape, generator=generator) for _ in range(count)], "random images"


def check_data_for(cfg: DictConfig, reason: str | None) -> None:
    """What an export does when its data cannot be loaded (`reason`): int8 formats stop, unless
    `export.calibration=random` asks for random calibration images; fp32 files are written unverified. Either
    way the log says the whole reason and the fix."""
    if reason is None:
        return
    settings = cfg.export
    int8 = int8_formats(settings.formats)
    fix = "pass the data settings the model was trained with (data=..., data.root=... or the data's paths)"
    if int8 and settings.calibration != "random":
        raise DataError(f"export: {', '.join(int8)} needs calibration images and the configured data cannot be "
                        f"used: {reason.rstrip('.')}. Fix: {fix}, or export.calibration=random to calibrate on random images "
                        "(the int8 file then loses accuracy)")
    what = (f"{', '.join(int8)} calibrated on random images (export.calibration=random: expect lost accuracy); "
            if int8 else "")
    checked = "verification skipped: the files are written but not scored" if settings.verify else "export.verify=false"
    log.warning("export: the configured data cannot be used (%s) -> %s%s. To verify the files, %s.",
                reason, what, checked, fix)


# ---- writers ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def quiet_exporter():
    """The ONNX exporters print optimisation steps and log INFO lines that drown the report (ONNX Runtime's
    quantiser logs one line per output channel whose bias scale it raises, on the root logger)."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export")]
    loggers.append(logging.getLogger())
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
#: export.int8_activations -> ONNX Runtime's QuantType of activations (weights are always signed int8)
ACTIVATION_TYPES = {"uint8": "QUInt8", "int8": "QInt8"}
#: the only operators quantised: the network's convolutions and matrix products (see `quantized_nodes`)
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]
#: activations that ONNX Runtime folds into the output range of the quantised layer before them (it removes them;
#: one whose input is float, as box decoding's clamps, stays): without this every ReLU sits between a Quantize and
#: a Dequantize and each layer pays that round trip (3x slower than fp32 on a small SSD)
FOLDED_ACTIVATIONS = ["Relu", "Clip"]


def quantize_onnx(fp32: Path, path: Path, calibration: list[torch.Tensor], method: str = "percentile", *,
                  activations: str = "uint8", per_image: bool = False, exclude: tuple[str, ...] = ()) -> Path:
    """QDQ static quantisation: per-channel symmetric int8 weights, activations (`activations`: "uint8", ONNX
    Runtime's fast U8S8 kernels on x86, or "int8") with ranges from `calibration` by `method` (ONNX Runtime's
    MinMax, Percentile or Entropy calibrator). Only convolutions and matrix products are quantised: box decoding
    and NMS stay in float.

    The calibrator runs one image per call: its histogram collectors stack every call's outputs into one array, so
    batches of unequal size (a split that is not a multiple of the batch) cannot be mixed. `per_image`: also
    collect the ranges one image at a time (ONNX Runtime's strided collection), for graphs whose intermediate
    shapes change from image to image (Faster R-CNN's proposals, inputs of several sizes). The fp32 graph must
    take a batch of one (classifier files have a dynamic batch axis, detector files take one image).
    `exclude`: names of nodes kept in float.
    The quantiser's files go to a temporary folder and `path` is written under a temporary name, renamed when
    complete: a failure leaves nothing behind."""
    import tempfile

    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from toolkit.io import atomic_path

    images = [{"image": np.ascontiguousarray(x[i : i + 1].numpy())} for x in calibration for i in range(len(x))]
    if not images:
        raise ExportError("onnx_int8: no calibration images")

    class Reader(CalibrationDataReader):
        """One image per call; `set_range` is ONNX Runtime's hook for strided collection."""

        def __init__(self):
            self.set_range(0, len(images))

        def __len__(self):
            return len(images)

        def set_range(self, start_index: int, end_index: int):
            self.items = iter(images[start_index:end_index])

        def get_next(self):
            return next(self.items, None)

    options = {"ActivationSymmetric": False, "WeightSymmetric": True}
    if per_image or len({item["image"].shape for item in images}) > 1:
        options["CalibStridedMinMax"] = 1  # despite its name, every calibrator's collection in steps of 1 image
    with tempfile.TemporaryDirectory(prefix="toolkit_quantize_") as work, atomic_path(path) as partial, quiet_exporter():
        prepared = Path(work) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(partial), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=getattr(QuantType, ACTIVATION_TYPES[activations]),
                        weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OPS + FOLDED_ACTIVATIONS,
                        nodes_to_exclude=list(exclude),
                        calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]),
                        extra_options=options)
    return path


#: where a detector's prediction layers sit in the exported graph's node names (SSD's classification and regression
#: heads; Faster R-CNN's RPN and box predictors): kept in float, see `prediction_layers`
PREDICTION_LAYERS = ("/head/classification_head/", "/head/regression_head/", "/rpn/head/cls_logits",
                     "/rpn/head/bbox_pred", "/box_predictor/")


def prediction_layers(fp32: Path) -> tuple[str, ...]:
    """Names of a detector graph's final prediction layers (box offsets and class logits). They stay in float: an
    int8 output rounds every score and box offset to one of 256 levels over the whole range, which reorders
    near-tied detections and shifts boxes, while these layers are a small part of the computation."""
    import onnx

    graph = onnx.load(str(fp32), load_external_data=False).graph
    return tuple(node.name for node in graph.node
                 if node.op_type in QUANTIZED_OPS and any(part in node.name for part in PREDICTION_LAYERS))


def quantized_nodes(graph) -> list[str]:
    """Names of the nodes of an ONNX graph (and its subgraphs) that read a DequantizeLinear output: what runs in
    int8. The check that box decoding and NMS stay float."""
    found: list[str] = []
    dequantized = {o for node in graph.node if node.op_type == "DequantizeLinear" for o in node.output}
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") and dequantized & set(node.input):
            found.append(f"{node.op_type}:{node.name}")
        for attribute in node.attribute:
            if attribute.g.node:
                found += quantized_nodes(attribute.g)
    return found


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
            with torch.no_grad():  # observers keep running ranges: batches of any size, a split of one image
                for images in calibration:
                    for chunk in images.split(MAX_PTE_BATCH if dynamic_batch else 1):  # the exported batch range
                        prepared(chunk)
            module = convert_pt2e(prepared)
        program = torch.export.export(module, (example,), dynamic_shapes=shapes)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    from toolkit.io import write_bytes_atomic

    return write_bytes_atomic(path, lowered.buffer)


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
    """Write one format; returns (file, its metadata). Any failure of an exporter, quantiser or runtime is one
    `ExportError` line naming the format and the cause, and leaves no file of that format behind (each is written
    under a temporary name and renamed when complete)."""
    try:
        return _write_format(fmt, task, kind, cfg, out, calibration, metadata_for)
    except ExportError as e:
        if str(e).startswith(fmt):
            raise
        raise ExportError(f"{fmt}: {e}") from e
    except (ToolkitError, MemoryError):
        raise
    except Exception as e:  # the quantisers' and runtimes' own errors: bare tracebacks otherwise
        raise ExportError(f"{fmt}: export failed: {cause_line(e)}") from e


def _write_format(fmt: str, task, kind: str, cfg: DictConfig, out: Path, calibration: list[torch.Tensor],
                  metadata_for) -> tuple[Path, dict[str, Any]]:
    from toolkit.formats import ExportRequest
    from toolkit.formats.int8_target import int8_activations
    from toolkit.formats.selection import registered_formats
    from toolkit.io import atomic_path, write_json_atomic

    postprocess = str(cfg.export.get("postprocess", "nms")) if kind == "detection" else "nms"
    runtimes = registered_formats()
    form = "executorch" if fmt in runtimes else fmt  # LiteRT, OpenVINO, Core ML hold detectors as .pte does: NMS after
    module, outputs = inference_module(task, kind, form, postprocess)
    path = out / (runtimes[fmt].file_name if fmt in runtimes else FILE_NAMES[fmt])
    example = calibration[0]
    metadata = metadata_for(outputs)
    if kind == "detection":
        metadata = {**metadata, **detector_outputs(task, form, postprocess, int(cfg.data.resolution))}
    if fmt in runtimes:  # toolkit.formats: the format writes the file and its metadata
        request = ExportRequest(module=module, example=example, outputs=outputs, calibration=calibration,
                                metadata=metadata, dynamic_batch=kind != "detection", settings=cfg.export,
                                # SSD: int8 backbone and extra layers; heads and box decoding float, as onnx_int8
                                int8_options={"quantized_modules": ("ssd.backbone", "ssd.extras")}
                                if kind == "detection" else {})
        return path, runtimes[fmt].write(request, path)
    if fmt in ("onnx", "onnx_int8"):
        fp32 = out / FILE_NAMES["onnx"]
        if fmt == "onnx" or not fp32.is_file():
            if kind != "detection" and len(example) < 2:
                example = example.repeat(2, 1, 1, 1)  # a batch of 1 would be specialised
            with atomic_path(fp32) as partial:
                export_onnx(module, example, partial, int(cfg.export.opset), outputs, kind,
                            dynamic_size=metadata.get("input_size") is None)
                write_onnx_metadata(partial, metadata)
        if fmt == "onnx_int8":
            method, activations = str(cfg.export.calibration_method), int8_activations(cfg.export)
            # Faster R-CNN's second stage sees a different number of proposals in every image
            varying = kind == "detection" and hasattr(task.model, "roi_heads")
            heads = prediction_layers(fp32) if kind == "detection" else ()
            with atomic_path(path) as partial:
                quantize_onnx(fp32, partial, calibration, method, activations=activations, per_image=varying,
                              exclude=heads)
                write_onnx_metadata(partial, {**metadata, "quantization": (
                    f"onnxruntime QDQ static int8: per-channel symmetric int8 weights, {activations} activations "
                    f"(ONNX Runtime QuantType {ACTIVATION_TYPES[activations]}), {method} activation ranges; "
                    f"quantised ops: {', '.join(QUANTIZED_OPS)} (the {'/'.join(FOLDED_ACTIVATIONS)} after them folded "
                    "into their output ranges)"
                    + ("; prediction heads, box decoding and NMS in float" if heads else ""))})
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
        with atomic_path(path) as partial:
            save_torchscript(traced, example, partial)
    try:
        write_json_atomic(sidecar_path(path), metadata)
    except BaseException:
        path.unlink(missing_ok=True)  # a file without its metadata is of no use to anyone
        raise
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
    from toolkit.formats.selection import registered_formats

    if (registered := registered_formats().get(fmt)) is not None:
        for name in registered.requires:
            if importlib.util.find_spec(name) is None:
                return f"export.formats={fmt} needs the '{name}' package: pip install 'mobilenet-toolkit[{registered.extra}]'"
        return None
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


def file_size(path: Path) -> int:
    """Bytes of an exported file: with its weights beside it (OpenVINO's .bin), or its whole folder (.mlpackage)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    weights = path.with_suffix(".bin") if path.suffix == ".xml" else None
    return path.stat().st_size + (weights.stat().st_size if weights is not None and weights.is_file() else 0)


def open_runner(fmt: str, path: Path, metadata: dict[str, Any], threads: int | None):
    from toolkit.deploy.runtime import ExecuTorchModel, OnnxModel, open_model
    from toolkit.formats.selection import registered_formats

    if fmt in registered_formats():  # LiteRT, OpenVINO: toolkit.deploy's adapter for the file's suffix
        return open_model(path, threads)[0]
    if fmt.startswith("onnx"):
        return OnnxModel(path, threads)
    if fmt.startswith("executorch"):
        return ExecuTorchModel(path, metadata["outputs"], threads)
    return TorchScriptModel(path, metadata["outputs"], threads)


# ---- the mode ------------------------------------------------------------------------------------------------
def export(cfg: DictConfig) -> dict:
    from toolkit.formats.selection import (
        check_gate_settings,
        expand_formats,
        gate_failures,
        registered_formats,
    )

    out = output_dir(cfg)
    settings = cfg.export
    check_gate_settings(settings)
    formats = settings.formats = expand_formats(settings.formats)  # export.formats=all: every installed format
    for fmt in formats:
        if (problem := missing_dependency(fmt)) is not None:
            raise ExportError(problem)
    if cfg.get("ckpt_path"):
        task = load_task(cfg)
        datamodule, reason = load_data(cfg, task)
        check_data_for(cfg, reason)
    else:  # weights from the config (random or backbone.pretrained); the data decides the class count
        datamodule, reason = load_data(cfg, None)
        check_data_for(cfg, reason)
        task = build_task(cfg, datamodule)
    task.eval()
    kind = task.data_kind  # the records it reads decide its inference outputs (toolkit.data.contract)
    if kind == "geolocation" and not task.partitions:
        raise ExportError("a geolocation model built without data has no cells: export a trained checkpoint (ckpt_path=...)")
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
            # a format this model has no form in (the writers' own message, no underlying error): the rest goes on
            unavailable = e.__cause__ is None and ((fmt.startswith("executorch") or fmt in registered_formats())
                                                   and kind == "detection"
                                                   or fmt.startswith("torchscript"))
            if unavailable:
                print(f"export: {fmt} skipped: {e}")
                report["skipped"][fmt] = str(e)
                continue
            raise
        entry: dict[str, Any] = {"file": str(path), "size_mb": file_size(path) / 1e6}
        if not getattr(registered_formats().get(fmt), "runs_here", True):  # Core ML: written, its spec checked
            report["formats"][fmt] = {**entry, "not_run": "needs Apple hardware", "warnings": []}
            continue
        runner = open_runner(fmt, path, metadata, threads)
        if verify:
            model = RuntimeModel(runner, kind, metadata)
            metrics = validate_with(task, model, datamodule, cfg, out / "verify" / fmt)
            entry.update({name: metrics.get(name) for name in metric_names(task, kind)})
            entry["agreement"] = agreement(kind, reference_outputs, model.outputs)
        entry.update(speed(runner, kind, calibration[0], settings, metadata))
        entry["warnings"] = quality_warnings(entry, report["pytorch"], metric_names(task, kind), task.mode)
        report["formats"][fmt] = entry
    report["verified"] = verify
    if not verify:
        report["not_verified"] = "export.verify=false" if not settings.verify else f"the data cannot be used: {reason}"
    path = write_json(out / "export.json", report)
    print(format_export_report(report, metric_names(task, kind)))
    for fmt, entry in report["formats"].items():
        if entry["warnings"]:
            log.warning("export: %s is worse than the PyTorch model: %s", fmt, "; ".join(entry["warnings"]))
    print(f"export report written to {path}")
    if failures := gate_failures(report, task.monitor, task.mode, settings):  # export.min_metric / max_metric_drop
        raise ExportError(f"export: {'; '.join(failures)} (report: {path})")
    return {"export": report, "export_file": str(path), "output_dir": str(out)}


#: a format that changes the task's metric by more than this (1 point of a 0..1 metric) against PyTorch is flagged
METRIC_TOLERANCE = 0.01
#: agreement with PyTorch below which a format is flagged: 90 % of decisions (top-1 class, box of the same class at
#: IoU >= 0.9, attribute decision); embeddings have no decision, their mean cosine to PyTorch's must reach 0.99
#: (an int8 file that keeps its ranking of pairs stays above it; 0.99 is an angle of 8 degrees)
AGREEMENT_FLOORS = {"top1_agreement": 0.90, "box_match_iou0.9": 0.90, "attribute_agreement": 0.90, "mean_cosine": 0.99}
AGREEMENT_WORDS = {"top1_agreement": "top-1 classes", "box_match_iou0.9": "boxes (same class, IoU >= 0.9)",
                   "attribute_agreement": "attribute decisions"}


def quality_warnings(entry: dict[str, Any], pytorch: dict[str, Any], metrics: list[str], mode: str) -> list[str]:
    """Why a written file is worse than the PyTorch model, in words ([] when it is not): each of the task's
    `metrics` worse than PyTorch's by more than METRIC_TOLERANCE (`mode`: the task's "max" or "min", which way is
    better), and agreement below AGREEMENT_FLOORS."""
    warnings_: list[str] = []
    for name in metrics:
        value, reference = entry.get(name), pytorch.get(name)
        if value is None or reference is None:
            continue
        worse = reference - value if mode == "max" else value - reference
        if worse > METRIC_TOLERANCE:
            change = (f"loses {100 * worse:.1f} points of {name}" if mode == "max"
                      else f"raises {name} by {worse:.4g} (lower is better)")
            warnings_.append(f"{change} vs pytorch ({value:.4f} vs {reference:.4f})")
    agree = entry.get("agreement") or {}
    for key, floor in AGREEMENT_FLOORS.items():
        if key not in agree or agree[key] >= floor:
            continue
        if key == "mean_cosine":
            warnings_.append(f"mean cosine to pytorch's embeddings {agree[key]:.4f} (< {floor})")
        else:
            warnings_.append(f"agrees with pytorch on {100 * agree[key]:.1f}% of {AGREEMENT_WORDS[key]} (< {100 * floor:.0f}%)")
    return warnings_


def format_export_report(report: dict[str, Any], metrics: list[str]) -> str:
    """The printed table; a file worse than PyTorch (its `warnings`, see `quality_warnings`) is marked LOW."""
    batch = report["batch_size"]
    header = ["format", "size MB", *metrics, "agreement", "ms/img @1", f"img/s @{batch}", "!"]
    rows = []

    def cells(name: str, entry: dict[str, Any], size: float | None) -> list[str]:
        agree = entry.get("agreement") or {}
        key = next((k for k in AGREEMENT_FLOORS if k in agree), None)
        throughput = entry.get(f"images_per_s_batch{batch}")
        return [name, "-" if size is None else f"{size:.2f}",
                *("-" if entry.get(m) is None else f"{entry[m]:.4f}" for m in metrics),
                "-" if key is None else f"{100 * agree[key]:.2f}% {key.split('_')[0]}",
                "-" if entry.get("latency_ms_batch1") is None else f"{entry['latency_ms_batch1']:.2f}",
                "-" if throughput is None else f"{throughput:.1f}",
                "LOW" if entry.get("warnings") else ""]

    rows.append(cells("pytorch (fp32)", report["pytorch"], None))
    rows += [cells(name, entry, entry["size_mb"]) for name, entry in report["formats"].items()]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    calibrated = (f"; int8 calibrated on {report['calibration_images']} images ({report['calibration']})"
                  if any(name.endswith("_int8") for name in report["formats"]) else "")
    lines = [f"export of {report['task_class']} at {report['resolution']} px{calibrated}; "
             f"threads {report['threads'] or 'default'}"
             + ("" if report.get("verified", True) else "; not verified ("
                + ("export.verify=false" if report.get("not_verified") == "export.verify=false"
                   else "the data cannot be used: see the warning above") + ")")]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines += [f"{fmt}: skipped: {why}" for fmt, why in report["skipped"].items()]
    lines += [f"{fmt}: not run ({entry['not_run']})" for fmt, entry in report["formats"].items() if "not_run" in entry]
    return "\n".join(lines)
