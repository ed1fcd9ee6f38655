"""`imaging-cloud lifecycle backup-index|list-backups|verify-backup|restore-index`.

`add_backup_commands` adds them to the ``lifecycle`` group's subparsers. ``backup-index``
opens the archive like ``serve`` (through the group's opener). The other three need only the
KEKs and the backup directory (default ``<data-dir>/backups/index``), so they work when the
index itself is lost. Backups hold the index only: blobs and KEKs are kept apart.

``restore-index`` never replaces a database in use: an existing SQLite index needs
``--force`` and is kept aside, and is refused while any process (a running node) has it open;
a PostgreSQL target must be empty. Stop the node, restore, then start it on the restored index.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from cloud.crypto import open_keks
from cloud.database import sqlite_url
from cloud.index_backup import DEFAULT_KEEP, BackupInfo, IndexBackups
from imaging_cloud.progress import add_progress_option, progress_bar, run_commands, show_progress
from imaging_cloud.retention_cli import CommandError, OpenArchive, open_archive
from imaging_cloud.settings import Settings, load_settings


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(
        data_dir=getattr(args, "data_dir", None),
        database_url=getattr(args, "database_url", None),
        blob_url=getattr(args, "blob_url", None),
        kek_url=getattr(args, "kek_url", None),
    )


def _directory(args: argparse.Namespace, settings: Settings) -> Path:
    return getattr(args, "dir", None) or settings.data_dir / "backups" / "index"


def _offline(args: argparse.Namespace) -> tuple[IndexBackups, Settings]:
    """The backups, with the KEKs but without the index (which may be the thing lost)."""
    settings = _settings(args)
    keks_dir = (settings.data_dir / "keys" / "kek").resolve()
    keks = open_keks(settings.kek_url or f"file://{keks_dir}")
    backups = IndexBackups(None, _directory(args, settings), keks, scratch=settings.data_dir)
    return backups, settings


def _chosen(backups: IndexBackups, reference: str | None) -> BackupInfo:
    if reference:
        return backups.find(reference)
    latest = backups.latest()
    if latest is None:
        raise CommandError(f"no index backups in {backups.directory}")
    return latest


def _describe(backup: BackupInfo) -> str:
    schema = f", schema {backup.schema}" if backup.schema else ""
    return (
        f"{backup.name}\t{backup.created_at:%Y-%m-%d %H:%M:%S}Z\t{backup.dialect}{schema}\t"
        f"revision {backup.revision or '?'}\t{backup.size_bytes} bytes\t"
        f"{backup.stored_bytes} stored\tKEK {backup.kek_id}"
    )


# --- commands ------------------------------------------------------------------------------


def _backup_index(args: argparse.Namespace, opener: OpenArchive) -> int:
    settings = _settings(args)
    archive = opener(args)
    try:
        backups = IndexBackups(
            archive.engine,
            _directory(args, settings),
            archive.keys.keks,
            keep=args.keep or DEFAULT_KEEP,
        )
        if args.if_due and not backups.due():
            newest = backups.latest()
            when = f"{newest.created_at:%Y-%m-%d %H:%M:%S}Z" if newest else "none"
            print(f"no backup due (every {backups.interval()}; newest {when})")
            return 0
        started = time.monotonic()
        with progress_bar(show_progress(args), "backing up the index") as update:
            backup = backups.create(progress=update)
        seconds = time.monotonic() - started
    finally:
        archive.close()
    print(f"backed up the index to {backup.path} in {seconds:.2f} s")
    print(_describe(backup))
    return 0


def _list_backups(args: argparse.Namespace) -> int:
    backups, _ = _offline(args)
    found = backups.list()
    if args.json:
        documents = [{**backup.as_dict(), "path": str(backup.path)} for backup in found]
        print(json.dumps(documents, indent=2))
        return 0
    for backup in found:
        print(_describe(backup))
    print(f"{len(found)} index backups in {backups.directory}")
    return 0


def _verify_backup(args: argparse.Namespace) -> int:
    backups, _ = _offline(args)
    backup = _chosen(backups, args.backup)
    started = time.monotonic()
    with progress_bar(show_progress(args), "verifying", backup.size_bytes) as update:
        backups.verify(backup, progress=update)
    print(f"{backup.name} OK ({time.monotonic() - started:.2f} s): sha256 {backup.sha256}")
    return 0


def _restore_index(args: argparse.Namespace) -> int:
    backups, _ = _offline(args)
    backup = backups.find(args.backup)
    if args.to_data_dir is not None:
        if backup.dialect != "sqlite":
            raise CommandError(f"{backup.name} is a PostgreSQL dump: use --to-database-url")
        target = sqlite_url(args.to_data_dir)
    else:
        target = args.to_database_url
    started = time.monotonic()
    with progress_bar(show_progress(args), "restoring", backup.size_bytes) as update:
        backups.restore(backup, target, force=args.force, progress=update)
    print(
        f"restored {backup.name} (taken {backup.created_at:%Y-%m-%d %H:%M:%S}Z, revision "
        f"{backup.revision or '?'}) in {time.monotonic() - started:.2f} s"
    )
    print(
        "start the node on it with the same blob store and KEKs (they are not in the backup); "
        "it migrates the index to the current revision on start"
    )
    return 0


# --- parsers -------------------------------------------------------------------------------


def _common_options(parser: argparse.ArgumentParser) -> None:
    suppress = argparse.SUPPRESS  # leave a value the lifecycle group parsed alone
    parser.add_argument("--data-dir", type=Path, default=suppress, help="the node's data dir")
    parser.add_argument("--database-url", default=suppress, help="index URL (default SQLite)")
    parser.add_argument("--blob-url", default=suppress, help="blob store URL (default file://)")
    parser.add_argument("--kek-url", default=suppress, help="KEK provider (default in data dir)")
    parser.add_argument(
        "--dir", type=Path, help="backup directory (default <data-dir>/backups/index)"
    )
    add_progress_option(parser)


def add_backup_commands(commands: Any, *, opener: OpenArchive = open_archive) -> None:
    """Add the index backup commands to ``commands`` (the ``lifecycle`` group's subparsers);
    ``opener`` opens the archive from the parsed options, for ``backup-index``."""

    def add(name: str, text: str, description: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(
            name, help=text, description=description
        )
        _common_options(parser)
        return parser

    backup = add(
        "backup-index",
        "back up the index now (encrypted, compressed; older backups pruned)",
        "Take a consistent online snapshot of the index (SQLite backup API or pg_dump), "
        "compress and encrypt it under the current KEK, and keep the newest --keep backups.",
    )
    backup.add_argument("--keep", type=int, help=f"backups kept (default {DEFAULT_KEEP})")
    backup.add_argument(
        "--if-due",
        action="store_true",
        help="only if due: hourly with studies of level 3 or higher, else daily (for cron)",
    )
    backup.set_defaults(handler=lambda args: _backup_index(args, opener))

    listing = add("list-backups", "list the index backups, newest first", "List index backups.")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_list_backups)

    verify = add(
        "verify-backup",
        "decrypt and check an index backup (default: the newest)",
        "Decrypt and decompress a backup, check it against its manifest's sha256, and check "
        "the database inside (SQLite integrity_check; pg_restore reads the dump whole).",
    )
    verify.add_argument("backup", nargs="?", help="file name in the backup dir, or a path")
    verify.set_defaults(handler=_verify_backup)

    restore = add(
        "restore-index",
        "restore an index backup into a new location",
        "Restore a backup after checking it. Into a data dir (SQLite): an existing index is "
        "replaced only with --force, kept aside, and never while a node has it open. Into a "
        "PostgreSQL URL: the database (or the schema named by options=-csearch_path=...) must "
        "be empty; the restore is one transaction.",
    )
    restore.add_argument("backup", help="file name in the backup dir, or a path")
    target = restore.add_mutually_exclusive_group(required=True)
    target.add_argument("--to-database-url", help="PostgreSQL (or sqlite:///) URL to restore into")
    target.add_argument("--to-data-dir", type=Path, help="data dir to write index.sqlite3 in")
    restore.add_argument(
        "--force", action="store_true", help="replace an existing SQLite index (kept aside)"
    )
    restore.set_defaults(handler=_restore_index)


def main(argv: list[str] | None = None) -> int:
    """Run the backup commands on their own: ``python -m imaging_cloud.backup_cli``."""
    return run_commands(add_backup_commands, argv, __doc__ or "")


if __name__ == "__main__":
    sys.exit(main())
