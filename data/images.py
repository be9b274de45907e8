"""Reading images from disk with errors that name the file and the fix."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from toolkit.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: most pixels an image may decode to (after JPEG draft reduction): PIL's own bomb threshold (89.5 Mpx,
#: ~270 MB as RGB). PIL itself only refuses at twice this; a crafted PNG header of 30000x30000 is refused here.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

SKIP_HINT = "or set data.skip_corrupt=true to skip such files (they are counted in the log and metrics)"


def load_rgb(path: str | Path, min_side: int | None = None) -> np.ndarray:
    """Decode an image fully to an HxWx3 uint8 array, or raise DataError naming the file.

    `min_side`: the caller needs no more than this many pixels on the shorter side, so a JPEG is decoded at
    the smallest power-of-two reduction that keeps the shorter side at least this long (libjpeg's DCT
    scaling: a 4000x3000 photo read for a 224-pixel crop decodes 16x fewer pixels). Other formats decode fully.
    """
    try:
        with Image.open(path) as img:
            if min_side is not None and img.format == "JPEG":
                img.draft("RGB", (min_side, min_side))
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise DataError(f"{path}: {width}x{height} pixels is over the {MAX_IMAGE_PIXELS / 1e6:.0f} Mpx limit "
                                "(a decompression bomb, or a photo far larger than training needs). Downscale or "
                                f"delete it, {SKIP_HINT}")
            img.load()  # decode now: a truncated file fails here, not later inside a transform
            return np.asarray(img.convert("RGB"))
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found. Fix the path in the dataset, or restore the file.") from e
    except IsADirectoryError as e:
        raise DataError(f"{path}: is a folder, not an image file. Remove it from the dataset's list, {SKIP_HINT}") from e
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: refused as a decompression bomb ({e}). Downscale or delete it, {SKIP_HINT}") from e
    # what PIL's decoders raise on malformed bytes (fuzzing finds each of these)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as e:
        raise DataError(f"{path}: cannot be decoded as an image ({e}). Replace or delete the file, {SKIP_HINT}") from e


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted, by extension (case-insensitive)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
