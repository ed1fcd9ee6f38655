"""Polling a directory on a remote file server (FTP, FTPS, SFTP) that a hospital system fills.

The transports (``ftp_folder.FtpFolder``, ``sftp_folder.SftpFolder``) only list one directory,
read and delete one file. Walking the tree, and checking every name the server lists before
it is used in any command, happens here once for both: a server is not trusted to list only
names below the directory we asked for.
"""

from __future__ import annotations

import logging
import posixpath
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Protocol

from collectors.intake import IntakeSink
from collectors.polling import (
    FileChangedError,
    FileStamp,
    ListedFile,
    Poller,
    PollReport,
    SourceUnavailableError,
    is_ignored_name,
    run_until_stopped,
    sorted_listing,
)

logger = logging.getLogger(__name__)

__all__ = [
    "EntryKind",
    "RemoteEntry",
    "RemoteFolder",
    "RemoteFolderCollector",
    "UnsafeRemoteNameError",
    "checked_remote_path",
    "remote_origin",
]

MAX_DEPTH = 32  # deeper than any export layout; stops a server-side directory loop


class EntryKind(Enum):
    FILE = "file"
    DIRECTORY = "directory"
    OTHER = "other"  # links, devices: never followed or read


@dataclass(frozen=True)
class RemoteEntry:
    """One name as the server listed it, not yet checked. Unknown size or time is ``None``."""

    name: str
    kind: EntryKind
    size: int | None = None
    mtime_ns: int | None = None


class RemoteFolder(Protocol):
    """A remote directory reached over one connection per poll."""

    @property
    def root(self) -> str:
        """The configured remote directory; nothing outside it is ever touched."""
        ...

    def origin(self, path: str) -> str: ...

    def connect(self) -> None: ...

    def close(self) -> None: ...

    def list_dir(self, path: str) -> list[RemoteEntry]: ...

    def stat(self, path: str) -> FileStamp: ...

    def read(self, path: str) -> bytes: ...

    def delete(self, path: str) -> None: ...


class UnsafeRemoteNameError(ValueError):
    """A listed name that could leave the remote root or smuggle bytes into a command."""


def checked_remote_path(root: str, directory: str, name: str) -> str:
    """The normalized remote path for ``name`` listed in ``directory``, known to stay in ``root``.

    Refused: empty names, any "..", NUL, backslashes, control characters (CR/LF would split an
    FTP command), undecodable bytes, and absolute names outside ``root``.
    """
    if not name:
        raise UnsafeRemoteNameError("empty name")
    for character in name:
        category = unicodedata.category(character)
        if character == "\\":
            raise UnsafeRemoteNameError(f"backslash in {name!r}")
        if category in ("Cc", "Zl", "Zp"):  # Cc covers NUL, CR, LF, DEL and C1 controls
            raise UnsafeRemoteNameError(f"control character in {name!r}")
        if category == "Cs":  # what surrogateescape makes of bytes that are not UTF-8
            raise UnsafeRemoteNameError(f"not UTF-8: {name!r}")
    if ".." in name:
        raise UnsafeRemoteNameError(f"'..' in {name!r}")
    joined = name if name.startswith("/") else posixpath.join(directory, name)
    path = posixpath.normpath(joined)
    base = posixpath.normpath(root)
    inside = base.rstrip("/") + "/"
    if not path.startswith(inside) or path == base:
        raise UnsafeRemoteNameError(f"{name!r} is outside {root!r}")
    return path


def remote_origin(scheme: str, host: str, port: int, path: str) -> str:
    """``ftp://host:port/remote/path``; IPv6 hosts bracketed as in URLs."""
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}{path}"


class RemoteFolderCollector:
    """Polls one remote directory tree and hands each complete file to the sink once."""

    def __init__(
        self,
        folder: RemoteFolder,
        sink: IntakeSink,
        *,
        delete_after_taken: bool = False,
        settle_seconds: float = 2.0,
        state_path: Path | None = None,
        poll_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not folder.root.startswith("/"):
            raise ValueError(f"remote root must be an absolute path, got {folder.root!r}")
        self._folder = folder
        self._root = posixpath.normpath(folder.root)
        self.poll_interval = poll_interval
        self._files = _RemoteFiles(folder, self._root)
        self._poller = Poller(
            sink,
            settle_seconds=settle_seconds,
            delete_after_taken=delete_after_taken,
            state_path=state_path,
            clock=clock,
        )
        self._reported: set[str] = set()  # unsafe names already logged, to log each once

    def poll_once(self) -> PollReport:
        """One connection: list, hand over what is complete, disconnect."""
        report = PollReport()
        self._folder.connect()
        try:
            listing, complete = self._list(report)
            self._poller.hand_over(listing, self._files, report, listing_complete=complete)
        finally:
            self._folder.close()
        return report

    def run(self, stop: threading.Event, interval: float | None = None) -> None:
        """Poll until ``stop`` is set, every ``interval`` (default ``poll_interval``) seconds."""
        every = self.poll_interval if interval is None else interval
        run_until_stopped(self.poll_once, stop, every, self._folder.origin(self._root))

    def _list(self, report: PollReport) -> tuple[list[ListedFile], bool]:
        found: list[ListedFile] = []
        complete = True
        pending = [(self._root, 0)]
        while pending:
            directory, depth = pending.pop()
            try:
                entries = self._folder.list_dir(directory)
            except SourceUnavailableError:
                raise  # the connection is gone: no use listing the other directories
            except Exception:
                if directory == self._root:
                    raise
                logger.warning("%s: cannot list", self._folder.origin(directory), exc_info=True)
                complete = False
                continue
            for entry in entries:
                if entry.name in (".", ".."):  # the directory's own and parent markers
                    continue
                path = self._checked(directory, entry, report)
                if path is None or is_ignored_name(posixpath.basename(path)):
                    continue
                if entry.kind is EntryKind.DIRECTORY:
                    if depth < MAX_DEPTH:
                        pending.append((path, depth + 1))
                    else:
                        complete = False
                elif entry.kind is EntryKind.FILE:
                    stamp = self._stamp(path, entry)
                    if stamp is None:
                        complete = False
                    else:
                        found.append(ListedFile(path[len(self._root) :].lstrip("/"), stamp))
        return sorted_listing(found), complete

    def _checked(self, directory: str, entry: RemoteEntry, report: PollReport) -> str | None:
        try:
            return checked_remote_path(self._root, directory, entry.name)
        except UnsafeRemoteNameError as exc:
            report.rejected += 1
            where = f"{directory}|{entry.name}"
            if where not in self._reported:
                self._reported.add(where)
                logger.warning("%s: listed name rejected: %s", self._folder.origin(directory), exc)
            return None

    def _stamp(self, path: str, entry: RemoteEntry) -> FileStamp | None:
        if entry.size is not None and entry.mtime_ns is not None:
            return FileStamp(entry.size, entry.mtime_ns)
        try:
            return self._folder.stat(path)  # only for servers whose listing lacks the facts
        except Exception as exc:
            logger.warning("%s: cannot stat: %s", self._folder.origin(path), exc)
            return None


class _RemoteFiles:
    """The `FileAccess` view of a remote folder, by key relative to the root."""

    def __init__(self, folder: RemoteFolder, root: str) -> None:
        self._folder = folder
        self._root = root

    def _path(self, key: str) -> str:
        return posixpath.join(self._root, key)

    def origin(self, key: str) -> str:
        return self._folder.origin(self._path(key))

    def read(self, listed: ListedFile) -> bytes:
        return self._folder.read(self._path(listed.key))

    def delete(self, listed: ListedFile) -> None:
        path = self._path(listed.key)
        if not _same_version(self._folder.stat(path), listed.stamp):
            raise FileChangedError(f"{path} was replaced after it was taken")
        self._folder.delete(path)


def _same_version(now: FileStamp, listed: FileStamp) -> bool:
    """Compared to the second: MDTM has no fractions even where the MLSD listing had them."""
    if now.size != listed.size:
        return False
    unknown = now.mtime_ns == 0 or listed.mtime_ns == 0  # a server without MDTM
    return unknown or now.mtime_ns // 1_000_000_000 == listed.mtime_ns // 1_000_000_000
