"""Pictures of predictions: contact sheets of captioned images (detection boxes are drawn by their tasks)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw

from toolkit.io import save_image_atomic


def contact_sheet(paths: Sequence[str], captions: Sequence[str], out: Path, thumb: int = 160, columns: int = 6,
                  max_images: int = 60) -> Path:
    """Grid of thumbnails with one caption line under each; writes a PNG and returns its path."""
    paths, captions = list(paths)[:max_images], list(captions)[:max_images]
    cols = max(1, min(columns, len(paths)))
    rows = max(1, math.ceil(len(paths) / cols))
    caption_h = 16
    sheet = Image.new("RGB", (cols * thumb, rows * (thumb + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (path, caption) in enumerate(zip(paths, captions, strict=True)):
        x, y = (i % cols) * thumb, (i // cols) * (thumb + caption_h)
        with Image.open(path) as img:
            img = img.convert("RGB")
            img.thumbnail((thumb, thumb))
            sheet.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
        draw.text((x + 3, y + thumb + 2), caption[:28], fill="black")
    return save_image_atomic(sheet, out)
