"""Index database: engine, sessions and schema migrations (Alembic).

SQLite is the embedded default; PostgreSQL is the production shape. The same models and
migrations serve both; only the connection URL differs.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from cloud.errors import BackendUnavailableError

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")


def sqlite_url(data_dir: Path) -> str:
    """The embedded default: one SQLite file in the data directory."""
    return f"sqlite:///{(data_dir / 'index.sqlite3').resolve()}"


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets QIDO read while C-STORE writes; FULL makes each commit survive power loss;
    # the busy timeout serialises writers from several associations instead of failing them.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def create_index_engine(url: str) -> Engine:
    """Create the engine for ``url``, tuned for its dialect."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False}, pool_size=8)
        event.listen(engine, "connect", _tune_sqlite)
        return engine
    return create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision; safe to call on every start."""
    try:
        command.upgrade(alembic_config(engine), "head")
    except OperationalError as exc:
        raise BackendUnavailableError(f"index database unreachable: {exc.orig}") from exc


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def as_utc(moment: datetime) -> datetime:
    """SQLite gives naive datetimes back for timezone-aware columns; they were stored as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
