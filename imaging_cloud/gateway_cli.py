"""`imaging-cloud gateway serve|status`: the hospital side of the command line."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from gateway.config import GatewayConfig, GatewayConfigError, PacsPeer, load_sources_file
from gateway.spool import Spool

CREDENTIAL_ENV = "IMAGING_CLOUD_GATEWAY_CREDENTIAL"


def add_gateway_commands(commands: Any) -> None:
    gateway = commands.add_parser("gateway", help="run or inspect a hospital gateway")
    actions = gateway.add_subparsers(dest="gateway_command", required=True)

    serve = actions.add_parser("serve", help="collect from the PACS and forward to the cloud")
    serve.add_argument("--cloud-url", required=True, help="the cloud node, e.g. https://cloud")
    serve.add_argument("--spool-dir", type=Path, required=True, help="durable spool directory")
    serve.add_argument("--hospital-id", required=True)
    serve.add_argument("--credential", help=f"hospital credential (or ${CREDENTIAL_ENV})")
    serve.add_argument("--ae-title", default="ICGATEWAY", help="our AE title")
    serve.add_argument("--dicom-host", default="127.0.0.1", help="C-STORE SCP bind address")
    serve.add_argument("--dicom-port", type=int, default=11113, help="C-STORE SCP port")
    serve.add_argument("--sources", type=Path, help="TOML sources file (see config/)")
    serve.add_argument("--ca-file", type=Path, help="CA bundle to verify an https cloud")
    serve.add_argument("--keep-days", type=float, default=15.0, help="local backup retention")
    serve.add_argument(
        "--bandwidth-limit-mbps", type=float, help="cap on upload rate, megabits per second"
    )
    serve.add_argument("--heartbeat-seconds", type=float, default=30.0)
    serve.add_argument("--audit-settle-seconds", type=float, default=60.0)
    serve.set_defaults(handler=_serve)

    status = actions.add_parser("status", help="print the spool's state")
    status.add_argument("--spool-dir", type=Path, required=True)
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)


def config_from_args(args: argparse.Namespace) -> GatewayConfig:
    pacs: PacsPeer | None = None
    sources: list[dict[str, Any]] = []
    if args.sources is not None:
        pacs, sources = load_sources_file(args.sources)
    rate = None
    if args.bandwidth_limit_mbps is not None:
        if args.bandwidth_limit_mbps <= 0:
            raise GatewayConfigError("--bandwidth-limit-mbps must be positive")
        rate = int(args.bandwidth_limit_mbps * 1_000_000 / 8)
    return GatewayConfig(
        cloud_url=args.cloud_url,
        credential=args.credential or os.environ.get(CREDENTIAL_ENV, ""),
        spool_dir=args.spool_dir,
        hospital_id=args.hospital_id,
        ae_title=args.ae_title,
        dicom_host=args.dicom_host,
        dicom_port=args.dicom_port,
        ca_file=args.ca_file,
        keep_days=args.keep_days,
        bandwidth_bytes_per_second=rate,
        heartbeat_seconds=args.heartbeat_seconds,
        reconcile_settle_seconds=args.audit_settle_seconds,
        pacs=pacs,
        sources=sources,
    )


def _serve(args: argparse.Namespace) -> int:
    from gateway.service import Gateway

    gateway = Gateway(config_from_args(args))
    print(f"gateway  {args.ae_title}@{args.dicom_host}:{args.dicom_port} -> {args.cloud_url}")
    print(f"spool    {args.spool_dir.resolve()}", flush=True)
    gateway.run()
    return 0


def _status(args: argparse.Namespace) -> int:
    if not (args.spool_dir / "journal.sqlite3").exists():
        raise GatewayConfigError(f"{args.spool_dir} is not a gateway spool (no journal)")
    spool = Spool(args.spool_dir)
    status = spool.status().as_dict()
    heartbeat = json.loads(spool.recall("cloud_heartbeat") or "null")
    quarantine = spool.quarantined()
    if args.json:
        print(json.dumps({**status, "cloud": heartbeat, "quarantine": quarantine}, indent=2))
        return 0
    oldest = status["oldest_unsent_seconds"]
    print(f"queued        {status['queued']} ({status['queued_bytes']} bytes)")
    print(f"sent          {status['sent']} (local backup kept), purged {status['purged']}")
    print(f"quarantined   {status['quarantined']}")
    print(f"oldest unsent {'-' if oldest is None else f'{oldest:.0f} s ago'}")
    print(f"failures      {status['consecutive_failures']} in a row")
    print(f"last error    {status['last_error'] or '-'}")
    print(f"disk free     {status['disk_free_bytes'] / 1024**3:.1f} GiB")
    if heartbeat:
        age = time.time() - heartbeat["at"]
        alerts = heartbeat.get("alerts") or []
        shown = "; ".join(f"{a['kind']}: {a['message']}" for a in alerts) or "none"
        print(f"cloud         heartbeat acknowledged {age:.0f} s ago, alerts: {shown}")
    else:
        print("cloud         no heartbeat acknowledged yet")
    for item in quarantine[:10]:
        print(f"  quarantined {item['file']} from {item['origin']}: {item['reason']}")
    return 0
