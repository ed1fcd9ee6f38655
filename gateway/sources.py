"""Start the collectors a sources file names, each feeding the spool in its own thread."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn

from gateway.config import GatewayConfigError

if TYPE_CHECKING:
    from gateway.service import Gateway

logger = logging.getLogger(__name__)

Spawn = Callable[..., None]


def start_sources(gateway: Gateway, spawn: Spawn) -> int | None:
    """Start every configured collector; the HTTP push port if one was started."""
    push_port = None
    for index, entry in enumerate(gateway.config.sources):
        kind = entry["kind"]
        interval = float(entry.get("interval_seconds", 30))
        name = f"source-{index}-{kind}"
        if kind == "http_push":
            push_port = _start_http_push(gateway, entry, spawn, name)
            continue
        try:
            collector = build_collector(gateway, entry)
        except ValueError as exc:
            raise GatewayConfigError(f"sources[{index}] ({kind}): {exc}") from exc
        spawn(name, collector.run, gateway.stop_event, interval)
        logger.info("collector %s started (every %.0f s)", name, interval)
    return push_port


def build_collector(gateway: Gateway, entry: dict[str, Any]) -> Any:
    sink = gateway.accept
    kind = entry["kind"]
    if kind == "qr":
        from collectors.qr_pull import puller_from_config

        return puller_from_config(
            entry,
            sink,
            calling_ae=gateway.config.ae_title,
            move_destination=gateway.config.ae_title,
            wanted=gateway.wanted,
        )
    if kind == "dicomweb":
        from collectors.dicomweb_pull import puller_from_config as dicomweb_puller

        return dicomweb_puller(entry, sink, wanted=gateway.wanted)
    if kind == "video_folder":
        from collectors.video_folder import video_folder_from_config

        return video_folder_from_config(
            entry, sink, workdir=video_workdir(gateway), calling_ae=gateway.config.ae_title
        )
    from collectors.polling_config import collector_from_config

    state_dir = gateway.spool.root / "collector-state"
    state_dir.mkdir(exist_ok=True)
    return collector_from_config(entry, sink, state_dir)


def video_workdir(gateway: Gateway) -> Path:
    """Where recordings are transcoded and wrapped before the spool takes them."""
    workdir = gateway.spool.root / "video-work"
    workdir.mkdir(exist_ok=True)
    return workdir


def _start_http_push(gateway: Gateway, entry: dict[str, Any], spawn: Spawn, name: str) -> int:
    from collectors.http_push import create_push_app

    app = create_push_app(
        gateway.accept,
        credential=entry.get("credential") or None,
        max_body_bytes=int(entry.get("max_body_bytes", 2 * 1024**3)),
        video_workdir=video_workdir(gateway),
    )
    port = int(entry.get("port", 8090))
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=str(entry.get("host", "127.0.0.1")),
            port=port,
            log_level="warning",
            access_log=False,
        )
    )

    def serve() -> None:
        server.run()

    def stop_when_asked() -> None:
        gateway.stop_event.wait()
        server.should_exit = True

    spawn(name, serve)
    spawn(f"{name}-stopper", stop_when_asked)
    return port
