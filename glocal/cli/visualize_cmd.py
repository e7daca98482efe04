"""``glocal visualize attention``: what a model looks at, as a PNG grid (:mod:`glocal.evaluate.attention`)."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import typer
from PIL import Image

from glocal.cli.common import checkpoint_file, err
from glocal.cli.common import out as console


def _parse_ids(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated IDs, got {text!r}", param_hint="--ids") from None


def attention_command(
    image: Path = typer.Argument(..., help="Image to show the attention maps of."),
    method: Optional[str] = typer.Option(
        None, "--method", "-m", help="A method with attention maps (see 'glocal methods'; default: the first)."),
    out: Path = typer.Option(Path("attention.png"), "--out", "-o", help="PNG file to write."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", "-c", help="Model weights (a file or a "
                                             "published name); none = random (warned)."),
    num_maps: int = typer.Option(7, "--maps", "-n", help="Show the N strongest Super-features."),
    ids: Optional[str] = typer.Option(None, "--ids", help="Comma-separated Super-feature IDs to show instead."),
    scale: float = typer.Option(1.0, "--scale", help="Pyramid scale the maps are computed at."),
    max_side: int = typer.Option(1024, "--max-side", help="Longest image side before the pyramid."),
    columns: int = typer.Option(4, "--columns", help="Tiles per row."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights when no checkpoint is given."),
) -> None:
    """Draw Super-feature attention maps (FIRe fig. 1) or a strength map over an image."""
    from glocal.errors import BadOptionError
    from glocal.evaluate.attention import attention_tiles, render_attention_grid
    from glocal.io.images import load_image
    from glocal.methods import all_specs, create_extractor

    drawable = [s.name for s in all_specs() if "attention" in s.capabilities]
    method = method or drawable[0]
    if method not in drawable:
        raise BadOptionError(f"--method {method}: attention maps are drawn for {', '.join(drawable)}")
    loaded = load_image(image, max_side=max_side)
    settings: dict = {"max_side": max_side, "seed": seed}
    if checkpoint is not None:
        settings["checkpoint"] = checkpoint_file(checkpoint, method)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        extractor = create_extractor(method, **settings)
    for w in caught:
        err.print(f"[yellow]warning[/yellow]: {w.message}", highlight=False)
    maps, labels = attention_tiles(extractor, loaded, scale=scale, ids=_parse_ids(ids), count=num_maps)
    grid = render_attention_grid(loaded.pixels, maps, labels, columns=columns)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(out)
    console.print(f"wrote {out} ({len(maps)} map{'s' if len(maps) != 1 else ''} at scale {scale}, "
                  f"{grid.shape[1]}x{grid.shape[0]} px)")
