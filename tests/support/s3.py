"""moto's S3 server on a free loopback port, so tests speak the real S3 protocol over HTTP.

Not moto's in-process mock: requests leave botocore as HTTP, signed, and come back through a
socket, as they would from MinIO or Ceph. Credentials are dummies in the environment (the
standard AWS chain reads them), with any profile or config file of the machine shut out.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest

from tests.support.ports import free_port

_ENVIRONMENT = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
}
_CLEARED = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


@dataclass(frozen=True)
class S3Server:
    """A running S3 endpoint and the helpers tests need around it."""

    endpoint_url: str
    _client: Any = field(repr=False)

    def client(self) -> Any:
        """A plain boto3 client on the server, for looking behind a store's back."""
        return self._client

    def new_bucket(self) -> str:
        """Create a bucket no other test uses."""
        bucket = f"test-{uuid.uuid4().hex[:16]}"
        self.client().create_bucket(Bucket=bucket)
        return bucket

    def url(self, bucket: str, prefix: str = "blobs") -> str:
        """The blob store URL of ``bucket``/``prefix`` on this server."""
        path = f"/{prefix}" if prefix else ""
        return f"s3://{bucket}{path}?endpoint_url={self.endpoint_url}&region=us-east-1"


@contextmanager
def s3_server() -> Iterator[S3Server]:
    """moto in server mode on 127.0.0.1 until the block ends (skips if moto is missing)."""
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is a dev dependency")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    with pytest.MonkeyPatch.context() as patch:
        for name, value in _ENVIRONMENT.items():
            patch.setenv(name, value)
        for name in _CLEARED:
            patch.delenv(name, raising=False)
        port = free_port()
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        endpoint = f"http://127.0.0.1:{port}"
        try:
            yield S3Server(endpoint, boto3.client("s3", endpoint_url=endpoint))
        finally:
            server.stop()
