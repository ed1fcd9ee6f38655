"""Start a real node (SCP + HTTP) in-process on free loopback ports, for tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from imaging_cloud.node import Node
from imaging_cloud.settings import load_settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_node(data_dir: Path, database_url: str = "") -> Iterator[Node]:
    """A node serving DICOM and HTTP until the block ends."""
    settings = load_settings(
        data_dir=data_dir,
        http_port=free_port(),
        dicom_port=free_port(),
        database_url=database_url,
    )
    node = Node(settings)
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


def client(node: Node) -> httpx.Client:
    return httpx.Client(base_url=http_base(node), timeout=30)
