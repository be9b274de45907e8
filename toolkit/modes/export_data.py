"""The data an export reads: the datamodule (or why it cannot be used), and the calibration images that int8
formats need and every exporter takes as its example input."""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from toolkit.errors import DataError, ToolkitError
from toolkit.modes.common import build_datamodule

log = logging.getLogger("toolkit.modes.export")


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


def image_batches(loader, count: int | None, *, one_image: bool = False) -> list[torch.Tensor]:
    """Up to `count` batches of input tensors from a loader (`one_image`: one image per batch, as a detector's
    graph takes; loaders of images of several sizes give them as a list, `images`)."""
    batches: list[torch.Tensor] = []
    for batch in loader:
        if one_image or "images" in batch:
            images = batch.get("images") if "images" in batch else list(batch.get("image", []))
            batches += [image[None].contiguous() for image in images or []]
        elif "image" in batch:  # contiguous: torch.export records a tensor's dim order (ToTensorV2 gives HWC strides)
            batches.append(batch["image"].contiguous())
        if count is not None and len(batches) >= count:
            return batches[:count]
    return batches


def calibration_inputs(cfg: DictConfig, datamodule, *, one_image: bool = False) -> tuple[list[torch.Tensor], str]:
    """(input batches, where they come from): int8 calibration images, and the example input of every exporter.
    Random images only when `export.calibration=random` asks for them, or as the mere example input of fp32
    formats (they need a shape, not values); an int8 format with no images to calibrate on stops here."""
    settings = cfg.export
    count = int(settings.calibration_batches)
    int8 = int8_formats(settings.formats)
    if datamodule is not None and settings.calibration != "random":
        loader = calibration_loader(datamodule, settings.calibration)
        batches = image_batches(loader, count * (int(cfg.data.batch_size) if one_image else 1), one_image=one_image)
        if batches:
            return batches, f"{type(datamodule).__name__} {settings.calibration} split"
        if int8:
            raise DataError(f"export: the {settings.calibration} split of {type(datamodule).__name__} has no images to "
                            f"calibrate {', '.join(int8)} on: give data with images there, "
                            f"export.calibration={'val' if settings.calibration == 'train' else 'train'}, or "
                            "export.calibration=random (random images: the int8 file loses accuracy)")
    generator = torch.Generator().manual_seed(0)
    size = int(cfg.data.resolution)
    shape = (1 if one_image else int(settings.batch_size), 3, size, size)
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


