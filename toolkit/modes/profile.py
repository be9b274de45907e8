"""mode=profile: parameters, mult-adds, the Table 2 breakdown and latency of the configured model; no data needed."""

from __future__ import annotations

import logging

import torch
from omegaconf import DictConfig

from toolkit.modes.common import build_task, load_task, output_dir, write_json
from toolkit.profiling.report import format_report, profile_model

log = logging.getLogger(__name__)


def model_label(backbone: str, alpha, resolution: int) -> str:
    """The paper's naming, "0.75 MobileNet-192", with the registry's backbone name."""
    return f"{float(alpha)!r} {backbone}-{resolution}" if alpha is not None else f"{backbone}-{resolution}"


def describe_model(cfg: DictConfig, task) -> dict:
    """How profile and training sweeps name a model: label, backbone name, alpha, resolution and the kind of data
    its task reads (toolkit.data.contract)."""
    resolution = int(cfg.data.resolution)
    backbone = cfg.get("backbone") or {}
    name, alpha = backbone.get("name", type(task.model).__name__), backbone.get("alpha")
    return {"label": model_label(name, alpha, resolution), "model": name, "alpha": alpha, "resolution": resolution,
            "task": task.data_kind}


def profile(cfg: DictConfig) -> dict:
    out = output_dir(cfg)
    # the model is built from the config alone (num_classes etc. from the task config, 1000 for ImageNet),
    # or restored from a checkpoint when ckpt_path is given; no data is read either way
    task = load_task(cfg) if cfg.get("ckpt_path") else build_task(cfg)
    resolution = int(cfg.data.resolution)
    settings = cfg.profile
    if settings.get("threads"):
        torch.set_num_threads(int(settings.threads))  # on a busy machine extra threads spin against each other
    result = profile_model(task.model, lambda n: task.example_input(resolution, n), batch_size=int(settings.batch_size),
                           latency=bool(settings.latency), device=settings.device, budget_s=float(settings.budget_s),
                           compile=bool(settings.compile))
    payload = {**describe_model(cfg, task), "ckpt_path": cfg.get("ckpt_path"), **result}
    path = write_json(out / "profile.json", payload)
    print(format_report(payload))
    print(f"profile written to {path}")
    return {"profile": payload, "profile_file": str(path), "output_dir": str(out)}
