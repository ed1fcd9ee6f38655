"""Fixtures shared by every kind of test: databases, archives, running nodes, data."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy
from sqlalchemy.engine import make_url

from cloud.archive import Archive
from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.orthanc import orthanc_available
from tests.support.servers import running_node

POSTGRES_ENV = "IMAGING_CLOUD_TEST_DATABASE_URL"
REDIS_ENV = "IMAGING_CLOUD_TEST_REDIS_URL"


@pytest.hookimpl(tryfirst=True)  # before skipif marks are evaluated
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Where CI promises DCMTK, Orthanc or Chromium, a test needing it fails, never skips."""
    if item.get_closest_marker("needs_dcmtk") and not shutil.which("storescu"):
        if os.environ.get("IMAGING_CLOUD_REQUIRE_DCMTK"):
            pytest.fail("IMAGING_CLOUD_REQUIRE_DCMTK is set but storescu is not installed")
        pytest.skip("DCMTK not installed (apt-get install dcmtk)")
    if item.get_closest_marker("needs_orthanc") and not orthanc_available():
        if os.environ.get("IMAGING_CLOUD_REQUIRE_ORTHANC"):
            pytest.fail("IMAGING_CLOUD_REQUIRE_ORTHANC is set but Orthanc is not installed")
        pytest.skip("Orthanc not installed (apt-get install orthanc orthanc-dicomweb)")
    if item.get_closest_marker("needs_ffmpeg") and not shutil.which("ffmpeg"):
        if os.environ.get("IMAGING_CLOUD_REQUIRE_FFMPEG"):
            pytest.fail("IMAGING_CLOUD_REQUIRE_FFMPEG is set but ffmpeg is not installed")
        pytest.skip("FFmpeg not installed (apt-get install ffmpeg)")
    if item.get_closest_marker("needs_chromium") and not os.path.exists("/usr/bin/chromium"):
        if os.environ.get("IMAGING_CLOUD_REQUIRE_CHROMIUM"):
            pytest.fail("IMAGING_CLOUD_REQUIRE_CHROMIUM is set but /usr/bin/chromium is missing")
        pytest.skip("Chromium not installed (apt-get install chromium)")


def _postgres_schema_url(base_url: str) -> Iterator[str]:
    """A fresh schema on the test PostgreSQL server; fail (never skip) if it is unreachable."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(base_url)
    try:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
    except sqlalchemy.exc.OperationalError as exc:
        pytest.fail(f"{POSTGRES_ENV} is set but PostgreSQL is unreachable: {exc.orig}")
    url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.needs_postgres)])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each archive test runs on the embedded SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield ""
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} not set")
    yield from _postgres_schema_url(base)


@pytest.fixture
def archive(tmp_path: Path, database_url: str) -> Iterator[Archive]:
    opened = Archive.open(tmp_path / "data", database_url)
    yield opened
    opened.close()


@pytest.fixture
def node(tmp_path: Path, database_url: str) -> Iterator[Node]:
    with running_node(tmp_path / "node", database_url) as started:
        yield started


@pytest.fixture
def sqlite_node(tmp_path: Path) -> Iterator[Node]:
    """A node on the embedded default only, for tests whose subject is not the database."""
    with running_node(tmp_path / "node") as started:
        yield started


@pytest.fixture
def study() -> StudySpec:
    return StudySpec(
        patient=PatientSpec(patient_id="PID-1", patient_name="Wang^XiaoDong=王^小東="),
        accession_number="A100",
        study_date="20250314",
    )


@pytest.fixture
def ct_files(study: StudySpec) -> list[bytes]:
    """A small synthetic CT series as Part-10 bytes."""
    return [to_part10(ds) for ds in ct_series(study, slices=5, size=32)]


@pytest.fixture
def redis_url() -> str:
    """The test Redis; CI (which sets IMAGING_CLOUD_TEST_REDIS_URL) fails if it is unreachable,
    a local run without the variable skips."""
    import redis

    url = os.environ.get(REDIS_ENV, "")
    probe = redis.Redis.from_url(url or "redis://127.0.0.1:6379/0", socket_connect_timeout=2)
    try:
        probe.ping()
    except redis.exceptions.ConnectionError as exc:
        if url:
            pytest.fail(f"{REDIS_ENV} is set but Redis is unreachable: {exc}")
        pytest.skip(f"Redis not reachable on 127.0.0.1:6379 and {REDIS_ENV} not set")
    finally:
        probe.close()
    return url or "redis://127.0.0.1:6379/0"
