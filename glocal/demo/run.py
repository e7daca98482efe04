"""``glocal demo``: build the synthetic benchmark, index it, search every query, score it, write a page."""
from __future__ import annotations

import html
import time
from dataclasses import dataclass
from pathlib import Path

from glocal.demo.synthetic import DemoBenchmark, make_benchmark
from glocal.evaluate.match_drawing import draw_matches, save_rgb
from glocal.evaluate.protocol import SetupResult, revisited_setups
from glocal.index.builder import build_index
from glocal.progress import Progress, as_progress
from glocal.records import SearchHit
from glocal.search import Searcher


@dataclass
class DemoResult:
    benchmark: DemoBenchmark
    hits: list[list[SearchHit]]
    setups: dict[str, SetupResult]
    shortlist_setups: dict[str, SetupResult]
    seconds: dict[str, float]
    page: Path


def run_demo(out_dir: Path, seed: int = 0, progress: bool | Progress = False, top: int = 10) -> DemoResult:
    """Run the whole demo under ``out_dir`` (benchmark in ``data/``, index in ``demo.glx``, ``index.html``)."""
    out_dir = Path(out_dir)
    prog = as_progress(progress)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    bench = make_benchmark(out_dir / "data", seed=seed)
    seconds["make benchmark"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    index_dir = out_dir / "demo.glx"
    if index_dir.exists():
        import shutil

        shutil.rmtree(index_dir)
    built = build_index(bench.db_paths, bench.db_names, index_dir, settings={"codebook_seed": seed}, progress=prog)
    searcher = Searcher(built.collection)
    seconds["index"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    all_hits, shortlist_ranks = [], []
    advance = prog("searching queries", len(bench.query_paths))
    for qpath, g in zip(bench.query_paths, bench.gnd):
        query = searcher.query_features(qpath, box=tuple(g["bbx"]))
        all_hits.append(searcher.search_features(query, top=len(searcher)))
        shortlist_ranks.append([h.index for h in searcher.search_features(query, top=len(searcher), rerank_top=0)])
        advance(1)
    seconds["search"] = time.perf_counter() - t0
    ranks = [[h.index for h in hits] for hits in all_hits]
    setups = revisited_setups(ranks, bench.gnd)
    shortlist_setups = revisited_setups(shortlist_ranks, bench.gnd)

    t0 = time.perf_counter()
    page = write_demo_page(out_dir, bench, all_hits, setups, top=top)
    seconds["page"] = time.perf_counter() - t0
    searcher.close()
    return DemoResult(bench, all_hits, setups, shortlist_setups, seconds, page)


def _label(i: int, g: dict) -> str:
    if i in g["easy"] or i in g["hard"]:
        return "positive"
    if i in g["junk"]:
        return "ignored"
    return "negative"


def write_demo_page(out_dir: Path, bench: DemoBenchmark, all_hits: list[list[SearchHit]],
                    setups: dict[str, SetupResult], top: int = 10, with_matches: int = 3) -> Path:
    """An HTML page: per query, its top results (green positive, red negative, grey ignored) and
    pictures of the inlier matches of the first ``with_matches`` results."""
    img_dir = out_dir / "matches"
    colors = {"positive": "#2a2", "negative": "#d22", "ignored": "#999"}
    rows = []
    summary = " &middot; ".join(
        f"{k}: mAP {v.map * 100:.1f}, mP@10 {v.mp[10] * 100:.1f}" for k, v in setups.items()
    )
    for qi, (qname, hits) in enumerate(zip(bench.query_names, all_hits)):
        g = bench.gnd[qi]
        qrel = f"data/jpg/{qname}.jpg"
        cells = []
        for r, h in enumerate(hits[:top]):
            lab = _label(h.index, g)
            cells.append(
                f'<figure style="border:4px solid {colors[lab]}"><img src="data/jpg/{html.escape(h.name)}.jpg">'
                f"<figcaption>{r + 1}. {html.escape(h.name)}<br>{h.inliers} inliers</figcaption></figure>"
            )
        pics = []
        for r, h in enumerate(hits[:with_matches]):
            pic = img_dir / f"{qname}_{r + 1}.jpg"
            save_rgb(pic, draw_matches(bench.root / "jpg" / f"{qname}.jpg", bench.root / "jpg" / f"{h.name}.jpg",
                                       h.matches, box=tuple(g["bbx"])))
            pics.append(f'<img class="m" src="matches/{pic.name}" title="{html.escape(h.name)}">')
        ap = setups["medium"].aps[qi]
        rows.append(
            f'<section><h2>{html.escape(qname)} <small>AP (medium) {ap * 100:.1f}</small></h2>'
            f'<div class="row"><figure style="border:4px solid #fc0"><img src="{qrel}"><figcaption>query (box in yellow below)</figcaption></figure>'
            f'{"".join(cells)}</div><div class="row">{"".join(pics)}</div></section>'
        )
    page = out_dir / "index.html"
    page.write_text(
        "<!doctype html><meta charset=utf-8><title>glocal demo</title><style>"
        "body{font-family:sans-serif;margin:1em}figure{display:inline-block;margin:3px;text-align:center}"
        "figure img{height:110px}figcaption{font-size:11px;max-width:150px;overflow:hidden}"
        ".m{height:220px;margin:3px}.row{display:flex;flex-wrap:wrap;align-items:flex-start}</style>"
        f"<h1>glocal demo: RootSIFT + ASMK* + RANSAC</h1><p>{summary}</p>"
        "<p>Border: green = positive, red = negative, grey = ignored (junk). Match pictures: inliers of the top results.</p>"
        + "".join(rows),
        encoding="utf-8",
    )
    return page
