"""The ``glocal`` command line: thin wrappers around the library.

Errors are reported in one place, :class:`GlocalGroup` (the click group behind :data:`app`): any
:class:`glocal.errors.GlocalError` a command raises becomes ``error: <message>`` on one line of stderr and
its :attr:`~glocal.errors.GlocalError.exit_status`; any other exception becomes ``error: internal error:
...`` and :data:`glocal.errors.EXIT_INTERNAL`. ``--debug`` (or ``GLOCAL_DEBUG=1``) also prints the
traceback. The console script (:func:`run`), ``python -m glocal`` and ``CliRunner().invoke(app, ...)`` all
go through the group's ``main``, so they behave the same. Click's usage errors keep status 2.
"""
from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from glocal import __version__
from glocal.cli import index_cmd, methods_cmd
from glocal.cli.common import out
from glocal.cli.search_cmd import search
from glocal.errors import EXIT_INTERNAL, GlocalError


def _debug_from_env() -> bool:
    return os.environ.get("GLOCAL_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


class GlocalGroup(TyperGroup):
    """The top-level group: runs the command and maps the error family to one line and an exit status."""

    #: set while parsing by the ``--debug`` option (eager), reset by every :meth:`main`
    debug = False

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        GlocalGroup.debug = _debug_from_env()
        if not standalone_mode:  # a caller that asked for exceptions gets them
            return super().main(*args, standalone_mode=False, **kwargs)
        try:  # typer's own main has already turned its usage errors, Exit and Abort into SystemExit
            return super().main(*args, standalone_mode=True, **kwargs)
        except GlocalError as exc:
            _report(exc, f"error: {_one_line(str(exc)) or type(exc).__name__}")
            sys.exit(exc.exit_status)
        except Exception as exc:
            detail = _one_line(str(exc))
            _report(exc, f"error: internal error: {type(exc).__name__}{': ' + detail if detail else ''}"
                    + ("" if GlocalGroup.debug else " (run with --debug for the traceback)"))
            sys.exit(EXIT_INTERNAL)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _report(exc: BaseException, line: str) -> None:
    if GlocalGroup.debug:
        traceback.print_exception(exc, file=sys.stderr)
    typer.echo(line, err=True)


def _set_debug(value: bool) -> bool:
    if value:
        GlocalGroup.debug = True
    return value


app = typer.Typer(
    cls=GlocalGroup,
    help="glocal: landmark and instance-level image retrieval (index a folder, search it, evaluate).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(methods_cmd.app, name="methods")
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
    from glocal.cli import bench_cmd, weights_cmd
    from glocal.cli.doctor_cmd import doctor_command
    from glocal.cli.extract_cmd import extract_command

    app.command("extract")(extract_command)
    app.add_typer(weights_cmd.app, name="weights")
    app.add_typer(bench_cmd.app, name="bench")
    app.command("doctor")(doctor_command)
    # imports FastAPI / uvicorn only when run; without the [serve] extras it exits with EXIT_INPUT and a hint
    from glocal.cli.serve_cmd import serve_command

    app.command("serve")(serve_command)
    from glocal.cli.visualize_cmd import attention_command
    from glocal.cli.whiten_cmd import whiten_command

    app.command("whiten")(whiten_command)
    from glocal.cli.train_cmd import train_command

    app.command("train")(train_command)

    visualize = typer.Typer(help="Pictures of what a model looks at.", no_args_is_help=True)
    visualize.command("attention")(attention_command)
    app.add_typer(visualize, name="visualize")


_register_optional()


@app.callback(invoke_without_command=True)
def main(
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", is_eager=True, callback=_set_debug,
                               help="Show the traceback of an error (also GLOCAL_DEBUG=1)."),
) -> None:
    if version:
        out.print(f"glocal {__version__}")
        raise typer.Exit(0)


def run() -> None:
    """The ``glocal`` console script and ``python -m glocal``: errors are mapped by :class:`GlocalGroup`."""
    app(prog_name="glocal")


if __name__ == "__main__":  # pragma: no cover
    run()
