"""Generated cartoon faces in the real on-disk formats: a miniature CelebA tree and an LFW-style identity tree.

Every CelebA attribute is drawn (hair colour and texture, glasses, beard, smile, makeup, hat, ...)
or follows from drawn ones (No_Beard, Attractive), so all 40 are learnable; identities fix skin
tone, hair, face shape, eye colour and features, while pose, expression, background and lighting
vary per image. Tests, demos and benchmarks run on these without a download.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from toolkit.data.celeba import CELEBA_ATTRIBUTES, CelebADataModule
from toolkit.data.faces import FacesFolderDataModule, lfw_image, make_pairs, write_lfw_pairs
from toolkit.data.generated import ensure_generated

log = logging.getLogger(__name__)

HAIR_COLOURS = {"Black_Hair": (35, 28, 24), "Blond_Hair": (228, 196, 120), "Brown_Hair": (115, 70, 35),
                "Gray_Hair": (175, 175, 178), "other": (165, 70, 35)}
EYE_COLOURS = ((90, 60, 30), (60, 110, 170), (70, 130, 80), (110, 110, 120))
_SS = 2  # supersampling factor: draw large, downsample, for smooth edges


def sample_attributes(rng: np.random.Generator) -> dict[str, bool]:
    """One face's 40 CelebA attributes, with prevalences and correlations roughly like CelebA's."""
    r = rng.random
    a = dict.fromkeys(CELEBA_ATTRIBUTES, False)
    male, young = r() < 0.42, r() < 0.78
    a["Male"], a["Young"] = male, young
    a["Bald"] = male and r() < 0.06
    if not a["Bald"]:
        colours = ["Black_Hair", "Blond_Hair", "Brown_Hair", "other"] + ([] if young else ["Gray_Hair", "Gray_Hair"])
        weights = np.array([0.26, 0.08 if male else 0.22, 0.24, 0.18] + ([] if young else [0.3, 0.3]))
        colour = colours[rng.choice(len(colours), p=weights / weights.sum())]
        if colour != "other":
            a[colour] = True
        texture = r()
        a["Straight_Hair"], a["Wavy_Hair"] = texture < 0.22, 0.22 <= texture < (0.45 if male else 0.72)
        a["Bangs"] = r() < 0.16
        a["Receding_Hairline"] = r() < (0.16 if male and not young else 0.05)
    a["Eyeglasses"], a["Wearing_Hat"], a["Blurry"] = r() < 0.07, r() < 0.05, r() < 0.05
    if male:
        a["5_o_Clock_Shadow"], a["Goatee"], a["Mustache"], a["Sideburns"] = r() < 0.25, r() < 0.15, r() < 0.1, r() < 0.13
        a["Wearing_Necktie"] = r() < 0.17
    else:
        a["Heavy_Makeup"], a["Wearing_Lipstick"], a["Wearing_Earrings"] = r() < 0.65, r() < 0.8, r() < 0.33
    a["Arched_Eyebrows"] = r() < (0.1 if male else 0.45)
    a["Bushy_Eyebrows"] = r() < (0.25 if male else 0.06)
    a["Wearing_Necklace"] = r() < (0.03 if male else 0.2)
    a["Big_Lips"], a["Big_Nose"] = r() < 0.24, r() < (0.35 if male else 0.12)
    a["Pointy_Nose"], a["Narrow_Eyes"] = r() < 0.28, r() < 0.11
    a["Bags_Under_Eyes"] = r() < (0.12 if young else 0.45)
    a["Chubby"], a["Double_Chin"] = r() < 0.07, r() < (0.02 if young else 0.18)
    a["Oval_Face"] = not a["Chubby"] and r() < 0.3
    a["Pale_Skin"], a["Rosy_Cheeks"] = r() < 0.05, r() < (0.02 if male else 0.12)
    a["Smiling"] = r() < 0.48
    a["Mouth_Slightly_Open"] = r() < (0.7 if a["Smiling"] else 0.25)
    a["High_Cheekbones"] = r() < (0.75 if a["Smiling"] else 0.12)
    a["No_Beard"] = not (a["Goatee"] or a["5_o_Clock_Shadow"])
    a["Attractive"] = young and not (a["Bags_Under_Eyes"] or a["Double_Chin"] or a["Chubby"] or a["Blurry"]) and r() < 0.85
    return a


def sample_look(rng: np.random.Generator, a: dict[str, bool]) -> dict:
    """Continuous appearance that attributes leave free: skin tone, hair shade, face proportions, eye colour."""
    if a["Pale_Skin"]:
        skin = np.array([246, 228, 218]) + rng.normal(0, 4, 3)
    else:
        t = rng.uniform(0.1, 1.0)
        skin = (1 - t) * np.array([232, 190, 150]) + t * np.array([120, 78, 50]) + rng.normal(0, 6, 3)
    hair_key = next((k for k in HAIR_COLOURS if a.get(k)), "other")
    return {
        "skin": skin, "hair": np.array(HAIR_COLOURS[hair_key]) + rng.normal(0, 12, 3),
        "eye": np.array(EYE_COLOURS[rng.integers(len(EYE_COLOURS))]),
        "rx": rng.uniform(0.23, 0.27) + (0.045 if a["Chubby"] else 0) - (0.02 if a["Oval_Face"] else 0),
        "ry": rng.uniform(0.27, 0.30) + (0.04 if a["Oval_Face"] else 0),
        "eye_gap": rng.uniform(0.085, 0.115), "mouth_w": rng.uniform(0.08, 0.12),
        "tie": np.array([(170, 30, 40), (30, 50, 150), (40, 110, 60)][rng.integers(3)]),
        "hat": rng.integers(20, 236, 3),
    }


def _rgb(c) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.asarray(c), 0, 255))


def render_face(a: dict[str, bool], look: dict, width: int, height: int, rng: np.random.Generator, jitter: float = 0.02) -> Image.Image:
    """Draw one face: attributes decide what is drawn, `look` the shapes and colours, `rng` pose and lighting."""
    W, H = width * _SS, height * _SS
    base = rng.integers(30, 226, 3)
    noise = rng.normal(0, 8, size=(H // 8 + 1, W // 8 + 1, 3))
    bg = np.clip(base + np.kron(noise, np.ones((8, 8, 1)))[:H, :W], 0, 255).astype(np.uint8)
    img = Image.fromarray(bg)
    d = ImageDraw.Draw(img)
    s = 1 + rng.uniform(-jitter, jitter) * 2
    cx, cy = 0.5 + rng.uniform(-jitter, jitter), 0.5 + rng.uniform(-jitter, jitter)

    def P(x, y):  # face-relative unit coordinates -> pixels
        return (cx + (x - 0.5) * s) * W, (cy + (y - 0.5) * s) * H

    def box(x0, y0, x1, y1):
        (a0, b0), (a1, b1) = P(x0, y0), P(x1, y1)
        return [min(a0, a1), min(b0, b1), max(a0, a1), max(b0, b1)]

    def lw(v):
        return max(1, int(v * W * s))

    skin, hair, rx, ry = look["skin"], look["hair"], look["rx"], look["ry"]
    dark_skin, fy = skin * 0.78, 0.48  # face centre height
    clothes = rng.integers(20, 236, 3)
    d.ellipse(box(0.05, 0.88, 0.95, 1.35), fill=_rgb(clothes))
    d.rectangle(box(0.43, 0.7, 0.57, 0.92), fill=_rgb(skin * 0.92))
    if a["Wearing_Necktie"]:
        d.polygon([P(0.47, 0.89), P(0.53, 0.89), P(0.55, 1.02), P(0.5, 1.06), P(0.45, 1.02)], fill=_rgb(look["tie"]))
    if a["Wearing_Necklace"]:
        for k in range(9):
            t = math.pi * (0.15 + 0.7 * k / 8)
            x, y = 0.5 + 0.09 * math.cos(t), 0.86 + 0.05 * math.sin(t)
            d.ellipse(box(x - 0.012, y - 0.01, x + 0.012, y + 0.01), fill=(235, 200, 70))
    if not a["Bald"]:  # hair behind the head
        d.ellipse(box(0.5 - rx - 0.035, fy - ry - 0.05, 0.5 + rx + 0.035, fy + ry * 0.55), fill=_rgb(hair))
    for side in (-1, 1):  # ears, earrings
        ex = 0.5 + side * (rx + 0.005)
        d.ellipse(box(ex - 0.03, fy - 0.05, ex + 0.03, fy + 0.05), fill=_rgb(skin * 0.95))
        if a["Wearing_Earrings"]:
            d.ellipse(box(ex - 0.017, fy + 0.045, ex + 0.017, fy + 0.075), fill=(240, 205, 60))
    face = box(0.5 - rx, fy - ry, 0.5 + rx, fy + ry)
    if a["Male"]:
        d.rounded_rectangle(face, radius=int(0.45 * rx * W * s), fill=_rgb(skin))
    else:
        d.ellipse(face, fill=_rgb(skin))
    if a["Double_Chin"]:
        d.arc(box(0.5 - rx * 0.55, fy + ry - 0.07, 0.5 + rx * 0.55, fy + ry + 0.035), 10, 170, fill=_rgb(dark_skin), width=lw(0.008))
    if a["5_o_Clock_Shadow"]:
        shade = Image.new("RGBA", img.size, (0, 0, 0, 0))
        ImageDraw.Draw(shade).chord(box(0.5 - rx * 0.95, fy - ry * 0.2, 0.5 + rx * 0.95, fy + ry), 0, 180, fill=(60, 60, 70, 95))
        img.paste(shade, (0, 0), shade)
        d = ImageDraw.Draw(img)
    if not a["Bald"]:  # hair on top, hairline, bangs, texture
        hairline = fy - ry * (0.78 if a["Receding_Hairline"] else 0.5)
        top = fy - ry - 0.04
        d.chord(box(0.5 - rx - 0.03, top, 0.5 + rx + 0.03, 2 * hairline - top), 180, 360, fill=_rgb(hair))
        if a["Bangs"]:
            d.rectangle(box(0.5 - rx * 0.75, hairline - 0.02, 0.5 + rx * 0.75, fy - 0.115), fill=_rgb(hair))
        line = _rgb(hair * 0.6 if hair.mean() > 80 else hair + 60)
        for k in range(7):
            x = 0.5 - rx + 0.02 + k * (2 * rx - 0.04) / 6
            if a["Straight_Hair"]:
                d.line([P(x, top + 0.03), P(x, hairline - 0.005)], fill=line, width=lw(0.006))
            elif a["Wavy_Hair"]:
                ys = np.linspace(top + 0.03, hairline - 0.005, 8)
                d.line([P(x + 0.012 * math.sin(i * 1.8), y) for i, y in enumerate(ys)], fill=line, width=lw(0.006))
    if not a["Young"]:  # wrinkles
        for k in range(2):
            y = fy - ry * 0.38 + k * 0.025
            d.arc(box(0.5 - rx * 0.5, y, 0.5 + rx * 0.5, y + 0.03), 200, 340, fill=_rgb(dark_skin), width=lw(0.005))
        for side in (-1, 1):
            d.line([P(0.5 + side * 0.05, fy + 0.07), P(0.5 + side * 0.08, fy + 0.15)], fill=_rgb(dark_skin), width=lw(0.005))
    brow = _rgb(hair * 0.7) if not a["Bald"] else (60, 50, 45)
    eye_h = 0.011 if a["Narrow_Eyes"] else 0.024
    for side in (-1, 1):
        ex, ey = 0.5 + side * look["eye_gap"], fy - 0.035
        bw = lw(0.024 if a["Bushy_Eyebrows"] else 0.01)
        if a["Arched_Eyebrows"]:
            d.arc(box(ex - 0.05, ey - 0.09, ex + 0.05, ey - 0.01), 200, 340, fill=brow, width=bw)
        else:
            d.line([P(ex - 0.05, ey - 0.055), P(ex + 0.05, ey - 0.055)], fill=brow, width=bw)
        if a["Heavy_Makeup"]:
            d.ellipse(box(ex - 0.045, ey - 0.035, ex + 0.045, ey + 0.005), fill=(120, 70, 150))
        if a["Bags_Under_Eyes"]:
            d.arc(box(ex - 0.04, ey - 0.01, ex + 0.04, ey + 0.045), 20, 160, fill=_rgb(skin * 0.6), width=lw(0.008))
        d.ellipse(box(ex - 0.038, ey - eye_h, ex + 0.038, ey + eye_h), fill=(245, 245, 245))
        d.ellipse(box(ex - 0.015, ey - min(eye_h, 0.015), ex + 0.015, ey + min(eye_h, 0.015)), fill=_rgb(look["eye"]))
        d.ellipse(box(ex - 0.006, ey - 0.006, ex + 0.006, ey + 0.006), fill=(10, 10, 10))
        if a["Eyeglasses"]:
            d.ellipse(box(ex - 0.06, ey - 0.05, ex + 0.06, ey + 0.05), outline=(20, 20, 25), width=lw(0.009))
            d.line([P(ex + side * 0.06, ey), P(0.5 + side * (rx + 0.01), ey - 0.01)], fill=(20, 20, 25), width=lw(0.007))
    if a["Eyeglasses"]:
        gap = look["eye_gap"] - 0.06
        d.line([P(0.5 - gap, fy - 0.035), P(0.5 + gap, fy - 0.035)], fill=(20, 20, 25), width=lw(0.008))
    if a["Sideburns"]:
        for side in (-1, 1):
            x = 0.5 + side * (rx - 0.025)
            d.rectangle(box(x - 0.02, fy - 0.08, x + 0.02, fy + 0.07), fill=(45, 35, 30))
    nose_len, nose_w = (0.11, 0.045) if a["Big_Nose"] else (0.08, 0.03)
    if a["Pointy_Nose"]:
        d.polygon([P(0.5, fy - 0.01), P(0.5 + nose_w, fy + nose_len), P(0.5 - nose_w, fy + nose_len)], fill=_rgb(dark_skin))
    else:
        d.line([P(0.5, fy), P(0.5, fy + nose_len - 0.02)], fill=_rgb(dark_skin), width=lw(0.008))
        d.ellipse(box(0.5 - nose_w, fy + nose_len - 0.03, 0.5 + nose_w, fy + nose_len + 0.005), fill=_rgb(dark_skin))
    for side in (-1, 1):
        if a["Rosy_Cheeks"]:
            d.ellipse(box(0.5 + side * 0.15 - 0.04, fy + 0.03, 0.5 + side * 0.15 + 0.04, fy + 0.09), fill=(225, 120, 130))
        if a["High_Cheekbones"]:
            d.arc(box(0.5 + side * 0.13 - 0.05, fy - 0.01, 0.5 + side * 0.13 + 0.05, fy + 0.06), 180, 360,
                  fill=_rgb(np.minimum(skin * 1.25, 255)), width=lw(0.009))
    mw, my = look["mouth_w"], fy + 0.15
    lips = (200, 25, 55) if a["Wearing_Lipstick"] else _rgb(skin * np.array([0.85, 0.6, 0.6]))
    lip_h = 0.03 if a["Big_Lips"] else 0.017
    if a["Mustache"]:
        d.polygon([P(0.5 - mw * 0.9, my - 0.012), P(0.5, my - 0.04), P(0.5 + mw * 0.9, my - 0.012), P(0.5, my - 0.022)],
                  fill=(40, 30, 25))
    if a["Smiling"]:
        d.chord(box(0.5 - mw, my - 0.04, 0.5 + mw, my + 0.03 + lip_h), 0, 180, fill=lips)
        inner = (40, 15, 20) if a["Mouth_Slightly_Open"] else (250, 250, 250)
        d.chord(box(0.5 - mw * 0.75, my - 0.03, 0.5 + mw * 0.75, my + 0.025), 0, 180, fill=inner)
    else:
        d.ellipse(box(0.5 - mw, my - lip_h, 0.5 + mw, my + lip_h), fill=lips)
        if a["Mouth_Slightly_Open"]:
            d.ellipse(box(0.5 - mw * 0.6, my - lip_h * 0.45, 0.5 + mw * 0.6, my + lip_h * 0.45), fill=(40, 15, 20))
    if a["Goatee"]:
        d.ellipse(box(0.5 - 0.04, fy + ry - 0.065, 0.5 + 0.04, fy + ry + 0.005), fill=(40, 30, 25))
    if a["Wearing_Hat"]:
        brim = fy - ry * 0.55
        d.rectangle(box(0.5 - rx - 0.07, brim - 0.025, 0.5 + rx + 0.07, brim), fill=_rgb(look["hat"]))
        d.rounded_rectangle(box(0.5 - rx * 0.85, fy - ry - 0.09, 0.5 + rx * 0.85, brim - 0.02), radius=lw(0.03),
                            fill=_rgb(look["hat"] * 0.85))
    img = img.resize((width, height), Image.LANCZOS)
    light = rng.uniform(0.85, 1.15)
    img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) * light, 0, 255).astype(np.uint8))
    if a["Blurry"]:
        img = img.filter(ImageFilter.GaussianBlur(radius=max(1.5, width / 60)))
    return img


def generate_celeba_tree(root: Path, n_train: int, n_val: int, n_test: int, width: int = 178, height: int = 218,
                         seed: int = 0) -> Path:
    """Write `img_align_celeba/`, `list_attr_celeba.txt`, `list_eval_partition.txt` exactly as CelebA lays them out."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "img_align_celeba").mkdir(parents=True, exist_ok=True)
    total = n_train + n_val + n_test
    rows, parts = [], []
    for i in range(total):
        name = f"{i + 1:06d}.jpg"
        attrs = sample_attributes(rng)
        render_face(attrs, sample_look(rng, attrs), width, height, rng).save(root / "img_align_celeba" / name, quality=92)
        rows.append(name + " " + " ".join(f"{1 if attrs[k] else -1:2d}" for k in CELEBA_ATTRIBUTES))
        parts.append(f"{name} {0 if i < n_train else 1 if i < n_train + n_val else 2}")
    (root / "list_attr_celeba.txt").write_text(f"{total}\n" + " ".join(CELEBA_ATTRIBUTES) + " \n" + "\n".join(rows) + "\n")
    (root / "list_eval_partition.txt").write_text("\n".join(parts) + "\n")
    return root


IDENTITY_FIXED = ("Male", "Young", "Bald", "Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair", "Straight_Hair",
                  "Wavy_Hair", "Bangs", "Receding_Hairline", "Eyeglasses", "5_o_Clock_Shadow", "Goatee", "Mustache",
                  "Sideburns", "Heavy_Makeup", "Wearing_Lipstick", "Wearing_Earrings", "Arched_Eyebrows",
                  "Bushy_Eyebrows", "Big_Lips", "Big_Nose", "Pointy_Nose", "Narrow_Eyes", "Bags_Under_Eyes", "Chubby",
                  "Double_Chin", "Oval_Face", "Pale_Skin", "Rosy_Cheeks")


def generate_identity_tree(root: Path, n_train_ids: int, n_test_ids: int, images_per_id: int, folds: int = 10,
                           pairs_per_fold: int = 300, width: int = 125, height: int = 125, seed: int = 0) -> Path:
    """Write `train/<Name>/<Name>_0001.jpg` (distillation), `lfw/<Name>/...` (held-out people) and an LFW `pairs.txt`.

    Identity fixes the features in IDENTITY_FIXED and the continuous look; each image re-draws
    expression, hat, blur, pose, background and lighting, and nudges the colours.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    test_ids: dict[str, list[str]] = {}
    for split, count, offset in (("train", n_train_ids, 0), ("lfw", n_test_ids, n_train_ids)):
        for k in range(count):
            name = f"Person_{offset + k + 1:04d}"
            (root / split / name).mkdir(parents=True, exist_ok=True)
            identity = sample_attributes(rng)
            look = sample_look(rng, identity)
            for n in range(1, images_per_id + 1):
                varied = sample_attributes(rng)
                attrs = {key: identity[key] if key in IDENTITY_FIXED else varied[key] for key in identity}
                attrs["No_Beard"] = not (attrs["Goatee"] or attrs["5_o_Clock_Shadow"])
                nudged = {**look, "skin": look["skin"] + rng.normal(0, 4, 3), "hair": look["hair"] + rng.normal(0, 5, 3)}
                render_face(attrs, nudged, width, height, rng, jitter=0.04).save(root / split / lfw_image(name, n), quality=92)
            if split == "lfw":
                test_ids[name] = [lfw_image(name, n) for n in range(1, images_per_id + 1)]
    pairs, per_fold = make_pairs(test_ids, folds, pairs_per_fold, seed)
    write_lfw_pairs(root / "pairs.txt", pairs, folds, per_fold)
    return root


class CelebASyntheticDataModule(CelebADataModule):
    """`data=celeba_synthetic`: a generated CelebA tree under `cache_dir`, read by the real CelebA loader."""

    def __init__(self, cache_dir: str, n_train: int = 600, n_val: int = 200, n_test: int = 0, width: int = 89,
                 height: int = 109, seed: int = 0, **kwargs):
        self.spec = {"kind": "celeba_synthetic", "n_train": n_train, "n_val": n_val, "n_test": n_test, "width": width,
                     "height": height, "seed": seed}
        root = Path(cache_dir).expanduser() / f"celeba_synthetic_{width}x{height}_{n_train}_{n_val}_{n_test}_seed{seed}"
        super().__init__(root=str(root), **kwargs)

    def prepare_data(self) -> None:
        s = self.spec
        ensure_generated(self.root, s, lambda: generate_celeba_tree(self.root, s["n_train"], s["n_val"], s["n_test"],
                                                                    s["width"], s["height"], s["seed"]))

    def read(self):
        self.prepare_data()  # idempotent; covers callers that skip prepare_data
        return super().read()


class FacesSyntheticDataModule(FacesFolderDataModule):
    """`data=faces_synthetic`: generated identity folders (train), held-out identities and an LFW pairs file."""

    def __init__(self, cache_dir: str, n_identities: int = 40, n_test_identities: int = 20, images_per_identity: int = 6,
                 folds: int = 10, pairs_per_fold: int = 30, width: int = 64, height: int = 64, seed: int = 0, **kwargs):
        self.spec = {"kind": "faces_synthetic", "n_identities": n_identities, "n_test_identities": n_test_identities,
                     "images_per_identity": images_per_identity, "folds": folds, "pairs_per_fold": pairs_per_fold,
                     "width": width, "height": height, "seed": seed}
        self.generated = (Path(cache_dir).expanduser() / f"faces_synthetic_{width}x{height}_{n_identities}_{n_test_identities}"
                          f"x{images_per_identity}_{folds}x{pairs_per_fold}_seed{seed}")
        super().__init__(root=str(self.generated / "train"), pairs=str(self.generated / "pairs.txt"),
                         pairs_root=str(self.generated / "lfw"), folds=folds, **kwargs)

    def prepare_data(self) -> None:
        s = self.spec
        ensure_generated(self.generated, s, lambda: generate_identity_tree(
            self.generated, s["n_identities"], s["n_test_identities"], s["images_per_identity"], s["folds"],
            s["pairs_per_fold"], s["width"], s["height"], s["seed"]))

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        super().setup(stage)

    def _scan(self) -> None:
        self.prepare_data()
        super()._scan()
