"""Reading images from disk with errors that name the file and the fix, as a phone or camera gives them.

Every loader (training, eval, `mode=predict`) and the torch-free `toolkit.deploy` read pixels through `load_rgb`
(the training loaders' faster JPEG path, `toolkit.data.decode.read_rgb`, gives the same upright pixels), so:

- the EXIF Orientation tag is applied: a phone stores the sensor's frame plus a tag saying how to turn it, and
  every viewer (and every annotation tool that shows the photo) displays it turned; the model sees it upright;
- 16-bit images are scaled to 8 bits by value (65535 -> 255, a mid-grey 32896 -> 128): 16-bit grayscale PNG/TIFF
  open as PIL modes `I;16*` (or `I`, read as 16-bit too), which `convert("RGB")` would saturate to white;
  16-bit RGB(A) PNG/TIFF open as 8-bit `RGB`/`RGBA` from their high bytes already.
"""


from __future__ import annotations

import errno
import os
import stat
import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from toolkit.errors import DataError

#: what every loader, `mode=predict` and `toolkit.deploy` take as an image file (a GIF gives its first frame)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
#: most pixels an image may decode to (after JPEG draft reduction): PIL's own bomb threshold (89.5 Mpx,
#: ~270 MB as RGB). PIL itself only refuses at twice this; a crafted PNG header of 30000x30000 is refused here.
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

#: the EXIF tag that says how the stored pixels are turned for display (1: as stored; 2-8: flips and turns)
EXIF_ORIENTATION = 0x0112
#: PIL modes of 16-bit (and 32-bit integer) single-channel images: scaled to 8 bits by value, not saturated
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")

SKIP_HINT = "or set data.skip_corrupt=true to skip such files (they are counted in the log and metrics)"


def load_rgb(path: str | Path, min_side: int | None = None, *, skip_hint: str = SKIP_HINT) -> np.ndarray:
    """Decode an image fully to an HxWx3 uint8 array, or raise DataError naming the file.

    `min_side`: the caller needs no more than this many pixels on the shorter side, so a JPEG is decoded at
    the smallest power-of-two reduction that keeps the shorter side at least this long (libjpeg's DCT
    scaling: a 4000x3000 photo read for a 224-pixel crop decodes 16x fewer pixels). Other formats decode fully.
    The array is upright (EXIF orientation applied) and 16-bit images are scaled to 8 bits (module docstring).
    `skip_hint`: how the caller's user skips such files (`toolkit.deploy` has `--skip-corrupt`).
    """
    if isinstance(path, (str, Path)) and Path(path).exists() and not Path(path).is_file() and not Path(path).is_dir():
        # a named pipe, socket or device: opening it would wait forever for a writer
        raise DataError(f"{path}: not a regular file (a pipe, socket or device). Remove it from the dataset's list, "
                        f"{skip_hint}")
    try:
        with Image.open(path) as img:
            if min_side is not None and img.format == "JPEG":
                # a square request bounds both sides, so it holds whichever way the orientation turns the image
                img.draft("RGB", (min_side, min_side))
            width, height = img.size
            if width * height > MAX_IMAGE_PIXELS:
                raise DataError(f"{path}: {width}x{height} pixels is over the {MAX_IMAGE_PIXELS / 1e6:.0f} Mpx limit "
                                "(a decompression bomb, or a photo far larger than training needs). Downscale or "
                                f"delete it, {skip_hint}")
            img.load()  # decode now: a truncated file fails here, not later inside a transform
            return rgb_array(upright(img))
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found. Fix the path in the dataset, or restore the file.") from e
    except IsADirectoryError as e:
        raise DataError(f"{path}: is a folder, not an image file. Remove it from the dataset's list, {skip_hint}") from e
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: refused as a decompression bomb ({e}). Downscale or delete it, {skip_hint}") from e
    # what PIL's decoders raise on malformed bytes (fuzzing finds each of these)
    except OSError as e:
        if e.errno is not None:  # the system refused the file itself (a looping link, no permission), not PIL
            raise DataError(f"{path}: cannot be read ({e.strerror}). Fix or delete the file, {skip_hint}") from e
        raise DataError(f"{path}: cannot be decoded as an image ({e}). Replace or delete the file, {skip_hint}") from e
    except (UnidentifiedImageError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as e:
        raise DataError(f"{path}: cannot be decoded as an image ({e}). Replace or delete the file, {skip_hint}") from e


def upright(img: Image.Image) -> Image.Image:
    """`img` turned as its EXIF Orientation tag says (a new image), or `img` itself when there is nothing to turn."""
    if img.getexif().get(EXIF_ORIENTATION, 1) in (1, None):
        return img
    return ImageOps.exif_transpose(img)


def rgb_array(img: Image.Image) -> np.ndarray:
    """A decoded image as an HxWx3 uint8 array; 16-bit values scaled to 8 bits (>> 8), not clipped at 255."""
    if img.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(img)  # uint16 in the file's byte order, or int32 for mode I
        gray = (np.clip(values, 0, 65535).astype(np.uint16) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    return np.asarray(img.convert("RGB"))


def unreadable_reason(path: str | Path | os.DirEntry) -> str | None:
    """Why an entry of a folder cannot be read as an image file, found without opening it (opening a FIFO would
    wait forever for a writer); None for a regular file or a folder (a link to one included)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        if e.errno == errno.ELOOP:
            return "symbolic link loop"
        return "broken link" if e.errno == errno.ENOENT and os.path.islink(path) else f"cannot be read: {e.strerror}"
    if stat.S_ISDIR(mode) or stat.S_ISREG(mode):
        return None
    return "not a regular file"
