"""Backups of the index: consistent encrypted snapshots taken online, kept N deep, restorable.

Only the index database is backed up (studies, series, instances, patients, users, grants,
audit log, the wrapped study data keys, ...). Blobs have their own copies
(`cloud.blob_replicas`); the KEKs must be kept apart: without them neither blobs nor these
backups can be read.

- SQLite: the ``sqlite3`` online backup API copies the live database, WAL included, in one
  read transaction while the node keeps writing (a file copy could miss the WAL or tear pages).
- PostgreSQL: ``pg_dump --format=custom`` (one snapshot); if the URL sets the schema with
  ``options=-csearch_path=<schema>``, that schema only.

The snapshot is compressed and sealed segment by segment under a fresh data key wrapped by
the current KEK (`cloud.backup_format`); `cloud.pg_tools` runs the PostgreSQL client tools.

A backup needs its own KEK and, to read anything through the restored index, the KEKs its
study keys were wrapped with then: `IndexBackups.kek_ids` names them, so that rotation keeps
them until those backups are pruned.

Files ``index-<UTC time>.<sqlite|pgdump>.zst.ice`` are written aside, fsync'd and renamed,
then the JSON manifest ``<file>.json`` (time, dialect, sha256 and size of the snapshot, KEK id,
Alembic revision); a file without its manifest is unfinished and ignored.
"""

from __future__ import annotations

import builtins
import fcntl
import hashlib
import json
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Engine, select, text
from sqlalchemy.engine import URL, make_url

from cloud import pg_tools
from cloud.backup_format import IndexBackupError, read_sealed, sealed_writer
from cloud.crypto import KeyEncryptionKeys
from cloud.models import StudyLifecycle

__all__ = ["DEFAULT_KEEP", "BackupInfo", "IndexBackupError", "IndexBackups"]

logger = logging.getLogger(__name__)

Update = Callable[[int, int | None], None]  # bytes done, bytes in all (None: not known)
Sink = Callable[[bytes, int | None], None]  # a chunk of the snapshot, its size if known
DEFAULT_KEEP = 48  # two days of hourly backups, or seven weeks of daily ones
_READ_BYTES = 1 << 20  # of the SQLite snapshot at a time
_KINDS = {"sqlite": "sqlite", "postgresql": "pgdump"}
_SCRATCH = ".index-backup-scratch-"
_STALE_SCRATCH = timedelta(days=1)
_REVISION = "SELECT version_num FROM alembic_version"
_KEY_KEKS = "SELECT DISTINCT kek_id FROM study_keys WHERE wrapped_key IS NOT NULL"


@dataclass(frozen=True)
class BackupInfo:
    """One backup, as its manifest describes it."""

    path: Path
    created_at: datetime
    dialect: str  # "sqlite" or "postgresql"
    sha256: str  # of the snapshot (the SQLite file, the pg_dump archive)
    size_bytes: int  # of the snapshot
    stored_bytes: int  # of the compressed, encrypted file
    kek_id: str
    revision: str  # Alembic revision of the index
    schema: str | None = None  # the PostgreSQL schema dumped alone; None: the whole database
    study_key_keks: tuple[str, ...] = ()  # the KEKs the study keys inside were wrapped with

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def manifest(self) -> Path:
        return self.path.with_name(f"{self.path.name}.json")

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.name,
            "created_at": self.created_at.isoformat(),
            "dialect": self.dialect,
            "schema": self.schema,
            "database_revision": self.revision,
            "plaintext_sha256": self.sha256,
            "plaintext_bytes": self.size_bytes,
            "stored_bytes": self.stored_bytes,
            "compression": "zstd",
            "encryption": "aes256gcm",
            "kek_id": self.kek_id,
            "study_key_kek_ids": list(self.study_key_keks),
        }

    @classmethod
    def load(cls, manifest: Path) -> BackupInfo:
        """The backup a manifest describes; `ValueError` if it is not one of ours."""
        document = json.loads(manifest.read_text(encoding="utf-8"))
        path = manifest.with_name(manifest.name.removesuffix(".json"))
        if document.get("file") != path.name or document.get("dialect") not in _KINDS:
            raise ValueError(f"{manifest.name} is not an index backup manifest")
        return cls(
            path=path,
            created_at=_utc(datetime.fromisoformat(document["created_at"])),
            dialect=document["dialect"],
            sha256=document["plaintext_sha256"],
            size_bytes=int(document["plaintext_bytes"]),
            stored_bytes=int(document["stored_bytes"]),
            kek_id=document["kek_id"],
            revision=document.get("database_revision") or "",
            schema=document.get("schema"),
            study_key_keks=tuple(document.get("study_key_kek_ids") or ()),
        )


class IndexBackups:
    """The index backups kept in ``directory``: make, list, verify, restore, schedule.

    Parameters
    ----------
    engine
        The live index; None for a tool that only lists, verifies and restores (disaster
        recovery, when the index is gone).
    directory
        Where backups are kept (``<data-dir>/backups/index`` by default in the CLI).
    keks
        The archive's key-encryption keys: new backups are wrapped with the current one;
        restoring needs the KEKs `kek_ids` names, so keep old ones while backups need them.
    keep
        How many backups to keep; older ones are deleted after each new one.
    hourly, daily
        The backup interval while a study of level 3 or higher is in the index, and otherwise.
    scratch
        Where plaintext SQLite copies are briefly written (0600) to be checked: by default the
        live SQLite database's directory (same disk, same exposure), else ``directory``.
    """

    def __init__(
        self,
        engine: Engine | None,
        directory: Path,
        keks: KeyEncryptionKeys,
        *,
        keep: int = DEFAULT_KEEP,
        hourly: timedelta = timedelta(hours=1),
        daily: timedelta = timedelta(days=1),
        scratch: Path | None = None,
    ) -> None:
        if keep < 1:
            raise ValueError("keep at least one backup")
        self.engine = engine
        self.directory = directory
        self.keks = keks
        self.keep = keep
        self.hourly, self.daily = hourly, daily
        live = _sqlite_path(engine.url) if engine and engine.dialect.name == "sqlite" else None
        self.scratch = scratch or (live.parent if live else directory)
        self._lock = threading.Lock()

    # --- making --------------------------------------------------------------------------

    def create(self, now: datetime | None = None, progress: Update | None = None) -> BackupInfo:
        """Back up the live index now, then delete backups beyond the newest ``keep``."""
        with self._exclusive():
            return self._create(_utc(now), progress or _no_progress)

    def run_if_due(self, now: datetime | None = None) -> BackupInfo | None:
        """Back up if `due` (for a periodic loop); the new backup, or None. Errors propagate."""
        when = _utc(now)
        if not self.due(when):
            return None
        with self._exclusive():  # another process may have made one meanwhile
            return self._create(when, _no_progress) if self.due(when) else None

    def interval(self) -> timedelta:
        """Hourly while the index holds a study classified at level 3 or higher, else daily."""
        with self._engine().connect() as connection:
            sensitive = connection.scalar(
                select(StudyLifecycle.study_pk).where(StudyLifecycle.level >= 3).limit(1)
            )
        return self.hourly if sensitive is not None else self.daily

    def due(self, now: datetime | None = None) -> bool:
        """Whether the newest backup is at least `interval` old (or there is none)."""
        newest = self.latest()
        return newest is None or _utc(now) - newest.created_at >= self.interval()

    def _create(self, now: datetime, progress: Update) -> BackupInfo:
        engine = self._engine()
        dialect = engine.dialect.name
        if dialect not in _KINDS:
            raise IndexBackupError(f"cannot back up a {dialect} index (SQLite or PostgreSQL)")
        self._clean_up()
        path = self._new_path(now, dialect)
        digest, size, started = hashlib.sha256(), 0, time.monotonic()
        with _written_atomically(path) as handle, sealed_writer(handle, self.keks) as sealed:

            def sink(chunk: bytes, total: int | None) -> None:
                nonlocal size
                digest.update(chunk)
                sealed.write(chunk)
                size += len(chunk)
                progress(size, total)

            if dialect == "sqlite":
                revision, key_keks = self._snapshot_sqlite(engine, sink)
            else:
                revision, key_keks = _dump_postgresql(engine, sink)
        backup = BackupInfo(
            path=path,
            created_at=now,
            dialect=dialect,
            sha256=digest.hexdigest(),
            size_bytes=size,
            stored_bytes=path.stat().st_size,
            kek_id=sealed.kek_id,
            revision=revision,
            schema=pg_tools.schema_of(engine.url) if dialect == "postgresql" else None,
            study_key_keks=key_keks,
        )
        _write_manifest(backup)
        logger.info(
            "index backed up",
            extra={
                "backup": path.name,
                "snapshot_bytes": size,
                "stored_bytes": backup.stored_bytes,
                "seconds": round(time.monotonic() - started, 3),
            },
        )
        self._prune()
        return backup

    def _snapshot_sqlite(self, engine: Engine, sink: Sink) -> tuple[str, tuple[str, ...]]:
        with _scratch_file(self.scratch) as snapshot:
            raw = engine.raw_connection()
            try:
                copy = sqlite3.connect(snapshot)
                try:
                    # All pages in one step: one read transaction, so one consistent moment;
                    # stepwise copying would restart whenever the node writes meanwhile.
                    raw.driver_connection.backup(copy)  # type: ignore[union-attr]
                finally:
                    copy.close()
            finally:
                raw.close()
            described = _sqlite_description(snapshot)
            total = snapshot.stat().st_size
            with snapshot.open("rb") as handle:
                for chunk in iter(lambda: handle.read(_READ_BYTES), b""):
                    sink(chunk, total)
        return described

    def _new_path(self, now: datetime, dialect: str) -> Path:
        stem, suffix = f"index-{now:%Y%m%dT%H%M%SZ}", f".{_KINDS[dialect]}.zst.ice"
        path, number = self.directory / f"{stem}{suffix}", 0
        while path.exists() or path.with_name(f"{path.name}.json").exists():
            number += 1
            path = self.directory / f"{stem}-{number}{suffix}"
        return path

    def _prune(self) -> None:
        for old in self.list()[self.keep :]:
            old.manifest.unlink(missing_ok=True)  # first: a file without one is unfinished
            old.path.unlink(missing_ok=True)
            logger.info("old index backup deleted", extra={"backup": old.name})

    def _clean_up(self) -> None:
        """Leftovers of interrupted runs (we hold the directory's lock, so none is running)."""
        listed = {backup.name for backup in self.list()}
        for unfinished in self.directory.glob("index-*.ice"):
            if unfinished.name not in listed:
                unfinished.unlink(missing_ok=True)
        for temporary in self.directory.glob(".index-*.tmp"):
            temporary.unlink(missing_ok=True)
        # Plaintext scratch copies of a crashed run; a day's age spares a running verify.
        cutoff = time.time() - _STALE_SCRATCH.total_seconds()
        for stale in self.scratch.glob(f"{_SCRATCH}*"):
            with suppress(FileNotFoundError):
                if stale.stat().st_mtime < cutoff:
                    stale.unlink()

    # --- finding ---------------------------------------------------------------------------

    def list(self) -> builtins.list[BackupInfo]:
        """The complete backups in the directory, newest first."""
        found = []
        for manifest in self.directory.glob("index-*.ice.json"):
            try:
                found.append(BackupInfo.load(manifest))
            except (OSError, ValueError, KeyError, TypeError):
                logger.warning("unreadable index backup manifest", extra={"file": manifest.name})
        return sorted(found, key=lambda backup: (backup.created_at, backup.name), reverse=True)

    def latest(self) -> BackupInfo | None:
        backups = self.list()
        return backups[0] if backups else None

    def find(self, reference: str | Path) -> BackupInfo:
        """A backup by file name (in the directory) or path (elsewhere, with its manifest)."""
        path = Path(reference)
        if not path.exists() and path.name == str(reference):
            path = self.directory / path.name
        manifest = path if path.name.endswith(".json") else path.with_name(f"{path.name}.json")
        try:
            return BackupInfo.load(manifest)
        except FileNotFoundError:
            raise IndexBackupError(
                f"no index backup {reference} (with its .json manifest)"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexBackupError(f"manifest of {reference} is unreadable: {exc}") from exc

    def kek_ids(self) -> dict[str, int]:
        """KEK id -> backups that need it (their own, or their study keys'): rotation must
        not retire these while the backups are kept."""
        counts: dict[str, int] = {}
        for backup in self.list():
            for kek_id in {backup.kek_id, *backup.study_key_keks}:
                counts[kek_id] = counts.get(kek_id, 0) + 1
        return counts

    # --- reading ---------------------------------------------------------------------------

    def verify(self, backup: BackupInfo, progress: Update | None = None) -> None:
        """Decrypt, decompress and check a backup against its manifest (and, for SQLite,
        ``PRAGMA integrity_check``; for PostgreSQL, that pg_restore reads it whole).
        `IndexBackupError` says what is wrong."""
        chunks = self._plaintext(backup, progress or _no_progress)
        if backup.dialect == "sqlite":
            with _scratch_file(self.scratch) as copy:
                _write_all(copy, chunks)
                _check_sqlite(copy, backup.name)
        else:
            pg_tools.check_dump(chunks)

    def restore(
        self,
        backup: BackupInfo,
        target_url: str,
        *,
        force: bool = False,
        progress: Update | None = None,
    ) -> None:
        """Restore ``backup`` into the database ``target_url`` names; checked before it lands.

        SQLite (``sqlite:////path/index.sqlite3``): the file is written aside, checked (sha256,
        integrity_check) and renamed into place. An existing non-empty file is refused unless
        ``force``; then it (with its -wal/-shm) is kept as ``<name>.before-restore-<time>``,
        and refused anyway while any connection has it open (a running node): stop the node.

        PostgreSQL: the dump is replayed by ``pg_restore | psql --single-transaction``, so a
        failure, or a backup found damaged on the way, leaves nothing behind. The target must
        be empty; ``force`` is refused. A whole-database backup restores into a database URL
        without a ``search_path`` option. A schema backup restores into the schema the URL's
        ``-csearch_path=`` names (else its own name): as PostgreSQL cannot restore a schema
        under another name, it is restored under its own and then renamed, so the backup's
        schema name must be free in the target database (use another database, or drop the
        damaged schema first); an empty target schema is dropped and replaced.
        """
        url = make_url(target_url)
        backend = url.get_backend_name()
        if backend != backup.dialect:
            raise IndexBackupError(
                f"{backup.name} is a {backup.dialect} index; it cannot be restored into {backend}"
            )
        if backend == "sqlite":
            self._restore_sqlite(backup, _sqlite_path(url), force, progress or _no_progress)
        elif force:
            raise IndexBackupError(
                "force replaces SQLite files only; a PostgreSQL target must be empty"
            )
        else:
            chunks = self._plaintext(backup, progress or _no_progress)
            pg_tools.restore_dump(chunks, url, backup.schema)
        logger.info(
            "index restored",
            extra={"backup": backup.name, "target": url.render_as_string(hide_password=True)},
        )

    def _restore_sqlite(
        self, backup: BackupInfo, target: Path, force: bool, progress: Update
    ) -> None:
        if _holds_data(target) and not force:
            raise IndexBackupError(
                f"{target} already holds an index; force replaces it (with the node stopped)"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        with _scratch_file(target.parent) as copy:
            _write_all(copy, self._plaintext(backup, progress))
            _check_sqlite(copy, backup.name)
            if _holds_data(target):
                _set_aside(target)
            os.replace(copy, target)
        _fsync_directory(target.parent)

    def _plaintext(self, backup: BackupInfo, progress: Update) -> Iterator[bytes]:
        """The snapshot's bytes, authenticated segment by segment; the last ``next`` raises
        if they do not match the manifest."""
        digest, done = hashlib.sha256(), 0
        try:
            with backup.path.open("rb") as handle:
                for chunk in read_sealed(handle, self.keks, backup.name):
                    digest.update(chunk)
                    done += len(chunk)
                    progress(done, backup.size_bytes)
                    yield chunk
        except FileNotFoundError:
            raise IndexBackupError(f"backup file {backup.name} is missing") from None
        if done != backup.size_bytes or digest.hexdigest() != backup.sha256:
            raise IndexBackupError(f"backup {backup.name} does not match its manifest")

    # --- plumbing --------------------------------------------------------------------------

    def _engine(self) -> Engine:
        if self.engine is None:
            raise IndexBackupError("this needs the live index (opened without one)")
        return self.engine

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One backup job at a time per directory, across threads and processes."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._lock, (self.directory / ".lock").open("ab") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield


# --- SQLite ----------------------------------------------------------------------------------


def _sqlite_path(url: URL) -> Path:
    if not url.database or url.database == ":memory:" or url.database.startswith("file:"):
        raise IndexBackupError("an SQLite index backup needs a database file path")
    return Path(url.database).resolve()


def _sqlite_description(path: Path) -> tuple[str, tuple[str, ...]]:
    """The Alembic revision of a snapshot and the KEKs its study keys are wrapped with."""
    connection = sqlite3.connect(path)
    try:
        revision = connection.execute(_REVISION).fetchone()
        keks = [row[0] for row in connection.execute(_KEY_KEKS)]
    except sqlite3.Error:
        revision, keks = None, []
    finally:
        connection.close()
    return (str(revision[0]) if revision else ""), tuple(sorted(keks))


def _check_sqlite(path: Path, what: str) -> None:
    try:
        connection = sqlite3.connect(path)
        try:
            rows = connection.execute("PRAGMA integrity_check").fetchall()
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise IndexBackupError(f"{what} does not hold an SQLite database: {exc}") from exc
    if rows != [("ok",)]:
        problems = "; ".join(str(row[0]) for row in rows[:3])
        raise IndexBackupError(f"{what} fails the SQLite integrity check: {problems}")


def _holds_data(path: Path) -> bool:
    return any(
        candidate.exists() and candidate.stat().st_size > 0
        for candidate in (path, path.with_name(f"{path.name}-wal"))
    )


def _set_aside(target: Path) -> None:
    """Keep the database being replaced as ``<name>.before-restore-<time>``; refused while
    any connection has it open."""
    probe = sqlite3.connect(target, timeout=0, isolation_level=None)
    try:
        probe.execute("PRAGMA locking_mode=EXCLUSIVE")
        probe.execute("BEGIN EXCLUSIVE")  # any open connection, idle or not, holds it off
        probe.execute("ROLLBACK")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise IndexBackupError(
                f"{target} is in use (is a node running on it?): stop it before restoring"
            ) from None
    except sqlite3.DatabaseError:
        pass  # not a database at all: nothing can be using it as one
    finally:
        probe.close()  # the last connection folds the WAL into the file
    aside = f"{target.name}.before-restore-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    for suffix in ("", "-wal", "-shm"):
        current = target.with_name(f"{target.name}{suffix}")
        if current.exists():
            os.replace(current, target.with_name(f"{aside}{suffix}"))
    logger.warning("replaced index kept aside", extra={"file": aside})


# --- PostgreSQL ------------------------------------------------------------------------------


def _dump_postgresql(engine: Engine, sink: Sink) -> tuple[str, tuple[str, ...]]:
    with engine.connect() as connection:  # just before the dump's snapshot: close enough
        revision = connection.scalar(text(_REVISION)) or ""
        keks = tuple(sorted(connection.scalars(text(_KEY_KEKS))))
    pg_tools.dump(engine.url, lambda chunk: sink(chunk, None))
    return str(revision), keks


# --- files -----------------------------------------------------------------------------------


def _utc(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.now(UTC)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _no_progress(_done: int, _total: int | None) -> None:
    return None


@contextmanager
def _written_atomically(path: Path) -> Iterator[IO[bytes]]:
    """A file written aside (0600), fsync'd and renamed to ``path`` only if all went well."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _write_manifest(backup: BackupInfo) -> None:
    document = json.dumps(backup.as_dict(), indent=2) + "\n"
    with _written_atomically(backup.manifest) as handle:
        handle.write(document.encode("utf-8"))


@contextmanager
def _scratch_file(directory: Path) -> Iterator[Path]:
    """An empty 0600 file for a plaintext copy, removed afterwards (unless renamed away)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{_SCRATCH}{secrets.token_hex(8)}"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    try:
        yield path
    finally:
        for leftover in (
            path,
            path.with_name(f"{path.name}-wal"),
            path.with_name(f"{path.name}-shm"),
        ):
            leftover.unlink(missing_ok=True)


def _write_all(path: Path, chunks: Iterator[bytes]) -> None:
    with path.open("wb") as handle:
        for chunk in chunks:
            handle.write(chunk)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
