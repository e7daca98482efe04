from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from glocal.extract.batch import ExtractionFailure, extract_many
from glocal.io.images import ImageReadError, list_images, load_image, read_image_size
from glocal.methods import create_extractor


def _gradient(w: int, h: int) -> np.ndarray:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    return np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                           np.full((h, w, 1), 128, np.float32)], axis=2).astype(np.uint8)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    arr = _gradient(300, 200)  # landscape, bright right edge
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    p = tmp_path / "rotated.jpg"
    img.save(p, exif=exif.tobytes(), quality=95)
    loaded = load_image(p, max_side=None)
    assert loaded.pixels.shape == (300, 200, 3)  # portrait after EXIF rotation
    assert loaded.original_size == (300, 200)
    assert read_image_size(p) == (300, 200)
    # orientation 6 = rotate 90 clockwise: the original top row (y=0, red channel ramps) becomes the right column
    right_col = loaded.pixels[:, -1, 0].astype(int)
    assert right_col[-1] - right_col[0] > 200


@pytest.mark.parametrize("mode", ["L", "1", "P", "RGBA", "LA", "CMYK", "I;16", "I", "F", "YCbCr"])
def test_any_mode_becomes_rgb(tmp_path: Path, mode: str) -> None:
    base = Image.fromarray(_gradient(64, 48))
    if mode == "I;16":
        arr16 = (np.linspace(0, 65535, 64 * 48).reshape(48, 64)).astype(np.uint16)
        img = Image.fromarray(arr16)
        assert img.mode == "I;16"
        suffix = ".png"
    elif mode in ("I", "F"):
        img = base.convert("L").convert(mode)
        suffix = ".tif"
    else:
        img = base.convert(mode)
        suffix = ".tif" if mode == "CMYK" else ".png"
        if mode in ("CMYK", "YCbCr"):
            suffix = ".jpg" if mode == "YCbCr" else ".tif"
    p = tmp_path / f"img_{mode.replace(';', '_')}{suffix}"
    img.save(p)
    loaded = load_image(p)
    assert loaded.pixels.dtype == np.uint8
    assert loaded.pixels.shape == (48, 64, 3)
    assert loaded.pixels.max() > loaded.pixels.min()  # content survived the conversion
    if mode == "I;16":  # 16-bit range is rescaled, not clipped at 255
        assert loaded.pixels[0, 0, 0] < 10 and loaded.pixels[-1, -1, 0] > 245


def test_transparent_pixels_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 3] = 0
    p = tmp_path / "clear.png"
    Image.fromarray(rgba, "RGBA").save(p)
    assert (load_image(p).pixels == 255).all()


def test_resize_keeps_aspect_and_never_upsamples(tmp_path: Path) -> None:
    p = tmp_path / "big.png"
    Image.fromarray(_gradient(2000, 1000)).save(p)
    im = load_image(p, max_side=1024)
    assert im.pixels.shape[:2] == (512, 1024)
    assert im.scale == pytest.approx(1024 / 2000)
    small = tmp_path / "small.png"
    Image.fromarray(_gradient(100, 50)).save(small)
    assert load_image(small, max_side=1024).pixels.shape[:2] == (50, 100)


def test_box_crop_keeps_full_image_scale(tmp_path: Path) -> None:
    p = tmp_path / "big.png"
    Image.fromarray(_gradient(2000, 1000)).save(p)
    im = load_image(p, max_side=1000, box=(100, 200, 1100, 700))
    assert im.scale == pytest.approx(0.5)
    assert im.pixels.shape[:2] == (250, 500)
    assert im.offset == (100.0, 200.0)
    with pytest.raises(ImageReadError, match="box"):
        load_image(p, box=(3000, 3000, 3100, 3100))


def test_decompression_bomb_refused(tmp_path: Path) -> None:
    p = tmp_path / "bomb.png"
    Image.new("1", (17000, 17000)).save(p)  # 289 M pixels in a small file
    assert p.stat().st_size < 2_000_000
    with pytest.raises(ImageReadError, match="decompression bomb") as info:
        load_image(p)
    assert "bomb.png" in str(info.value)
    q = tmp_path / "small.png"
    Image.fromarray(_gradient(100, 100)).save(q)
    with pytest.raises(ImageReadError, match="over the limit"):
        load_image(q, max_pixels=5000)


def test_pillow_bomb_warning_is_not_a_refusal(tmp_path: Path, monkeypatch) -> None:
    """Between Pillow's warning threshold and its hard limit, ``max_pixels`` decides (no silent lower cap)."""
    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 6000)  # warning above 6,000 pixels, error above 12,000
    q = tmp_path / "medium.png"
    Image.fromarray(_gradient(100, 100)).save(q)  # 10,000 pixels
    assert load_image(q, max_pixels=20_000).pixels.shape == (100, 100, 3)
    with pytest.raises(ImageReadError, match="over the limit"):
        load_image(q, max_pixels=9_000)


@pytest.mark.parametrize("case", ["text", "truncated", "empty", "missing", "directory"])
def test_bad_files_named_in_error(tmp_path: Path, photo_path: Path, case: str) -> None:
    p = tmp_path / f"bad_{case}.jpg"
    if case == "text":
        p.write_text("this is not an image")
    elif case == "truncated":
        data = photo_path.read_bytes()
        p.write_bytes(data[: len(data) // 3])
    elif case == "empty":
        p.write_bytes(b"")
    elif case == "directory":
        p.mkdir()
    with pytest.raises(ImageReadError) as info:
        load_image(p)
    assert str(p) in str(info.value)
    assert info.value.path == str(p)


def test_unicode_path(tmp_path: Path, photo_path: Path) -> None:
    folder = tmp_path / "Ünïcødé 日本"
    folder.mkdir()
    p = folder / "ästronaut éé.jpg"
    p.write_bytes(photo_path.read_bytes())
    assert load_image(p).pixels.shape == (512, 512, 3)
    assert list_images([folder]) == [p]


def test_batch_goes_on_after_bad_files(tmp_path: Path, photo_path: Path) -> None:
    bad = tmp_path / "broken.jpg"
    bad.write_text("nope")
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(photo_path.read_bytes()[:2000])
    paths = [photo_path, bad, trunc, photo_path]
    names = ["a", "broken", "trunc", "b"]
    results = list(extract_many(create_extractor("sift"), paths, names, workers=2))
    assert [type(r).__name__ for r in results] == ["ImageFeatures", "ExtractionFailure", "ExtractionFailure", "ImageFeatures"]
    failures = [r for r in results if isinstance(r, ExtractionFailure)]
    assert failures[0].path == str(bad) and "not an image" in failures[0].reason
    assert "truncated" in failures[1].reason
    assert results[0].num_features > 500
