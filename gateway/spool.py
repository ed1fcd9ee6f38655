"""The gateway's durable spool: every received object is on disk and journaled before it is acked.

Layout of a spool directory::

    journal.sqlite3            one row per object (state, checksum, UIDs, attempts, errors)
    objects/ab/<sha256>.dcm    the exact bytes received, content-addressed
    quarantine/<sha256>.bin    what could not be kept as DICOM, with the reason in the journal
    tmp/                       partial writes; anything here after a crash is garbage

An object moves ``queued`` -> ``sent`` (the cloud confirmed the same SHA-256) -> ``purged``
(its local backup copy deleted after the retention period). Objects the cloud refuses for good
go to ``quarantined``. The journal is SQLite in WAL mode with synchronous=FULL, so a commit
survives power loss, and several processes (the gateway, Orthanc's Python plugin) may share
one spool. Only the standard library and pydicom are used, so Orthanc's interpreter can load it.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread

from collectors.durable import write_durably
from collectors.intake import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SUCCESS, SinkResult

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    id INTEGER PRIMARY KEY,
    sha256 TEXT NOT NULL UNIQUE,
    sop_instance_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    study_instance_uid TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    origin TEXT NOT NULL,
    state TEXT NOT NULL,
    received_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    sent_at REAL
);
CREATE INDEX IF NOT EXISTS objects_due ON objects (state, next_attempt_at, id);
CREATE INDEX IF NOT EXISTS objects_study ON objects (study_instance_uid);
CREATE INDEX IF NOT EXISTS objects_sop ON objects (sop_instance_uid);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    file_name TEXT NOT NULL,
    origin TEXT NOT NULL,
    reason TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    quarantined_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS studies (
    study_instance_uid TEXT PRIMARY KEY,
    last_received_at REAL NOT NULL,
    reconciled_at REAL,
    reconcile_result TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS events (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    at REAL NOT NULL
);
"""

_REQUIRED_UIDS = ["SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"]


@dataclass(frozen=True)
class SpoolEntry:
    """One journaled object."""

    id: int
    sha256: str
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    size_bytes: int
    origin: str
    state: str
    received_at: float
    attempts: int
    last_error: str


@dataclass(frozen=True)
class SpoolStatus:
    queued: int
    queued_bytes: int
    sent: int
    purged: int
    quarantined: int
    oldest_unsent_seconds: float | None
    last_error: str
    last_error_at: float | None
    consecutive_failures: int
    disk_free_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class NotDicomError(ValueError):
    """Bytes that cannot be spooled as a DICOM object; the message is the quarantine reason."""


def identify(data: bytes) -> dict[str, str]:
    """The UIDs the spool and the cloud key on; NotDicomError with a precise reason if absent."""
    if len(data) < 132 or data[128:132] != b"DICM":
        raise NotDicomError("not a DICOM Part-10 file: no 'DICM' prefix at byte 128")
    try:
        dataset = dcmread(
            io.BytesIO(data), stop_before_pixels=True, specific_tags=list(_REQUIRED_UIDS)
        )
        uids = {name: str(dataset.get(name, "") or "").strip() for name in _REQUIRED_UIDS}
    except Exception as exc:  # pydicom raises many kinds on damaged input; all mean "unreadable"
        raise NotDicomError(f"unreadable DICOM: {type(exc).__name__}: {exc}") from exc
    missing = [name for name, value in uids.items() if not value]
    if missing:
        raise NotDicomError(f"missing {', '.join(missing)}")
    for name, value in uids.items():
        if len(value) > 64 or not all(part.isdigit() for part in value.split(".")):
            raise NotDicomError(f"{name} {value[:70]!r} is not a valid UID")
    return uids


class Spool:
    """A spool directory. Thread-safe; several processes may open the same directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("objects", "quarantine", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connection().executescript(_SCHEMA)
        self._remove_stale_partials()

    def _remove_stale_partials(self) -> None:
        # Left by a crash mid-write. Only old ones: another process may be writing right now.
        cutoff = time.time() - 3600
        for partial in (self.root / "tmp").iterdir():
            try:
                if partial.stat().st_mtime < cutoff:
                    partial.unlink()
            except OSError:
                continue

    # -- journal connection -------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.root / "journal.sqlite3", timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=30000")
            db.row_factory = sqlite3.Row
            self._local.db = db
        return db

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A transaction: committed (and fsync'd, synchronous=FULL) on success."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- intake ---------------------------------------------------------------------------

    def accept(self, data: bytes, origin: str) -> SinkResult:
        """The collectors' sink: make ``data`` durable and journal it, or quarantine it."""
        sha256 = hashlib.sha256(data).hexdigest()
        try:
            uids = identify(data)
        except NotDicomError as exc:
            return self._quarantine_bytes(data, sha256, origin, str(exc))
        try:
            self._write_durably(self.object_path(sha256), data)
            now = time.time()
            with self._db() as db:
                known = db.execute(
                    "SELECT state FROM objects WHERE sha256 = ?", (sha256,)
                ).fetchone()
                if known is None:
                    db.execute(
                        "INSERT INTO objects (sha256, sop_instance_uid, sop_class_uid,"
                        " study_instance_uid, series_instance_uid, size_bytes, origin, state,"
                        " received_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'queued', ?)",
                        (
                            sha256,
                            uids["SOPInstanceUID"],
                            uids["SOPClassUID"],
                            uids["StudyInstanceUID"],
                            uids["SeriesInstanceUID"],
                            len(data),
                            origin[:500],
                            now,
                        ),
                    )
                    self._touch_study(db, uids["StudyInstanceUID"], now)
                elif known["state"] == "purged":
                    # Received again after its backup copy expired: keep it as backup again,
                    # the cloud already confirmed it, so nothing is re-sent.
                    db.execute(
                        "UPDATE objects SET state = 'sent', sent_at = ? WHERE sha256 = ?",
                        (now, sha256),
                    )
        except OSError as exc:
            logger.error("spool write failed: %s", exc)
            self.note_error(f"spool write failed: {exc}")
            return SinkResult(OUT_OF_RESOURCES, f"spool write failed: {exc.strerror or exc}")
        return SinkResult(SUCCESS)

    def _quarantine_bytes(self, data: bytes, sha256: str, origin: str, reason: str) -> SinkResult:
        name = f"{sha256}.bin"
        try:
            self._write_durably(self.root / "quarantine" / name, data)
            with self._db() as db:
                db.execute(
                    "INSERT INTO quarantine (file_name, origin, reason, size_bytes,"
                    " quarantined_at) VALUES (?, ?, ?, ?, ?)",
                    (name, origin[:500], reason[:1000], len(data), time.time()),
                )
        except OSError as exc:
            return SinkResult(OUT_OF_RESOURCES, f"spool write failed: {exc.strerror or exc}")
        logger.warning("quarantined %s from %s: %s", name, origin, reason)
        return SinkResult(CANNOT_UNDERSTAND, reason, quarantined=True)

    def _write_durably(self, path: Path, data: bytes) -> None:
        if path.exists() and path.stat().st_size == len(data):
            return  # content-addressed: same name, same bytes
        partial = self.root / "tmp" / f"{path.name}.{os.getpid()}.{threading.get_ident()}"
        write_durably(path, data, partial)

    @staticmethod
    def _touch_study(db: sqlite3.Connection, study_uid: str, now: float) -> None:
        db.execute(
            "INSERT INTO studies (study_instance_uid, last_received_at) VALUES (?, ?)"
            " ON CONFLICT (study_instance_uid) DO UPDATE SET last_received_at = excluded."
            "last_received_at, reconciled_at = NULL",
            (study_uid, now),
        )

    def object_path(self, sha256: str) -> Path:
        return self.root / "objects" / sha256[:2] / f"{sha256}.dcm"

    # -- forwarding -----------------------------------------------------------------------

    def due(self, limit: int, max_bytes: int, now: float | None = None) -> list[SpoolEntry]:
        """Queued objects whose next attempt is due, oldest first, within the size budget."""
        now = time.time() if now is None else now
        rows = (
            self._connection()
            .execute(
                "SELECT * FROM objects WHERE state = 'queued' AND next_attempt_at <= ?"
                " ORDER BY id LIMIT ?",
                (now, limit),
            )
            .fetchall()
        )
        batch: list[SpoolEntry] = []
        total = 0
        for row in rows:
            if batch and total + row["size_bytes"] > max_bytes:
                break
            batch.append(_entry(row))
            total += row["size_bytes"]
        return batch

    def mark_sent(self, shas: list[str]) -> None:
        now = time.time()
        with self._db() as db:
            db.executemany(
                "UPDATE objects SET state = 'sent', sent_at = ?, last_error = ''"
                " WHERE sha256 = ? AND state = 'queued'",
                [(now, sha) for sha in shas],
            )
            db.execute("DELETE FROM events WHERE name = 'consecutive_failures'")

    def mark_retry(self, shas: list[str], error: str, base_delay: float = 1.0) -> None:
        """Count a failed attempt and back off exponentially (capped at 5 minutes)."""
        now = time.time()
        with self._db() as db:
            for sha in shas:
                row = db.execute("SELECT attempts FROM objects WHERE sha256 = ?", (sha,)).fetchone()
                attempts = (row["attempts"] if row else 0) + 1
                delay = min(base_delay * 2 ** min(attempts - 1, 16), 300.0)
                db.execute(
                    "UPDATE objects SET attempts = ?, next_attempt_at = ?, last_error = ?"
                    " WHERE sha256 = ?",
                    (attempts, now + delay, error[:1000], sha),
                )
        self.note_error(error, failure=True)

    def mark_quarantined(self, sha256: str, reason: str) -> None:
        """The cloud refused this object for good: keep it aside with the reason."""
        with self._db() as db:
            db.execute(
                "UPDATE objects SET state = 'quarantined', last_error = ? WHERE sha256 = ?",
                (reason[:1000], sha256),
            )
        logger.warning("object %s quarantined: %s", sha256, reason)

    def requeue(self, study_uid: str, sop_uids: list[str]) -> int:
        """Send these objects of a study again (a reconciliation found them missing)."""
        count = 0
        with self._db() as db:
            for sop in sop_uids:
                rows = db.execute(
                    "SELECT sha256 FROM objects WHERE study_instance_uid = ? AND"
                    " sop_instance_uid = ? AND state = 'sent'",
                    (study_uid, sop),
                ).fetchall()
                for row in rows:
                    if self.object_path(row["sha256"]).exists():
                        db.execute(
                            "UPDATE objects SET state = 'queued', next_attempt_at = 0,"
                            " attempts = 0 WHERE sha256 = ?",
                            (row["sha256"],),
                        )
                        count += 1
            db.execute(
                "UPDATE studies SET reconciled_at = NULL WHERE study_instance_uid = ?",
                (study_uid,),
            )
        return count

    def note_error(self, message: str, *, failure: bool = False) -> None:
        now = time.time()
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO events (name, value, at) VALUES ('last_error', ?, ?)",
                (message[:1000], now),
            )
            if failure:
                db.execute(
                    "INSERT INTO events (name, value, at) VALUES ('consecutive_failures', '1', ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = CAST(value AS INTEGER) + 1,"
                    " at = excluded.at",
                    (now,),
                )

    def remember(self, name: str, value: str) -> None:
        """Keep a small named fact (e.g. the cloud's last heartbeat answer) for `status`."""
        with self._db() as db:
            db.execute(
                "INSERT OR REPLACE INTO events (name, value, at) VALUES (?, ?, ?)",
                (name, value, time.time()),
            )

    def recall(self, name: str) -> str | None:
        row = (
            self._connection()
            .execute("SELECT value FROM events WHERE name = ?", (name,))
            .fetchone()
        )
        return None if row is None else str(row[0])

    # -- audit ----------------------------------------------------------------------------

    def studies_to_reconcile(self, settle_seconds: float, limit: int = 50) -> list[str]:
        """Studies quiet for ``settle_seconds``, fully sent, and not reconciled since."""
        cutoff = time.time() - settle_seconds
        rows = (
            self._connection()
            .execute(
                "SELECT s.study_instance_uid FROM studies s WHERE s.reconciled_at IS NULL"
                " AND s.last_received_at <= ? AND NOT EXISTS (SELECT 1 FROM objects o"
                " WHERE o.study_instance_uid = s.study_instance_uid AND o.state = 'queued')"
                " ORDER BY s.last_received_at LIMIT ?",
                (cutoff, limit),
            )
            .fetchall()
        )
        return [row[0] for row in rows]

    def study_manifest(self, study_uid: str) -> dict[str, str]:
        """SOP Instance UID -> SHA-256 of what this gateway forwarded for a study."""
        rows = (
            self._connection()
            .execute(
                "SELECT sop_instance_uid, sha256 FROM objects WHERE study_instance_uid = ?"
                " AND state IN ('sent', 'purged', 'queued')",
                (study_uid,),
            )
            .fetchall()
        )
        return {row[0]: row[1] for row in rows}

    def mark_reconciled(self, study_uid: str, result: str) -> None:
        with self._db() as db:
            db.execute(
                "UPDATE studies SET reconciled_at = ?, reconcile_result = ?"
                " WHERE study_instance_uid = ?",
                (time.time(), result, study_uid),
            )

    # -- retention ------------------------------------------------------------------------

    def purge_sent(self, keep_days: float, now: float | None = None) -> int:
        """Delete local backup copies of objects confirmed more than ``keep_days`` ago."""
        cutoff = (time.time() if now is None else now) - keep_days * 86400
        rows = (
            self._connection()
            .execute("SELECT sha256 FROM objects WHERE state = 'sent' AND sent_at < ?", (cutoff,))
            .fetchall()
        )
        for row in rows:
            self.object_path(row[0]).unlink(missing_ok=True)
        with self._db() as db:
            db.executemany(
                "UPDATE objects SET state = 'purged' WHERE sha256 = ?", [(row[0],) for row in rows]
            )
        return len(rows)

    # -- reporting ------------------------------------------------------------------------

    def status(self) -> SpoolStatus:
        db = self._connection()
        counts = dict(db.execute("SELECT state, COUNT(*) FROM objects GROUP BY state").fetchall())
        queued_bytes, oldest = db.execute(
            "SELECT COALESCE(SUM(size_bytes), 0), MIN(received_at) FROM objects"
            " WHERE state = 'queued'"
        ).fetchone()
        bad_files = db.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
        events = {
            row[0]: (row[1], row[2]) for row in db.execute("SELECT name, value, at FROM events")
        }
        last_error, last_error_at = events.get("last_error", ("", None))
        failures = int(events.get("consecutive_failures", ("0", None))[0])
        return SpoolStatus(
            queued=counts.get("queued", 0),
            queued_bytes=int(queued_bytes),
            sent=counts.get("sent", 0),
            purged=counts.get("purged", 0),
            quarantined=counts.get("quarantined", 0) + bad_files,
            oldest_unsent_seconds=None if oldest is None else max(0.0, time.time() - oldest),
            last_error=last_error,
            last_error_at=last_error_at,
            consecutive_failures=failures,
            disk_free_bytes=shutil.disk_usage(self.root).free,
        )

    def quarantined(self) -> list[dict[str, Any]]:
        """Everything set aside, with its reason, for the operator."""
        db = self._connection()
        files = [
            {"file": f"quarantine/{row[0]}", "origin": row[1], "reason": row[2]}
            for row in db.execute("SELECT file_name, origin, reason FROM quarantine ORDER BY id")
        ]
        refused = [
            {
                "file": str(self.object_path(row[0]).relative_to(self.root)),
                "origin": row[1],
                "reason": row[2],
            }
            for row in db.execute(
                "SELECT sha256, origin, last_error FROM objects WHERE state = 'quarantined'"
            )
        ]
        return files + refused

    def entries(self, study_uid: str | None = None) -> list[SpoolEntry]:
        query = "SELECT * FROM objects"
        args: tuple[str, ...] = ()
        if study_uid is not None:
            query += " WHERE study_instance_uid = ?"
            args = (study_uid,)
        return [_entry(row) for row in self._connection().execute(query + " ORDER BY id", args)]


def _entry(row: sqlite3.Row) -> SpoolEntry:
    return SpoolEntry(
        id=row["id"],
        sha256=row["sha256"],
        sop_instance_uid=row["sop_instance_uid"],
        sop_class_uid=row["sop_class_uid"],
        study_instance_uid=row["study_instance_uid"],
        series_instance_uid=row["series_instance_uid"],
        size_bytes=row["size_bytes"],
        origin=row["origin"],
        state=row["state"],
        received_at=row["received_at"],
        attempts=row["attempts"],
        last_error=row["last_error"],
    )
