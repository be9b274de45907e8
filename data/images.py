"""Reading images from disk with errors that name the file and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from toolkit.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image fully to an HxWx3 uint8 array, or raise DataError naming the file."""
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not later inside a transform
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found. Fix the path in the dataset, or restore the file.") from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(
            f"{path}: cannot be decoded as an image ({e}). Replace or delete the file, "
            "or set data.skip_corrupt=true to skip such files (they are counted in the log and metrics)."
        ) from e


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted, by extension (case-insensitive)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
