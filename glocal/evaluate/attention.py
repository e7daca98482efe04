"""Pictures of what a model looks at: FIRe's Super-feature attention maps (FIRe fig. 1: the final LIT attention
of each Super-feature, eq. 4, last iteration) or HOW's feature-strength map ||u_l||, as heat maps blended over
the image in a grid of labelled tiles. Drawn with OpenCV (no matplotlib).

An extractor offers maps through ``attention_maps(image, scale)`` (maps and strengths, FIRe) or
``strength_map(image, scale)`` (one map, HOW); :func:`attention_tiles` uses whichever it has.
"""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from glocal.errors import BadOptionError
from glocal.io.images import LoadedImage


def can_draw_attention(extractor: Any) -> bool:
    return hasattr(extractor, "attention_maps") or hasattr(extractor, "strength_map")


def attention_tiles(extractor: Any, image: LoadedImage, scale: float = 1.0, ids: list[int] | None = None,
                    count: int = 7) -> tuple[npt.NDArray[np.float32], list[str]]:
    """(maps (K, h, w), K labels): the ``ids`` Super-features, else the ``count`` strongest; or the one
    strength map of an extractor without Super-features."""
    if hasattr(extractor, "attention_maps"):
        attention = extractor.attention_maps(image, scale=scale)
        if ids is not None and (not ids or min(ids) < 0 or max(ids) >= len(attention.maps)):
            raise BadOptionError(f"--ids: expected Super-feature IDs in [0, {len(attention.maps) - 1}], got {ids}")
        chosen = ids if ids is not None else [
            int(i) for i in np.argsort(-attention.strengths, kind="stable")[:max(1, count)]]
        return attention.maps[chosen], [f"#{i}  |s|={attention.strengths[i]:.3g}" for i in chosen]
    if hasattr(extractor, "strength_map"):
        return extractor.strength_map(image, scale=scale)[None], ["strength ||u||"]
    raise BadOptionError("this method's extractor has no attention or strength maps to draw")


def _heat_tile(pixels: npt.NDArray[np.uint8], heat: npt.NDArray[np.floating], alpha: float) -> npt.NDArray[np.uint8]:
    """Blend a (h, w) map, resized bilinearly to the image and scaled to [0, 1] by its maximum, as a JET
    colour map over ``pixels`` (H, W, 3)."""
    h, w = pixels.shape[:2]
    m = cv2.resize(np.asarray(heat, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    m = m - m.min()
    m = m / m.max() if m.max() > 0 else m
    colour = cv2.cvtColor(cv2.applyColorMap((m * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    weight = alpha * m[..., None] ** 0.5  # strong attention covers the image, weak lets it through
    return (pixels * (1 - weight) + colour * weight).clip(0, 255).astype(np.uint8)


def _label(tile: npt.NDArray[np.uint8], text: str) -> npt.NDArray[np.uint8]:
    tile = np.array(tile, copy=True)  # never draw on the shared image tile
    for colour, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):
        cv2.putText(tile, text, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, thickness, cv2.LINE_AA)
    return tile


def render_attention_grid(
    pixels: npt.NDArray[np.uint8], maps: npt.NDArray[np.floating], labels: list[str], columns: int = 4,
    tile_width: int = 256, alpha: float = 0.6,
) -> npt.NDArray[np.uint8]:
    """The image followed by one heat-map tile per map, ``columns`` tiles a row, white gaps.

    :param pixels: (H, W, 3) uint8 RGB.
    :param maps: (K, h, w) attention (or strength) maps over the image.
    :param labels: K tile captions.
    :returns: (rows * tile_h + gaps, columns * tile_w + gaps, 3) uint8 RGB.
    """
    if len(maps) != len(labels):
        raise ValueError(f"attention.py: {len(maps)} maps but {len(labels)} labels")
    h, w = pixels.shape[:2]
    tile_h = max(1, round(h * tile_width / w))
    small = cv2.resize(pixels, (tile_width, tile_h), interpolation=cv2.INTER_AREA)
    tiles = [_label(small, "image")] + [_label(_heat_tile(small, m, alpha), t) for m, t in zip(maps, labels, strict=True)]
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    gap = 4
    grid = np.full((rows * (tile_h + gap) - gap, columns * (tile_width + gap) - gap, 3), 255, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * (tile_h + gap): r * (tile_h + gap) + tile_h, c * (tile_width + gap): c * (tile_width + gap) + tile_width] = tile
    return grid
