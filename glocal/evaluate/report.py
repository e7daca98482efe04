"""A self-contained HTML evaluation report: scores, settings, PR curves and one result grid per query.

Layout written under ``out_dir``: ``index.html``, ``pr_curves.png`` and ``queries/NNN.png``; the page
refers to the PNGs by relative path, so the folder can be moved or served as is.
"""
from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from glocal.evaluate.datasets import Box, RetrievalDataset
from glocal.evaluate.plots import (
    IGNORED,
    NEGATIVE,
    POSITIVE,
    plot_pr_curves,
    query_grid,
)
from glocal.evaluate.protocol import (
    RanksLike,
    SetupResult,
    evaluate_setups,
    rank_rows,
    setups_for,
)

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.query { margin: 1.5em 0; }
.key span { display: inline-block; width: 1em; height: 1em; margin: 0 4px 0 12px; vertical-align: middle; }
"""


def _rgb(c: tuple[int, int, int]) -> str:
    return "#" + "".join(f"{v:02x}" for v in c)


def _pct(v: float) -> str:
    return "-" if math.isnan(v) else f"{100 * v:.2f}"


def _scores_table(results: Mapping[str, SetupResult]) -> str:
    kappas = next(iter(results.values())).kappas if results else ()
    head = "<tr><th>setup</th><th>mAP</th>" + "".join(f"<th>mP@{k}</th>" for k in kappas) + "<th>queries</th></tr>"
    rows = [
        f"<tr><td>{html.escape(name)}</td><td>{_pct(r.map)}</td>"
        + "".join(f"<td>{_pct(r.mp.get(k, float('nan')))}</td>" for k in kappas)
        + f"<td>{r.n_valid}</td></tr>"
        for name, r in results.items()
    ]
    return "<table>" + head + "".join(rows) + "</table>"


def _settings_table(settings: Mapping[str, Any]) -> str:
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in settings.items())
    return f"<table><tr><th>setting</th><th>value</th></tr>{rows}</table>" if rows else ""


def write_report(
    out_dir: str | Path,
    query_paths: Sequence[str | Path],
    db_paths: Sequence[str | Path],
    ranks: RanksLike,
    gnd: Sequence[Mapping[str, npt.ArrayLike]],
    query_names: Sequence[str] | None = None,
    query_boxes: Sequence[Box | None] | None = None,
    settings: Mapping[str, Any] | None = None,
    title: str = "Retrieval evaluation",
    grid_setup: str | None = None,
    top: int = 10,
    max_queries: int | None = None,
    inline_images: bool = False,
    db_regions: Sequence[Any] | None = None,
) -> Path:
    """Write the HTML report and its figures; returns the path of ``index.html``.

    :param ranks: query-major database indices, best first (see :func:`glocal.evaluate.compute_map`).
    :param gnd: raw ground truth (``easy``/``hard``/``junk`` or ``ok``/``junk``).
    :param grid_setup: setup whose labels colour the grids; default ``medium`` (revisited) or ``all``.
    :param top: thumbnails per query; ``max_queries`` limits how many query grids are drawn.
    :param inline_images: embed the PNGs as data URIs so ``index.html`` is a single portable file (the PNG
        files are written too).
    """

    def src(png: Path) -> str:
        if inline_images:
            return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
        return png.relative_to(out).as_posix()

    out = Path(out_dir)
    (out / "queries").mkdir(parents=True, exist_ok=True)
    rows = rank_rows(ranks)
    if len(rows) != len(query_paths) or len(gnd) != len(query_paths):
        raise ValueError(f"report: {len(query_paths)} queries but {len(rows)} rankings and {len(gnd)} ground-truth entries")
    names = list(query_names) if query_names is not None else [Path(p).stem for p in query_paths]
    results = evaluate_setups(rows, gnd)
    per_setup = setups_for(gnd)
    setup = grid_setup or ("medium" if "medium" in per_setup else next(iter(per_setup)))
    if setup not in per_setup:
        raise ValueError(f"report: unknown grid setup {setup!r}; expected one of {list(per_setup)}")
    pr_png = plot_pr_curves(rows, gnd, out / "pr_curves.png", title=title)

    key = "".join(f"<span style='background:{_rgb(c)}'></span>{label}" for c, label in
                  ((POSITIVE, "positive"), (NEGATIVE, "negative"), (IGNORED, "ignored (junk)")))
    sections = []
    n = len(query_paths) if max_queries is None else min(max_queries, len(query_paths))
    for i in range(n):
        q = per_setup[setup][i]
        box = query_boxes[i] if query_boxes is not None else None
        png = query_grid(query_paths[i], db_paths, rows[i], q["ok"], q["junk"], out / "queries" / f"{i:03d}.png",
                         box=box, top=top, db_regions=db_regions)
        aps = ", ".join(f"{s} AP {_pct(float(r.aps[i]))}" for s, r in results.items())
        sections.append(
            f"<div class='query'><h3>{i + 1}. {html.escape(names[i])}</h3><p>{html.escape(aps)}</p>"
            f"<img src='{src(png)}' alt='top {top} for {html.escape(names[i])}'></div>"
        )
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<h2>Scores (percent)</h2>{_scores_table(results)}"
        f"<h2>Settings</h2>{_settings_table(settings or {})}"
        f"<h2>Precision-recall</h2><img src='{src(pr_png)}' alt='precision-recall curves'>"
        f"<h2>Queries</h2><p class='key'>Borders ({html.escape(setup)} setup):{key}</p>"
        + "".join(sections)
        + "</body></html>\n"
    )
    index = out / "index.html"
    index.write_text(page, encoding="utf-8")
    return index


def write_dataset_report(
    out_dir: str | Path,
    dataset: RetrievalDataset,
    ranks: RanksLike | npt.NDArray[np.int64],
    settings: Mapping[str, Any] | None = None,
    top: int = 10,
    max_queries: int | None = None,
    inline_images: bool = False,
    db_regions: Sequence[Any] | None = None,
) -> Path:
    """:func:`write_report` for a :class:`RetrievalDataset` (queries cropped as the dataset says);
    ``db_regions``: per database image its indexed regions (drawn on the thumbnails), or None."""
    return write_report(
        out_dir, dataset.query_paths, dataset.db_paths, ranks, dataset.gnd,
        query_names=dataset.query_names, query_boxes=dataset.query_boxes, settings=settings,
        title=f"{dataset.name}: retrieval evaluation", top=top, max_queries=max_queries,
        inline_images=inline_images, db_regions=db_regions,
    )
