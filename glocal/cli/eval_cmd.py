"""``glocal eval DATASET --data DATA``: rank every query of a benchmark and score it with the revisited
protocol (the work is :func:`glocal.evaluate.runner.run_evaluation`; this module parses and prints).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from glocal.cli.common import (
    EXIT_PARTIAL,
    checkpoint_file,
    err,
    out,
    report_failures,
    show_progress,
)
from glocal.evaluate.protocol import SetupResult


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
        str | None,
        typer.Option("--method", help="Method for the temporary index (ignored with --index; default: the "
                     "weight-free default, see 'glocal methods')."),
    ] = None,
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
        list[str] | None, typer.Option("--set", help="Option KEY=VALUE of the method (VALUE as JSON; 'glocal methods show "
                     "METHOD' lists them); repeatable."),
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
    from glocal.evaluate.report import write_dataset_report
    from glocal.evaluate.runner import EvalRequest, load_evaluation_dataset, run_evaluation
    from glocal.evaluate.tables import results_json
    from glocal.methods import default_method, get
    from glocal.methods.options import parse_set

    if index is None:  # a missing extra is said before the dataset is read
        get(method or default_method()).check_installed()
    elif (index / "manifest.json").is_file():  # a missing or damaged index is reported when it is opened
        from glocal.index.collection import Collection

        with Collection.open(index) as collection:  # reads the manifest only; no model imported
            collection.spec.check_installed()
    settings = parse_set(settings_kv or [])
    if checkpoint is not None:
        settings["checkpoint"] = checkpoint_file(checkpoint, method or default_method())
    if regions != "none":
        settings["regions"] = regions
    if aggregation is not None:
        settings["aggregation"] = aggregation
    request = EvalRequest(dataset=dataset, data=data, index=index, method=method, crop=not no_crop,
                          distractors=distractors, gnd=gnd, codebook_images=codebook_images,
                          codebook_from=codebook_from, save_index=save_index, top=top, rerank_top=rerank_top,
                          qe=qe, dba=dba, settings=settings, keep_regions=report is not None)
    ds = load_evaluation_dataset(request)
    err.print(f"{ds.name}: {ds.n_queries} queries, {ds.n_database} database images"
              f"{f' ({ds.n_distractors} distractors)' if ds.n_distractors else ''}, "
              f"queries {'cropped' if ds.query_boxes is not None else 'uncropped'}", highlight=False)
    result = run_evaluation(request, ds, progress=show_progress())
    report_failures(result.index_failures, "not indexed")
    if result.missing:
        err.print(f"[yellow]warning[/yellow]: {result.missing} database images are not in the index "
                  "(they count as never retrieved)", highlight=False)
    for message in result.query_failures:
        err.print(f"[yellow]query failed[/yellow] (scored as nothing found): {message}", highlight=False)
    out.print(results_table(f"{ds.name} - {result.settings['method']}", result.setups))
    if json_out is not None:
        results_json(json_out, result.setups, result.settings, query_names=ds.query_names)
        err.print(f"scores written to {json_out}", highlight=False)
    if report is not None:
        page = write_dataset_report(report, ds, result.ranks, settings=result.settings, max_queries=report_queries,
                                    db_regions=result.db_regions)
        err.print(f"report written to {page}", highlight=False)
    if result.query_failures:
        raise typer.Exit(EXIT_PARTIAL)
