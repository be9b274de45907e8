"""mode=teacher_cache: run a teacher once over the distillation images and save its outputs keyed by image path.

The teacher sees each image's deterministic eval view at `data.resolution` (or `teacher.resolution`).
The cache (`<run dir>/teacher_cache.pt`) then serves as `teacher=<that file>`: distillation runs
no longer pay for the teacher's forward passes, and are verified against it before training.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from toolkit.distill.cache import TeacherCache, images_digest
from toolkit.errors import ConfigError
from toolkit.io import file_sha256
from toolkit.modes.common import build_datamodule, output_dir, write_json
from toolkit.tasks.teachers import CachedTeacher, build_teacher

log = logging.getLogger(__name__)


def _device(cfg: DictConfig) -> torch.device:
    accelerator = str(cfg.get("trainer", {}).get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def teacher_file_meta(spec: DictConfig) -> dict:
    """The teacher's file and its hash, so a cache used after the file was retrained in place is refused as stale."""
    raw = spec.get("path") if spec.get("kind") == "path" else spec.get("weights")
    if not raw or not Path(str(raw)).expanduser().is_file():
        return {}
    path = Path(str(raw)).expanduser().resolve()
    return {"teacher_file": str(path), "teacher_sha256": file_sha256(path)}


def teacher_cache(cfg: DictConfig) -> dict:
    out = output_dir(cfg)
    datamodule = build_datamodule(cfg, check_task=False)  # the data alone: no task reads it here
    if not hasattr(datamodule, "distill_dataset"):
        raise ConfigError("data", cfg.data.get("_target_"), "this data has no distillation images to cache teacher "
                          "outputs for; use data=celeba, attributes_csv, faces_folder or their synthetic versions")
    datamodule.prepare_data()
    teacher = build_teacher(OmegaConf.to_container(cfg.teacher, resolve=True))
    if isinstance(teacher, CachedTeacher):
        raise ConfigError("teacher", cfg.teacher.get("path"), "is already a teacher cache; give the teacher network "
                          "(a .ckpt, TorchScript file or teacher=model)")
    device = _device(cfg)
    teacher.to(device)
    teacher.set_input_stats(datamodule.mean, datamodule.std)
    dataset = datamodule.distill_dataset()
    loader = DataLoader(dataset, batch_size=datamodule.batch_size, shuffle=False, num_workers=datamodule.num_workers,
                        collate_fn=datamodule.collate_fn())
    keys, outputs, skipped = [], [], 0
    for batch in loader:
        skipped += batch.get("skipped", 0)
        if "image" not in batch:
            continue
        outputs.append(teacher(batch["image"].to(device)).cpu())
        keys += list(batch["key"])
    all_keys = datamodule.distill_keys()
    missing = sorted(set(all_keys) - set(keys))  # the images skipped as corrupt
    meta = {"teacher": teacher.description, "resolution": datamodule.resolution, "teacher_resolution": teacher.resolution,
            "data": OmegaConf.to_container(cfg.data, resolve=True), "mean": list(datamodule.mean), "std": list(datamodule.std),
            "images": len(all_keys), "images_sha256": images_digest(all_keys), **teacher_file_meta(cfg.teacher)}
    cache = TeacherCache(keys, torch.cat(outputs), teacher.output, meta=meta, skipped=missing)
    path = cache.save(out / "teacher_cache.pt")
    summary = {"cache_file": str(path), "images": len(keys), "skipped": skipped, "dim": cache.dim,
               "output": cache.output, "teacher": teacher.description, "output_dir": str(out)}
    write_json(out / "teacher_cache.json", summary)
    print(f"wrote {path}: {len(keys)} images, {cache.dim}-d {cache.output}" + (f", {skipped} skipped" if skipped else ""))
    print(f"use it with: teacher={path}")
    return summary
