"""``glocal eval DATASET DATA``: rank every query of a benchmark and score it with the revisited protocol.

Registered by the main app as ``app.command("eval")(eval_command)``. The ranking of a query is the hit
list of ``Engine.search`` mapped to the dataset's database order by image name; database images the
engine did not return are unranked (missed), as the protocol allows for truncated rankings.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import numpy.typing as npt
import typer
from rich.table import Table

from glocal.cli.common import (
    EXIT_INPUT,
    EXIT_PARTIAL,
    checkpoint_file,
    err,
    out,
    parse_settings,
    report_failures,
    show_progress,
)
from glocal.evaluate.datasets import (
    DatasetError,
    RetrievalDataset,
    add_distractors,
    load_dataset,
)
from glocal.evaluate.protocol import SetupResult, evaluate_setups
from glocal.records import SearchHit

SearchFn = Callable[[Path, "tuple[float, float, float, float] | None"], Sequence[SearchHit]]


def _strip_suffix(name: str) -> str:
    p = Path(name)
    return p.with_suffix("").as_posix() if p.suffix else p.as_posix()


def name_map(engine_names: Sequence[str], db_names: Sequence[str]) -> npt.NDArray[np.int64]:
    """Map each engine image to its dataset database index (-1 when not in the dataset).

    Tries the exact name, then the name without its file suffix (``jpg/a.jpg`` -> ``jpg/a``), then the bare
    file stem when that stem is unique in the dataset (an index built from ``root/jpg`` names images
    ``a.jpg`` while revisited names are ``a``).
    """
    exact = {n: i for i, n in enumerate(db_names)}
    stripped: dict[str, int] = {}
    stems: dict[str, int] = {}
    for i, n in enumerate(db_names):
        stripped.setdefault(_strip_suffix(n), i)
        stem = Path(n).stem
        stems[stem] = -2 if stem in stems else i  # -2 marks an ambiguous stem
    out_map = np.full(len(engine_names), -1, dtype=np.int64)
    for j, n in enumerate(engine_names):
        if n in exact:
            out_map[j] = exact[n]
        elif _strip_suffix(n) in stripped:
            out_map[j] = stripped[_strip_suffix(n)]
        elif stems.get(Path(n).stem, -1) >= 0:
            out_map[j] = stems[Path(n).stem]
    return out_map


def hits_to_ranking(hits: Sequence[SearchHit], mapping: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Database indices of the hits in order, dropping images outside the dataset and repeats."""
    seen: set[int] = set()
    ranking = []
    for h in hits:
        i = int(mapping[h.index]) if 0 <= h.index < len(mapping) else -1
        if i >= 0 and i not in seen:
            seen.add(i)
            ranking.append(i)
    return np.asarray(ranking, dtype=np.int64)


def pad_rankings(rankings: Sequence[npt.NDArray[np.int64]]) -> npt.NDArray[np.int64]:
    """Stack ragged rankings into a (n_queries, K) array padded with -1 (ignored by the protocol)."""
    width = max((len(r) for r in rankings), default=0)
    arr = np.full((len(rankings), width), -1, dtype=np.int64)
    for i, r in enumerate(rankings):
        arr[i, : len(r)] = r
    return arr


def rank_dataset(
    dataset: RetrievalDataset,
    search: SearchFn,
    mapping: npt.NDArray[np.int64],
    on_query: Callable[[int], None] | None = None,
) -> tuple[npt.NDArray[np.int64], list[str]]:
    """Search every query; returns padded rankings and the messages of queries that failed (empty ranking)."""
    from glocal.io.images import ImageReadError

    rankings, failures = [], []
    for i, qpath in enumerate(dataset.query_paths):
        try:
            hits = search(qpath, dataset.query_box(i))
        except ImageReadError as exc:
            failures.append(str(exc))
            hits = []
        rankings.append(hits_to_ranking(hits, mapping))
        if on_query is not None:
            on_query(1)
    return pad_rankings(rankings), failures


def results_table(title: str, setups: dict[str, SetupResult]) -> Table:
    """A rich table of one evaluation: a row per setup, percentages."""
    table = Table(title=title)
    kappas = next(iter(setups.values())).kappas if setups else ()
    for col in ["setup", "mAP", *(f"mP@{k}" for k in kappas), "queries"]:
        table.add_column(col, justify="left" if col == "setup" else "right")
    for name, r in setups.items():
        cells = [f"{100 * r.map:.2f}"] + [f"{100 * r.mp[k]:.2f}" for k in kappas]
        table.add_row(name, *[c.replace("nan", "-") for c in cells], str(r.n_valid))
    return table


def _index_error() -> type[Exception]:
    """The engine's "not an index" error class (OSError when the engine does not define one)."""
    import importlib

    return getattr(importlib.import_module("glocal.engine"), "IndexError_", OSError)


def eval_command(
    dataset: Annotated[
        str,
        typer.Argument(help="roxford5k, rparis6k or custom (a folder with groundtruth.json/.csv)."),
    ],
    data: Annotated[Path, typer.Option("--data", help="Dataset folder (holding jpg/ for the revisited sets).")],
    index: Annotated[
        Path | None,
        typer.Option("--index", help="Search this existing index instead of building one."),
    ] = None,
    method: Annotated[
        str,
        typer.Option("--method", help="Method for the temporary index (ignored with --index)."),
    ] = "sift",
    no_crop: Annotated[
        bool,
        typer.Option("--no-crop", help="Use full query images instead of cropping to the box."),
    ] = False,
    distractors: Annotated[
        Path | None,
        typer.Option("--distractors", help="Folder of extra negatives (or an R1M root with revisitop1m.txt)."),
    ] = None,
    gnd: Annotated[
        Path | None,
        typer.Option("--gnd", help="Ground-truth file (default: found next to the data)."),
    ] = None,
    codebook_images: Annotated[
        Path | None,
        typer.Option("--codebook-images", help="Folder of images to train the codebook on (default: the database)."),
    ] = None,
    codebook_from: Annotated[
        Path | None,
        typer.Option("--codebook-from", help="Reuse the codebook of this index (same method) instead of training one."),
    ] = None,
    save_index: Annotated[
        Path | None,
        typer.Option("--save-index", help="Keep the index built for the evaluation here instead of a temporary folder."),
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Write the scores (percent) and settings here."),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="Write an HTML report into this folder."),
    ] = None,
    report_queries: Annotated[
        int | None,
        typer.Option("--report-queries", help="Draw at most this many query grids."),
    ] = None,
    top: Annotated[
        int | None,
        typer.Option("--top", help="Ranking length per query; the rest count as unranked (default: the whole "
                     "database, as the published protocol ranks every image)."),
    ] = None,
    rerank_top: Annotated[
        int | None,
        typer.Option("--rerank", help="Shortlist size verified with RANSAC (0 = no re-ranking; default from the index)."),
    ] = None,
    checkpoint: Annotated[
        str | None, typer.Option("--checkpoint", help="Model weights for a deep --method: a file or a published name."),
    ] = None,
    settings_kv: Annotated[
        list[str] | None, typer.Option("--set", help="Extractor setting KEY=VALUE (VALUE as JSON); repeatable."),
    ] = None,
    qe: Annotated[
        int | None, typer.Option("--qe", help="alpha-QE with N vectors, query included (global methods)."),
    ] = None,
    dba: Annotated[
        int | None, typer.Option("--dba", help="alpha-DBA of the database with N vectors each (global methods)."),
    ] = None,
    regions: Annotated[
        str, typer.Option("--regions", help="Database regions for a built index: none, rmac or detector."),
    ] = "none",
    aggregation: Annotated[
        str | None, typer.Option("--aggregation", help="asmk, r-asmk (default with regions) or regions."),
    ] = None,
) -> None:
    """Evaluate retrieval on ROxford5k / RParis6k (revisited protocol) or your own annotated photos."""
    from glocal.engine import Engine
    from glocal.evaluate.report import write_dataset_report
    from glocal.evaluate.tables import results_json
    from glocal.io.images import list_images
    from glocal.progress import as_progress

    try:
        ds = load_dataset(dataset, data, crop=not no_crop, gnd_path=gnd)
        if distractors is not None:
            ds = add_distractors(ds, distractors)
    except DatasetError as exc:
        err.print(f"[red]error[/red]: {exc}", highlight=False)
        raise typer.Exit(EXIT_INPUT) from None
    err.print(f"{ds.name}: {ds.n_queries} queries, {ds.n_database} database images"
              f"{f' ({ds.n_distractors} distractors)' if ds.n_distractors else ''}, "
              f"queries {'cropped' if ds.query_boxes is not None else 'uncropped'}", highlight=False)
    progress = show_progress()
    with tempfile.TemporaryDirectory(prefix="glocal-eval-") as tmp:
        try:
            if index is not None:
                engine = Engine.open(index)
            else:
                cb_paths = list_images([codebook_images]) if codebook_images is not None else None
                conf = parse_settings(settings_kv or [])
                if checkpoint is not None:
                    conf["checkpoint"] = checkpoint_file(checkpoint, method)
                if regions != "none":
                    conf["regions"] = regions
                if aggregation is not None:
                    conf["aggregation"] = aggregation
                engine = Engine.build(ds.db_paths, ds.db_names, save_index or Path(tmp) / "index", method=method,
                                      codebook_paths=cb_paths, codebook_from=codebook_from, progress=progress,
                                      **conf)
        except (OSError, ValueError, _index_error()) as exc:
            err.print(f"[red]error[/red]: {exc}", highlight=False)
            raise typer.Exit(EXIT_INPUT) from None
        try:
            report_failures(list(getattr(engine, "failures", [])), "not indexed")
            mapping = name_map(engine.names, ds.db_names)
            if not (mapping >= 0).any():
                err.print(f"[red]error[/red]: no image of the index {index} is in the {ds.name} database "
                          "(names differ)", highlight=False)
                raise typer.Exit(EXIT_INPUT)
            missing = ds.n_database - len(set(mapping[mapping >= 0].tolist()))
            if missing:
                err.print(f"[yellow]warning[/yellow]: {missing} database images are not in the index "
                          "(they count as never retrieved)", highlight=False)

            ranking_length = top if top is not None else len(engine.names)

            def search(path: Path, box: Any) -> Sequence[SearchHit]:
                options: dict[str, Any] = {}
                if rerank_top is not None:
                    options["rerank_top"] = rerank_top
                if qe is not None:
                    options["query_expansion"] = qe
                if dba is not None:
                    options["database_augmentation"] = dba
                return engine.search(path, box=box, top=ranking_length, **options)

            advance = as_progress(progress)("searching queries", ds.n_queries)
            ranks, failures = rank_dataset(ds, search, mapping, advance)
            settings: dict[str, Any] = dict(engine.settings)
            db_regions: list[Any] | None = None
            if report is not None and settings.get("regions"):
                db_regions = [None] * ds.n_database
                for pos, di in enumerate(mapping):
                    if di >= 0:
                        db_regions[di] = engine.features[pos].regions
        finally:
            close = getattr(engine, "close", None)
            if callable(close):
                close()
    for message in failures:
        err.print(f"[yellow]query failed[/yellow] (scored as nothing found): {message}", highlight=False)
    rerank_setting = settings.get("rerank")
    index_top = rerank_setting.get("top", 0) if isinstance(rerank_setting, dict) else 0
    settings.update({
        "dataset": ds.name, "data": str(data), "crop": ds.query_boxes is not None, "top": ranking_length,
        "distractors": str(distractors) if distractors is not None else None, "n_database": ds.n_database,
        "n_queries": ds.n_queries, "index_path": str(index) if index is not None else None,
        "rerank_on": bool((rerank_top if rerank_top is not None else index_top) or 0),
        "rerank_top": rerank_top if rerank_top is not None else index_top,
        "query_expansion": qe, "database_augmentation": dba,
    })
    settings.setdefault("method", method)
    setups = evaluate_setups(ranks, ds.gnd)
    out.print(results_table(f"{ds.name} - {settings['method']}", setups))
    if json_out is not None:
        results_json(json_out, setups, settings, query_names=ds.query_names)
        err.print(f"scores written to {json_out}", highlight=False)
    if report is not None:
        page = write_dataset_report(report, ds, ranks, settings=settings, max_queries=report_queries,
                                    db_regions=db_regions)
        err.print(f"report written to {page}", highlight=False)
    if failures:
        raise typer.Exit(EXIT_PARTIAL)
