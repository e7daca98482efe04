"""``glocal visualize attention``: Super-feature attention maps over an image, as a PNG grid.

Like FIRe's figure 1: the image, then one tile per Super-feature with its final LIT attention map
(eq. 4, last iteration) resized to the image and blended over it as a heat map, labelled with the
Super-feature ID (IDs are comparable across images: the set is ordered). ``--method how`` shows HOW's
feature-strength map ||u_l|| instead (one tile). Drawn with OpenCV / PIL (no matplotlib).
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import numpy.typing as npt
import typer
from PIL import Image
from rich.markup import escape

from glocal.cli.common import EXIT_INPUT, checkpoint_file, err
from glocal.cli.common import out as console


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
        raise ValueError(f"visualize_cmd.py: {len(maps)} maps but {len(labels)} labels")
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


def _parse_ids(text: str | None, n: int) -> list[int] | None:
    if text is None:
        return None
    try:
        ids = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        ids = []
    if not ids or min(ids) < 0 or max(ids) >= n:
        raise typer.BadParameter(f"expected comma-separated IDs in [0, {n - 1}], got {text!r}", param_hint="--ids")
    return ids


def attention_command(
    image: Path = typer.Argument(..., help="Image to show the attention maps of."),
    method: str = typer.Option("fire", "--method", "-m", help="'fire' (Super-feature attention) or 'how' (strengths)."),
    out: Path = typer.Option(Path("attention.png"), "--out", "-o", help="PNG file to write."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", "-c", help="Official or glocal HOW / FIRe "
                                             "weights (a file or a published name); none = random (warned)."),
    num_maps: int = typer.Option(7, "--maps", "-n", help="Show the N strongest Super-features."),
    ids: Optional[str] = typer.Option(None, "--ids", help="Comma-separated Super-feature IDs to show instead."),
    scale: float = typer.Option(1.0, "--scale", help="Pyramid scale the maps are computed at."),
    max_side: int = typer.Option(1024, "--max-side", help="Longest image side before the pyramid."),
    columns: int = typer.Option(4, "--columns", help="Tiles per row."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights when no checkpoint is given."),
) -> None:
    """Draw FIRe's Super-feature attention maps (or HOW's strength map) over an image (FIRe fig. 1)."""
    from glocal.io.images import ImageReadError, load_image
    from glocal.models.how_fire_checkpoints import CheckpointError

    if method not in ("fire", "how"):
        raise typer.BadParameter(f"expected 'fire' or 'how', got {method!r}", param_hint="--method")
    try:
        loaded = load_image(image, max_side=max_side)
    except ImageReadError as exc:
        err.print(f"[red]error[/red]: {escape(str(exc))}")
        raise typer.Exit(EXIT_INPUT) from None
    ckpt = checkpoint_file(checkpoint, method)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if method == "fire":
                from glocal.models.fire import FireConfig, FireExtractor

                fire = FireExtractor(FireConfig(checkpoint=ckpt, max_side=max_side, seed=seed))
            else:
                from glocal.models.how import HowConfig, HowExtractor

                how = HowExtractor(HowConfig(checkpoint=ckpt, max_side=max_side, seed=seed))
    except (CheckpointError, ValueError) as exc:
        err.print(f"[red]error[/red]: {escape(str(exc))}")
        raise typer.Exit(EXIT_INPUT) from None
    for w in caught:
        err.print(f"[yellow]warning[/yellow]: {w.message}", highlight=False)
    if method == "fire":
        attention = fire.attention_maps(loaded, scale=scale)
        chosen = _parse_ids(ids, len(attention.maps))
        if chosen is None:
            chosen = [int(i) for i in np.argsort(-attention.strengths, kind="stable")[:max(1, num_maps)]]
        maps = attention.maps[chosen]
        labels = [f"#{i}  |s|={attention.strengths[i]:.3g}" for i in chosen]
    else:
        maps = how.strength_map(loaded, scale=scale)[None]
        labels = ["HOW strength ||u||"]
    grid = render_attention_grid(loaded.pixels, maps, labels, columns=columns)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(out)
    console.print(f"wrote {out} ({len(maps)} map{'s' if len(maps) != 1 else ''} at scale {scale}, "
              f"{grid.shape[1]}x{grid.shape[0]} px)")
