"""docs/getting-started.md's "Fine-tune on your own photos" runs exactly as written, from an empty folder: each
`<!-- journey: NAME -->` block's commands through the real CLI, on generated photo-like data in the layout the
block's first comment names (awkward sizes, a 16-bit PNG, a phone-rotated JPEG, non-contiguous COCO category ids,
an image without objects). The pretrained weights come from $TOOLKIT_WEIGHTS_DIR (no network here; the download
itself is tests/test_weights_download.py's)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

DOC = Path(__file__).resolve().parents[1] / "docs" / "getting-started.md"
JOURNEY = re.compile(r"<!-- journey: (\w+) -->\n```bash\n(.*?)```", re.S)
SIZES = [(200, 150), (161, 243), (320, 240), (97, 130), (256, 256)]


def journeys() -> dict[str, list[str]]:
    return {name: [line for line in block.splitlines() if line.strip() and not line.startswith("#")]
            for name, block in JOURNEY.findall(DOC.read_text())}


def photo(rng: np.random.Generator, width: int, height: int, tint: tuple[float, float, float]) -> np.ndarray:
    """A photo-like image: a smooth tinted gradient with fine texture (what resizing filters disagree on)."""
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = 80 + 90 * np.sin(3 * x + 2 * y)[..., None] * np.asarray(tint)
    texture = rng.normal(0, 25, (height, width, 3)) + 30 * np.sin(40 * x)[..., None]
    return np.clip(base + texture, 0, 255).astype(np.uint8)


def save_rotated_jpeg(pixels: np.ndarray, path: Path) -> None:
    """As a phone stores a portrait photo: the pixels sideways, EXIF Orientation 6 saying how to turn them."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(pixels, 1))).save(path, exif=exif, quality=92)


def save_16bit_png(pixels: np.ndarray, path: Path) -> None:
    Image.fromarray(pixels[..., 1].astype(np.uint16) * 257).save(path)  # 16-bit grey, as scanners write


def write_class_folders(root: Path) -> None:
    rng = np.random.default_rng(0)
    tints = {"beach": (1.0, 0.8, 0.3), "forest": (0.2, 1.0, 0.3), "sky": (0.3, 0.5, 1.0)}
    for split, count in (("train", 9), ("val", 5)):
        for c, (name, tint) in enumerate(tints.items()):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count - (c == 2)):  # class sizes differ, no split is a multiple of the batch
                width, height = SIZES[i % len(SIZES)]
                pixels = photo(rng, width, height, tint)
                if i == 1:
                    save_rotated_jpeg(pixels, folder / f"{i:03d}.jpg")
                elif i == 2 and name != "forest":
                    save_16bit_png(pixels, folder / f"{i:03d}.png")
                else:
                    Image.fromarray(pixels).save(folder / f"{i:03d}.jpg", quality=90)


def write_coco(root: Path) -> None:
    """COCO instances files with categories 3, 7, 12 (not 1..3) and one training image without objects."""
    rng = np.random.default_rng(1)
    categories = [{"id": 3, "name": "cup"}, {"id": 7, "name": "phone"}, {"id": 12, "name": "key"}]
    colours = {3: (230, 40, 40), 7: (40, 40, 230), 12: (240, 220, 40)}
    (root / "images").mkdir(parents=True)
    for split, count in (("train", 11), ("val", 5)):
        images, annotations = [], []
        for i in range(count):
            width, height = SIZES[i % len(SIZES)]
            pixels = photo(rng, width, height, (0.6, 0.6, 0.6))
            name = f"{split}_{i:03d}.jpg"
            image_id = len(images) + 1
            for k in range(0 if (split == "train" and i == 0) else 1 + i % 2):
                cat = categories[(i + k) % 3]["id"]
                w, h = int(rng.integers(width // 4, width // 2)), int(rng.integers(height // 4, height // 2))
                x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
                pixels[y:y + h, x:x + w] = colours[cat]
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": cat,
                                    "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0})
            Image.fromarray(pixels).save(root / "images" / name, quality=90)
            images.append({"id": image_id, "file_name": name, "width": width, "height": height})
        (root / f"{split}.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                        "categories": categories}))


@pytest.fixture
def weights_dir(tmp_path) -> Path:
    """timm's MobileNet V1 weights file, as `backbone.pretrained=timm` finds it in $TOOLKIT_WEIGHTS_DIR (random
    values: the test checks the journey, not ImageNet features)."""
    import timm
    import torch
    from safetensors.torch import save_file

    from toolkit.backbones.mobilenet_v1 import TIMM_MOBILENETV1_100

    torch.manual_seed(0)
    folder = tmp_path / "weights"
    folder.mkdir()
    state = timm.create_model("mobilenetv1_100", pretrained=False).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / TIMM_MOBILENETV1_100.flat_file_name()))
    return folder


def run_journey(name: str, cwd: Path, weights_dir: Path) -> list[subprocess.CompletedProcess]:
    env = {**os.environ, "TOOLKIT_WEIGHTS_DIR": str(weights_dir), "PYTHONUNBUFFERED": "1"}
    done = []
    for command in journeys()[name]:
        args = shlex.split(command)
        assert args[0] == "python", command
        proc = subprocess.run([sys.executable, *args[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, command
        done.append(proc)
    return done


def test_the_doc_has_both_journeys():
    assert set(journeys()) == {"folder", "coco"}
    for commands in journeys().values():
        assert len(commands) == 4 and commands[-1].startswith("python -m toolkit.deploy ")


@pytest.mark.slow
def test_class_folder_journey(tmp_path, weights_dir):
    work = tmp_path / "work"
    write_class_folders(work / "my_photos")
    run_journey("folder", work, weights_dir)
    runs = work / "runs"
    trained = json.loads((runs / "photos" / "train_metrics.json").read_text())
    metrics = json.loads((runs / "photos_eval" / "metrics.json").read_text())
    assert metrics[trained["monitor"]] == pytest.approx(trained["best_score"], abs=1e-6)  # fp32 both times
    report = json.loads((runs / "photos_export" / "export.json").read_text())
    assert report["calibration"].startswith("ClassFolderDataModule")  # real photos, from the checkpoint's data
    assert set(report["formats"]) == {"onnx", "onnx_int8"}
    assert report["formats"]["onnx"]["agreement"]["top1_agreement"] == 1.0
    predictions = json.loads((runs / "photos_predictions" / "predictions.json").read_text())
    assert len(predictions) == 14  # every validation photo, the 16-bit and rotated ones included


@pytest.mark.slow
def test_coco_journey(tmp_path, weights_dir):
    work = tmp_path / "work"
    write_coco(work / "my_coco")
    run_journey("coco", work, weights_dir)
    runs = work / "runs"
    trained = json.loads((runs / "coco" / "train_metrics.json").read_text())
    metrics = json.loads((runs / "coco_eval" / "metrics.json").read_text())
    assert metrics[trained["monitor"]] == pytest.approx(trained["best_score"], abs=1e-6)
    report = json.loads((runs / "coco_export" / "export.json").read_text())
    assert report["calibration"].startswith("CocoDetectionDataModule")
    predictions = json.loads((runs / "coco_predictions" / "predictions.json").read_text())
    assert len(predictions) == 16
    labels = {box["label"] for record in predictions for box in record.get("boxes", [])}
    assert labels <= {"cup", "phone", "key"}
