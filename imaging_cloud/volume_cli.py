"""`imaging-cloud lifecycle add-volume|volumes|retire-volume`: volumes added while serving.

`add_volume_commands` adds them to the ``lifecycle`` group's subparsers. Each opens the
archive like ``serve`` (``--data-dir``, ``--database-url``, …) to reach its index; running
nodes pick a change up within `cloud.volumes.REFRESH_SECONDS`, without a restart.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cloud.archive import Archive
from cloud.blobstore import BlobStore
from cloud.volumes import (
    REFRESH_SECONDS,
    TIERS,
    VolumeSet,
    add_volume,
    list_volumes,
    local_path,
    same_disk_as,
    set_writable,
    store_urls,
)
from imaging_cloud.progress import run_commands
from imaging_cloud.retention_cli import open_archive

OpenArchive = Callable[[argparse.Namespace], Archive]


def _tier_stores(archive: Archive) -> dict[str, BlobStore | None]:
    return {"hot": archive.blobs, "cold": getattr(archive, "cold_blobs", None)}


def _base_urls(store: BlobStore | None) -> list[str]:
    """The directories and buckets the settings name for a tier (not the added volumes)."""
    if store is None:
        return []
    return store_urls(store.base if isinstance(store, VolumeSet) else store)


def _who(args: argparse.Namespace) -> str:
    if args.by:
        return str(args.by)
    try:
        return f"console:{getpass.getuser()}"
    except (KeyError, OSError):
        return "console"


def _add(args: argparse.Namespace, archive: Archive) -> int:
    in_use = [url for store in _tier_stores(archive).values() for url in _base_urls(store)]
    added = add_volume(archive.sessions, args.url, args.tier, _who(args), in_use=in_use)
    others = [url for url in in_use if url != added.url]
    others += [v.url for v in list_volumes(archive.sessions) if v.url != added.url]
    for url in same_disk_as(added.url, others):
        print(f"warning: {added.url} is on the same filesystem as {url}: it adds no space")
    print(
        f"volume {added.url} added to the {added.tier} tier: running nodes write new blobs to "
        f"it within {REFRESH_SECONDS:g} s; older volumes stay readable"
    )
    return 0


def _retire(args: argparse.Namespace, archive: Archive) -> int:
    changed = set_writable(archive.sessions, args.url, writable=args.undo)
    if changed.writable:
        print(f"volume {changed.url} takes new blobs again (if it is its tier's newest)")
    else:
        print(f"volume {changed.url} retired: no new blobs within {REFRESH_SECONDS:g} s; its")
        print("blobs stay readable and are deleted from it as usual")
    return 0


def _volumes(args: argparse.Namespace, archive: Archive) -> int:
    rows = _rows(archive, count=args.count)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        flags = [row["tier"], "writing" if row["writing"] else "", row["state"]]
        if row["origin"] == "settings":
            flags.append("from the settings")
        else:
            flags.append(f"added {row['added_at']} by {row['added_by']}")
        if row["free_bytes"] is not None:
            flags.append(f"{row['free_bytes']} bytes free")
        if row["objects"] is not None:
            flags.append(f"{row['objects']} objects, {row['bytes']} bytes")
        print(f"{row['url']}\t" + ", ".join(flag for flag in flags if flag))
    return 0


def _rows(archive: Archive, *, count: bool) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    added = list_volumes(archive.sessions)
    for tier, store in _tier_stores(archive).items():
        volumes = [v for v in added if v.tier == tier]
        writers = [v.url for v in volumes if v.writable]
        for url in _base_urls(store):
            row = _row(url, tier, writing=not writers, writable=True, count=count)
            rows.append({**row, "origin": "settings", "added_at": None, "added_by": None})
        for volume in volumes:
            writing = bool(writers) and volume.url == writers[-1]
            row = _row(volume.url, tier, writing=writing, writable=volume.writable, count=count)
            rows.append(
                {
                    **row,
                    "origin": "added",
                    "added_at": volume.added_at.isoformat(),
                    "added_by": volume.added_by,
                }
            )
    return rows


def _row(url: str, tier: str, *, writing: bool, writable: bool, count: bool) -> dict[str, Any]:
    path = local_path(url)
    row: dict[str, Any] = {
        "url": url,
        "tier": tier,
        "writable": writable,
        "writing": writing,
        "state": "" if writable else "retired",
        "free_bytes": None,
        "objects": None,
        "bytes": None,
    }
    if path is None:
        return row
    if not path.is_dir():
        row["state"] = "MISSING"
        return row
    row["free_bytes"] = shutil.disk_usage(path).free
    if count:
        row["objects"], row["bytes"] = _usage(path)
    return row


def _usage(root: Path) -> tuple[int, int]:
    """Objects and bytes below a local volume (walks it: one stat per file)."""
    objects = size = 0
    for folder, _, files in os.walk(root):
        for name in files:
            if name.startswith(".incoming-"):
                continue
            try:
                size += os.stat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                continue  # deleted while we walked
            objects += 1
    return objects, size


def _archive_options(parser: argparse.ArgumentParser) -> None:
    suppress = argparse.SUPPRESS  # leave a value the lifecycle group parsed alone
    parser.add_argument("--data-dir", type=Path, default=suppress, help="the node's data dir")
    parser.add_argument("--database-url", default=suppress, help="index URL (default SQLite)")
    parser.add_argument("--blob-url", default=suppress, help="blob store URL (default file://)")
    parser.add_argument("--kek-url", default=suppress, help="KEK provider (default in data dir)")


def add_volume_commands(commands: Any, *, opener: OpenArchive = open_archive) -> None:
    """Add the volume commands to ``commands`` (the ``lifecycle`` group's subparsers)."""

    def add(name: str, command: Callable[[argparse.Namespace, Archive], int], text: str) -> Any:
        parser = commands.add_parser(name, help=text, description=text)
        _archive_options(parser)

        def run(args: argparse.Namespace) -> int:
            archive = opener(args)
            try:
                return command(args, archive)
            finally:
                archive.close()

        parser.set_defaults(handler=run)
        return parser

    added = add(
        "add-volume",
        _add,
        "add a directory or bucket to a tier while nodes serve; new blobs go to it",
    )
    added.add_argument(
        "url", help="file:///mnt/disk3/blobs (the directory must exist) or s3://bucket/prefix?…"
    )
    added.add_argument("--tier", choices=TIERS, default="hot")
    added.add_argument("--by", help="who adds it (default: console:<login>)")

    listed = add("volumes", _volumes, "list each tier's volumes, the one written, free space")
    listed.add_argument("--json", action="store_true")
    listed.add_argument(
        "--count", action="store_true", help="also count objects and bytes of local volumes (walks)"
    )

    retire = add("retire-volume", _retire, "stop new blobs going to a volume; it stays readable")
    retire.add_argument("url")
    retire.add_argument("--undo", action="store_true", help="let it take new blobs again")


def main(argv: list[str] | None = None) -> int:
    """Run the volume commands on their own: ``python -m imaging_cloud.volume_cli``."""
    return run_commands(add_volume_commands, argv, __doc__ or "")


if __name__ == "__main__":
    sys.exit(main())
