"""``glocal methods [show NAME]``: the registered methods and every option of one, read from the registry.

:func:`markdown_table` renders the README's method table from the same specs; ``tests/cli/test_methods_cmd.py``
checks that the README holds exactly its output, so the two cannot drift.
"""
from __future__ import annotations

import json
from typing import Any

import typer
from rich import box
from rich.table import Table

from glocal import methods
from glocal.cli.common import out
from glocal.methods.spec import GROUPS, MethodSpec
from glocal.methods.stages import AsmkIndexOptions, GlobalIndexOptions, RerankOptions

app = typer.Typer(help="The retrieval methods (--method): list them, or show every option of one.",
                  invoke_without_command=True)

_GROUP_TITLES = {
    "extractor": "extractor (features of one image)",
    "index": "index (the first stage, fixed when the index is built)",
    "search": "search (query time)",
    "rerank": "rerank (spatial verification of the shortlist)",
}


# -- descriptions derived from a spec ------------------------------------------------------------------
def _number(value: float) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:g}"


def first_stage_text(spec: MethodSpec) -> str:
    """The first stage in words, from the spec's index options (``ASMK*, 4,096 words``)."""
    idx = spec.index
    if isinstance(idx, GlobalIndexOptions):
        kind = {"ivfpq": "IVF-PQ", "exact": "exact", "auto": "exact (IVF-PQ for large collections)"}[idx.index]
        return f"global descriptor, {kind} search"
    assert isinstance(idx, AsmkIndexOptions)
    kernel = "ASMK*" if idx.binary else "ASMK"
    if idx.resolved_aggregation == "r-asmk":
        kernel = f"R-{kernel}"
    elif idx.resolved_aggregation == "regions":
        kernel = f"regional {kernel}"
    regions = {"rmac": " over R-MAC regions", "detector": " over detected regions"}.get(idx.regions, "")
    return f"{kernel}{regions}, {_number(idx.codebook_size)} words"


def rerank_text(rerank: RerankOptions) -> str:
    """The re-ranking in words (``top 100: mutual NN, ratio 0.9; affine usac_fast, 20 px``), or ``none``."""
    if rerank.rerank_top == 0:
        return "none"
    verified = f"; yes from {rerank.verify_min_inliers} inliers" if rerank.verify_min_inliers else ""
    if rerank.matcher == "words":
        codes = f", codes <= {rerank.max_hamming} bits" if rerank.max_hamming is not None else ""
        return (f"top {rerank.rerank_top}: shared words ({rerank.word_assignments} per query feature{codes}); "
                f"similarity + affine LO, {_number(rerank.threshold_px)} px{verified}")
    tests = []
    if rerank.mutual:
        tests.append("mutual NN")
    if rerank.ratio is not None:
        tests.append(f"ratio {_number(rerank.ratio)}")
    if rerank.max_distance is not None:
        tests.append(f"distance < {_number(round(rerank.max_distance, 4))}")
    matcher = ", ".join(tests) or "nearest neighbours"
    return (f"top {rerank.rerank_top}: {matcher}; {rerank.model} {rerank.estimator}, "
            f"{_number(rerank.threshold_px)} px{verified}")


def weights_text(spec: MethodSpec) -> str:
    """``no``, ``yes``, or ``yes (published: `name`)``."""
    if not spec.needs_weights:
        return "no"
    if not spec.weights:
        return "yes"
    return f"yes (published: {', '.join(f'`{w.name}`' for w in spec.weights)})"


def markdown_table() -> str:
    """The README's "Methods (``--method``)" table, one row per registered method, default first."""
    lines = ["| method | first stage | re-ranking | needs weights |", "|---|---|---|---|"]
    for spec in methods.all_specs():
        name = f"`{spec.name}`" + (" (default)" if spec.default else "")
        lines.append(f"| {name} | {first_stage_text(spec)} | {rerank_text(spec.rerank)} | {weights_text(spec)} |")
    return "\n".join(lines) + "\n"


def _summary(spec: MethodSpec) -> dict[str, Any]:
    return {
        "name": spec.name, "default": spec.default, "summary": spec.summary, "paper": spec.paper,
        "first_stage": spec.first_stage, "first_stage_text": first_stage_text(spec),
        "rerank_top": spec.rerank.rerank_top, "rerank_text": rerank_text(spec.rerank),
        "needs_weights": spec.needs_weights, "extras": list(spec.extras),
        "weights": [w.name for w in spec.weights], "training": spec.training,
        "capabilities": sorted(spec.capabilities),
    }


def _label(spec: MethodSpec) -> str:
    return spec.name + (" (default)" if spec.default else "")


def _value(value: Any) -> str:
    """A default as ``--set`` takes it (JSON)."""
    return json.dumps(value)


# -- commands --------------------------------------------------------------------------------------------
@app.callback(invoke_without_command=True)
def list_command(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON."),
) -> None:
    """List every registered method: first stage, re-ranking, weights, extras, summary."""
    if ctx.invoked_subcommand is not None:
        return
    specs = methods.all_specs()
    if as_json:
        print(json.dumps([_summary(s) for s in specs], indent=2))
        return
    table = Table(title="methods (--method); 'glocal methods show NAME' lists the options", box=box.SIMPLE_HEAD)
    table.add_column("method", no_wrap=True, min_width=max(len(_label(s)) for s in specs))
    table.add_column("first stage", no_wrap=True)
    table.add_column("re-rank", justify="right", no_wrap=True)
    table.add_column("weights", no_wrap=True)
    table.add_column("extras", no_wrap=True)
    table.add_column("summary")
    for s in specs:
        table.add_row(_label(s), s.first_stage, str(s.rerank.rerank_top) if s.rerank.rerank_top else "none",
                      "yes" if s.needs_weights else "no", ", ".join(s.extras) or "-", s.summary)
    out.print(table)


@app.command("show")
def show_command(
    name: str = typer.Argument(..., help="A method name from 'glocal methods'."),
    as_json: bool = typer.Option(False, "--json", help="Print the method and its options as JSON."),
) -> None:
    """Every option of a method, grouped (extractor, index, search, rerank), with type, default and help;
    change one with --set KEY=VALUE (or --set GROUP.KEY=VALUE)."""
    spec = methods.get(name)  # an unknown name: BadOptionError listing the known ones (exit status 2)
    infos = spec.describe()
    if as_json:
        payload = _summary(spec) | {"options": {g: [
            {"name": i.name, "type": i.type, "default": i.default, "help": i.help,
             "choices": list(i.choices) if i.choices is not None else None}
            for i in infos if i.group == g] for g in GROUPS}}
        print(json.dumps(payload, indent=2))
        return
    lines = [f"{_label(spec)}: {spec.summary}",
             f"  paper: {spec.paper}",
             f"  first stage: {first_stage_text(spec)}",
             f"  re-ranking: {rerank_text(spec.rerank)}",
             f"  needs weights: {weights_text(spec).replace('`', '')}; extras: {', '.join(spec.extras) or 'none'}; "
             f"training: {spec.training}"]
    if spec.fixed:
        lines.append("  fixed: " + ", ".join(f"{k}={_value(v)}" for k, v in spec.fixed.items()))
    width = max(len(i.name) for i in infos)
    type_width = max(len(i.type) for i in infos)
    for group in GROUPS:
        group_infos = [i for i in infos if i.group == group]
        if not group_infos:
            continue
        lines += ["", _GROUP_TITLES[group]]
        for i in group_infos:
            choices = f" (one of: {', '.join(map(str, i.choices))})" if i.choices is not None else ""
            lines.append(f"  {i.name:<{width}}  {i.type:<{type_width}}  = {_value(i.default)}  {i.help}{choices}")
    lines += ["", "change one with --set KEY=VALUE (VALUE as JSON), or --set GROUP.KEY=VALUE"]
    typer.echo("\n".join(lines))
