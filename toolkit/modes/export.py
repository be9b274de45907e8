"""mode=export: the configured model as ONNX (dynamic batch) and as an int8 post-training-quantised TorchScript for mobile.

Weights come from `ckpt_path` when given, else from the config (random, or `backbone.pretrained`).
The int8 model is calibrated on the configured data's validation images (random images, with a
warning, when that data cannot be loaded or `export.calibration=random`), and both exports are
compared with the fp32 model on held-out batches: max abs difference and top-1 agreement.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig
from torch import nn

from toolkit.errors import ConfigError, ToolkitError
from toolkit.modes.common import build_datamodule, build_task, load_task, output_dir, write_json

log = logging.getLogger(__name__)


class ExportError(ToolkitError):
    """The model could not be exported in the requested format."""


def select_module(task, target: str) -> nn.Module:
    if target == "backbone":
        backbone = getattr(task.model, "backbone", None)
        if backbone is None:
            raise ConfigError("export.target", target, f"{type(task).__name__}.model has no .backbone; use export.target=model")
        return backbone
    return task.model


def calibration_batches(cfg: DictConfig, task, resolution: int, count: int) -> tuple[list[torch.Tensor], str]:
    """`count` image batches from the configured data's validation split, or random ones (with a warning)."""
    settings = cfg.export
    if settings.calibration == "data":
        try:
            datamodule = build_datamodule(cfg, task)
            datamodule.prepare_data()
            datamodule.setup("validate")
            batches = []
            for batch in datamodule.val_dataloader():
                images = batch.get("image") if isinstance(batch, dict) else None
                if not isinstance(images, torch.Tensor):  # detection batches hold lists of images: not used here
                    break
                batches.append(images)
                if len(batches) == count:
                    break
            if batches:
                return batches, f"data ({type(datamodule).__name__} validation split)"
            reason = "its validation loader gave no image tensors"
        except (ToolkitError, InstantiationException, OSError, RuntimeError, ValueError) as e:
            reason = str(e).splitlines()[0]
        log.warning("export: calibrating on random images, because the configured data could not be used: %s. "
                    "int8 accuracy will be worse than with real calibration images.", reason)
    else:
        log.warning("export.calibration=random: calibrating on random images; int8 accuracy will suffer.")
    generator = torch.Generator().manual_seed(0)
    return ([torch.randn(settings.batch_size, 3, resolution, resolution, generator=generator) for _ in range(count)],
            "random")


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, opset: int) -> Path:
    """torch.onnx.export with a dynamic batch axis, then onnx.checker."""
    import onnx

    quiet = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]  # their INFO lines drown the report
    levels = [q.level for q in quiet]
    try:
        for q in quiet:
            q.setLevel(logging.WARNING)
        with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its optimisation steps
            torch.onnx.export(module, (example,), str(path), input_names=["image"], output_names=["output"],
                              dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset,
                              external_data=False, verbose=False)
    except Exception as e:  # the exporter's errors are long; keep the first line and say what to try
        raise ExportError(f"ONNX export of {type(module).__name__} failed: {str(e).splitlines()[0]} "
                          "(try export.target=backbone)") from e
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    return path


def onnxruntime_outputs(path: Path, inputs: list[torch.Tensor]) -> list[torch.Tensor] | None:
    """Outputs of the ONNX file under ONNX Runtime, or None when onnxruntime is not installed."""
    try:
        import onnxruntime
    except ImportError:
        log.warning("onnxruntime is not installed (pip install onnxruntime): the ONNX file is checked, not run")
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return [torch.from_numpy(session.run(None, {name: x.numpy()})[0]) for x in inputs]


def quantize_int8(module: nn.Module, calibration: list[torch.Tensor], backend: str) -> nn.Module:
    """FX graph-mode static post-training quantisation: observers, calibration passes, int8 conversion.

    `qnnpack` is the backend of ARM phones (PyTorch Mobile); `x86`/`fbgemm` target servers.
    """
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = backend
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao's pt2e flow; it is what torch itself ships
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantize_per_tensor.*")
        try:
            prepared = prepare_fx(copy.deepcopy(module).eval(), get_default_qconfig_mapping(backend), (calibration[0],))
        except Exception as e:
            raise ExportError(f"int8 quantisation could not trace {type(module).__name__}: {str(e).splitlines()[0]} "
                              "(try export.target=backbone)") from e
        with torch.inference_mode():
            for images in calibration:
                prepared(images)
        return convert_fx(prepared)


def save_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch.jit is deprecated but is what mobile runtimes load
        traced = torch.jit.trace(module, example)
        torch.jit.save(traced, str(path))
    return path


def load_torchscript(path: Path) -> nn.Module:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        return torch.jit.load(str(path))


def _as_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    raise ExportError(f"export compares tensor outputs; the model returned {type(output).__name__} "
                      "(try export.target=backbone)")


def agreement(reference: list[torch.Tensor], other: list[torch.Tensor]) -> dict[str, float | None]:
    """Max abs difference, and top-1 agreement when the outputs are (batch, classes) logits."""
    ref, out = torch.cat([r.float() for r in reference]), torch.cat([o.float() for o in other])
    result: dict[str, float | None] = {"max_abs_diff": float((ref - out).abs().max()),
                                       "ref_max_abs": float(ref.abs().max()), "top1_agreement": None}
    if ref.ndim == 2:
        result["top1_agreement"] = float((ref.argmax(1) == out.argmax(1)).float().mean())
    return result


def export(cfg: DictConfig) -> dict:
    out = output_dir(cfg)
    settings = cfg.export
    task = load_task(cfg) if cfg.get("ckpt_path") else build_task(cfg)
    module = select_module(task, settings.target).eval()
    resolution = int(cfg.data.resolution)
    formats = list(settings.formats)
    calibration, source = calibration_batches(cfg, task, resolution, settings.calibration_batches + settings.check_batches)
    calib, check = calibration[: settings.calibration_batches], calibration[settings.calibration_batches:]
    if not check:  # fewer batches than asked for: compare on the calibration images rather than on nothing
        check = calib[-1:]
    with torch.inference_mode():
        reference = [_as_tensor(module(x)) for x in check]
    constant = bool(torch.cat(reference).float().std(0).max() < 1e-6) if sum(len(r) for r in reference) > 1 else False
    if constant:
        log.warning("export: the fp32 outputs are the same for every input (untrained weights with fresh BatchNorm "
                    "statistics?); the fp32/int8 agreement figures say little. Export a trained checkpoint (ckpt_path=...).")
    fp32_path = save_torchscript(module, calib[0], out / "model_fp32.pt")
    report: dict[str, Any] = {"target": settings.target, "resolution": resolution, "calibration": source,
                              "calibration_images": sum(len(x) for x in calib),
                              "check_images": sum(len(x) for x in check), "outputs_constant": constant,
                              "fp32": {"file": str(fp32_path), "size_mb": fp32_path.stat().st_size / 1e6}}
    if "onnx" in formats:
        example = calib[0][:2] if len(calib[0]) >= 2 else calib[0].repeat(2, 1, 1, 1)  # batch 1 would be specialised
        onnx_path = export_onnx(module, example, out / "model.onnx", settings.opset)
        report["onnx"] = {"file": str(onnx_path), "size_mb": onnx_path.stat().st_size / 1e6, "checker": "passed"}
        ort = onnxruntime_outputs(onnx_path, check)
        if ort is not None:
            report["onnx"]["onnxruntime"] = agreement(reference, ort)
    if "int8" in formats:
        quantized = quantize_int8(module, calib, settings.quant_backend)
        int8_path = save_torchscript(quantized, calib[0], out / "model_int8.pt")
        loaded = load_torchscript(int8_path)
        with torch.inference_mode():
            int8_out = [_as_tensor(loaded(x)) for x in check]
        report["int8"] = {"file": str(int8_path), "size_mb": int8_path.stat().st_size / 1e6,
                          "backend": settings.quant_backend, **agreement(reference, int8_out)}
    path = write_json(out / "export.json", report)
    print(format_export_report(report))
    print(f"export report written to {path}")
    return {"export": report, "export_file": str(path), "output_dir": str(out)}


def format_export_report(report: dict[str, Any]) -> str:
    lines = [f"export of {report['target']} at {report['resolution']}x{report['resolution']}; "
             f"calibrated on {report['calibration_images']} images ({report['calibration']}); "
             f"compared on {report['check_images']} further images",
             f"  fp32 TorchScript  {report['fp32']['size_mb']:8.2f} MB  {report['fp32']['file']}"]
    if "onnx" in report:
        o = report["onnx"]
        lines.append(f"  ONNX              {o['size_mb']:8.2f} MB  {o['file']}  (onnx.checker passed)")
        if "onnxruntime" in o:
            lines.append(f"    ONNX Runtime vs fp32: max abs diff {o['onnxruntime']['max_abs_diff']:.2e}"
                         + _top1(o["onnxruntime"]))
    if "int8" in report:
        q = report["int8"]
        lines.append(f"  int8 TorchScript  {q['size_mb']:8.2f} MB  {q['file']}  ({q['backend']})")
        lines.append(f"    int8 vs fp32: max abs diff {q['max_abs_diff']:.3g} (fp32 outputs up to {q['ref_max_abs']:.3g})"
                     + _top1(q))
    return "\n".join(lines)


def _top1(result: dict[str, Any]) -> str:
    return "" if result.get("top1_agreement") is None else f", top-1 agreement {100 * result['top1_agreement']:.1f}%"
