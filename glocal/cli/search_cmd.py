"""``glocal search INDEX QUERY``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from glocal.cli.common import err, out, parse_box, show_progress


def search(
    index: Path = typer.Argument(..., help="Index folder built with 'glocal index build'."),
    query: Path = typer.Argument(..., help="Query image."),
    bbox: Optional[str] = typer.Option(None, "--bbox", help="Query region x1,y1,x2,y2 in pixels of the original image."),
    top: int = typer.Option(20, "--top", "-k", help="Number of results."),
    rerank_top: Optional[int] = typer.Option(None, "--rerank", help="Shortlist size to verify (0 = no re-ranking)."),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON (with inlier matches)."),
    qe: Optional[int] = typer.Option(None, "--qe", help="alpha-QE with N vectors, query included (global methods)."),
    dba: Optional[int] = typer.Option(None, "--dba", help="alpha-DBA of the database with N vectors each, "
                                      "itself included (global methods)."),
    draw: Optional[Path] = typer.Option(None, "--draw", help="Folder for pictures of the query beside each "
                                        "verified result, with the inlier matches (PNG)."),
    draw_top: int = typer.Option(5, "--draw-top", min=1, help="Results drawn with --draw."),
    settings: list[str] = typer.Option([], "--set", help="Search or re-ranking option KEY=VALUE for this search "
                                       "(e.g. ratio=0.8); 'glocal methods show METHOD' lists them; repeatable."),
) -> None:
    """Search an index with a query image; prints the best matches."""
    from glocal.methods.options import parse_set
    from glocal.search import Searcher

    box = parse_box(bbox)
    with Searcher.open(index, progress=show_progress(), settings=parse_set(settings)) as searcher:
        hits = searcher.search(query, box=box, top=top, rerank_top=rerank_top, qe=qe, dba=dba)
        sources = searcher.collection.sources
    if draw is not None:
        _draw_matches(sources, query, box, hits[:draw_top], draw)
    if as_json:
        print(json.dumps({"query": str(query), "bbox": box, "results": [h.to_dict(with_matches=True) for h in hits]}))
        return
    # score: what the results are ordered by (verified: distinct inliers + a share of the shortlist score, see
    # glocal.rerank.ordering; the others: the shortlist score)
    columns = ("rank", "image", "verified", "inliers", "score", "shortlist score")
    rows = [(str(r), h.name, "yes" if h.verified else "no", str(h.inliers), f"{h.score:.4g}",
             f"{h.shortlist_score:.4f}") for r, h in enumerate(hits, 1)]
    print_results(f"{query} in {index}", columns, rows)


def print_results(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A table on a terminal (names folded, never cut); piped or redirected, one tab-separated line per
    result after a header line, whole names, no width limit (``--json`` is the format for programs)."""
    if not out.is_terminal:
        print("\t".join(columns))
        for row in rows:
            print("\t".join(row))
        return
    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*row)
    out.print(table)


def _draw_matches(sources, query: Path, box, hits, folder: Path) -> None:
    """One PNG per verified hit: the query (box in yellow) beside the result, inlier matches in green."""
    from glocal.evaluate.match_drawing import draw_matches, save_rgb
    from glocal.io.images import ImageReadError

    drawn = 0
    for rank, hit in enumerate(hits, 1):
        if hit.matches is None or len(hit.matches) == 0:
            err.print(f"[yellow]not drawn[/yellow]: {escape(hit.name)} (no verified matches; re-ranking off or "
                      "no inliers)", highlight=False)
            continue
        source = sources.lookup(hit.name)
        if source is None or not source.is_file():
            err.print(f"[yellow]not drawn[/yellow]: {escape(hit.name)} (its image file is not where it was indexed"
                      f"{f': {escape(str(source))}' if source else ''})", highlight=False)
            continue
        stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in hit.name)[-80:]
        target = folder / f"{rank:02d}_{stem}.png"
        try:
            save_rgb(target, draw_matches(query, source, hit.matches, box=box))
        except (ImageReadError, OSError) as exc:
            err.print(f"[yellow]not drawn[/yellow]: {escape(hit.name)} ({escape(str(exc))})", highlight=False)
            continue
        drawn += 1
    err.print(f"{drawn} match pictures written to {folder}", highlight=False)
