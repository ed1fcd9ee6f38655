"""The PostgreSQL client tools behind index backups: pg_dump, pg_restore and psql.

They get a plain libpq URI (no driver, password or options) and the password in PGPASSWORD,
never in argv, where any local user could read it. A URL whose ``options`` set
``-csearch_path=<schema>`` means that schema alone: it is dumped with ``--schema`` and
restored under that name.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import IO, Any

from sqlalchemy import Connection, create_engine, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from cloud.backup_format import IndexBackupError

_PIPE_BYTES = 1 << 20
_ERROR_TAIL = 600  # characters of a tool's stderr worth quoting in an error


def schema_of(url: URL) -> str | None:
    """The schema an ``options=-csearch_path=<schema>`` query names (the first), or None."""
    options = url.query.get("options", "")
    text_options = " ".join(options) if isinstance(options, tuple) else options
    found = re.search(r"-c\s*search_path\s*=\s*\"?([^\s,\"]+)", text_options)
    return found.group(1) if found else None


def dump(url: URL, sink: Callable[[bytes], None]) -> None:
    """Stream ``pg_dump --format=custom`` of the database (or schema) ``url`` names."""
    uri, environment = _libpq(url)
    # No compression of its own: zstd does better on the raw dump.
    argv = ["pg_dump", "--format=custom", "--compress=0", f"--dbname={uri}"]
    schema = schema_of(url)
    if schema:
        argv.append(f"--schema={_identifier(schema)}")  # quoted: a name, not a pattern
    with tempfile.TemporaryFile() as errors:
        process = _start(argv, environment, stdout=subprocess.PIPE, stderr=errors)
        try:
            for chunk in iter(lambda: process.stdout.read(_PIPE_BYTES), b""):
                sink(chunk)
        except BaseException:
            process.kill()
            raise
        finally:
            process.stdout.close()
            code = process.wait()
        if code:
            raise IndexBackupError(f"pg_dump failed ({code}): {_tail(errors)}")


def check_dump(chunks: Iterator[bytes]) -> None:
    """Have pg_restore read the whole dump (its SQL discarded)."""
    with tempfile.TemporaryFile() as errors:
        reader = _start(
            ["pg_restore", "--file=-"],
            dict(os.environ),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
        broken = False
        try:
            _feed(chunks, reader.stdin)
        except BrokenPipeError:
            broken = True
        except BaseException:
            reader.kill()
            raise
        finally:
            code = reader.wait()
        if code or broken:
            raise IndexBackupError(f"pg_restore cannot read the dump ({code}): {_tail(errors)}")


def restore_dump(chunks: Iterator[bytes], url: URL, source_schema: str | None) -> None:
    """Restore a dump of ``source_schema`` (None: a whole database) into the empty database,
    or schema, ``url`` names, in one transaction: all of it or nothing."""
    prologue, epilogue = _restore_plan(url, source_schema)
    _replay(chunks, url, prologue, epilogue)


# --- restore ---------------------------------------------------------------------------------


def _restore_plan(url: URL, source: str | None) -> tuple[str, str]:
    """SQL run before and after the dump in the restore transaction; refuses unsafe targets."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return _plan(connection, source, schema_of(url))
    except SQLAlchemyError as exc:
        raise IndexBackupError(f"cannot reach the target database: {exc}") from exc
    finally:
        engine.dispose()


def _plan(connection: Connection, source: str | None, wanted: str | None) -> tuple[str, str]:
    if source is None:
        if wanted:
            raise IndexBackupError(
                "a whole-database backup restores into a database URL without search_path"
            )
        if _relations(connection, None):
            raise IndexBackupError("the target database is not empty; nothing was restored")
        return "", ""
    final = wanted or source
    present = set(
        connection.scalars(
            text("SELECT nspname FROM pg_namespace WHERE nspname IN (:a, :b)"),
            {"a": source, "b": final},
        )
    )
    if final != source and source in present:
        raise IndexBackupError(
            f"the backup's schema {source} exists in the target database and PostgreSQL cannot "
            "restore it under another name beside it: restore into another database"
        )
    prologue = epilogue = ""
    if final in present:
        if _relations(connection, final):
            raise IndexBackupError(
                f"schema {final} of the target is not empty; nothing was restored"
            )
        prologue = f"DROP SCHEMA {_identifier(final)};\n"  # empty: the dump makes it
    if final != source:
        epilogue = f"ALTER SCHEMA {_identifier(source)} RENAME TO {_identifier(final)};\n"
    return prologue, epilogue


def _relations(connection: Connection, schema: str | None) -> int:
    where = (
        "n.nspname = :schema"
        if schema
        else ("n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'")
    )
    joined = "pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    query = f"SELECT count(*) FROM {joined} WHERE {where}"
    return int(connection.scalar(text(query), {"schema": schema}) or 0)


def _replay(chunks: Iterator[bytes], url: URL, prologue: str, epilogue: str) -> None:
    """``pg_restore`` turns the dump into SQL, which ``psql`` runs in one transaction between
    ``prologue`` and ``epilogue``. psql commits only when its input ends, so on any failure
    it is killed first and the transaction rolls back: nothing is restored."""
    uri, environment = _libpq(url)
    psql_argv = ["psql", "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1"]
    psql_argv += ["--single-transaction", "--file=-", f"--dbname={uri}"]
    converter_argv = ["pg_restore", "--no-owner", "--no-privileges", "--file=-"]
    pipe, devnull = subprocess.PIPE, subprocess.DEVNULL
    with tempfile.TemporaryFile() as converter_errors, tempfile.TemporaryFile() as psql_errors:
        psql = _start(psql_argv, environment, stdin=pipe, stdout=devnull, stderr=psql_errors)
        converter = _start(
            converter_argv, environment, stdin=pipe, stdout=pipe, stderr=converter_errors
        )
        feeder = _Feeder(chunks, converter.stdin)
        ended = False
        try:
            psql.stdin.write(prologue.encode("utf-8"))
            shutil.copyfileobj(converter.stdout, psql.stdin, _PIPE_BYTES)
            feeder.join()
            if feeder.error is not None:
                raise feeder.error
            if converter.wait():
                raise IndexBackupError(f"pg_restore failed: {_tail(converter_errors)}")
            psql.stdin.write(epilogue.encode("utf-8"))
            psql.stdin.close()  # the end of the script: psql commits
            ended = True
        except BrokenPipeError:
            pass  # psql stopped reading (an SQL error): its status and messages say why
        finally:
            if not ended:
                psql.kill()
            converter.kill()
            feeder.join()
            converter.wait()
            code = psql.wait()
        if code or not ended:
            raise IndexBackupError(f"psql failed, nothing was restored: {_tail(psql_errors)}")


class _Feeder(threading.Thread):
    """Writes the dump into pg_restore while the caller moves its output on to psql."""

    def __init__(self, chunks: Iterator[bytes], stdin: IO[bytes]) -> None:
        super().__init__(name="index-restore-feeder", daemon=True)
        self.chunks, self.stdin = chunks, stdin
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            _feed(self.chunks, self.stdin)
        except BaseException as exc:  # handed to the caller's thread
            self.error = exc


# --- processes -------------------------------------------------------------------------------


def _libpq(url: URL) -> tuple[str, dict[str, str]]:
    """A libpq URI for the tools (no driver, password or options) and their environment."""
    environment = dict(os.environ)
    if url.password is not None:
        environment["PGPASSWORD"] = str(url.password)
    query = {key: value for key, value in url.query.items() if key != "options"}
    plain = URL.create(  # not url.set: there, password=None means "unchanged"
        "postgresql",
        username=url.username,
        host=url.host,
        port=url.port,
        database=url.database,
        query=query,
    )
    return plain.render_as_string(hide_password=False), environment


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _start(argv: list[str], environment: dict[str, str], **pipes: Any) -> Any:
    try:
        return subprocess.Popen(argv, env=environment, **pipes)
    except FileNotFoundError:
        raise IndexBackupError(f"{argv[0]} is not installed (PostgreSQL client tools)") from None


def _feed(chunks: Iterator[bytes], stdin: IO[bytes]) -> None:
    try:
        for chunk in chunks:
            stdin.write(chunk)
    finally:
        with suppress(BrokenPipeError):
            stdin.close()


def _tail(errors: IO[bytes]) -> str:
    errors.seek(0)
    message = errors.read().decode("utf-8", errors="replace").strip()
    return message[-_ERROR_TAIL:] or "no message"
