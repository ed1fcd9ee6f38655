"""Watched local folder: modalities or export tools drop Part-10 files, we hand them over.

The folder is walked recursively on every poll. Only regular files are read (a FIFO would
block the poll), hidden entries and temporary upload names are skipped, and a symbolic link is
followed only when its target stays inside the root: a link to ``/etc/shadow`` is reported as
rejected and never opened.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from collectors.intake import IntakeSink
from collectors.polling import (
    FileChangedError,
    FileStamp,
    ListedFile,
    Poller,
    PollReport,
    is_ignored_name,
    run_until_stopped,
    sorted_listing,
)

logger = logging.getLogger(__name__)

__all__ = ["FolderCollector"]


class FolderCollector:
    """Polls one local directory tree and hands each complete file to the sink once."""

    def __init__(
        self,
        root: Path,
        sink: IntakeSink,
        *,
        delete_after_taken: bool = False,
        settle_seconds: float = 2.0,
        state_path: Path | None = None,
        poll_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._root = Path(root).resolve(strict=True)
        if not self._root.is_dir():
            raise NotADirectoryError(f"{root} is not a directory")
        self._state_path = state_path.resolve() if state_path is not None else None
        self.poll_interval = poll_interval
        self._files = _FolderFiles(self._root)
        self._reported: set[Path] = set()  # escaping links already logged, to log each once
        self._poller = Poller(
            sink,
            settle_seconds=settle_seconds,
            delete_after_taken=delete_after_taken,
            state_path=state_path,
            clock=clock,
        )

    @property
    def root(self) -> Path:
        return self._root

    def poll_once(self) -> PollReport:
        report = PollReport()
        listing, complete = self._list(report)
        self._poller.hand_over(listing, self._files, report, listing_complete=complete)
        return report

    def run(self, stop: threading.Event, interval: float | None = None) -> None:
        """Poll until ``stop`` is set, every ``interval`` (default ``poll_interval``) seconds."""
        every = self.poll_interval if interval is None else interval
        run_until_stopped(self.poll_once, stop, every, self._files.origin(""))

    def _list(self, report: PollReport) -> tuple[list[ListedFile], bool]:
        """Every candidate file under the root, and whether every directory could be read."""
        found: list[ListedFile] = []
        complete = True
        directories = [self._root]
        while directories:
            directory = directories.pop()
            try:
                with os.scandir(directory) as scan:
                    entries = list(scan)
            except OSError as exc:
                logger.warning("%s: cannot list: %s", directory, exc)
                complete = False
                continue
            for entry in entries:
                if is_ignored_name(entry.name):
                    continue
                path = Path(entry.path)
                try:
                    if entry.is_symlink():
                        status = self._followed_link_status(path, report)
                    elif entry.is_dir(follow_symlinks=False):
                        directories.append(path)
                        continue
                    else:
                        status = entry.stat(follow_symlinks=False)
                except (OSError, RuntimeError):  # vanished while listing, or a link loop
                    continue
                if status is None or not stat.S_ISREG(status.st_mode) or path == self._state_path:
                    continue
                key = path.relative_to(self._root).as_posix()
                found.append(ListedFile(key, FileStamp(status.st_size, status.st_mtime_ns)))
        return sorted_listing(found), complete

    def _followed_link_status(self, link: Path, report: PollReport) -> os.stat_result | None:
        """The target's status if it is inside the root; links to directories are not walked."""
        target = link.resolve()
        if not target.is_relative_to(self._root):
            report.rejected += 1
            if link not in self._reported:
                self._reported.add(link)
                logger.warning("%s: symbolic link leaves the watched folder; ignored", link)
            return None
        return target.stat()


class _FolderFiles:
    """Reads and deletes files under the root, refusing anything that moved outside it."""

    def __init__(self, root: Path) -> None:
        self._root = root

    def origin(self, key: str) -> str:
        return f"folder:{self._root / key}" if key else f"folder:{self._root}"

    def read(self, listed: ListedFile) -> bytes:
        path = self._contained(listed.key)
        # O_NONBLOCK: a FIFO swapped in after listing must not hang the poll.
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        with os.fdopen(descriptor, "rb") as handle:
            status = os.fstat(handle.fileno())
            if not stat.S_ISREG(status.st_mode):
                raise FileChangedError(f"{path} is no longer a regular file")
            if FileStamp(status.st_size, status.st_mtime_ns) != listed.stamp:
                raise FileChangedError(f"{path} changed since listing")
            return handle.read()

    def delete(self, listed: ListedFile) -> None:
        path = self._root / listed.key
        status = os.stat(self._contained(listed.key))
        if FileStamp(status.st_size, status.st_mtime_ns) != listed.stamp:
            raise FileChangedError(f"{path} was replaced after it was taken")
        path.unlink()  # a link itself, never its target

    def _contained(self, key: str) -> Path:
        """The real path of ``key``, checked again at use: a link may have changed since."""
        real = (self._root / key).resolve(strict=True)
        if not real.is_relative_to(self._root):
            raise PermissionError(f"{self._root / key} now leaves the watched folder")
        return real
