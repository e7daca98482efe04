"""Progress reporting for long work: library functions take a factory, the CLI gives a rich one."""
from __future__ import annotations

from collections.abc import Callable

Advance = Callable[[int], None]
Progress = Callable[[str, int], Advance]
"""``progress(description, total)`` starts a task and returns ``advance(n)``."""


def no_progress(description: str, total: int) -> Advance:
    return lambda n: None


def rich_progress(description: str, total: int) -> Advance:
    """A rich progress bar on stderr that closes itself when ``total`` steps are done."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    if total <= 0:
        return no_progress(description, total)
    bar = RichProgress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TimeRemainingColumn(), console=Console(stderr=True), transient=False,
    )
    task = bar.add_task(description, total=total)
    bar.start()
    state = {"done": 0}

    def advance(n: int) -> None:
        state["done"] += n
        bar.advance(task, n)
        if state["done"] >= total:
            bar.stop()

    return advance


def as_progress(progress: bool | Progress) -> Progress:
    """``True`` -> rich bars, ``False`` -> silent, a callable -> itself."""
    if callable(progress):
        return progress
    return rich_progress if progress else no_progress
