"""`imaging-cloud lifecycle classify|hold|release|extend|due|destroy|verify`: retention commands.

`add_retention_commands` adds them to the ``lifecycle`` command group's subparsers. Each
command opens the archive like ``serve`` (``--data-dir``, ``--database-url``, ``--blob-url``);
those options default to "not given", so a group that already defines them is not overridden.
``destroy`` shows what is due unless ``--execute --approved-by NAME`` is given.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from cloud.archive import Archive
from cloud.destruction import Destruction
from cloud.errors import ArchiveError
from cloud.retention import Actor, DueStudy, Retention
from cloud.retention_policy import POLICY_FILE, load_policy
from imaging_cloud.progress import add_progress_option, progress_bar, run_commands, show_progress
from imaging_cloud.settings import load_settings
from imaging_cloud.settings import open_archive as open_configured

OpenArchive = Callable[[argparse.Namespace], Archive]
Update = Callable[[int, int], None]


class CommandError(ArchiveError):
    """Options that do not go together; nothing was changed."""

    http_status = 400
    title = "Invalid command"


def open_archive(args: argparse.Namespace) -> Archive:
    """The archive named by the command's options (defaults: settings, env, data dir)."""
    settings = load_settings(
        data_dir=getattr(args, "data_dir", None),
        database_url=getattr(args, "database_url", None),
        blob_url=getattr(args, "blob_url", None),
        kek_url=getattr(args, "kek_url", None),
    )
    return open_configured(settings)


def _services(args: argparse.Namespace, archive: Archive) -> tuple[Retention, Destruction]:
    policy = load_policy(getattr(args, "policy", None) or POLICY_FILE)
    retention = Retention(archive, policy)
    return retention, Destruction(archive, retention)


def _console(name: str) -> Actor:
    return Actor(kind="system", name=f"console:{name}"[:128], role="platform_admin")


def _day(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from exc


# --- commands ------------------------------------------------------------------------------


def _classify(args: argparse.Namespace, archive: Archive) -> int:
    retention, _ = _services(args, archive)
    if args.study:
        edits = (args.category, args.level, args.retention_class)
        if any(value is not None for value in edits):
            if not args.by:
                raise CommandError("--by NAME is needed to edit a classification")
            found = retention.reclassify(
                args.study,
                actor=_console(args.by),
                category=args.category,
                level=args.level,
                retention_class=args.retention_class,
                approved_by=args.approved_by or "",
                reason=args.reason or "",
            )
        else:
            found = retention.classify(args.study)
        _print_json(found.as_dict(retention.policy, retention.today()))
        return 0
    written = retention.classify_all() if args.all else retention.classify_new()
    print(f"classified {written} studies")
    return 0


def _hold(args: argparse.Namespace, archive: Archive) -> int:
    retention, _ = _services(args, archive)
    found = retention.hold(args.study, reason=args.reason, actor=_console(args.by))
    print(f"study {args.study} is on legal hold: {found.hold_reason}")
    return 0


def _release(args: argparse.Namespace, archive: Archive) -> int:
    retention, _ = _services(args, archive)
    found = retention.release(args.study, actor=_console(args.by), reason=args.reason or "")
    print(f"study {args.study} is no longer on legal hold; retained until {found.retain_until}")
    return 0


def _extend(args: argparse.Namespace, archive: Archive) -> int:
    retention, _ = _services(args, archive)
    found = retention.extend(
        args.study,
        approved_by=args.approved_by,
        actor=_console(args.by or args.approved_by),
        until=args.until,
        years=args.years,
        reason=args.reason or "",
    )
    print(
        f"study {args.study} is retained until {found.retain_until} "
        f"(approved by {found.extended_by})"
    )
    return 0


def _due(args: argparse.Namespace, archive: Archive) -> int:
    retention, _ = _services(args, archive)
    due = retention.due_for_destruction(args.as_of, args.limit)
    _print_due(due, args.json, args.as_of or retention.today())
    return 0


def _print_due(due: list[DueStudy], as_json: bool, today: date) -> None:
    if as_json:
        for item in due:
            print(
                json.dumps(
                    {
                        "study_instance_uid": item.study_instance_uid,
                        "category": item.category,
                        "level": item.level,
                        "retention_class": item.retention_class,
                        "retain_until": item.retain_until.isoformat(),
                        "instances": item.instances,
                        "bytes": item.size_bytes,
                    }
                )
            )
        return
    for item in due:
        print(
            f"{item.study_instance_uid}\t{item.retention_class}\tlevel {item.level}\t"
            f"until {item.retain_until.isoformat()}\t{item.instances} instances\t"
            f"{item.size_bytes} bytes"
        )
    total = sum(item.size_bytes for item in due)
    print(f"{len(due)} studies due for destruction as of {today.isoformat()} ({total} bytes)")


def _destroy(args: argparse.Namespace, archive: Archive) -> int:
    retention, destruction = _services(args, archive)
    if not args.execute:
        due = _selected(retention.due_for_destruction(args.as_of, args.limit), args.study)
        _print_due(due, False, args.as_of or retention.today())
        print("dry run: nothing destroyed (use --execute --approved-by NAME)")
        return 0
    if args.as_of is not None:
        raise CommandError("--as-of previews only; destruction always uses today's date")
    if not args.approved_by:
        raise CommandError("--execute needs --approved-by NAME")
    due = _selected(retention.due_for_destruction(None, args.limit), args.study)
    actor, failures, done = _console(args.by or args.approved_by), 0, 0
    with progress_bar(show_progress(args), "destroying", len(due)) as update:
        for index, item in enumerate(due, start=1):
            try:
                result = destruction.destroy(
                    item.study_instance_uid, approved_by=args.approved_by, actor=actor
                )
                done += 1
                print(
                    f"destroyed {result.study_instance_uid}: record {result.seq}, "
                    f"{result.instances} instances, key destroyed: {result.key_destroyed}"
                )
            except ArchiveError as exc:
                failures += 1
                print(f"refused {item.study_instance_uid}: {exc.detail}", file=sys.stderr)
            update(index, len(due))
    print(f"destroyed {done} of {len(due)} studies due")
    return 1 if failures else 0


def _selected(due: list[DueStudy], studies: list[str] | None) -> list[DueStudy]:
    if not studies:
        return due
    wanted = set(studies)
    return [item for item in due if item.study_instance_uid in wanted]


def _verify(args: argparse.Namespace, archive: Archive) -> int:
    _, destruction = _services(args, archive)
    with progress_bar(show_progress(args), "verifying destruction records", 0) as update:
        report = destruction.verify(update)
    if report.ok:
        print(f"destruction records OK: {report.records} records, last seq {report.last_seq}")
        return 0
    for problem in report.problems:
        print(problem)
    print(
        f"destruction records BROKEN: {len(report.problems)} problems in {report.records} records"
    )
    return 1


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2))


# --- parsers -------------------------------------------------------------------------------


def _archive_options(parser: argparse.ArgumentParser) -> None:
    suppress = argparse.SUPPRESS  # leave a value the lifecycle group parsed alone
    parser.add_argument("--data-dir", type=Path, default=suppress, help="the node's data dir")
    parser.add_argument("--database-url", default=suppress, help="index URL (default SQLite)")
    parser.add_argument("--blob-url", default=suppress, help="blob store URL (default file://)")
    parser.add_argument("--kek-url", default=suppress, help="KEK provider (default in data dir)")
    parser.add_argument(
        "--policy",
        type=Path,
        default=suppress,
        help="retention policy file (default config/retention.toml)",
    )


def _runner(command: Callable[[argparse.Namespace, Archive], int], opener: OpenArchive) -> Any:
    def run(args: argparse.Namespace) -> int:
        archive = opener(args)
        try:
            return command(args, archive)
        finally:
            archive.close()

    return run


def add_retention_commands(commands: Any, *, opener: OpenArchive = open_archive) -> None:
    """Add the retention commands to ``commands`` (the ``lifecycle`` group's subparsers).

    ``opener`` opens the archive from the parsed options; pass the group's own if it wires
    more (e.g. the key store that crypto-shredding needs).
    """

    def add(name: str, command: Callable[[argparse.Namespace, Archive], int], text: str) -> Any:
        parser = commands.add_parser(name, help=text, description=text)
        _archive_options(parser)
        parser.set_defaults(handler=_runner(command, opener))
        return parser

    classify = add("classify", _classify, "classify studies by the retention policy")
    classify.add_argument(
        "--all", action="store_true", help="re-apply the policy to every policy-classified study"
    )
    classify.add_argument("--study", help="one study: show it, or edit it with the options below")
    classify.add_argument("--category")
    classify.add_argument("--level", type=int, choices=range(1, 6))
    classify.add_argument("--retention-class")
    classify.add_argument("--by", help="who edits (the audit log names them)")
    classify.add_argument("--approved-by", help="needed when an edit shortens retention")
    classify.add_argument("--reason")

    hold = add("hold", _hold, "put a study on legal hold (never destroyed while held)")
    hold.add_argument("study", help="Study Instance UID")
    hold.add_argument("--reason", required=True, help="case number, court order, ...")
    hold.add_argument("--by", required=True, help="who places the hold")

    release = add("release", _release, "end a study's legal hold")
    release.add_argument("study", help="Study Instance UID")
    release.add_argument("--by", required=True)
    release.add_argument("--reason")

    extend = add("extend", _extend, "keep a study longer, by approval")
    extend.add_argument("study", help="Study Instance UID")
    when = extend.add_mutually_exclusive_group(required=True)
    when.add_argument("--until", type=_day, help="new retain-until date (YYYY-MM-DD)")
    when.add_argument("--years", type=int, help="years added to the current retain-until")
    extend.add_argument("--approved-by", required=True)
    extend.add_argument("--by", help="who enters it (default: the approver)")
    extend.add_argument("--reason")

    due = add("due", _due, "list the studies due for destruction")
    due.add_argument("--as-of", type=_day, help="preview another day (YYYY-MM-DD)")
    due.add_argument("--limit", type=int)
    due.add_argument("--json", action="store_true", help="JSON lines")

    destroy = add("destroy", _destroy, "destroy the studies due (a dry run unless --execute)")
    mode = destroy.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run",
        dest="execute",
        action="store_false",
        default=False,
        help="show what is due and change nothing (the default)",
    )
    mode.add_argument(
        "--execute",
        dest="execute",
        action="store_true",
        help="crypto-shred and delete, appending destruction records",
    )
    destroy.add_argument("--approved-by", help="who approved this destruction (with --execute)")
    destroy.add_argument("--by", help="who runs it (default: the approver)")
    destroy.add_argument("--study", action="append", help="only this study (repeatable)")
    destroy.add_argument("--as-of", type=_day, help="dry run only: preview another day")
    destroy.add_argument("--limit", type=int)
    add_progress_option(destroy)

    verify = add("verify", _verify, "check the destruction records; exit 1 with the problems")
    add_progress_option(verify)


def main(argv: list[str] | None = None) -> int:
    """Run the retention commands on their own: ``python -m imaging_cloud.retention_cli``."""
    return run_commands(add_retention_commands, argv, __doc__ or "")


if __name__ == "__main__":
    sys.exit(main())
