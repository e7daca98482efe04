"""The ``glocal`` command line: thin wrappers around the library."""
from __future__ import annotations

from pathlib import Path

import typer

from glocal import __version__
from glocal.cli import index_cmd
from glocal.cli.common import out
from glocal.cli.search_cmd import search

app = typer.Typer(
    help="glocal: landmark and instance-level image retrieval (index a folder, search it, evaluate).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(index_cmd.app, name="index")
app.command("search")(search)


@app.command("demo")
def demo(
    out_dir: Path = typer.Option(Path("demo_output"), "--out", "-o", help="Folder for the benchmark, index and page."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Build a small landmark-like benchmark from scikit-image photos, index, search, score, write a page."""
    import time

    from glocal.cli.common import show_progress
    from glocal.demo.run import run_demo

    t0 = time.perf_counter()
    res = run_demo(out_dir, seed=seed, progress=show_progress())
    b = res.benchmark
    out.print(f"benchmark: {len(b.db_names)} database images, {len(b.query_names)} queries (with boxes)")
    out.print("           ASMK* shortlist only    | + spatial verification (top 100)")
    for name, r in res.setups.items():
        s = res.shortlist_setups[name]
        out.print(f"  {name:>6}: mAP {s.map * 100:5.1f}  mP@10 {s.mp[10] * 100:5.1f} | "
                  f"mAP {r.map * 100:5.1f}  mP@1 {r.mp[1] * 100:5.1f}  mP@10 {r.mp[10] * 100:5.1f}")
    timing = ", ".join(f"{k} {v:.1f} s" for k, v in res.seconds.items())
    out.print(f"time: {time.perf_counter() - t0:.1f} s ({timing})")
    out.print(f"page: {res.page}")


def _register_optional() -> None:
    """Commands written in their own modules (evaluation, datasets)."""
    try:
        from glocal.cli.eval_cmd import eval_command

        app.command("eval")(eval_command)
    except ImportError:  # pragma: no cover - during development only
        pass
    try:
        from glocal.cli.datasets_cmd import download_command

        datasets = typer.Typer(help="Download benchmark datasets.", no_args_is_help=True)
        datasets.command("download")(download_command)
        app.add_typer(datasets, name="datasets")
    except ImportError:  # pragma: no cover
        pass
    from glocal.cli import weights_cmd

    app.add_typer(weights_cmd.app, name="weights")
    # imports FastAPI / uvicorn only when run; without the [serve] extras it exits with EXIT_INPUT and a hint
    from glocal.cli.serve_cmd import serve_command

    app.command("serve")(serve_command)
    from glocal.cli.visualize_cmd import attention_command
    from glocal.cli.whiten_cmd import whiten_command

    app.command("whiten")(whiten_command)

    visualize = typer.Typer(help="Pictures of what a model looks at.", no_args_is_help=True)
    visualize.command("attention")(attention_command)
    app.add_typer(visualize, name="visualize")


_register_optional()


@app.callback(invoke_without_command=True)
def main(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        out.print(f"glocal {__version__}")
        raise typer.Exit(0)


if __name__ == "__main__":  # pragma: no cover
    app()
