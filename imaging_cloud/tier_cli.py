"""`imaging-cloud lifecycle tier|restore|tiers`: move series between the hot and cold tiers."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from cloud.archive import Archive
from cloud.models import Instance, SeriesTier
from imaging_cloud.progress import add_progress_option, progress_bar, show_progress
from imaging_cloud.settings import load_settings

OpenArchive = Callable[[argparse.Namespace], Archive]


def _cold_after(args: argparse.Namespace) -> timedelta:
    days = args.cold_after
    if days is None:
        days = load_settings(data_dir=getattr(args, "data_dir", None)).cold_after_days
    return timedelta(days=days)


def _tier(args: argparse.Namespace, archive: Archive) -> int:
    cold_after = _cold_after(args)
    due = archive.tiering.due(cold_after, limit=args.limit)
    if args.dry_run:
        for series in due:
            print(
                f"{series.study_instance_uid} {series.series_instance_uid} "
                f"last used {series.last_access_at:%Y-%m-%d}"
            )
        print(f"{len(due)} series would move to the cold tier (dry run)")
        return 0
    with progress_bar(show_progress(args), "moving series to the cold tier", len(due)) as update:
        moved = archive.tiering.tier_due(cold_after, update, limit=args.limit)
    plain = sum(m.plain_bytes for m in moved)
    cold = sum(m.cold_bytes for m in moved)
    ratio = f", {plain / cold:.2f}x smaller" if cold else ""
    print(
        f"{len(moved)} series ({sum(m.instances for m in moved)} instances, "
        f"{plain / 1e6:.1f} MB) moved to the cold tier as {cold / 1e6:.1f} MB{ratio}"
    )
    return 0


def _restore(args: argparse.Namespace, archive: Archive) -> int:
    series = archive.tiering.cold_series(args.study)
    if not series:
        print(f"study {args.study}: nothing in the cold tier")
        return 0
    with progress_bar(show_progress(args), "restoring series", len(series)) as update:
        moved = archive.tiering.restore_study(args.study, update)
    seconds = sum(m.seconds for m in moved)
    print(
        f"study {args.study}: {len(moved)} series, {sum(m.instances for m in moved)} "
        f"instances restored to the hot tier in {seconds:.2f} s"
    )
    return 0


def _tiers(args: argparse.Namespace, archive: Archive) -> int:
    with archive.sessions() as session:
        counts = dict(
            session.execute(select(Instance.tier, func.count()).group_by(Instance.tier)).all()
        )
        bundles, cold_bytes, plain_bytes = session.execute(
            select(
                func.count(),
                func.coalesce(func.sum(SeriesTier.cold_bytes), 0),
                func.coalesce(func.sum(SeriesTier.plain_bytes), 0),
            ).where(SeriesTier.cold_key != "")
        ).one()
    report: dict[str, Any] = {
        "hotInstances": counts.get("hot", 0),
        "coldInstances": counts.get("cold", 0),
        "coldSeries": bundles,
        "coldBytes": cold_bytes,
        "coldPlainBytes": plain_bytes,
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"hot instances   {report['hotInstances']}")
    print(f"cold instances  {report['coldInstances']} in {bundles} series bundles")
    if cold_bytes:
        print(f"cold bytes      {cold_bytes / 1e6:.1f} MB ({plain_bytes / cold_bytes:.2f}x)")
    return 0


def add_tier_commands(commands: Any, *, opener: OpenArchive) -> None:
    """Add ``tier``, ``restore`` and ``tiers`` to the lifecycle group's subparsers."""

    def add(name: str, command: Callable[[argparse.Namespace, Archive], int], text: str) -> Any:
        parser = commands.add_parser(name, help=text, description=text)
        suppress = argparse.SUPPRESS  # leave a value the lifecycle group parsed alone
        parser.add_argument("--data-dir", type=Path, default=suppress, help="the node's data dir")
        parser.add_argument("--database-url", default=suppress, help="index URL")
        parser.add_argument("--blob-url", default=suppress, help="hot blob store URL")
        parser.add_argument("--kek-url", default=suppress, help="KEK provider")

        def run(args: argparse.Namespace) -> int:
            archive = opener(args)
            try:
                return command(args, archive)
            finally:
                archive.close()

        parser.set_defaults(handler=run)
        return parser

    tier = add(
        "tier",
        _tier,
        "move the series not used for --cold-after days to the cold tier (one zstd bundle "
        "each, checked before the hot copies are deleted)",
    )
    tier.add_argument(
        "--cold-after", type=float, metavar="DAYS", help="default: cold_after_days (365)"
    )
    tier.add_argument("--limit", type=int, help="at most this many series")
    tier.add_argument("--dry-run", action="store_true", help="list them, move nothing")
    add_progress_option(tier)

    restore = add("restore", _restore, "bring a study's cold series back to the hot tier")
    restore.add_argument("study", help="Study Instance UID")
    add_progress_option(restore)

    tiers = add("tiers", _tiers, "instances per tier and the cold tier's size")
    tiers.add_argument("--json", action="store_true")
