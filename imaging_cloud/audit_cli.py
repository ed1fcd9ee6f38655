"""`imaging-cloud audit verify|search|export`, and the audit log's wiring into a node."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from cloud.archive import Archive
from cloud.audit_anomalies import AnomalyDetector, AnomalyPolicy
from cloud.audit_export import FORMATS, export_lines, jsonl_line
from cloud.audit_query import AuditFilter, parse_moment
from cloud.errors import InvalidQueryError
from imaging_cloud.progress import add_progress_option, progress_bar, show_progress
from imaging_cloud.settings import Settings, load_settings, open_archive

# --- wiring --------------------------------------------------------------------------------


def anomaly_policy(settings: Settings) -> AnomalyPolicy:
    return AnomalyPolicy(
        address_history_days=settings.audit_address_history_days,
        working_hours_start=settings.audit_working_hours_start,
        working_hours_end=settings.audit_working_hours_end,
        timezone=settings.audit_timezone,
        burst_downloads=settings.audit_burst_downloads,
        burst_minutes=settings.audit_burst_minutes,
        denied_attempts=settings.audit_denied_attempts,
        denied_minutes=settings.audit_denied_minutes,
        mass_deletions=settings.audit_mass_deletions,
        deletion_minutes=settings.audit_deletion_minutes,
        dedup_minutes=settings.audit_alert_dedup_minutes,
    )


def install_audit(archive: Archive, settings: Settings) -> AnomalyDetector:
    """Configure a node's audit log: viewing-session timeout, the flusher thread and anomaly
    detection. Stop it with ``archive.audit.close()`` and the detector's ``close()``."""
    archive.audit.view_idle_seconds = settings.audit_view_idle_seconds
    detector = AnomalyDetector(
        archive.sessions, anomaly_policy(settings), settings.alert_webhook_url
    )
    archive.audit.detector = detector
    archive.audit.start_flusher(settings.audit_view_flush_seconds)
    return detector


# --- commands ------------------------------------------------------------------------------


def _moment(text: str) -> datetime:
    try:
        return parse_moment(text)
    except InvalidQueryError as exc:
        raise argparse.ArgumentTypeError(exc.detail) from exc


def _open(args: argparse.Namespace) -> Archive:
    settings = load_settings(
        data_dir=args.data_dir, database_url=args.database_url, blob_url=args.blob_url
    )
    return open_archive(settings)


def _verify(args: argparse.Namespace) -> int:
    archive = _open(args)
    try:
        total = archive.audit.last_seq()
        with progress_bar(show_progress(args), "verifying audit chain", total) as update:
            report = archive.audit.verify(update, batch_size=args.batch_size)
    finally:
        archive.close()
    if report.ok:
        print(f"audit chain OK: {report.entries} entries, last hash {report.last_hash}")
        return 0
    for problem in report.problems:
        print(problem)
    print(f"audit chain BROKEN: {len(report.problems)} problems in {report.entries} entries")
    return 1


def _filters(args: argparse.Namespace, **extra: Any) -> AuditFilter:
    return AuditFilter(
        actor=args.actor or "",
        action=args.action or "",
        outcome=args.outcome or "",
        study_instance_uid=args.study or "",
        patient_id=args.patient_id or "",
        hospital_id=args.hospital or "",
        since=args.since,
        until=args.until,
        **extra,
    )


def _search(args: argparse.Namespace) -> int:
    archive = _open(args)
    try:
        events = archive.audit.search(_filters(args, limit=args.limit, offset=args.offset))
    finally:
        archive.close()
    for event in events:
        sys.stdout.write(jsonl_line(event) if args.json else _row(event))
    return 0


def _row(event: dict[str, Any]) -> str:
    who = f"{event['actor_kind']}:{event['actor']}"
    role = event["role"] + (f"@{event['hospital_id']}" if event["hospital_id"] else "")
    duration = "" if event["duration_seconds"] is None else f"{event['duration_seconds']}s"
    fields = (
        str(event["seq"]),
        str(event["at"]),
        who,
        role or "-",
        event["action"],
        event["outcome"],
        event["study_instance_uid"] or "-",
        event["client_address"] or "-",
        duration,
    )
    return "\t".join(fields).rstrip() + "\n"


def _export(args: argparse.Namespace) -> int:
    archive = _open(args)
    try:
        total = archive.audit.last_seq()
        events = archive.audit.iter_events(_filters(args), batch_size=args.batch_size)
        to_file = args.output is not None and str(args.output) != "-"
        show = show_progress(args) and to_file
        with progress_bar(show, "exporting audit log", total) as update:
            if to_file:
                with args.output.open("w", encoding="utf-8", newline="\n") as out:
                    count = _write(out, export_lines(events, args.format), update, total)
            else:
                count = _write(sys.stdout, export_lines(events, args.format), update, total)
    finally:
        archive.close()
    if to_file:
        print(f"exported {count} audit entries to {args.output}", file=sys.stderr)
    return 0


def _write(
    out: TextIO, lines: Iterator[str], update: Callable[[int, int | None], None], total: int
) -> int:
    count = 0
    for count, line in enumerate(lines, start=1):
        out.write(line)
        if count % 1000 == 0:
            update(count, total)
    return count


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="the cloud node's data dir")
    parser.add_argument("--database-url", help="index URL; default SQLite in the data dir")
    parser.add_argument("--blob-url", help="blob store URL; default file:// in the data dir")


def _add_filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--actor", help="username, patient:<id> or share-link:<n>")
    parser.add_argument("--action", help="view, view_end, download, search, access, ...")
    parser.add_argument("--outcome", choices=["allowed", "denied"])
    parser.add_argument("--study", help="Study Instance UID")
    parser.add_argument("--patient-id")
    parser.add_argument("--hospital", help="the actor's hospital id")
    parser.add_argument("--since", type=_moment, help="ISO 8601, UTC unless an offset is given")
    parser.add_argument("--until", type=_moment, help="ISO 8601 (exclusive)")


def _add_progress(parser: argparse.ArgumentParser) -> None:
    add_progress_option(parser)
    parser.add_argument("--batch-size", type=int, default=5000, help=argparse.SUPPRESS)


def add_audit_commands(commands: Any) -> None:
    audit = commands.add_parser("audit", help="check, search and export the audit log")
    actions = audit.add_subparsers(dest="audit_command", required=True)
    verify = actions.add_parser("verify", help="check the hash chain; exit 1 if it is broken")
    _add_options(verify)
    _add_progress(verify)
    verify.set_defaults(handler=_verify)
    search = actions.add_parser("search", help="list entries, newest first")
    _add_options(search)
    _add_filters(search)
    search.add_argument("--limit", type=int, default=100)
    search.add_argument("--offset", type=int, default=0)
    search.add_argument("--json", action="store_true", help="JSON lines instead of columns")
    search.set_defaults(handler=_search)
    export = actions.add_parser("export", help="write entries as JSON lines or RFC 5424 syslog")
    _add_options(export)
    _add_filters(export)
    _add_progress(export)
    export.add_argument("--format", choices=FORMATS, default="jsonl")
    export.add_argument("-o", "--output", type=Path, help="file to write (default stdout)")
    export.set_defaults(handler=_export)
