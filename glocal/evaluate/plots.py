"""PNG figures for evaluation reports, drawn with Pillow (no plotting library needed).

* :func:`plot_pr_curves`: mean interpolated precision-recall curve per protocol setup.
* :func:`query_grid`: a query and its top-k database images, bordered green (positive), red (negative)
  or grey (ignored / junk) under one setup.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

from glocal.evaluate.protocol import (
    RanksLike,
    evaluate_setups,
    mean_pr_curve,
    rank_rows,
    setups_for,
)
from glocal.io.images import ImageReadError, load_image

Color = tuple[int, int, int]
POSITIVE: Color = (20, 160, 40)
NEGATIVE: Color = (210, 30, 30)
IGNORED: Color = (150, 150, 150)
QUERY: Color = (40, 90, 200)
SETUP_COLORS: dict[str, Color] = {"easy": (30, 120, 200), "medium": (230, 130, 20), "hard": (190, 30, 60),
                                  "all": (30, 120, 200)}
_FALLBACK_COLORS: list[Color] = [(90, 60, 160), (20, 140, 140), (120, 120, 20)]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # older Pillow without sized default font
        return ImageFont.load_default()


def draw_pr_curves(
    curves: Mapping[str, tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]],
    out_path: str | Path,
    title: str = "",
    size: tuple[int, int] = (640, 480),
    colors: Mapping[str, Color] | None = None,
) -> Path:
    """Draw precision (y) against recall (x), both in [0, 1], one line per named curve; writes a PNG.

    :param colors: line colour per curve name; default :data:`SETUP_COLORS` by name, then a fallback cycle.
    """
    palette = {**SETUP_COLORS, **(colors or {})}
    width, height = size
    left, right, top, bottom = 64, 20, 40 if title else 20, 52
    img = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font, small = _font(14), _font(12)
    pw, ph = width - left - right, height - top - bottom

    def xy(r: float, p: float) -> tuple[float, float]:
        return left + r * pw, top + (1.0 - p) * ph

    for t in np.linspace(0.0, 1.0, 6):
        x, _ = xy(t, 0)
        _, y = xy(0, t)
        draw.line([(x, top), (x, top + ph)], fill=(230, 230, 230))
        draw.line([(left, y), (left + pw, y)], fill=(230, 230, 230))
        draw.text((x, top + ph + 6), f"{t:.1f}", fill=(60, 60, 60), font=small, anchor="mt")
        draw.text((left - 6, y), f"{t:.1f}", fill=(60, 60, 60), font=small, anchor="rm")
    draw.rectangle([left, top, left + pw, top + ph], outline=(0, 0, 0))
    draw.text((left + pw / 2, height - 8), "recall", fill=(0, 0, 0), font=font, anchor="md")
    label = Image.new("RGBA", (80, 20), (255, 255, 255, 0))
    ImageDraw.Draw(label).text((40, 10), "precision", fill=(0, 0, 0), font=font, anchor="mm")
    img.paste(label.rotate(90, expand=True), (4, top + ph // 2 - 40), label.rotate(90, expand=True))
    if title:
        draw.text((width / 2, 10), title, fill=(0, 0, 0), font=font, anchor="mt")
    spare = iter(_FALLBACK_COLORS * 4)
    for n, (name, (recall, precision)) in enumerate(curves.items()):
        color = palette.get(name) or next(spare)
        ok = ~np.isnan(precision)
        points = [xy(float(r), float(p)) for r, p in zip(recall[ok], precision[ok], strict=True)]
        if len(points) >= 2:
            draw.line(points, fill=color, width=2)
        ly = top + 10 + 18 * n
        draw.line([(left + pw - 190, ly), (left + pw - 165, ly)], fill=color, width=3)
        draw.text((left + pw - 160, ly), name, fill=(0, 0, 0), font=small, anchor="lm")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="PNG")
    return out


def plot_pr_curves(
    ranks: RanksLike,
    gnd: Sequence[Mapping[str, npt.ArrayLike]],
    out_path: str | Path,
    title: str = "",
    size: tuple[int, int] = (640, 480),
) -> Path:
    """Mean interpolated PR curve of each setup (Easy/Medium/Hard, or ``all`` for a custom ground truth).

    The legend shows each setup's mAP in percent.
    """
    rows = rank_rows(ranks)
    results = evaluate_setups(rows, gnd)
    curves, colors = {}, {}
    for name, g in setups_for(gnd).items():
        m = results[name].map
        label = f"{name} mAP {100 * m:.1f}" if not np.isnan(m) else f"{name} (no positives)"
        curves[label] = mean_pr_curve(rows, g)
        if name in SETUP_COLORS:
            colors[label] = SETUP_COLORS[name]
    return draw_pr_curves(curves, out_path, title, size, colors=colors)


def _thumbnail(path: Path, side: int, box: tuple[float, float, float, float] | None = None,
               regions: npt.NDArray | None = None) -> Image.Image:
    """The image (cropped to ``box``) fitted into side x side, or a grey tile saying it is unreadable.

    ``regions`` (R, 4) boxes in original pixels (Detect-to-Retrieve regions) are outlined in yellow.
    """
    try:
        # a crop is read at the usual working size so a small box still fills the tile
        loaded = load_image(path, max_side=side if box is None else 1024, box=box)
        img = Image.fromarray(loaded.pixels)
        img.thumbnail((side, side))
        if regions is not None and len(regions) and box is None:
            f = img.width / loaded.original_size[1]
            pen = ImageDraw.Draw(img)
            for x1, y1, x2, y2 in np.asarray(regions, np.float64):
                pen.rectangle([x1 * f, y1 * f, x2 * f, y2 * f], outline=(255, 210, 0), width=1)
        return img
    except ImageReadError:
        tile = Image.new("RGB", (side, side), (200, 200, 200))
        ImageDraw.Draw(tile).text((side / 2, side / 2), "unreadable", fill=(80, 80, 80), font=_font(12), anchor="mm")
        return tile


def query_grid(
    query_path: str | Path,
    db_paths: Sequence[str | Path],
    ranking: npt.ArrayLike,
    ok: npt.ArrayLike,
    junk: npt.ArrayLike,
    out_path: str | Path,
    box: tuple[float, float, float, float] | None = None,
    top: int = 10,
    thumb: int = 128,
    caption: str = "",
    db_regions: Sequence[npt.NDArray | None] | None = None,
) -> Path:
    """One row: the query (cropped to ``box``) then its ``top`` results, each bordered by its label.

    :param ranking: database indices, best first (negative entries are padding).
    :param ok: positive database indices; ``junk``: ignored ones (grey); everything else is red.
    :param db_regions: per database image, its indexed regions (drawn in yellow), or None.
    """
    row = rank_rows([np.asarray(ranking).reshape(-1)])[0][:top]
    ok_set = {int(v) for v in np.asarray(ok).reshape(-1)}
    junk_set = {int(v) for v in np.asarray(junk).reshape(-1)}
    pad, border, label_h = 8, 5, 18
    cell = thumb + 2 * border
    n_cells = 1 + max(len(row), 1)
    width = pad + n_cells * (cell + pad) + pad
    height = pad + label_h + cell + pad + (label_h if caption else 0)
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    small = _font(12)

    def place(i: int, tile: Image.Image, color: Color, text: str) -> None:
        x0 = pad + i * (cell + pad) + (pad if i > 0 else 0)
        y0 = pad + label_h
        draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=color)
        draw.rectangle([x0 + border, y0 + border, x0 + cell - border - 1, y0 + cell - border - 1], fill=(245, 245, 245))
        img.paste(tile, (x0 + border + (thumb - tile.width) // 2, y0 + border + (thumb - tile.height) // 2))
        draw.text((x0 + cell / 2, pad + label_h / 2), text, fill=(0, 0, 0), font=small, anchor="mm")

    place(0, _thumbnail(Path(query_path), thumb, box), QUERY, "query")
    if not len(row):
        draw.text((pad + 1.5 * (cell + pad), pad + label_h + cell / 2), "no results", fill=(0, 0, 0), font=small)
    for r, idx in enumerate(row, start=1):
        color = POSITIVE if int(idx) in ok_set else IGNORED if int(idx) in junk_set else NEGATIVE
        regions = db_regions[int(idx)] if db_regions is not None else None
        place(r, _thumbnail(Path(db_paths[int(idx)]), thumb, regions=regions), color, f"#{r}")
    if caption:
        draw.text((pad, height - pad - label_h / 2), caption, fill=(0, 0, 0), font=small, anchor="lm")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out, format="PNG")
    return out
