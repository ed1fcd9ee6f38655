"""`imaging-cloud lifecycle …`: the lifecycle command group.

Key management lives here (`rotate-kek`, `keys-status`); the retention commands of
`imaging_cloud.retention_cli` join the same group. Every command opens the archive like
``serve`` does (``--data-dir``, ``--database-url``, ``--blob-url``, ``--kek-url``, given
before or after the command name), with encryption and the KEKs as the settings say.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cloud.archive import Archive
from cloud.index_backup import IndexBackups
from imaging_cloud.backup_cli import add_backup_commands
from imaging_cloud.progress import add_progress_option, progress_bar, show_progress
from imaging_cloud.retention_cli import add_retention_commands
from imaging_cloud.scrub_cli import add_scrub_commands
from imaging_cloud.settings import Settings, index_backup_dir, load_settings, open_archive
from imaging_cloud.tier_cli import add_tier_commands
from imaging_cloud.volume_cli import add_volume_commands


def settings_of(args: argparse.Namespace) -> Settings:
    """The settings with the archive options given on the command line."""
    return load_settings(
        data_dir=getattr(args, "data_dir", None),
        database_url=getattr(args, "database_url", None),
        blob_url=getattr(args, "blob_url", None),
        kek_url=getattr(args, "kek_url", None),
    )


def open_lifecycle_archive(args: argparse.Namespace) -> Archive:
    """The archive the options name, with its key store, as `serve` would open it."""
    return open_archive(settings_of(args))


def _rotate_kek(args: argparse.Namespace) -> int:
    archive = open_lifecycle_archive(args)
    try:
        keys = archive.keys
        if args.resume:
            print(f"resuming: re-wrapping study keys under KEK {keys.keks.current_id()}")
        else:
            print(f"new key-encryption key {keys.keks.rotate()} is current")
        with progress_bar(show_progress(args), "re-wrapping study keys") as update:
            report = keys.rewrap(args.batch_size, update)
        print(f"{report.rewrapped} study keys re-wrapped under {report.current_kek_id}")
        if not args.retire_old:
            old = [k for k in keys.keks.known_ids() if k != report.current_kek_id]
            if old:
                print(f"kept {len(old)} old KEK(s) ({', '.join(old)}); --retire-old removes them")
            return 0
        backups = IndexBackups(None, index_backup_dir(settings_of(args)), keys.keks)
        retired, in_use = keys.retire_unused(backups.kek_ids())
    finally:
        archive.close()
    for kek_id in retired:
        print(f"retired KEK {kek_id}")
    for kek_id, count in in_use.items():
        print(f"kept KEK {kek_id}: {count} study keys or kept index backups still need it")
    return 1 if in_use else 0


def _keys_status(args: argparse.Namespace) -> int:
    archive = open_lifecycle_archive(args)
    try:
        status = archive.keys.status()
        encrypting = archive.encrypts
    finally:
        archive.close()
    if args.json:
        document = {
            "encryption": encrypting,
            "current_kek_id": status.current_kek_id,
            "keks": [
                {"kek_id": k, "study_keys": status.keys_by_kek.get(k, 0)} for k in status.kek_ids
            ],
            "study_keys_under_missing_keks": {
                k: n for k, n in status.keys_by_kek.items() if k not in status.kek_ids
            },
            "destroyed_study_keys": status.destroyed,
            "instances_by_encryption": status.instances_by_encryption,
        }
        print(json.dumps(document, indent=2))
        return 0
    print(f"encryption of new objects: {'on' if encrypting else 'off'}")
    print(f"current KEK: {status.current_kek_id}")
    for kek_id in status.kek_ids:
        mark = " (current)" if kek_id == status.current_kek_id else ""
        print(f"  {kek_id}{mark}: {status.keys_by_kek.get(kek_id, 0)} study keys")
    missing = {k: n for k, n in status.keys_by_kek.items() if k not in status.kek_ids}
    for kek_id, count in missing.items():
        print(f"  {kek_id} MISSING: {count} study keys cannot be unwrapped")
    print(f"destroyed study keys: {status.destroyed}")
    for encryption, count in sorted(status.instances_by_encryption.items()):
        print(f"instances {encryption or 'unencrypted'}: {count}")
    return 1 if missing else 0


def _archive_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("--data-dir", type=Path, default=default, help="the node's data dir")
    parser.add_argument("--database-url", default=default, help="index URL (default SQLite)")
    parser.add_argument("--blob-url", default=default, help="blob store URL (default file://)")
    parser.add_argument(
        "--kek-url", default=default, help="KEK provider (default file://<data-dir>/keys/kek)"
    )


def _progress_options(parser: argparse.ArgumentParser) -> None:
    add_progress_option(parser)
    parser.add_argument("--batch-size", type=int, default=500, help="study keys per transaction")


def add_lifecycle_commands(commands: Any) -> None:
    """Add the ``lifecycle`` group to the ``imaging-cloud`` command's subparsers."""
    lifecycle = commands.add_parser(
        "lifecycle",
        help="tiers, encryption keys, retention and destruction, integrity of the archive",
    )
    _archive_options(lifecycle, None)
    actions = lifecycle.add_subparsers(dest="lifecycle_command", required=True)
    # Given after the command name too; SUPPRESS leaves a value given before it alone.
    suppress = argparse.SUPPRESS

    rotate = actions.add_parser(
        "rotate-kek",
        help="make a new key-encryption key and re-wrap every study key under it",
        description="Make a new KEK current and re-wrap every study data key under it, in "
        "batches; no object is rewritten. Safe to interrupt: run again (or with --resume) "
        "and the keys still under an old KEK are re-wrapped. Old KEK files are kept until "
        "--retire-old finds no study key using them.",
    )
    _archive_options(rotate, suppress)
    _progress_options(rotate)
    rotate.add_argument(
        "--resume",
        action="store_true",
        help="no new KEK: finish re-wrapping under the current one",
    )
    rotate.add_argument(
        "--retire-old",
        action="store_true",
        help="then delete the old KEK files no study key uses any more",
    )
    rotate.set_defaults(handler=_rotate_kek)

    status = actions.add_parser(
        "keys-status", help="KEKs held, study keys per KEK, destroyed keys, sealed instances"
    )
    _archive_options(status, suppress)
    status.add_argument("--json", action="store_true")
    status.set_defaults(handler=_keys_status)

    add_retention_commands(actions, opener=open_lifecycle_archive)
    add_tier_commands(actions, opener=open_lifecycle_archive)
    add_backup_commands(actions, opener=open_lifecycle_archive)
    add_volume_commands(actions, opener=open_lifecycle_archive)
    add_scrub_commands(actions, opener=open_lifecycle_archive)
