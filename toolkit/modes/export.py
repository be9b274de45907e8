"""mode=export: the model a task runs at inference, whole, as files a phone or server runtime loads, each verified
in that runtime on the validation split.

Formats (`export.formats`, each an object of `toolkit.formats.FORMATS`):
- `onnx`: fp32 ONNX with its preprocessing and meaning in `metadata_props`; detectors keep anchor decoding and
  NMS inside the graph. Run with ONNX Runtime.
- `onnx_int8`: static post-training quantisation of that file with `onnxruntime.quantization` (QDQ, per-channel
  int8 weights, int8 activations calibrated on `export.calibration` images: the training split by default, with
  the eval transform; ranges by `export.calibration_method`, the 99.999th percentile by default).
- `executorch` / `executorch_int8`: `.pte` files for ExecuTorch (`torch.export` + the XNNPACK delegate; int8 by
  PT2E quantisation with the XNNPACK quantizer), metadata in `<file>.pte.json`. SSD's NMS runs after the
  runtime (`toolkit.deploy.postprocess`); Faster R-CNN has no ExecuTorch form (RoIAlign and NMS have no XNNPACK kernel).
- `litert` / `litert_int8` (`.tflite`), `openvino` / `openvino_int8` (IR `.xml` + `.bin`): detectors in the
  `.pte`'s form (formats with `graph_nms = False`); `coreml` (`.mlpackage`): written, not run (needs Apple hardware).
- `torchscript` / `torchscript_int8`: legacy, classifier-style tasks only (torch.jit and FX quantisation are
  deprecated in torch 2.14); opt-in.
- `all`: every installed format but the legacy ones (`toolkit.formats.selection.expand_formats`).

What is written is the task's (its inference contract, `task.inference()`: module, outputs, metadata, int8
needs, the formats it has no form in); how, the format's. This mode loops over the formats and knows no task.

Verification: every written file is opened as a user opens it (`toolkit.deploy.runtime.open_model`, by suffix)
and runs on `export.verify_batches` validation batches (all by default) through the task's own validation step,
so the report gives the task's metric beside PyTorch's, agreement with the PyTorch outputs, file size and
latency (`export.json` and a printed table, `toolkit.modes.export_report`). The release gate
(`export.min_metric`, `export.max_metric_drop`) fails the command after the report is written when a file misses it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from toolkit.deploy.decoders import decoder_for
from toolkit.deploy.runtime import open_model
from toolkit.errors import ExportError, ToolkitError
from toolkit.formats import FORMATS, ExportFormat, ExportRequest
from toolkit.formats.selection import (
    check_gate_settings,
    expand_formats,
    gate_failures,
    missing_dependency,
    not_run,
)
from toolkit.modes.common import build_task, load_task, output_dir, write_json
from toolkit.modes.export_data import calibration_inputs, cause_line, check_data_for, load_data
from toolkit.modes.export_report import TorchRunner, file_size, format_export_report, quality_warnings, speed

__all__ = ["ExportError", "export", "missing_dependency", "write_format"]

log = logging.getLogger(__name__)


def write_format(fmt: ExportFormat, request: ExportRequest, path: Path) -> dict[str, Any]:
    """Write one format; returns the metadata as written. Any failure of an exporter, quantiser or runtime is one
    `ExportError` line naming the format and the cause, and leaves no file of that format behind (each is written
    under a temporary name and renamed when complete)."""
    try:
        return fmt.write(request, path)
    except ExportError as e:
        if str(e).startswith(fmt.name):
            raise
        raise ExportError(f"{fmt.name}: {e}") from e
    except (ToolkitError, MemoryError):
        raise
    except Exception as e:  # the quantisers' and runtimes' own errors: bare tracebacks otherwise
        raise ExportError(f"{fmt.name}: export failed: {cause_line(e)}") from e


def validate_with(scorer, datamodule, cfg: DictConfig, root: Path) -> dict[str, float]:
    """The validation metrics of `scorer` (the task with another model standing in, `contract.scoring`)."""
    from lightning.pytorch import Trainer

    limit = cfg.export.verify_batches
    chatty = logging.getLogger("lightning.pytorch")
    level = chatty.level
    chatty.setLevel(logging.WARNING)  # "GPU available: ..." once per format
    try:
        trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                          enable_model_summary=False, enable_checkpointing=False, callbacks=[],
                          default_root_dir=str(root), limit_val_batches=1.0 if limit is None else int(limit),
                          num_sanity_val_steps=0)
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*")
            (metrics,) = trainer.validate(scorer, datamodule=datamodule, verbose=False)
    finally:
        chatty.setLevel(level)
    return {k: float(v) for k, v in metrics.items()}


def open_file(fmt: ExportFormat, path: Path, threads: int | None):
    """(runner, metadata) of a written file, opened as a user opens it: by its suffix's runtime adapter
    (`toolkit.deploy.runtime.RUNTIMES`), or by the format itself where toolkit.deploy has none (TorchScript)."""
    opener = getattr(fmt, "open", None)
    return opener(path, threads) if opener is not None else open_model(path, threads)


def decoded_run(runner, metadata: dict[str, Any]):
    """The runner's outputs decoded as toolkit.deploy decodes them (detectors: NMS after the runtime where the
    file has none), for one input batch."""
    decoder = decoder_for(metadata, str(getattr(runner, "path", "the model")))

    def run(batch):
        return decoder.decode(runner.run(batch), metadata, tuple(batch.shape[2:]))

    return run


def request_for(contract, fmt: ExportFormat, calibration: list[torch.Tensor], settings, *, resolution: int,
                datamodule, postprocess: str, nms_in_graph: bool) -> ExportRequest:
    """What `fmt` is to write, as the task's contract declares it."""
    try:
        module, outputs = contract.module(fmt.name, postprocess=postprocess, nms_in_graph=nms_in_graph)
    except ExportError as e:
        raise ExportError(str(e) if str(e).startswith(fmt.name) else f"{fmt.name}: {e}") from e
    metadata = contract.metadata(fmt=fmt.name, resolution=resolution, datamodule=datamodule, outputs=outputs,
                                 postprocess=postprocess, nms_in_graph=nms_in_graph)
    return ExportRequest(module=module, example=calibration[0], outputs=outputs, calibration=calibration,
                         metadata=metadata, dynamic_batch=not contract.one_image,
                         dynamic_size=metadata.get("input_size") is None, settings=settings,
                         int8_options=contract.int8_options(fmt.name) if fmt.int8 else {}, trace=contract.trace)


def load_model(cfg: DictConfig):
    """(task in eval mode, datamodule or None, why the data cannot be used or None)."""
    if cfg.get("ckpt_path"):
        task = load_task(cfg)
        datamodule, reason = load_data(cfg, task)
        check_data_for(cfg, reason)
    else:  # weights from the config (random or backbone.pretrained); the data decides the class count
        datamodule, reason = load_data(cfg, None)
        check_data_for(cfg, reason)
        task = build_task(cfg, datamodule)
    return task.eval(), datamodule, reason


# ---- the mode ------------------------------------------------------------------------------------------------
def export(cfg: DictConfig) -> dict:
    out = output_dir(cfg)
    settings = cfg.export
    check_gate_settings(settings)
    formats = [FORMATS[name] for name in expand_formats(settings.formats)]  # export.formats=all: every installed one
    for fmt in formats:
        if (problem := missing_dependency(fmt.name)) is not None:
            raise ExportError(problem)
    task, datamodule, reason = load_model(cfg)
    contract = task.inference()
    contract.check()
    contract.configure(settings)  # e.g. detectors' export.score_thresh
    calibration, source = calibration_inputs(cfg, datamodule, one_image=contract.one_image)
    threads = settings.threads
    if threads:
        torch.set_num_threads(int(threads))
    postprocess = str(settings.get("postprocess", "nms"))
    resolution = int(cfg.data.resolution)
    metrics = contract.metric_names()

    report: dict[str, Any] = {"task": task.data_kind, "task_class": type(task).__name__, "resolution": resolution,
                              "calibration": source, "calibration_images": sum(len(x) for x in calibration),
                              "threads": threads, "batch_size": int(settings.batch_size), "formats": {}, "skipped": {}}
    verify = bool(settings.verify) and datamodule is not None
    reference_outputs: list[Any] = []
    if verify:
        recorder = contract.recorder()
        scores = validate_with(contract.scoring(recorder), datamodule, cfg, out / "verify" / "pytorch")
        reference_outputs = recorder.outputs
        report["pytorch"] = {name: scores.get(name) for name in metrics}
    torch_run = TorchRunner(contract.module("onnx")[0]).run
    report["pytorch"] = {**report.get("pytorch", {}),
                         **speed(torch_run, calibration[0], settings, one_image=contract.one_image)}

    for fmt in formats:
        nms_in_graph = getattr(fmt, "graph_nms", True)  # the runtime runs NMS and RoIAlign (ExecuTorch does not)
        if (why := contract.no_form(fmt.name, nms_in_graph=nms_in_graph)) is not None:  # the rest goes on
            print(f"export: {fmt.name} skipped: {why}")
            report["skipped"][fmt.name] = why
            continue
        request = request_for(contract, fmt, calibration, settings, resolution=resolution, datamodule=datamodule,
                              postprocess=postprocess, nms_in_graph=nms_in_graph)
        path = out / fmt.file_name
        write_format(fmt, request, path)
        entry: dict[str, Any] = {"file": str(path), "size_mb": file_size(path) / 1e6}
        if (why := not_run(fmt)) is not None:  # Core ML: written (its converter checks the program), not run here
            report["formats"][fmt.name] = {**entry, "not_run": why, "warnings": []}
            continue
        runner, written = open_file(fmt, path, threads)
        run = decoded_run(runner, written)
        if verify:
            model = contract.runtime_model(run, written["outputs"])
            scores = validate_with(contract.scoring(model), datamodule, cfg, out / "verify" / fmt.name)
            entry.update({name: scores.get(name) for name in metrics})
            entry["agreement"] = contract.agreement(reference_outputs, model.outputs)
        entry.update(speed(run, calibration[0], settings, one_image=contract.one_image, batch_run=runner.run))
        entry["warnings"] = quality_warnings(entry, report["pytorch"], metrics, task.monitor_mode)
        report["formats"][fmt.name] = entry
    report["verified"] = verify
    if not verify:
        report["not_verified"] = "export.verify=false" if not settings.verify else f"the data cannot be used: {reason}"
    path = write_json(out / "export.json", report)
    print(format_export_report(report, metrics))
    for name, entry in report["formats"].items():
        if entry["warnings"]:
            log.warning("export: %s is worse than the PyTorch model: %s", name, "; ".join(entry["warnings"]))
    print(f"export report written to {path}")
    if failures := gate_failures(report, task.monitor, task.monitor_mode, settings):  # export.min_metric, max_metric_drop
        raise ExportError(f"export: {'; '.join(failures)} (report: {path})")
    return {"export": report, "export_file": str(path), "output_dir": str(out)}
