"""Gateway configuration: command-line options plus a TOML sources file.

The sources file names the hospital PACS (for send-back and Query/Retrieve) and the
collectors to run; ``config/gateway-sources.example.toml`` documents every key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOURCE_KINDS = ("qr", "folder", "ftp", "sftp", "dicomweb", "http_push", "video_folder")


class GatewayConfigError(ValueError):
    """A sources file or option the gateway cannot run with; the message says which key."""


@dataclass(frozen=True)
class PacsPeer:
    host: str
    port: int
    ae_title: str


@dataclass
class GatewayConfig:
    cloud_url: str
    credential: str
    spool_dir: Path
    hospital_id: str
    ae_title: str = "ICGATEWAY"
    dicom_host: str = "127.0.0.1"
    dicom_port: int = 11113
    ca_file: Path | None = None
    keep_days: float = 15.0
    bandwidth_bytes_per_second: int | None = None
    batch_count: int = 32
    batch_bytes: int = 32 * 1024 * 1024
    heartbeat_seconds: float = 30.0
    reconcile_settle_seconds: float = 60.0
    send_back_poll_seconds: float = 30.0
    retry_base_seconds: float = 1.0
    pacs: PacsPeer | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.cloud_url.startswith(("http://", "https://")):
            raise GatewayConfigError(f"--cloud-url {self.cloud_url!r} must be http(s)://...")
        if not self.credential:
            raise GatewayConfigError(
                "no credential: pass --credential or set IMAGING_CLOUD_GATEWAY_CREDENTIAL "
                "(from `imaging-cloud admin add-hospital`)"
            )
        if not 1 <= len(self.ae_title.strip()) <= 16:
            raise GatewayConfigError(f"AE title {self.ae_title!r} must be 1-16 characters")


def load_sources_file(path: Path) -> tuple[PacsPeer | None, list[dict[str, Any]]]:
    """Parse and check a sources file; every problem is reported with its key."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise GatewayConfigError(f"{path}: {exc}") from exc
    pacs = None
    if "pacs" in document:
        entry = document["pacs"]
        try:
            pacs = PacsPeer(str(entry["host"]), int(entry["port"]), str(entry["ae_title"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise GatewayConfigError(f"{path}: [pacs] needs host, port and ae_title") from exc
    sources = document.get("sources", [])
    if not isinstance(sources, list):
        raise GatewayConfigError(f"{path}: 'sources' must be an array of tables ([[sources]])")
    for index, source in enumerate(sources):
        kind = source.get("kind") if isinstance(source, dict) else None
        if kind not in SOURCE_KINDS:
            raise GatewayConfigError(
                f"{path}: sources[{index}].kind is {kind!r}; use one of {', '.join(SOURCE_KINDS)}"
            )
    return pacs, list(sources)
