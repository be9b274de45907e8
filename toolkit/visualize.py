"""Pictures: boxes drawn on photos, contact sheets, and the figures of training and evaluation (curves, confusion
matrix, precision-recall curves).

Torch-free (Pillow, numpy; matplotlib imported where a figure is made): the torch-free predictor
(`toolkit.deploy`) draws its boxes with the same `draw_boxes` as `mode=predict`. Figure builders return the
matplotlib Figure (tests check its axes before it is saved); `save_figure` writes it atomically and closes it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from toolkit.io import atomic_path, save_image_atomic

PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 190), (0, 128, 128), (170, 110, 40))


def font(size: int) -> ImageFont.ImageFont:
    """Pillow's bundled scalable font at `size` pixels (Pillow >= 10.1), else its fixed bitmap font."""
    try:
        return ImageFont.load_default(size=max(8, size))
    except TypeError:  # an older Pillow: the 11 px bitmap font
        return ImageFont.load_default()


def _text_color(fill: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light colours, white on dark ones (relative luminance)."""
    return (0, 0, 0) if 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2] > 110 else (255, 255, 255)


def _overlap(a: tuple, b: tuple) -> float:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def draw_boxes(image_path: str | Path, detections: list[dict], out: Path) -> Path:
    """`detections`: [{"box_xyxy", "score", "label", "name"}] in the photo's pixels; writes `out` (PNG or JPEG).

    Readable at any image size: line width and font scale with the image; each label ("name 0.88", on the class
    colour) stays inside the image, above its box where there is room, else inside the box's top edge, moved
    down past labels already placed where they would overlap. The most confident boxes are drawn last (on top)."""
    with Image.open(image_path) as img:
        img = img.convert("RGB")
    draw_boxes_on(img, detections)
    return save_image_atomic(img, out)


def draw_boxes_on(img: Image.Image, detections: list[dict]) -> Image.Image:
    """Draw `detections` on `img` in place (see `draw_boxes`); returns it."""
    draw = ImageDraw.Draw(img)
    width = max(1, round(max(img.size) / 300))
    face = label_font(img.size)
    for det in sorted(detections, key=lambda d: d["score"]):  # boxes: least confident first
        draw.rectangle(list(det["box_xyxy"]), outline=PALETTE[det["label"] % len(PALETTE)], width=width)
    for det, text, rect in reversed(label_places(detections, img.size)):
        color = PALETTE[det["label"] % len(PALETTE)]
        draw.rectangle(rect, fill=color)
        left, top, _, _ = draw.textbbox((0, 0), text, font=face)
        draw.text((rect[0] + 2 - left, rect[1] + 2 - top), text, fill=_text_color(color), font=face)
    return img


def label_font(size: tuple[int, int]) -> ImageFont.ImageFont:
    """The label font for an image of `size` (width, height): about 1/45 of its longer side, 10 px at least."""
    return font(max(10, round(max(size) / 45)))


def label_places(detections: list[dict], size: tuple[int, int]) -> list[tuple[dict, str, tuple[int, int, int, int]]]:
    """(detection, "name 0.88", label rectangle) per detection, the most confident first: each rectangle inside the
    image, above its box where there is room (else inside the box's top edge), moved past rectangles already
    placed where they would overlap."""
    W, H = size
    face = label_font(size)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    placed: list[tuple[int, int, int, int]] = []
    out = []
    for det in sorted(detections, key=lambda d: -d["score"]):
        x1, y1, _, _ = det["box_xyxy"]
        text = f"{det['name']} {det['score']:.2f}"
        left, top, right, bottom = measure.textbbox((0, 0), text, font=face)
        tw, th = right - left + 4, bottom - top + 4
        x = int(min(max(0, x1), max(0, W - tw)))
        y = int(y1 - th if y1 - th >= 0 else min(max(0, y1), max(0, H - th)))
        for _ in range(2 * len(placed) + 1):  # step down past labels already placed (up at the bottom edge)
            hit = next((p for p in placed if _overlap((x, y, x + tw, y + th), p) > 0), None)
            if hit is None:
                break
            y = hit[3] if hit[3] + th <= H else max(0, hit[1] - th)
        rect = (x, y, x + tw, y + th)
        placed.append(rect)
        out.append((det, text, rect))
    return out


def _fit_text(draw: ImageDraw.ImageDraw, text: str, face, width: int) -> str:
    """`text`, cut with an ellipsis in the middle to fit `width` pixels (file names keep their ends)."""
    if draw.textlength(text, font=face) <= width:
        return text
    keep = len(text)
    while keep > 3:
        keep -= 1
        short = text[: keep // 2] + "…" + text[len(text) - (keep - keep // 2):]
        if draw.textlength(short, font=face) <= width:
            return short
    return text[:3]


def _fit(img: Image.Image, size: int) -> Image.Image:
    """`img` scaled (up or down, aspect kept) so its longer side is `size` pixels: small images fill their tile."""
    scale = size / max(img.size)
    return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BILINEAR)


def contact_sheet(paths: Sequence[str], captions: Sequence[str], out: Path, thumb: int = 160, columns: int = 6,
                  max_images: int = 60) -> Path:
    """Grid of thumbnails, each with its file name and one caption line (the prediction) under it; writes a PNG."""
    paths, captions = list(paths)[:max_images], list(captions)[:max_images]
    cols = max(1, min(columns, len(paths)))
    rows = max(1, math.ceil(len(paths) / cols))
    face = font(12)
    line = 15
    caption_h = 2 * line + 4
    sheet = Image.new("RGB", (cols * thumb, rows * (thumb + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (path, caption) in enumerate(zip(paths, captions, strict=True)):
        x, y = (i % cols) * thumb, (i // cols) * (thumb + caption_h)
        with Image.open(path) as img:
            img = _fit(img.convert("RGB"), thumb - 6)
            sheet.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
        draw.text((x + 3, y + thumb + 2), _fit_text(draw, Path(path).name, face, thumb - 6), fill=(90, 90, 90), font=face)
        draw.text((x + 3, y + thumb + 2 + line), _fit_text(draw, caption, face, thumb - 6), fill="black", font=face)
    return save_image_atomic(sheet, out)


def mosaic(tiles: Sequence[tuple[Image.Image, str, bool | None]], out: Path, thumb: int = 160, columns: int = 4) -> Path:
    """Grid of (picture, caption, correct) tiles: the caption under each, green when `correct`, red when not
    (None: black). What a training run writes as `val_predictions.png`."""
    cols = max(1, min(columns, len(tiles)))
    rows = max(1, math.ceil(len(tiles) / cols))
    face = font(12)
    caption_h = 18
    sheet = Image.new("RGB", (cols * thumb, rows * (thumb + caption_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, caption, correct) in enumerate(tiles):
        x, y = (i % cols) * thumb, (i // cols) * (thumb + caption_h)
        img = _fit(img.convert("RGB"), thumb - 6)
        sheet.paste(img, (x + (thumb - img.width) // 2, y + (thumb - img.height) // 2))
        color = "black" if correct is None else (0, 128, 0) if correct else (200, 0, 0)
        draw.text((x + 3, y + thumb + 2), _fit_text(draw, caption, face, thumb - 6), fill=color, font=face)
    return save_image_atomic(sheet, out)


# ---- figures (matplotlib) --------------------------------------------------------------------------------------
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write `fig` to `path` (format from the suffix, through a temporary name) and close it."""
    plt = _pyplot()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path


def curves_figure(epochs: dict[str, list[tuple[int, float]]], *, loss_keys: Sequence[str], metric_keys: Sequence[str],
                  lr_keys: Sequence[str]):
    """Training curves: loss (train and val), the task's metric(s), learning rate; one panel each, by epoch.
    `epochs`: {metric name: [(epoch, value), ...]}."""
    plt = _pyplot()
    panels = [("loss", loss_keys), ("metric", metric_keys), ("learning rate", lr_keys)]
    panels = [(title, [k for k in keys if epochs.get(k)]) for title, keys in panels]
    panels = [(title, keys) for title, keys in panels if keys]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4.2 * max(1, len(panels)), 3.4), squeeze=False)
    for ax, (title, keys) in zip(axes[0], panels, strict=False):
        for key in keys:
            xs, ys = zip(*epochs[key], strict=True)
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
        ax.set_title(", ".join(keys) if title == "metric" else title)
        values = [v for key in keys for _, v in epochs[key]]
        if title == "loss" and min(values) > 0 and max(values) > 20 * min(values):  # one diverged epoch hides the rest
            ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        if title == "learning rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax.xaxis.get_major_locator().set_params(integer=True)
        seen = sorted({x for key in keys for x, _ in epochs[key]})
        if len(seen) < 8:  # few epochs: a tick on each (the locator puts fractional ticks around a single point)
            ax.set_xticks(seen)
    fig.tight_layout()
    return fig


def confusion_figure(confusion, names: Sequence[str], *, max_classes: int = 40):
    """The confusion matrix (rows: true class, columns: predicted), each row normalised to 1, with the image
    counts written in the cells when there are few classes. Over `max_classes` classes, the ones with the most
    errors are shown (the title says how many)."""
    import numpy as np

    plt = _pyplot()
    cm = np.asarray(confusion, dtype=float)
    n = cm.shape[0]
    shown = np.arange(n)
    if n > max_classes:  # the classes with the most confusion, in their own order
        errors = cm.sum(1) - np.diag(cm) + cm.sum(0) - np.diag(cm)
        shown = np.sort(np.argsort(-errors, kind="stable")[:max_classes])
    sub = cm[np.ix_(shown, shown)]
    norm = sub / np.maximum(sub.sum(1, keepdims=True), 1)
    size = min(14, 2.5 + 0.35 * len(shown))
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    labels = [names[i] for i in shown]
    ax.set_xticks(range(len(shown)), labels, rotation=90 if len(shown) > 8 else 45, ha="right" if len(shown) <= 8 else "center",
                  fontsize=8)
    ax.set_yticks(range(len(shown)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if len(shown) <= 20:
        for i in range(len(shown)):
            for j in range(len(shown)):
                if sub[i, j]:
                    ax.text(j, i, f"{int(sub[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    title = "confusion matrix (rows normalised; cells: images)"
    if len(shown) < n:
        title += f"\n{len(shown)} of {n} classes: those with the most errors"
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig


def pr_curves_figure(recall, precision, names: Sequence[str], ap50: Sequence[float], *, max_classes: int = 20):
    """Precision-recall curves at IoU 0.5, one per class (COCOeval's 101 recall points), each labelled with its
    AP@0.5; over `max_classes` classes, the best and worst halves are drawn. The mean curve in black."""
    import numpy as np

    plt = _pyplot()
    precision = np.asarray(precision, dtype=float)  # [R, K]; -1 where a class has no ground truth
    valid = [k for k in range(precision.shape[1]) if (precision[:, k] > -1).any()]
    order = sorted(valid, key=lambda k: -ap50[k])
    if len(order) > max_classes:
        order = order[: max_classes // 2] + order[-(max_classes - max_classes // 2):]
    outside = len(order) > 8  # a long legend beside the axes, where it hides no curve
    fig, ax = plt.subplots(figsize=(8.6 if outside else 6.4, 5.2))
    for k in order:
        ax.plot(recall, np.clip(precision[:, k], 0, 1), linewidth=1, label=f"{names[k]} {ap50[k]:.3f}")
    if valid:
        mean = np.clip(precision[:, valid], 0, 1).mean(1)
        ax.plot(recall, mean, color="black", linewidth=2.5,
                label=f"all classes {float(np.mean([ap50[k] for k in valid])):.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall at IoU 0.5 (legend: AP@0.5)", fontsize=10)
    ax.grid(True, alpha=0.3)
    if outside:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    else:
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig
