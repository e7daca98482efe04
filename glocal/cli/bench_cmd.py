"""``glocal bench extract|memory``: the latency / memory table of the papers (DELG appendix Table 1) measured
from our code (:mod:`glocal.evaluate.bench`), printed as markdown or ``--json``."""
from __future__ import annotations

import json
from typing import Optional

import typer

from glocal.cli.common import out

app = typer.Typer(help="Extraction latency and index memory per method, next to the papers' figures.",
                  no_args_is_help=True)


def _methods(given: list[str]) -> list[str]:
    from glocal import methods
    from glocal.errors import BadOptionError

    names = [n for g in given for n in g.split(",") if n] or methods.names()
    unknown = [n for n in names if n not in methods.names()]
    if unknown:
        raise BadOptionError(f"--methods: unknown {', '.join(unknown)}; 'glocal methods' lists them")
    return names


@app.command("extract")
def extract_command(
    method_names: list[str] = typer.Option([], "--methods", "-m", help="Methods (repeatable or comma-separated; "
                                           "default: every method)."),
    scales: list[int] = typer.Option([1, 3], "--scales", help="Pyramid sizes timed: 1, 3, 5 or 7 (repeatable)."),
    runtimes: list[str] = typer.Option(["torch"], "--runtime", help="CPU runtimes: torch (channels_last), "
                                       "torch-nchw, torch-bf16, onnx, each where the method offers it (repeatable)."),
    repeats: int = typer.Option(3, "--repeats", help="Timed calls per row (after the warm-up)."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed calls first."),
    size: int = typer.Option(1024, "--size", help="Side of the square test image in pixels."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Torch CPU threads (default: torch's)."),
    batch: int = typer.Option(4, "--batch", help="GPU only: images per batched call."),
    with_memory: bool = typer.Option(False, "--with-memory", help="Also build the memory rows and print the "
                                     "papers' table (method, extraction ms, memory R1M)."),
    images: int = typer.Option(10, "--images", help="With --with-memory: generated photos indexed per method."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of markdown."),
) -> None:
    """Median and p95 milliseconds per image of each method x configuration x runtime, and the memory added."""
    from glocal.errors import BadOptionError
    from glocal.evaluate.bench import bench_extract, bench_memory, extract_markdown, memory_markdown, seeds_table

    if repeats < 1 or warmup < 0 or size < 32:
        raise BadOptionError("--repeats must be >= 1, --warmup >= 0 and --size >= 32")
    names = _methods(method_names)
    rows, notes = bench_extract(names, scales=scales, runtimes=runtimes, repeats=repeats, warmup=warmup, size=size,
                                threads=threads, batch=batch)
    memory = bench_memory(names, images=images, size=size) if with_memory else []
    if as_json:
        print(json.dumps({"extract": rows, "notes": notes, "memory": memory}))
        return
    out.print(extract_markdown(rows, notes), markup=False, highlight=False, soft_wrap=True)
    if with_memory:
        out.print("\n" + memory_markdown(memory) + "\n\n" + seeds_table(rows, memory), markup=False,
                  highlight=False, soft_wrap=True)


@app.command("memory")
def memory_command(
    method_names: list[str] = typer.Option([], "--methods", "-m", help="Methods (repeatable or comma-separated; "
                                           "default: every method)."),
    images: int = typer.Option(10, "--images", help="Generated photos indexed per method."),
    size: int = typer.Option(1024, "--size", help="Side of the generated photos in pixels."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of markdown."),
) -> None:
    """Bytes per database image of a real index built on generated photos, scaled to R1M (1,001,001 images)."""
    from glocal.errors import BadOptionError
    from glocal.evaluate.bench import bench_memory, memory_markdown

    if images < 1 or size < 32:
        raise BadOptionError("--images must be >= 1 and --size >= 32")
    rows = bench_memory(_methods(method_names), images=images, size=size)
    if as_json:
        print(json.dumps({"memory": rows}))
        return
    out.print(memory_markdown(rows), markup=False, highlight=False, soft_wrap=True)
