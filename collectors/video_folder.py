"""A watched folder for operating-room recordings, fed directly or by an FTP server's uploads.

The recorder (or an FTP server whose upload root is this folder) puts ``NAME.mp4`` or
``NAME.mov`` there, with an optional ``NAME.json`` sidecar (`collectors.video_wrap` fields).
Once the recording's size and modification time have not changed for ``settle_seconds`` (and
the sidecar's, if there is one), it is prepared (`collectors.video_intake.prepare`: checked,
transcoded only if needed, wrapped) and the DICOM bytes go to the sink. Then the recording and
its sidecar move to ``done/``; a refused one (unreadable video, bad sidecar, no worklist
match) moves to ``failed/`` with ``NAME.reason.txt``. A recording the sink cannot take now
(spool full, disk full) or whose worklist cannot be reached stays and is tried again, as
often as it takes. Any other failure (an unexpected error while preparing it, or the sink
raising) is counted: after `MAX_ATTEMPTS` the recording moves to ``failed/`` with the last
error, instead of being re-transcoded on every poll forever. The count is kept in memory, so
a restart of the gateway grants a recording fresh attempts.

Without a sidecar, or with one lacking ``patient_id``, a configured Modality Worklist is asked
for the item whose accession number is the sidecar's ``accession_number`` or else the file
stem; the sidecar's own fields win over the worklist's.

Only the folder's top level is read; symbolic links and hidden or ``.part``-style names are
ignored, so a half-uploaded file is never taken.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collectors.intake import IntakeSink
from collectors.polling import (
    FileStamp,
    ListedFile,
    PollReport,
    SettleTracker,
    is_ignored_name,
    is_out_of_resources,
    run_until_stopped,
)
from collectors.video_intake import (
    VIDEO_SUFFIXES,
    check_file_name,
    join_study,
    load_sidecar,
    prepare,
)
from collectors.video_probe import VideoError
from collectors.worklist import WorklistUnavailableError, find_worklist_item

logger = logging.getLogger(__name__)

__all__ = ["VideoFolderCollector", "WorklistSettings", "video_folder_from_config"]

DONE, FAILED = "done", "failed"
MAX_ATTEMPTS = 3  # unexpected failures of one recording before it is given up
# A full disk is the machine's state, not the recording's fault: retried without counting.
_TRANSIENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True)
class WorklistSettings:
    host: str
    port: int
    called_ae: str
    calling_ae: str
    timeout: float = 30.0


class VideoFolderCollector:
    """Polls one folder of recordings; each settled one is wrapped and handed to the sink."""

    def __init__(
        self,
        root: Path,
        sink: IntakeSink,
        *,
        workdir: Path,
        settle_seconds: float = 10.0,
        poll_interval: float = 30.0,
        worklist: WorklistSettings | None = None,
        transcode: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._root = Path(root).resolve(strict=True)
        if not self._root.is_dir():
            raise NotADirectoryError(f"{root} is not a directory")
        self._sink = sink
        self._workdir = Path(workdir)
        self._worklist = worklist
        self._transcode = transcode
        self._clock = clock
        self._settle = SettleTracker(settle_seconds)
        self._attempts: dict[str, int] = {}  # file name -> unexpected failures so far
        self.poll_interval = poll_interval
        for name in (DONE, FAILED):
            (self._root / name).mkdir(exist_ok=True)

    @property
    def root(self) -> Path:
        return self._root

    def run(self, stop: threading.Event, interval: float | None = None) -> None:
        every = self.poll_interval if interval is None else interval
        run_until_stopped(self.poll_once, stop, every, f"video-folder:{self._root}")

    def poll_once(self) -> PollReport:
        report = PollReport()
        files = self._list(report)
        now = self._clock()
        self._settle.retain(set(files))
        self._attempts = {name: n for name, n in self._attempts.items() if name in files}
        for name, stamp in sorted(files.items(), key=lambda item: (item[1].mtime_ns, item[0])):
            if not name.lower().endswith(VIDEO_SUFFIXES):
                continue
            sidecar_name = f"{Path(name).stem}.json"
            settled = self._settle.is_settled(ListedFile(name, stamp), now)
            if sidecar_name in files:  # evaluate both, so both start their settle clocks
                listed = ListedFile(sidecar_name, files[sidecar_name])
                settled = self._settle.is_settled(listed, now) and settled
            if not settled:
                report.deferred += 1
                continue
            sidecar = self._root / sidecar_name if sidecar_name in files else None
            if not self._take(self._root / name, sidecar, report):
                break
        return report

    def _list(self, report: PollReport) -> dict[str, FileStamp]:
        found: dict[str, FileStamp] = {}
        with os.scandir(self._root) as scan:
            for entry in scan:
                if is_ignored_name(entry.name):
                    continue
                try:
                    status = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISLNK(status.st_mode):
                    report.rejected += 1  # a link could point anywhere; never followed
                    continue
                if stat.S_ISREG(status.st_mode):
                    found[entry.name] = FileStamp(status.st_size, status.st_mtime_ns)
        return found

    def _take(self, video: Path, sidecar_path: Path | None, report: PollReport) -> bool:
        """Prepare and hand over one recording; False when the rest of this poll should wait."""
        origin = f"video-folder:{video}"
        try:
            sidecar = self._sidecar(video, sidecar_path)
            prepared = prepare(
                video, sidecar, self._workdir, self._transcode, display_name=video.name
            )
        except WorklistUnavailableError as exc:
            logger.warning("%s: %s; will retry", origin, exc.detail)
            report.failed += 1
            return True
        except VideoError as exc:
            logger.warning("%s: refused: %s", origin, exc.detail)
            self._move(video, sidecar_path, FAILED, exc.detail)
            report.quarantined += 1
            return True
        except Exception as exc:
            self._failed(video, sidecar_path, report, exc, "could not prepare")
            return True
        try:
            result = self._sink(prepared.read_bytes(), origin)
        except Exception as exc:
            self._failed(video, sidecar_path, report, exc, "sink raised")
            return True
        finally:
            prepared.discard()
        if result.taken:
            self._attempts.pop(video.name, None)
        if result.status == 0:
            self._move(video, sidecar_path, DONE, None)
            report.taken += 1
            logger.info(
                "%s: taken (%s)", origin, "transcoded" if prepared.transcoded else "as recorded"
            )
            return True
        if result.quarantined:
            self._move(video, sidecar_path, FAILED, f"refused by the spool: {result.error_comment}")
            report.quarantined += 1
            return True
        logger.warning("%s: not taken (0x%04X %s); will retry", origin, result.status,
                       result.error_comment)  # fmt: skip
        report.failed += 1
        return not is_out_of_resources(result)

    def _failed(
        self, video: Path, sidecar: Path | None, report: PollReport, exc: Exception, what: str
    ) -> None:
        """An unexpected failure: retried, and counted unless transient (a full disk)."""
        origin = f"video-folder:{video}"
        if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
            logger.warning("%s: %s: %s; will retry", origin, what, exc)
            report.failed += 1
            return
        attempts = self._attempts.get(video.name, 0) + 1
        if attempts < MAX_ATTEMPTS:
            self._attempts[video.name] = attempts
            logger.exception("%s: %s (attempt %d of %d); will retry", origin, what, attempts,
                             MAX_ATTEMPTS)  # fmt: skip
            report.failed += 1
            return
        logger.exception("%s: %s; given up after %d attempts", origin, what, attempts)
        self._attempts.pop(video.name, None)
        reason = f"{what} ({attempts} attempts), last: {type(exc).__name__}: {exc}"
        self._move(video, sidecar, FAILED, reason)
        report.quarantined += 1

    def _sidecar(self, video: Path, sidecar_path: Path | None) -> dict[str, Any]:
        check_file_name(video.name)
        sidecar = load_sidecar(sidecar_path) if sidecar_path is not None else {}
        if sidecar.get("patient_id"):
            return sidecar
        if self._worklist is None:
            if sidecar_path is None:
                raise VideoError(
                    f"no sidecar {video.stem}.json and no worklist to find the patient"
                )
            raise VideoError(f"sidecar {sidecar_path.name} lacks patient_id")
        accession = str(sidecar.get("accession_number") or video.stem)
        w = self._worklist
        item = find_worklist_item(
            w.host, w.port, w.called_ae, w.calling_ae, accession_number=accession,
            timeout=w.timeout,
        )  # fmt: skip
        if item is None:
            raise VideoError(f"no worklist item with accession number {accession!r}")
        return join_study(sidecar, item)

    def _move(self, video: Path, sidecar: Path | None, folder: str, reason: str | None) -> None:
        target_dir = self._root / folder
        stem = _free_stem(target_dir, video.stem)
        os.replace(video, target_dir / f"{stem}{video.suffix}")
        if sidecar is not None and sidecar.exists():
            os.replace(sidecar, target_dir / f"{stem}.json")
        if reason is not None:
            (target_dir / f"{stem}.reason.txt").write_text(reason + "\n", encoding="utf-8")


def _free_stem(folder: Path, stem: str) -> str:
    """``stem``, or ``stem-<time>`` when a recording of that name was moved there before."""
    if not any(folder.glob(f"{_glob_escape(stem)}.*")):
        return stem
    return f"{stem}-{time.strftime('%Y%m%dT%H%M%S')}-{time.monotonic_ns() % 1000000}"


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


_KEYS = {
    "kind",
    "name",
    "path",
    "settle_seconds",
    "interval_seconds",
    "transcode",
    "worklist_host",
    "worklist_port",
    "worklist_ae",
    "worklist_calling_ae",
    "worklist_timeout_seconds",
}


def video_folder_from_config(
    entry: Mapping[str, Any], sink: IntakeSink, *, workdir: Path, calling_ae: str
) -> VideoFolderCollector:
    """The collector for one ``kind = "video_folder"`` source; ValueError names a bad key.

    Keys: ``path`` (required, absolute), ``settle_seconds`` (10), ``interval_seconds`` (30),
    ``transcode`` (true), and for a worklist match ``worklist_host``, ``worklist_port``,
    ``worklist_ae`` (all three or none), ``worklist_calling_ae`` (the gateway's AE title),
    ``worklist_timeout_seconds`` (30).
    """
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise ValueError(f"unknown keys {unknown}; allowed: {', '.join(sorted(_KEYS))}")

    def number(key: str, default: float, minimum: float) -> float:
        value = entry.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise ValueError(f"{key!r} must be a number of at least {minimum:g}, got {value!r}")
        return float(value)

    def text(key: str) -> str:
        value = entry.get(key)
        if not isinstance(value, str) or not value or any(ord(c) < 32 for c in value):
            raise ValueError(f"{key!r} must be a non-empty string, got {value!r}")
        return value

    root = Path(text("path")).expanduser()
    if not root.is_absolute() or not root.is_dir():
        raise ValueError(f"'path' {str(root)!r} must be an absolute path to an existing directory")
    transcode = entry.get("transcode", True)
    if not isinstance(transcode, bool):
        raise ValueError(f"'transcode' must be true or false, got {transcode!r}")
    worklist = None
    given = [key for key in ("worklist_host", "worklist_port", "worklist_ae") if key in entry]
    if given and len(given) != 3:
        raise ValueError("give all of worklist_host, worklist_port and worklist_ae, or none")
    if given:
        port = entry["worklist_port"]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"'worklist_port' must be an integer from 1 to 65535, got {port!r}")
        ae = text("worklist_ae")
        calling = text("worklist_calling_ae") if "worklist_calling_ae" in entry else calling_ae
        if len(ae) > 16 or len(calling) > 16:
            raise ValueError("AE titles are at most 16 characters")
        worklist = WorklistSettings(
            text("worklist_host"), port, ae, calling,
            number("worklist_timeout_seconds", 30.0, 0.001),
        )  # fmt: skip
    return VideoFolderCollector(
        root,
        sink,
        workdir=workdir,
        settle_seconds=number("settle_seconds", 10.0, 0.0),
        poll_interval=number("interval_seconds", 30.0, 0.001),
        worklist=worklist,
        transcode=transcode,
    )
