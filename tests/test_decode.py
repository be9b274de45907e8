"""data/decode.py: torchvision decodes JPEGs like PIL does; bombs, non-JPEGs and broken files go to load_rgb."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import toolkit.data.decode as decode
from toolkit.data.decode import read_rgb
from toolkit.data.folder import ImageListDataset
from toolkit.data.images import load_rgb
from toolkit.data.transforms import classification_train_transform
from toolkit.errors import DataError


def photo(path, size=(120, 90), mode="RGB"):
    rng = np.random.default_rng(0)
    field = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    field.convert(mode).save(path)
    return path


def test_jpeg_matches_pil(tmp_path):
    for mode in ("RGB", "L", "CMYK"):
        path = photo(tmp_path / f"{mode}.jpg", mode=mode)
        fast, reference = read_rgb(path), load_rgb(path)
        assert fast.shape == reference.shape == (90, 120, 3) and fast.dtype == np.uint8 and fast.flags.c_contiguous
        # both are libjpeg-turbo; colour conversion rounding may differ by a level or two
        assert np.abs(fast.astype(int) - reference.astype(int)).mean() < 1.0, mode


def test_non_jpeg_and_pil_decoder_are_load_rgb(tmp_path, monkeypatch):
    png = photo(tmp_path / "a.png")
    jpg = photo(tmp_path / "b.jpg")
    monkeypatch.setattr(decode, "decode_jpeg", lambda *a, **k: pytest.fail("torchvision must not decode this"))
    np.testing.assert_array_equal(read_rgb(png), load_rgb(png))
    np.testing.assert_array_equal(read_rgb(jpg, decoder="pil"), load_rgb(jpg))
    with pytest.raises(ValueError, match="decoder"):
        read_rgb(jpg, decoder="nvjpeg")


def test_bomb_header_is_never_decoded_by_torchvision(tmp_path, monkeypatch):
    path = photo(tmp_path / "big.jpg", size=(200, 200))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40,000 declared pixels: over twice the limit
    monkeypatch.setattr(decode, "decode_jpeg", lambda *a, **k: pytest.fail("decoded a bomb"))
    with pytest.raises((DataError, Image.DecompressionBombError)):
        read_rgb(path)


def test_broken_jpeg_names_the_file(tmp_path):
    good = photo(tmp_path / "good.jpg").read_bytes()
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(good[:20] + b"\x00" * 50)  # a JPEG header, then garbage
    with pytest.raises(DataError, match="broken.jpg"):
        read_rgb(broken)
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(DataError, match="text.jpg"):
        read_rgb(tmp_path / "text.jpg")


def test_training_dataset_reads_through_it(tmp_path, monkeypatch):
    path = photo(tmp_path / "x.jpg")
    calls = []
    original = decode.decode_jpeg
    monkeypatch.setattr(decode, "decode_jpeg", lambda *a, **k: calls.append(1) or original(*a, **k))
    item = ImageListDataset([(path, 3)], classification_train_transform(32, (0.5,) * 3, (0.5,) * 3))[0]
    assert calls and item["label"] == 3 and tuple(item["image"].shape) == (3, 32, 32)
