"""PostgreSQL plans of QIDO-RS searches: a Person Name prefix is found through the name indexes.

On PostgreSQL with a collation other than C (``C.UTF-8``, ``en_US.UTF-8``), a btree with the
default operator class cannot serve ``LIKE 'wang%'``: without the ``varchar_pattern_ops``
indexes of migration 0008 a name search reads every patient (and, joined with the studies,
every study). The plan is checked as a prepared statement would get it after a few runs on a
connection (psycopg prepares a statement at its 5th run; PostgreSQL then may switch to a
generic plan), which is why the pattern is written into the SQL rather than sent as a
parameter.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql
from sqlalchemy import event, text

from cloud.archive import Archive
from cloud.query import Query
from cloud.scope import StudyScope
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.conftest import POSTGRES_ENV, _postgres_schema_url

NAMES = [
    ("P1", "Wang^XiaoDong=王^小东="),
    ("P2", "Wang^Fang=王^芳="),
    ("P3", "Li^Na=李^娜="),
    ("P4", "Zhang^Wei=张^伟="),
]


@pytest.fixture(params=[pytest.param("postgresql", marks=pytest.mark.needs_postgres)])
def pg_archive(tmp_path: Path) -> Iterator[Archive]:
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} not set")
    for url in _postgres_schema_url(base):
        archive = Archive.open(tmp_path / "data", url)
        try:
            for number, (patient_id, name) in enumerate(NAMES):
                study = StudySpec(
                    patient=PatientSpec(patient_id=patient_id, patient_name=name),
                    accession_number=f"A{number}",
                    study_date=f"2025031{number}",
                )
                archive.store(to_part10(next(ct_series(study, slices=1, size=8))), source="t")
            yield archive
        finally:
            archive.close()


def _statements(archive: Archive, query: Query) -> list[tuple[str, dict[str, Any]]]:
    captured: list[tuple[str, dict[str, Any]]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, dict(parameters or {})))

    event.listen(archive.engine, "before_cursor_execute", capture)
    try:
        archive.search(query)
    finally:
        event.remove(archive.engine, "before_cursor_execute", capture)
    return captured


def _generic_plan(archive: Archive, statement: str, parameters: dict[str, Any]) -> str:
    """EXPLAIN of ``statement`` as a prepared statement's generic plan (no parameter values
    known to the planner), with sequential scans priced out so that a usable index shows."""
    names: list[str] = []

    def placeholder(found: re.Match[str]) -> str:
        names.append(found.group(1))
        return f"${len(names)}"

    numbered = re.sub(r"%\((\w+)\)s", placeholder, statement).replace("%%", "%")
    with archive.engine.connect() as connection:
        driver = connection.connection.driver_connection
        assert driver is not None
        with driver.cursor() as cursor:
            cursor.execute("SET enable_seqscan = off")
            cursor.execute("SET plan_cache_mode = force_generic_plan")
            cursor.execute(f"PREPARE search_plan AS {numbered}")
            values = sql.SQL(", ").join(sql.Literal(parameters[name]) for name in names)
            cursor.execute(sql.SQL("EXPLAIN EXECUTE search_plan({})").format(values))
            plan = "\n".join(row[0] for row in cursor.fetchall())
            cursor.execute("DEALLOCATE search_plan")
        connection.rollback()
    return plan


@pytest.mark.parametrize(
    ("value", "column"),
    [("wang*", "patient_name_alphabetic"), ("王*", "patient_name_ideographic")],
)
@pytest.mark.parametrize(
    "scope",
    [None, StudyScope(hospital_pk=1, granted_to_hospital=1)],
    ids=["everything", "hospital-with-grants"],
)
def test_a_name_prefix_search_uses_the_name_index(
    pg_archive: Archive, value: str, column: str, scope: StudyScope | None
) -> None:
    query = Query("study", {"PatientName": value}, limit=100, scope=scope)
    found = pg_archive.search(query)
    if scope is None:
        assert {m.attributes["PatientID"] for m in found} == {"P1", "P2"}
    main = next(s for s in _statements(pg_archive, query) if "ORDER BY" in s[0])
    plan = _generic_plan(pg_archive, *main)
    bounded = rf"Index Cond: \(\(\({column}\)::text ~>=~ '[^']+'::text\) AND"
    assert re.search(bounded, plan), f"the prefix does not bound an index scan:\n{plan}"
    assert f"ix_patients_{column}" in plan


def test_the_name_indexes_use_the_pattern_operator_class(pg_archive: Archive) -> None:
    with pg_archive.engine.connect() as connection:
        definitions = dict(
            connection.execute(
                text(
                    "SELECT indexname, indexdef FROM pg_indexes "
                    "WHERE schemaname = current_schema() AND tablename = 'patients'"
                )
            ).all()
        )
    for group in ("alphabetic", "ideographic", "phonetic"):
        definition = definitions.get(f"ix_patients_patient_name_{group}", "")
        assert f"(patient_name_{group} varchar_pattern_ops)" in definition, definitions
