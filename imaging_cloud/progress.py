"""One progress bar for the long CLI jobs (audit verify/export, key rotation, destruction)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

Update = Callable[[int, int | None], None]


@contextmanager
def progress_bar(enabled: bool, description: str, total: int | None = None) -> Iterator[Update]:
    """A rich progress bar on stderr, or a no-op update when disabled."""
    if not enabled:
        yield lambda _done, _total: None
        return
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)

        def update(done: int, new_total: int | None) -> None:
            bar.update(task, completed=done, total=new_total)

        yield update


def show_progress(args: argparse.Namespace) -> bool:
    """``--progress``/``--no-progress`` if given, else only when stderr is a terminal."""
    chosen = getattr(args, "progress", None)
    return sys.stderr.isatty() if chosen is None else bool(chosen)
