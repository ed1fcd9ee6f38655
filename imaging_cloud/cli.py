"""The `imaging-cloud` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cloud.archive import Archive
from cloud.errors import ArchiveError
from gateway.config import GatewayConfigError
from imaging_cloud.access_cli import add_access_admin_commands
from imaging_cloud.audit_cli import add_audit_commands
from imaging_cloud.gateway_cli import add_gateway_commands
from imaging_cloud.lifecycle_cli import add_lifecycle_commands
from imaging_cloud.seed_region import add_seed_command
from imaging_cloud.settings import Settings, load_settings, open_archive
from imaging_cloud.video_cli import add_video_commands
from imaging_cloud.worker import add_worker_command


def _add_node_options(parser: argparse.ArgumentParser) -> None:
    # Defaults live in config/defaults.toml; None here means "not given on the command line".
    parser.add_argument("--data-dir", type=Path, help="where blobs and the SQLite index live")
    parser.add_argument("--http-host", help="HTTP bind address (default 127.0.0.1)")
    parser.add_argument("--http-port", type=int, help="HTTP port (default 8080)")
    parser.add_argument("--dicom-host", help="DICOM bind address (default 127.0.0.1)")
    parser.add_argument("--dicom-port", type=int, help="DICOM port (default 11112)")
    parser.add_argument("--ae-title", help="our AE title (default IMAGINGCLOUD)")
    parser.add_argument("--database-url", help="index URL; default SQLite in the data dir")
    parser.add_argument("--blob-url", help="blob store URL; default file:// in the data dir")


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(
        data_dir=args.data_dir,
        http_host=args.http_host,
        http_port=args.http_port,
        dicom_host=args.dicom_host,
        dicom_port=args.dicom_port,
        ae_title=args.ae_title,
        database_url=args.database_url,
        blob_url=args.blob_url,
    )


def _serve(args: argparse.Namespace) -> int:
    from imaging_cloud.node import Node

    node = Node(_settings(args))
    for name, url in node.urls().items():
        print(f"{name:9} {url}", flush=True)
    node.run()
    return 0


def _demo_region(archive: Archive) -> str:
    """A small seeded region behind the demo's own hospitals, so the regulator's dashboard
    has figures (`imaging-cloud seed-region` makes a larger one)."""
    from imaging_cloud.seed_draw import SeedOptions
    from imaging_cloud.seed_region import SeedError, seed_region

    try:
        summary = seed_region(archive, SeedOptions(hospitals=6, studies=80), accounts=False)
    except SeedError:
        return "region seeded on an earlier run"
    return f"{summary.counts['studies']} seeded studies in {len(summary.hospitals)} hospitals"


def _demo(args: argparse.Namespace) -> int:
    from imaging_cloud.demo import (
        DEMO_PASSWORD,
        create_demo_accounts,
        load_demo_data,
        start_demo_gateway,
    )
    from imaging_cloud.demo_video import load_demo_video
    from imaging_cloud.node import Node

    node = Node(_settings(args))
    node.scp.start()
    node.start_monitoring()
    server = node.http_server()
    thread = threading.Thread(target=server.run, name="http", daemon=True)
    thread.start()
    gateway = None
    try:
        while not server.started:
            time.sleep(0.05)
        urls = node.urls()
        cloud_url = urls["health"].removesuffix("/healthz")
        spool = node.settings.data_dir / "demo-gateway-spool"
        gateway = start_demo_gateway(node.archive, cloud_url, spool, args.gateway_dicom_port)
        accounts = create_demo_accounts(node.archive)
        studies = load_demo_data(node.archive, samples=args.samples, gateway=gateway)
        video = load_demo_video(node.archive, gateway)
        if video is not None:
            studies.append(video)
            accounts.append(("demo.expert", "video_expert", "(review panel)"))
        region = _demo_region(node.archive)
        print("\nimaging-cloud demo is running (Ctrl-C to stop)")
        print(f"\nDemo accounts (password {DEMO_PASSWORD!r}; the viewer asks to sign in):")
        for username, role, hospital in accounts:
            print(f"  {username:18} {role:15} {hospital}")
        for name, url in urls.items():
            print(f"  {name:9} {url}")
        print(f"  {'gateway':9} DEMOGW@127.0.0.1:{gateway.scp.port} (spool {spool})")
        print(f"  {'hospitals':9} {cloud_url}/api/hospitals")
        print(f"  {'patients':9} {cloud_url}/patient/")
        print(f"  {'dashboard':9} {cloud_url}/dashboard/   (demo.regulator; {region})")
        if video is not None:
            print(f"  {'videos':9} {cloud_url}/videos/   (search, charts; multi-view wall)")
            print(f"  {'review':9} {cloud_url}/video-review/   (demo.expert scores the video)")
        print("\nStudies loaded:")
        for uid, label in studies:
            print(f"  {label}:\n    viewer   {cloud_url}/viewer/?study={uid}")
            print(f"    dicomweb {urls['dicomweb']}/studies/{uid}/series")
        port = node.scp.port
        print(f"\nTry:\n  echoscu -aec {node.settings.ae_title} 127.0.0.1 {port}")
        print(f"  storescu -aec DEMOGW 127.0.0.1 {gateway.scp.port} FILE.dcm   # via the gateway")
        sign_in = f"curl -s -d username=demo.admin -d password={DEMO_PASSWORD}"
        print(f"  TOKEN=$({sign_in} {cloud_url}/api/auth/token | jq -r .access_token)")
        print(
            f"  curl -H \"Authorization: Bearer $TOKEN\" '{urls['dicomweb']}/studies'", flush=True
        )
        thread.join()
    except KeyboardInterrupt:
        server.should_exit = True
        thread.join(timeout=10)
    finally:
        if gateway is not None:
            gateway.close()
        node.close()
    return 0


def _add_archive_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="the cloud node's data dir")
    parser.add_argument("--database-url", help="index URL; default SQLite in the data dir")
    parser.add_argument("--blob-url", help="blob store URL; default file:// in the data dir")


def _open_archive(args: argparse.Namespace) -> Archive:
    settings = load_settings(
        data_dir=args.data_dir, database_url=args.database_url, blob_url=args.blob_url
    )
    return open_archive(settings)


def _add_hospital(args: argparse.Namespace) -> int:
    archive = _open_archive(args)
    try:
        credential = archive.hospitals.add_hospital(
            args.hospital_id,
            args.name,
            ae_title=args.gateway_ae_title or "",
            dicom_host=args.gateway_host or "",
            dicom_port=args.gateway_port,
        )
    finally:
        archive.close()
    # Only the credential on stdout, so `CRED=$(imaging-cloud admin add-hospital ...)` works.
    print(credential)
    return 0


def _rotate_credential(args: argparse.Namespace) -> int:
    archive = _open_archive(args)
    try:
        credential = archive.hospitals.rotate_credential(args.hospital_id)
    finally:
        archive.close()
    print(credential)
    return 0


def _create_user(args: argparse.Namespace) -> int:
    password = args.password or os.environ.get("IMAGING_CLOUD_NEW_USER_PASSWORD", "")
    archive = _open_archive(args)
    try:
        user = archive.users.create_user(
            args.username,
            password,
            args.role,
            hospital_id=args.hospital,
            department=args.department or "",
        )
    finally:
        archive.close()
    where = f" at {user.hospital_id}" if user.hospital_id else ""
    print(f"user {user.username} created: {user.role}{where}")
    return 0


def _set_user_status(args: argparse.Namespace) -> int:
    archive = _open_archive(args)
    try:
        archive.users.set_status(args.username, args.status)
    finally:
        archive.close()
    print(f"user {args.username} is now {args.status}")
    return 0


def _send_back(args: argparse.Namespace) -> int:
    archive = _open_archive(args)
    try:
        hospital = archive.hospitals.by_id(args.hospital_id)
        if hospital is None:
            print(f"imaging-cloud: hospital {args.hospital_id} is not registered", file=sys.stderr)
            return 1
        pk = archive.hospitals.request_send_back(hospital, args.study)
    finally:
        archive.close()
    print(f"send-back {pk} queued: {args.study} -> {args.hospital_id}")
    return 0


def _add_admin_commands(commands: Any) -> None:
    admin = commands.add_parser("admin", help="administer the cloud node's hospitals")
    actions = admin.add_subparsers(dest="admin_command", required=True)
    add = actions.add_parser("add-hospital", help="register a hospital; prints its credential")
    _add_archive_options(add)
    add.add_argument("--hospital-id", required=True)
    add.add_argument("--name", required=True)
    add.add_argument("--gateway-ae-title", help="AE title its gateway uses for DIMSE Q/R")
    add.add_argument("--gateway-host", help="where its gateway accepts C-STORE (send-back)")
    add.add_argument("--gateway-port", type=int)
    add.set_defaults(handler=_add_hospital)
    rotate = actions.add_parser("rotate-credential", help="replace a hospital's credential")
    _add_archive_options(rotate)
    rotate.add_argument("--hospital-id", required=True)
    rotate.set_defaults(handler=_rotate_credential)
    user = actions.add_parser("create-user", help="create a user with a role")
    _add_archive_options(user)
    user.add_argument("--username", required=True)
    user.add_argument(
        "--password", help="at least 10 characters (or $IMAGING_CLOUD_NEW_USER_PASSWORD)"
    )
    user.add_argument("--role", required=True, help="a role of config/roles.toml")
    user.add_argument("--hospital", help="hospital id (none for regional roles)")
    user.add_argument("--department")
    user.set_defaults(handler=_create_user)
    status = actions.add_parser("set-user-status", help="suspend, retire or reactivate a user")
    _add_archive_options(status)
    status.add_argument("--username", required=True)
    status.add_argument("--status", required=True, choices=["active", "suspended", "retired"])
    status.set_defaults(handler=_set_user_status)
    back = actions.add_parser("send-back", help="send a study back to its hospital's PACS")
    _add_archive_options(back)
    back.add_argument("--hospital-id", required=True)
    back.add_argument("--study", required=True, help="Study Instance UID")
    back.set_defaults(handler=_send_back)
    add_access_admin_commands(actions, _add_archive_options, _open_archive)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="imaging-cloud", description=__doc__)
    parser.add_argument("--log-level", default=os.environ.get("IMAGING_CLOUD_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run an all-in-one node (DICOM SCP + DICOMweb)")
    _add_node_options(serve)
    serve.set_defaults(handler=_serve)
    demo = commands.add_parser("demo", help="run a node with sample studies loaded")
    _add_node_options(demo)
    demo.add_argument("--samples", type=Path, help="folder of real DICOM samples to load too")
    demo.add_argument(
        "--gateway-dicom-port", type=int, default=11113, help="the demo gateway's DICOM port"
    )
    demo.set_defaults(handler=_demo)
    _add_admin_commands(commands)
    add_audit_commands(commands)
    add_gateway_commands(commands)
    add_lifecycle_commands(commands)
    add_worker_command(commands)
    add_video_commands(commands)
    add_seed_command(commands, _add_archive_options, _open_archive)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per gateway request
    try:
        return int(args.handler(args))
    except ValidationError as exc:
        print(f"imaging-cloud: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    except GatewayConfigError as exc:
        print(f"imaging-cloud: {exc}", file=sys.stderr)
        return 2
    except ArchiveError as exc:
        print(f"imaging-cloud: {exc.title}: {exc.detail}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"imaging-cloud: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
