"""Images as a phone or a scanner gives them: 16-bit PNG/TIFF scaled to 8 bits, EXIF orientation applied, the
same upright pixels from load_rgb, the torchvision fast path, the training datasets and toolkit.deploy."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from PIL import Image

from toolkit.data.coco import CocoDetectionDataset
from toolkit.data.decode import read_rgb
from toolkit.data.detection_transforms import detection_transforms
from toolkit.data.folder import ImageListDataset
from toolkit.data.images import EXIF_ORIENTATION, load_rgb
from toolkit.deploy.preprocess import preprocess
from toolkit.errors import DataError

MID_GREY_16 = 128 * 257  # 32896: mid-grey in 16 bits, 128 in 8


def identity(image):
    return {"image": image}


def sixteen_bit_files(folder):
    """Mid-grey 16-bit files of every kind a scanner or a raw converter writes."""
    gray = np.full((12, 20), MID_GREY_16, np.uint16)
    files = {}
    Image.fromarray(gray).save(files.setdefault("gray.png", folder / "gray.png"))  # PIL mode I;16
    Image.fromarray(gray).save(files.setdefault("gray.tif", folder / "gray.tif"))
    Image.fromarray(gray.astype(np.int32)).save(files.setdefault("gray32.tif", folder / "gray32.tif"))  # mode I
    colour = np.dstack([gray, gray // 2, gray])  # BGR for OpenCV: 128, 64, 128
    cv2.imwrite(str(files.setdefault("rgb.png", folder / "rgb.png")), colour)
    cv2.imwrite(str(files.setdefault("rgb.tif", folder / "rgb.tif")), colour)
    return files


def test_sixteen_bit_images_are_scaled_not_saturated(tmp_path):
    files = sixteen_bit_files(tmp_path)
    modes = {name: Image.open(path).mode for name, path in files.items()}
    assert modes["gray.png"].startswith("I;16") and modes["gray32.tif"] == "I"  # what PIL would saturate
    for name, path in files.items():
        rgb = load_rgb(path)
        assert rgb.shape == (12, 20, 3) and rgb.dtype == np.uint8, name
        expected = (128, 64, 128) if name.startswith("rgb") else (128, 128, 128)
        assert np.abs(rgb.astype(int) - expected).max() <= 1, (name, rgb[0, 0])
        np.testing.assert_array_equal(read_rgb(path), rgb)  # the training loaders' reader gives the same
    white = np.full((4, 4), 65535, np.uint16)
    Image.fromarray(white).save(tmp_path / "white.png")
    assert load_rgb(tmp_path / "white.png").min() == 255


def oriented_jpeg(path, orientation: int, size=(48, 32)) -> np.ndarray:
    """A JPEG whose stored pixels are `size` with an EXIF Orientation tag; returns the stored pixels as decoded."""
    rng = np.random.default_rng(orientation)
    field = Image.fromarray(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    field.save(path, quality=95, exif=exif)
    with Image.open(path) as stored:
        return np.asarray(stored.convert("RGB"))  # PIL's convert ignores the tag: the pixels as stored


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_by_both_decoders(tmp_path, orientation):
    path = tmp_path / f"o{orientation}.jpg"
    stored = oriented_jpeg(path, orientation)
    upright, fast = load_rgb(path), read_rgb(path)
    turned = orientation >= 5  # 5-8 swap width and height
    assert upright.shape == fast.shape == ((48, 32, 3) if turned else (32, 48, 3))
    # both decoders are libjpeg-turbo: colour conversion rounding may differ by a level or two
    assert np.abs(fast.astype(int) - upright.astype(int)).mean() < 1.0
    if orientation == 6:  # "rotate 90 CW to display"
        np.testing.assert_array_equal(upright, np.rot90(stored, k=-1))
    if orientation == 1:
        np.testing.assert_array_equal(upright, stored)


def test_orientation_with_jpeg_draft_reduction(tmp_path):
    path = tmp_path / "big.jpg"
    oriented_jpeg(path, 6, size=(400, 200))
    reduced = load_rgb(path, min_side=50)  # libjpeg decodes at 1/4 (100x50 stored), then turns it
    assert reduced.shape == (100, 50, 3)
    np.testing.assert_array_equal(read_rgb(path, min_side=50), reduced)
    assert min(load_rgb(path, min_side=40).shape[:2]) >= 40  # the bound holds after the turn


def test_training_dataset_and_deploy_see_the_same_upright_pixels(tmp_path):
    path = tmp_path / "phone.jpg"
    oriented_jpeg(path, 6)
    files = sixteen_bit_files(tmp_path)
    item = ImageListDataset([(path, 0), (files["gray.png"], 1)], identity)
    assert item[0]["image"].shape == (48, 32, 3) and abs(int(item[1]["image"].mean()) - 128) <= 1
    metadata = {"resize": {"mode": "shorter_side", "max_size": 1000}, "resolution": 32, "mean": [0.0] * 3,
                "std": [1.0] * 3}  # the shorter side is already 32: no resize, pixels / 255
    array, size = preprocess(path, metadata)
    assert size == (48, 32) and array.shape == (3, 48, 32)
    np.testing.assert_allclose(array.transpose(1, 2, 0) * 255, load_rgb(path), atol=1e-3)
    grey, _ = preprocess(files["gray.tif"], {**metadata, "resolution": 12})
    assert abs(float(grey.mean()) * 255 - 128) <= 1


def coco_file(tmp_path, width: int, height: int):
    (tmp_path / "images").mkdir(exist_ok=True)
    oriented_jpeg(tmp_path / "images" / "phone.jpg", 6)  # stored 48x32, displayed 32x48
    content = {"images": [{"id": 1, "file_name": "phone.jpg", "width": width, "height": height}],
               "annotations": [{"id": 1, "image_id": 1, "category_id": 7, "bbox": [2, 30, 20, 15], "area": 300,
                                "iscrowd": 0}],
               "categories": [{"id": 7, "name": "cup"}]}
    ann = tmp_path / f"instances_{width}x{height}.json"
    ann.write_text(json.dumps(content))
    _, evaluate = detection_transforms("ssd", 64, (0.5,) * 3, (0.5,) * 3)
    return CocoDetectionDataset(ann, tmp_path / "images", evaluate)


def test_coco_boxes_are_in_the_upright_frame_and_a_stored_frame_json_is_refused(tmp_path):
    sample = coco_file(tmp_path, 32, 48)[0]  # annotated on the photo as displayed
    assert sample["target"]["orig_size"] == (48, 32) and len(sample["target"]["boxes"]) == 1
    with pytest.raises(DataError, match=r"image id 1 .*phone.jpg.* is 32x48 as displayed .*width=48, height=32"):
        coco_file(tmp_path, 48, 32)[0]  # annotated on the pixels as stored
