"""Faster JPEG decoding for the training loaders: torchvision's libjpeg-turbo decoder where it pays.

`read_rgb` returns what `toolkit.data.images.load_rgb` returns (an HxWx3 uint8 array) and leaves every other
case to it: files that are not JPEGs, JPEGs that `min_side` lets libjpeg decode at a reduced scale (PIL's
`draft`, far cheaper for a large photo than any full decode), images whose header declares more pixels than
the decompression-bomb limit (`MAX_IMAGE_PIXELS`) (checked from the header, before anything is decoded), and files torchvision
cannot decode (load_rgb then decodes them or raises the DataError that names the file). Both apply the EXIF
orientation (`apply_exif_orientation=True` here), so a phone photo is upright whichever decoder reads it.

Measured by benchmarks/speed/loader_speed.py (results/loader_speed.json): on 500x375 JPEGs torchvision's decoder
reads more images per CPU-second than PIL's `Image.open(...).convert("RGB")` + `np.asarray`, because it
decodes straight into a tensor without PIL's intermediate image.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg

from toolkit.data.images import MAX_IMAGE_PIXELS, load_rgb
from toolkit.errors import ConfigError

DECODERS = ("torchvision", "pil")
JPEG_SUFFIXES = (".jpg", ".jpeg")


def read_rgb(path: str | Path, min_side: int | None = None, decoder: str = "torchvision") -> np.ndarray:
    """Decode an image to an HxWx3 uint8 array; JPEGs with torchvision (`decoder="pil"`: always `load_rgb`)."""
    if decoder not in DECODERS:
        raise ConfigError("data.decoder", decoder, f"allowed: {', '.join(DECODERS)}")
    if decoder == "pil" or Path(path).suffix.lower() not in JPEG_SUFFIXES:
        return load_rgb(path, min_side)
    try:
        data = Path(path).read_bytes()
        with Image.open(io.BytesIO(data)) as header:  # parses the header only: the size before any decoding
            width, height = header.size
            is_jpeg = header.format == "JPEG"
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError, ValueError):
        return load_rgb(path, min_side)  # load_rgb raises the DataError that names the file and the fix
    reducible = min_side is not None and min(width, height) >= 2 * min_side
    if not is_jpeg or reducible or width * height > MAX_IMAGE_PIXELS:  # load_rgb reduces, or refuses the bomb
        return load_rgb(path, min_side)
    try:
        # upright as load_rgb gives it: torchvision reads the EXIF Orientation tag and turns the image the same way
        image = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB,
                            apply_exif_orientation=True)
    except RuntimeError:  # a truncated or corrupt JPEG: PIL decides (it tolerates some) and names the file
        return load_rgb(path, min_side)
    return np.ascontiguousarray(image.permute(1, 2, 0).numpy())
