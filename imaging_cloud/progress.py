"""One progress bar for the long CLI jobs (audit verify/export, key rotation, destruction)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

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


def add_progress_option(parser: argparse.ArgumentParser) -> None:
    """``--progress/--no-progress``, read back by `show_progress`."""
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


def run_commands(add_commands: Callable[[Any], None], argv: list[str] | None, doc: str) -> int:
    """Run one module's lifecycle commands on their own (``python -m imaging_cloud.X_cli``),
    with the refusals printed as ``imaging-cloud`` prints them."""
    from cloud.errors import ArchiveError  # here: the progress bar needs nothing of the archive

    parser = argparse.ArgumentParser(prog="imaging-cloud lifecycle", description=doc)
    add_commands(parser.add_subparsers(dest="lifecycle_command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except ArchiveError as exc:
        print(f"imaging-cloud: {exc.title}: {exc.detail}", file=sys.stderr)
        return 1
