"""Image input: EXIF orientation, any pixel mode to RGB, size limits, clear errors.

Every failure raises :class:`ImageReadError` naming the file and the problem, so a batch can report it
and go on with the next image.
"""
from __future__ import annotations

import errno
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps, UnidentifiedImageError

from glocal.errors import BadInputError

DEFAULT_MAX_SIDE = 1024
#: Images with more pixels than this are refused as decompression bombs (about 13.4k x 13.4k): Pillow's own
#: hard limit, twice ``PIL.Image.MAX_IMAGE_PIXELS`` (its warning threshold, 89.5 M pixels, is not an error
#: here: a 100 M-pixel panorama loads). A larger ``max_pixels`` needs ``PIL.Image.MAX_IMAGE_PIXELS`` raised.
MAX_PIXELS = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


class ImageReadError(BadInputError):
    """An image could not be used; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class LoadedImage:
    """An RGB image ready for feature extraction.

    :param pixels: (H, W, 3) uint8 RGB after EXIF rotation and resizing.
    :param original_size: (height, width) after EXIF rotation, before resizing.
    :param scale: resized / original side ratio (<= 1).
    :param offset: (x, y) of the pixels' top-left corner in the original image (non-zero for crops), so
        original coordinates = pixel coordinates / scale + offset.
    """

    pixels: npt.NDArray[np.uint8]
    original_size: tuple[int, int]
    scale: float
    offset: tuple[float, float] = (0.0, 0.0)

    @property
    def gray(self) -> npt.NDArray[np.uint8]:
        """Luma (ITU-R 601) as uint8, the input SIFT expects."""
        p = self.pixels.astype(np.float32)
        y = 0.299 * p[..., 0] + 0.587 * p[..., 1] + 0.114 * p[..., 2]
        return np.clip(y + 0.5, 0, 255).astype(np.uint8)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode (1, L, LA, P, RGBA, CMYK, I;16, I, F, YCbCr, ...) to 8-bit RGB.

    Transparent pixels are composited on white; 16-bit and float images are rescaled by their range.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        if mode.startswith("I;16"):
            lo, hi = 0.0, 65535.0 if hi > 255 else 255.0
        scaled = (arr - lo) / max(hi - lo, 1e-12) * 255.0
        return Image.fromarray(np.clip(scaled + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"x1,y1,x2,y2"`` (pixels of the original image) -> a box; ``ValueError`` unless there are four finite
    numbers with x2 > x1 and y2 > y1 (the CLI's ``--bbox`` and the service's ``bbox``)."""
    try:
        parts = [float(v) for v in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 4 or not all(math.isfinite(v) for v in parts) or parts[2] <= parts[0] or parts[3] <= parts[1]:
        raise ValueError(f"expected x1,y1,x2,y2 with x2 > x1 and y2 > y1, got {text!r}")
    return parts[0], parts[1], parts[2], parts[3]


def read_image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) after EXIF orientation, read from the header only."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ImageReadError(path, f"cannot read image header ({exc.__class__.__name__}: {exc})") from exc
    return (w, h) if orientation in (5, 6, 7, 8) else (h, w)


def load_image(
    path: str | Path,
    max_side: int | None = DEFAULT_MAX_SIDE,
    box: tuple[float, float, float, float] | None = None,
    max_pixels: int = MAX_PIXELS,
) -> LoadedImage:
    """Load an image as RGB uint8, honouring EXIF orientation, resized so its longer side <= max_side.

    :param path: file path (any unicode name).
    :param max_side: longest side after resizing; ``None`` keeps the native size. Never upsamples.
    :param box: optional crop (x1, y1, x2, y2) in original pixel coordinates, applied before resizing
        (the crop keeps the scale the full image would have at ``max_side``, as in the revisited protocol).
    :param max_pixels: images larger than this are refused as decompression bombs.
    :raises ImageReadError: missing, unreadable, truncated, non-image or oversized files.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(path, "file does not exist")
    if path.is_dir():
        raise ImageReadError(path, "is a directory, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is max_pixels
            with Image.open(path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageReadError(
                        path, f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels} "
                        "(refused as a possible decompression bomb)"
                    )
                img.load()
                img = ImageOps.exif_transpose(img)
                rgb = _to_rgb(img)
    except ImageReadError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageReadError(path, f"refused as a decompression bomb: {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageReadError(path, "not an image file (format not recognised)") from exc
    except OSError as exc:
        raise ImageReadError(path, f"unreadable or truncated image ({exc})") from exc
    except (ValueError, SyntaxError) as exc:  # PIL raises these for some corrupt headers
        raise ImageReadError(path, f"corrupt image ({exc})") from exc

    full_w, full_h = rgb.size
    offset = (0.0, 0.0)
    scale = 1.0
    if max_side is not None and max(full_w, full_h) > max_side:
        scale = max_side / max(full_w, full_h)
    if box is not None:
        x1, y1, x2, y2 = (float(v) for v in box)
        x1, y1 = max(0.0, x1), max(0.0, y1)
        x2, y2 = min(float(full_w), x2), min(float(full_h), y2)
        if x2 - x1 < 1 or y2 - y1 < 1:
            raise ImageReadError(path, f"box {tuple(box)} is empty inside a {full_w}x{full_h} image")
        ix1, iy1 = int(round(x1)), int(round(y1))
        rgb = rgb.crop((ix1, iy1, max(ix1 + 1, int(round(x2))), max(iy1 + 1, int(round(y2)))))
        offset = (float(ix1), float(iy1))
    if scale < 1.0:
        new_size = (max(1, round(rgb.size[0] * scale)), max(1, round(rgb.size[1] * scale)))
        rgb = rgb.resize(new_size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    return LoadedImage(pixels=np.asarray(rgb, dtype=np.uint8), original_size=(full_h, full_w), scale=scale, offset=offset)


def list_images(paths: list[str | Path], skipped: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Expand files and folders (recursively) into a sorted list of image files.

    Symbolic links to files are followed; symbolic links to folders are not (a link back to a folder above it
    would loop forever). With ``skipped``, what a folder holds but cannot be used is appended to it as
    ``(path, reason)``: dangling links, link loops, links to folders, folders that cannot be read.
    """
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(_walk_images(p, skipped if skipped is not None else [])))
        else:
            out.append(p)
    return out


def _walk_images(top: Path, skipped: list[tuple[Path, str]]) -> list[Path]:
    found: list[Path] = []

    def unreadable(exc: OSError) -> None:
        skipped.append((Path(exc.filename or top), f"folder cannot be read ({exc.strerror or exc})"))

    for folder, dirs, files in os.walk(top, onerror=unreadable, followlinks=False):
        here = os.path.realpath(folder)
        for d in dirs:
            full = os.path.join(folder, d)
            if os.path.islink(full):
                target = os.path.realpath(full)
                loop = here == target or here.startswith(target.rstrip(os.sep) + os.sep)
                skipped.append((Path(full), f"symbolic link loop (points back to {target})" if loop else
                                f"symbolic link to a folder ({target}), not followed; give that folder itself"))
        for name in files:
            full = os.path.join(folder, name)
            if os.path.islink(full) and not os.path.exists(full):
                try:
                    os.stat(full)
                    reason = "symbolic link that cannot be followed"
                except OSError as exc:
                    reason = ("symbolic link loop" if exc.errno == errno.ELOOP else
                              f"dangling symbolic link (its target {os.readlink(full)} does not exist)")
                skipped.append((Path(full), reason))
            elif Path(name).suffix.lower() in IMAGE_SUFFIXES and os.path.isfile(full):
                found.append(Path(full))
    return found
