"""What every polling file collector shares: when a file is complete, and what was already taken.

A watched folder, an FTP directory and an SFTP directory are polled the same way: list the
files, wait until a file's size and modification time stop changing, hand its bytes to the
sink, and remember (durably) that it was taken so a restart does not send it again. Only the
listing and the byte transport differ; those live in ``folder`` and ``remote_files``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from collectors.durable import write_durably
from collectors.intake import OUT_OF_RESOURCES, IntakeSink, SinkResult

logger = logging.getLogger(__name__)

# Names senders use while a file is still being written; renamed when complete.
TEMP_SUFFIXES = (".part", ".tmp", ".partial", ".filepart")

_STATE_VERSION = 1


def is_ignored_name(name: str) -> bool:
    """Hidden files and in-progress uploads are never handed over."""
    return name.startswith(".") or name.lower().endswith(TEMP_SUFFIXES)


class FileStamp(NamedTuple):
    """What tells one version of a file from the next."""

    size: int
    mtime_ns: int


@dataclass(frozen=True)
class ListedFile:
    """One candidate file: its path relative to the polled root ("/"-separated) and stamp."""

    key: str
    stamp: FileStamp


@dataclass
class PollReport:
    """What one poll did. ``taken`` counts stored objects; quarantined ones are counted apart."""

    taken: int = 0
    quarantined: int = 0
    deferred: int = 0  # not yet complete: new, still changing, or younger than settle time
    failed: int = 0  # not taken: will be retried on a later poll
    rejected: int = 0  # unsafe names or links leaving the root: never read

    def __bool__(self) -> bool:
        return any((self.taken, self.quarantined, self.deferred, self.failed, self.rejected))


class FileChangedError(Exception):
    """The file changed between listing and reading; it has to settle again."""


class SourceUnavailableError(Exception):
    """The connection to the source is gone; the rest of this poll waits for the next."""


class FileAccess(Protocol):
    """Byte transport of one source, as used by `Poller`."""

    def read(self, listed: ListedFile) -> bytes: ...

    def delete(self, listed: ListedFile) -> None: ...

    def origin(self, key: str) -> str: ...


class SettleTracker:
    """A file is complete once its stamp was seen unchanged for at least ``settle_seconds``."""

    def __init__(self, settle_seconds: float) -> None:
        self._settle_seconds = settle_seconds
        self._first_seen: dict[str, tuple[FileStamp, float]] = {}

    def is_settled(self, listed: ListedFile, now: float) -> bool:
        seen = self._first_seen.get(listed.key)
        if seen is None or seen[0] != listed.stamp:
            self._first_seen[listed.key] = (listed.stamp, now)
            return False
        return now - seen[1] >= self._settle_seconds

    def forget(self, key: str) -> None:
        self._first_seen.pop(key, None)

    def retain(self, keys: set[str]) -> None:
        for key in self._first_seen.keys() - keys:
            del self._first_seen[key]


class TakenMemory:
    """Files already handed over, by key and stamp; kept in a JSON file when given a path.

    The file is replaced atomically (temporary file, fsync, rename, fsync of the directory),
    so a crash leaves either the old or the new memory, never a torn one.
    """

    def __init__(self, state_path: Path | None) -> None:
        self._path = state_path
        self._taken: dict[str, FileStamp] = {}
        self._dirty = False
        if state_path is not None:
            self._taken = _load_state(state_path)

    def has(self, listed: ListedFile) -> bool:
        return self._taken.get(listed.key) == listed.stamp

    def remember(self, listed: ListedFile) -> None:
        self._taken[listed.key] = listed.stamp
        self._dirty = True
        self.save()

    def forget(self, key: str) -> None:
        if self._taken.pop(key, None) is not None:
            self._dirty = True

    def retain(self, keys: set[str]) -> None:
        """Drop files no longer present, so the memory does not grow without bound."""
        for key in self._taken.keys() - keys:
            del self._taken[key]
            self._dirty = True

    def save(self) -> None:
        if self._path is None or not self._dirty:
            return
        state = {
            "version": _STATE_VERSION,
            "taken": {key: list(stamp) for key, stamp in sorted(self._taken.items())},
        }
        write_durably(self._path, json.dumps(state, indent=1).encode("utf-8"))
        self._dirty = False


def _load_state(path: Path) -> dict[str, FileStamp]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    try:
        state = json.loads(raw)
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unknown version {state.get('version')!r}")
        return {
            str(key): FileStamp(int(size), int(mtime_ns))
            for key, (size, mtime_ns) in state["taken"].items()
        }
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        # Keep intake flowing: at worst files are sent twice, and the sinks are idempotent.
        aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(path, aside)
        logger.error(
            "state file %s unreadable (%s); moved to %s, starting afresh", path, exc, aside
        )
        return {}


def is_out_of_resources(result: SinkResult) -> bool:
    """0xA7xx: the sink cannot take anything right now, so stop offering more."""
    return result.status & 0xFF00 == OUT_OF_RESOURCES


class Poller:
    """Decides for each listed file whether to hand it over now, and remembers what was taken."""

    def __init__(
        self,
        sink: IntakeSink,
        *,
        settle_seconds: float,
        delete_after_taken: bool,
        state_path: Path | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if settle_seconds < 0:
            raise ValueError("settle_seconds must not be negative")
        self._sink = sink
        self._delete_after_taken = delete_after_taken
        self._clock = clock
        self._settle = SettleTracker(settle_seconds)
        self._memory = TakenMemory(state_path)

    def hand_over(
        self,
        listing: Sequence[ListedFile],
        files: FileAccess,
        report: PollReport,
        *,
        listing_complete: bool,
    ) -> None:
        """Offer every complete, not yet taken file to the sink, in listing order."""
        now = self._clock()
        present = {listed.key for listed in listing}
        self._settle.retain(present)
        if listing_complete:  # an unreadable subdirectory must not erase what it holds
            self._memory.retain(present)
        try:
            for position, listed in enumerate(listing):
                if self._memory.has(listed):
                    if self._delete_after_taken:  # an earlier delete failed: try again
                        self._delete(listed, files)
                    continue
                if not self._settle.is_settled(listed, now):
                    report.deferred += 1
                    continue
                if not self._offer(listed, files, report):
                    later = len(listing) - position - 1
                    logger.info("stopping this poll; %d later listed files wait", later)
                    break
        finally:
            self._memory.save()

    def _offer(self, listed: ListedFile, files: FileAccess, report: PollReport) -> bool:
        """Hand one file over; False when the rest of this poll should wait."""
        origin = files.origin(listed.key)
        try:
            data = files.read(listed)
        except FileChangedError:
            data = None
        except SourceUnavailableError as exc:
            logger.warning("%s: source unavailable: %s", origin, exc)
            report.failed += 1
            return False
        except Exception as exc:
            logger.warning("%s: could not read: %s", origin, exc)
            report.failed += 1
            return True
        if data is None or len(data) != listed.stamp.size:
            self._settle.forget(listed.key)  # still being written after all
            report.deferred += 1
            return True

        try:
            result = self._sink(data, origin)
        except Exception:
            logger.exception("%s: sink raised; will retry", origin)
            report.failed += 1
            return True
        if not result.taken:
            logger.warning(
                "%s: not taken (status 0x%04X %s); will retry",
                origin,
                result.status,
                result.error_comment,
            )
            report.failed += 1
            return not is_out_of_resources(result)

        if result.status == 0:
            report.taken += 1
        else:
            report.quarantined += 1
        self._settle.forget(listed.key)
        if self._delete_after_taken:
            self._delete(listed, files)
        else:
            self._memory.remember(listed)
        return True

    def _delete(self, listed: ListedFile, files: FileAccess) -> None:
        try:
            files.delete(listed)
        except FileChangedError:
            # Replaced by a new file under the same name: it will be taken as such.
            self._memory.forget(listed.key)
        except Exception as exc:
            logger.warning(
                "%s: taken but not deleted (%s); will retry", files.origin(listed.key), exc
            )
            if not self._memory.has(listed):
                self._memory.remember(listed)
        else:
            self._memory.forget(listed.key)


def run_until_stopped(
    poll_once: Callable[[], PollReport], stop: threading.Event, interval: float, name: str
) -> None:
    """Poll every ``interval`` seconds until ``stop`` is set; a failed poll is logged, not fatal."""
    while not stop.is_set():
        try:
            report = poll_once()
        except Exception as exc:
            logger.warning(
                "%s: poll failed: %s", name, exc, exc_info=logger.isEnabledFor(logging.DEBUG)
            )
        else:
            if report:
                logger.info("%s: %s", name, report)
        stop.wait(interval)


def sorted_listing(files: Iterable[ListedFile]) -> list[ListedFile]:
    """Oldest first, so a backlog drains in the order it arrived."""
    return sorted(files, key=lambda listed: (listed.stamp.mtime_ns, listed.key))
