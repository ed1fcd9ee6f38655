"""Start a real node (SCP + HTTP) in-process on free loopback ports, for tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from imaging_cloud.node import Node
from imaging_cloud.settings import load_settings
from tests.support.ports import free_port, free_ports

__all__ = [
    "ADMIN",
    "PASSWORD",
    "auth_headers",
    "client",
    "free_port",
    "free_ports",
    "http_base",
    "running_node",
    "token_for",
]

ADMIN = "test-admin"  # a platform admin every test node has; its token is the clients' default
PASSWORD = "correct horse battery staple"


@contextmanager
def running_node(data_dir: Path, database_url: str = "", **more: Any) -> Iterator[Node]:
    """A node serving DICOM and HTTP until the block ends; ``more`` are further settings
    (e.g. ``oidc_issuer=…``)."""
    http_port, dicom_port = free_ports(2)
    if more.get("oidc_issuer"):  # the provider sends the browser back to this node
        more.setdefault("oidc_redirect_base", f"http://127.0.0.1:{http_port}")
    settings = load_settings(
        data_dir=data_dir,
        http_port=http_port,
        dicom_port=dicom_port,
        database_url=database_url,
        **more,
    )
    node = Node(settings)
    node.archive.users.create_user(ADMIN, PASSWORD, "platform_admin")
    node.scp.start()
    server = node.http_server()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("HTTP server did not start")
        time.sleep(0.02)
    try:
        yield node
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        node.close()


def http_base(node: Node) -> str:
    return f"http://127.0.0.1:{node.settings.http_port}"


def token_for(node: Node, username: str = ADMIN) -> str:
    """A signed access token for an existing user of ``node``."""
    user = node.archive.users.by_username(username)
    assert user is not None, username
    return node.tokens.issue(user)


def auth_headers(node: Node, username: str = ADMIN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(node, username)}"}


def client(node: Node, username: str | None = ADMIN) -> httpx.Client:
    """An HTTP client signed in as ``username`` (the platform admin by default; None: no one)."""
    headers = auth_headers(node, username) if username else {}
    return httpx.Client(base_url=http_base(node), timeout=30, headers=headers)
