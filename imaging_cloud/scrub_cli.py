"""`imaging-cloud lifecycle scrub`: re-read every stored copy, verify, repair, report.

`add_scrub_commands` adds the command to the ``lifecycle`` group's subparsers. It opens the
archive like ``serve`` (``--data-dir``, ``--database-url``, ``--blob-url``, ``--kek-url``).
Exit status: 0 clean (copies repaired are printed, but count as clean), 1 problems left (an
unreachable replica, a repair that could not be written, ``--no-repair``), 2 something has no
intact copy left. Orphan blobs (``--orphans``) are listed and never change the status.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloud.archive import Archive
from cloud.scrub import Scrubber
from imaging_cloud.progress import add_progress_option, progress_bar, run_commands, show_progress
from imaging_cloud.retention_cli import open_archive

OpenArchive = Callable[[argparse.Namespace], Archive]


def _scrub(args: argparse.Namespace, archive: Archive) -> int:
    with progress_bar(show_progress(args), "scrubbing") as update:
        report = Scrubber(archive, batch_size=args.batch_size).run(
            update, repair=args.repair, limit=args.limit, orphans=args.orphans
        )
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.as_text())
    return report.exit_status


def _archive_options(parser: argparse.ArgumentParser) -> None:
    suppress = argparse.SUPPRESS  # leave a value the lifecycle group parsed alone
    parser.add_argument("--data-dir", type=Path, default=suppress, help="the node's data dir")
    parser.add_argument("--database-url", default=suppress, help="index URL (default SQLite)")
    parser.add_argument("--blob-url", default=suppress, help="blob store URL (default file://)")
    parser.add_argument("--kek-url", default=suppress, help="KEK provider (default in data dir)")


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def add_scrub_commands(commands: Any, *, opener: OpenArchive = open_archive) -> None:
    """Add ``scrub`` to ``commands`` (the ``lifecycle`` group's subparsers); ``opener`` opens
    the archive from the parsed options."""
    text = "re-read every stored copy, verify its SHA-256, repair from a good copy, report"
    scrub = commands.add_parser(
        "scrub",
        help=text,
        description=f"{text[0].upper()}{text[1:]}. Exit status 0: clean (or all repaired), "
        "1: problems left, 2: objects without an intact copy.",
    )
    _archive_options(scrub)
    scrub.add_argument(
        "--repair",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="rewrite missing and damaged copies from an intact one (default: yes)",
    )
    scrub.add_argument("--json", action="store_true", help="the report as JSON")
    scrub.add_argument(
        "--orphans",
        action="store_true",
        help="also list every blob and report those no index row references (slow)",
    )
    scrub.add_argument("--limit", type=_positive, help="check at most N objects")
    scrub.add_argument("--batch-size", type=_positive, default=500, help="index rows per query")
    add_progress_option(scrub)

    def run(args: argparse.Namespace) -> int:
        archive = opener(args)
        try:
            return _scrub(args, archive)
        finally:
            archive.close()

    scrub.set_defaults(handler=run)


def main(argv: list[str] | None = None) -> int:
    """Run the scrub on its own: ``python -m imaging_cloud.scrub_cli``."""
    return run_commands(add_scrub_commands, argv, __doc__ or "")


if __name__ == "__main__":
    sys.exit(main())
