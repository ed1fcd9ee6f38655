"""SFTP transport for `RemoteFolderCollector`, on asyncssh driven from the polling thread.

Each poll opens one SSH connection on a private event loop and closes both afterwards, so the
collector stays a plain blocking object like the others. The server's host key is always
verified, against a known_hosts file or a pinned SHA256 fingerprint; there is no option to
skip the check. Nothing from the user's ~/.ssh (config, agent, default keys) is consulted.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import logging
import stat
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import asyncssh

from collectors.polling import FileStamp, SourceUnavailableError
from collectors.remote_files import EntryKind, RemoteEntry, remote_origin

logger = logging.getLogger(__name__)

__all__ = ["SftpFolder"]

_T = TypeVar("_T")


class SftpFolder:
    """One directory on an SFTP server, with password or private-key authentication."""

    def __init__(
        self,
        host: str,
        *,
        user: str,
        port: int = 22,
        password: str | None = None,
        private_key: Path | None = None,
        private_key_passphrase: str | None = None,
        known_hosts: Path | None = None,
        host_key_fingerprint: str | None = None,
        root: str = "/",
        timeout: float = 60.0,
    ) -> None:
        if (known_hosts is None) == (host_key_fingerprint is None):
            raise ValueError("give exactly one of known_hosts or host_key_fingerprint")
        if host_key_fingerprint is not None and not host_key_fingerprint.startswith("SHA256:"):
            raise ValueError("host_key_fingerprint must look like 'SHA256:<base64>'")
        if password is None and private_key is None:
            raise ValueError("give a password or a private_key")
        self._host = host
        self._port = port
        self._user = user
        self._password = password
        self._private_key = private_key
        self._passphrase = private_key_passphrase
        self._known_hosts = known_hosts
        self._fingerprint = host_key_fingerprint.rstrip("=") if host_key_fingerprint else None
        self._root = root
        self._timeout = timeout
        self._runner: asyncio.Runner | None = None
        self._connection: asyncssh.SSHClientConnection | None = None
        self._sftp: asyncssh.SFTPClient | None = None

    @property
    def root(self) -> str:
        return self._root

    def origin(self, path: str) -> str:
        return remote_origin("sftp", self._host, self._port, path)

    def connect(self) -> None:
        self._runner = asyncio.Runner()
        try:
            self._connection, self._sftp = self._run(self._connect())
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        runner, self._runner = self._runner, None
        connection, self._connection = self._connection, None
        sftp, self._sftp = self._sftp, None
        if runner is None:
            return
        try:
            if sftp is not None:
                sftp.exit()
            if connection is not None:
                connection.close()
                runner.run(asyncio.wait_for(connection.wait_closed(), self._timeout))
        except (asyncssh.Error, OSError):
            pass  # the connection is being dropped anyway
        finally:
            runner.close()

    def list_dir(self, path: str) -> list[RemoteEntry]:
        return self._run(self._list_dir(path))

    def stat(self, path: str) -> FileStamp:
        attrs = self._run(self._client().stat(path))
        return FileStamp(attrs.size or 0, _mtime_ns(attrs) or 0)

    def read(self, path: str) -> bytes:
        return self._run(self._read(path))

    def delete(self, path: str) -> None:
        self._run(self._client().remove(path))

    async def _connect(self) -> tuple[asyncssh.SSHClientConnection, asyncssh.SFTPClient]:
        if self._fingerprint is not None:
            known_hosts: Any = ([], [], [])  # nothing trusted up front: the pin decides
            client_factory: Any = functools.partial(_PinnedHostKey, self._fingerprint)
        else:
            known_hosts, client_factory = str(self._known_hosts), None
        connection = await asyncssh.connect(
            self._host,
            self._port,
            username=self._user,
            password=self._password,
            client_keys=[str(self._private_key)] if self._private_key else None,
            passphrase=self._passphrase,
            known_hosts=known_hosts,
            client_factory=client_factory,
            agent_path=None,
            config=[],
            connect_timeout=self._timeout,
        )
        try:
            return connection, await connection.start_sftp_client()
        except BaseException:
            connection.close()
            raise

    async def _list_dir(self, path: str) -> list[RemoteEntry]:
        entries = []
        # Listed as bytes: a name that is not UTF-8 reaches the name check instead of failing here.
        async for name in self._client().scandir(path.encode("utf-8")):
            filename = name.filename
            if isinstance(filename, bytes):
                filename = filename.decode("utf-8", "surrogateescape")
            attrs = name.attrs
            entries.append(RemoteEntry(filename, _kind(attrs), attrs.size, _mtime_ns(attrs)))
        return entries

    async def _read(self, path: str) -> bytes:
        async with self._client().open(path, "rb") as handle:
            data = await handle.read()
        return data if isinstance(data, bytes) else data.encode()

    def _client(self) -> asyncssh.SFTPClient:
        if self._sftp is None:
            raise SourceUnavailableError("not connected")
        return self._sftp

    def _run(self, operation: Coroutine[Any, Any, _T]) -> _T:
        """Run one operation on this poll's loop; a lost connection ends the poll."""
        if self._runner is None:
            operation.close()
            raise SourceUnavailableError("not connected")
        try:
            return self._runner.run(asyncio.wait_for(operation, self._timeout))
        except (asyncssh.SFTPNoConnection, asyncssh.SFTPConnectionLost) as exc:
            raise SourceUnavailableError(f"connection lost: {exc}") from exc
        except asyncssh.SFTPError:
            raise  # this file only: missing, permission denied
        except (asyncssh.Error, OSError) as exc:
            raise SourceUnavailableError(f"{self.origin(self._root)}: {exc}") from exc


class _PinnedHostKey(asyncssh.SSHClient):
    """Trusts exactly the host key whose SHA256 fingerprint was configured."""

    def __init__(self, fingerprint: str) -> None:
        self._fingerprint = fingerprint

    # The signature is asyncssh's; only the key matters for a pin.
    def validate_host_public_key(
        self,
        host: str,  # noqa: ARG002
        addr: str,  # noqa: ARG002
        port: int,  # noqa: ARG002
        key: asyncssh.SSHKey,
    ) -> bool:
        return hmac.compare_digest(key.get_fingerprint("sha256"), self._fingerprint)


def _kind(attrs: asyncssh.SFTPAttrs) -> EntryKind:
    # The mode's type bits say it plainly; some servers send only permission bits.
    file_type = stat.S_IFMT(attrs.permissions or 0)
    if file_type:
        return {stat.S_IFREG: EntryKind.FILE, stat.S_IFDIR: EntryKind.DIRECTORY}.get(
            file_type, EntryKind.OTHER
        )
    return {
        asyncssh.FILEXFER_TYPE_REGULAR: EntryKind.FILE,
        asyncssh.FILEXFER_TYPE_DIRECTORY: EntryKind.DIRECTORY,
    }.get(attrs.type, EntryKind.OTHER)


def _mtime_ns(attrs: asyncssh.SFTPAttrs) -> int | None:
    if attrs.mtime is None:
        return None
    return attrs.mtime * 1_000_000_000 + (attrs.mtime_ns or 0)
