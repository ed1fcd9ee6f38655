"""Index queries behind QIDO-RS: matching rules of PS3.4 C.2.2.2 on the index columns.

Supported matching: universal (empty value), single value, wildcard (``*`` ``?``) on strings,
UID lists, date/time ranges, and case-insensitive Person Name matching on any component group.
The same engine answers DIMSE C-FIND, which adds the patient level and a per-hospital scope.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Select, and_, bindparam, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from cloud.dataset import check_uid, name_groups
from cloud.errors import ArchiveError, InvalidQueryError
from cloud.models import Instance, Patient, Series, Study
from cloud.scope import StudyScope

Level = Literal["study", "series", "instance"]  # the QIDO-RS levels
QueryLevel = Literal["patient", "study", "series", "instance"]  # C-FIND adds the patient level
_LEVEL_RANK = {"patient": 0, "study": 1, "series": 2, "instance": 3}
_DATE = re.compile(r"^\d{8}$")
_TIME = re.compile(r"^\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?$")


@dataclass(frozen=True)
class Attribute:
    """A matchable and returnable attribute: its keyword, level, column and matching kind."""

    keyword: str
    level: str
    column: InstrumentedAttribute[Any]
    kind: Literal["uid", "string", "pn", "date", "time", "int", "modalities"] = "string"


ATTRIBUTES: dict[str, Attribute] = {
    a.keyword: a
    for a in (
        Attribute("PatientID", "patient", Patient.patient_id),
        Attribute("IssuerOfPatientID", "patient", Patient.issuer_of_patient_id),
        Attribute("PatientName", "patient", Patient.patient_name, "pn"),
        Attribute("PatientBirthDate", "patient", Patient.patient_birth_date, "date"),
        Attribute("PatientSex", "patient", Patient.patient_sex),
        Attribute("StudyInstanceUID", "study", Study.study_instance_uid, "uid"),
        Attribute("StudyDate", "study", Study.study_date, "date"),
        Attribute("StudyTime", "study", Study.study_time, "time"),
        Attribute("AccessionNumber", "study", Study.accession_number),
        Attribute("StudyID", "study", Study.study_id),
        Attribute("StudyDescription", "study", Study.study_description),
        Attribute("ReferringPhysicianName", "study", Study.referring_physician_name, "pn"),
        Attribute("TimezoneOffsetFromUTC", "study", Study.timezone_offset_from_utc),
        Attribute("ModalitiesInStudy", "study", Series.modality, "modalities"),
        Attribute("SeriesInstanceUID", "series", Series.series_instance_uid, "uid"),
        Attribute("Modality", "series", Series.modality),
        Attribute("SeriesNumber", "series", Series.series_number, "int"),
        Attribute("SeriesDescription", "series", Series.series_description),
        Attribute("BodyPartExamined", "series", Series.body_part_examined),
        Attribute("SeriesDate", "series", Series.series_date, "date"),
        Attribute("SeriesTime", "series", Series.series_time, "time"),
        Attribute(
            "PerformedProcedureStepStartDate",
            "series",
            Series.performed_procedure_step_start_date,
            "date",
        ),
        Attribute(
            "PerformedProcedureStepStartTime",
            "series",
            Series.performed_procedure_step_start_time,
            "time",
        ),
        Attribute("SOPInstanceUID", "instance", Instance.sop_instance_uid, "uid"),
        Attribute("SOPClassUID", "instance", Instance.sop_class_uid, "uid"),
        Attribute("InstanceNumber", "instance", Instance.instance_number, "int"),
        Attribute("Rows", "instance", Instance.rows, "int"),
        Attribute("Columns", "instance", Instance.columns, "int"),
        Attribute("NumberOfFrames", "instance", Instance.number_of_frames, "int"),
        Attribute("BitsAllocated", "instance", Instance.bits_allocated, "int"),
    )
}


@dataclass
class Query:
    """A search: the level, the matching keys, the scope from the path, and paging.

    ``scope`` restricts the search to the studies a principal may reach (and, at the patient
    level, to patients with at least one such study); None searches everything.
    """

    level: QueryLevel
    filters: dict[str, str] = field(default_factory=dict)
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    limit: int | None = None
    offset: int = 0
    scope: StudyScope | None = None


@dataclass
class Match:
    """One result: attribute keyword -> Python value, and a representative instance's pk."""

    attributes: dict[str, Any]
    representative_instance_pk: int | None


def matchable(keyword: str, level: QueryLevel) -> bool:
    """Whether the index can match ``keyword`` at ``level`` (its own or a higher level)."""
    attribute = ATTRIBUTES.get(keyword)
    return attribute is not None and _LEVEL_RANK[attribute.level] <= _LEVEL_RANK[level]


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _wildcard(column: Any, value: str) -> Any:
    if "*" in value or "?" in value:
        pattern = _escape_like(value).replace("*", "%").replace("?", "_")
        # The pattern is written into the SQL, not sent as a parameter: psycopg prepares a
        # statement run 5 times on a connection, and PostgreSQL then switches to a generic
        # plan, where ``LIKE $1`` has no known prefix, so no index (a scan of all patients).
        inline = bindparam(None, pattern, type_=column.type, literal_execute=True)
        return column.like(inline, escape="\\")
    return column == value


def _range(column: Any, value: str, pattern: re.Pattern[str], what: str) -> Any:
    low, dash, high = value.partition("-")
    for part in (low, high):
        if part and not pattern.match(part):
            raise InvalidQueryError(f"{what} value {value!r} is not a valid {what} or range")
    if not dash:
        return column == low
    if not low and not high:
        raise InvalidQueryError(f"{what} range {value!r} has neither start nor end")
    conditions = [column != ""]
    if low:
        conditions.append(column >= low)
    if high:
        if what == "date":
            # Dates are indexed as 8 characters (YYYYMMDD), so a plain comparison is exact
            # and, unlike substr(), lets the index bound the range at both ends.
            conditions.append(column <= high)
        else:
            # a time range end like 1230 must include 123059.99: compare on the given prefix
            conditions.append(func.substr(column, 1, len(high)) <= high)
    return and_(*conditions)


def _person_name(attribute: Attribute, value: str) -> Any:
    if attribute.keyword == "PatientName":
        columns = (
            Patient.patient_name_alphabetic,
            Patient.patient_name_ideographic,
            Patient.patient_name_phonetic,
        )
        wanted = name_groups(value)
        if "=" in value:  # a query per group: every given group must match its own
            return and_(*(_wildcard(c, w) for c, w in zip(columns, wanted, strict=True) if w))
        return or_(*(_wildcard(c, wanted[0] or value.casefold()) for c in columns))
    return _wildcard(func.lower(attribute.column), value.casefold())


def _condition(attribute: Attribute, value: str) -> Any:
    kind = attribute.kind
    if kind == "uid":
        uids = [check_uid(v, attribute.keyword) for v in re.split(r"[,\\]", value) if v]
        return attribute.column.in_(uids)
    if kind == "pn":
        return _person_name(attribute, value)
    if kind == "date":
        return _range(attribute.column, value, _DATE, "date")
    if kind == "time":
        return _range(attribute.column, value, _TIME, "time")
    if kind == "int":
        try:
            return attribute.column == int(value)
        except ValueError:
            raise InvalidQueryError(
                f"{attribute.keyword} must be an integer, got {value!r}"
            ) from None
    if kind == "modalities":
        wanted = [v for v in re.split(r"[,\\]", value) if v]
        inner = select(Series.pk).where(Series.study_pk == Study.pk, Series.modality.in_(wanted))
        return inner.exists()
    return _wildcard(attribute.column, value)


def _filters(query: Query) -> list[tuple[Attribute, Any]]:
    """Each matching key with its condition (universal matching left out)."""
    conditions = []
    for keyword, value in query.filters.items():
        if value in ("", "*"):
            continue  # universal matching
        attribute = ATTRIBUTES.get(keyword)
        if attribute is None or not matchable(keyword, query.level):
            raise InvalidQueryError(f"{keyword} cannot be matched at {query.level} level")
        try:
            conditions.append((attribute, _condition(attribute, value)))
        except ArchiveError as exc:
            raise InvalidQueryError(exc.detail) from exc
    return conditions


def _apply_filters(
    statement: Select[Any], query: Query, filters: list[tuple[Attribute, Any]]
) -> Select[Any]:
    for attribute, condition in filters:
        if attribute.kind == "pn" and attribute.level == "patient" and query.level != "patient":
            condition = _of_matching_patients(condition)
        statement = statement.where(condition)
    if query.study_instance_uid:
        statement = statement.where(Study.study_instance_uid == query.study_instance_uid)
    if query.series_instance_uid:
        statement = statement.where(Series.series_instance_uid == query.series_instance_uid)
    return statement


def _of_matching_patients(condition: Any) -> Any:
    """Studies of the patients matching ``condition``: a semi-join on the patients' pks.

    Applied to the joined patients row instead, a name condition is a filter checked per
    study, and for ``ORDER BY study_date DESC LIMIT n`` PostgreSQL walks the study-date index
    checking each study's patient: the whole archive for a rare name. As a semi-join it weighs
    the number of matching patients (estimated from the name's statistics): few, it looks up
    their studies (through the name indexes, migration 0008); many, it keeps the walk, which
    then stops early.
    """
    return Study.patient_pk.in_(select(Patient.pk).where(condition).correlate(None))


def _columns_up_to(level: QueryLevel) -> list[Attribute]:
    return [
        a
        for a in ATTRIBUTES.values()
        if a.kind != "modalities" and _LEVEL_RANK[a.level] <= _LEVEL_RANK[level]
    ]


def search(session: Session, query: Query) -> list[Match]:
    """Run ``query`` and return one `Match` per patient, study, series or instance."""
    attributes = _columns_up_to(query.level)
    statement: Select[Any] = select(*(a.column for a in attributes), _pk_of(query.level))
    statement = statement.select_from(Patient)
    filters = _filters(query)
    in_scope = None
    if query.scope is not None:
        # The patient-level keys also narrow the grants the scope looks at (the search
        # requires them of every patient anyway): a short list instead of every grant.
        in_scope = query.scope.condition(
            session.get_bind().dialect.name,
            [condition for attribute, condition in filters if attribute.level == "patient"],
        )
    if query.level == "patient":
        # A patient is a result only through a study in scope, never for being in the index.
        studies = select(Study.pk).where(Study.patient_pk == Patient.pk)
        if in_scope is not None:
            studies = studies.where(in_scope)
        statement = statement.where(studies.exists())
    else:
        statement = statement.join(Study, Study.patient_pk == Patient.pk)
        if in_scope is not None:
            statement = statement.where(in_scope)
    if query.level in ("series", "instance"):
        statement = statement.join(Series, Series.study_pk == Study.pk)
    if query.level == "instance":
        statement = statement.join(Instance, Instance.series_pk == Series.pk)
    statement = _apply_filters(statement, query, filters)
    statement = statement.order_by(*_order(query.level)).offset(query.offset)
    if query.limit is not None:
        statement = statement.limit(query.limit)
    rows = session.execute(statement).all()
    matches = [Match({a.keyword: row[i] for i, a in enumerate(attributes)}, None) for row in rows]
    pks = [row[-1] for row in rows]
    if query.level == "patient":
        _add_patient_aggregates(session, matches, pks, in_scope)
    else:
        _add_aggregates(session, query.level, matches, pks)
    return matches


def _pk_of(level: QueryLevel) -> InstrumentedAttribute[int]:
    levels = {"patient": Patient.pk, "study": Study.pk, "series": Series.pk}
    return levels.get(level, Instance.pk)


def _order(level: QueryLevel) -> Sequence[Any]:
    if level == "patient":
        return (Patient.pk,)
    if level == "study":
        return (Study.study_date.desc(), Study.pk)
    if level == "series":
        return (Study.pk, Series.series_number, Series.pk)
    return (Series.pk, Instance.instance_number, Instance.pk)


def _add_aggregates(session: Session, level: Level, matches: list[Match], pks: list[int]) -> None:
    """Counts, modalities and a representative instance, in one grouped query per page."""
    if not pks:
        return
    if level == "instance":
        for match, pk in zip(matches, pks, strict=True):
            match.representative_instance_pk = pk
        return
    if level == "study":
        _add_study_aggregates(session, matches, pks)
        return
    rows = session.execute(
        select(Instance.series_pk, func.count(Instance.pk), func.min(Instance.pk))
        .where(Instance.series_pk.in_(pks))
        .group_by(Instance.series_pk)
    ).all()
    by_pk = {row[0]: row for row in rows}
    for match, pk in zip(matches, pks, strict=True):
        _, count, first = by_pk.get(pk, (pk, 0, None))
        match.attributes["NumberOfSeriesRelatedInstances"] = count
        match.representative_instance_pk = first


def _add_patient_aggregates(
    session: Session, matches: list[Match], pks: list[int], in_scope: Any
) -> None:
    """Number of Patient Related Studies, counted within the same scope."""
    if not pks:
        return
    statement = (
        select(Study.patient_pk, func.count(Study.pk))
        .where(Study.patient_pk.in_(pks))
        .group_by(Study.patient_pk)
    )
    if in_scope is not None:
        statement = statement.where(in_scope)
    counts: dict[int, int] = dict(session.execute(statement).all())
    for match, pk in zip(matches, pks, strict=True):
        match.attributes["NumberOfPatientRelatedStudies"] = counts.get(pk, 0)


def _add_study_aggregates(session: Session, matches: list[Match], pks: list[int]) -> None:
    rows = session.execute(
        select(
            Series.study_pk,
            Series.modality,
            func.count(func.distinct(Series.pk)),
            func.count(Instance.pk),
            func.min(Instance.pk),
        )
        .join(Instance, Instance.series_pk == Series.pk)
        .where(Series.study_pk.in_(pks))
        .group_by(Series.study_pk, Series.modality)
    ).all()
    totals: dict[int, dict[str, Any]] = {}
    for study_pk, modality, series_count, instance_count, first in rows:
        entry = totals.setdefault(
            study_pk, {"modalities": set(), "series": 0, "instances": 0, "first": first}
        )
        if modality:
            entry["modalities"].add(modality)
        entry["series"] += series_count
        entry["instances"] += instance_count
        entry["first"] = min(entry["first"], first)
    for match, pk in zip(matches, pks, strict=True):
        entry = totals.get(pk, {"modalities": set(), "series": 0, "instances": 0, "first": None})
        match.attributes["ModalitiesInStudy"] = sorted(entry["modalities"])
        match.attributes["NumberOfStudyRelatedSeries"] = entry["series"]
        match.attributes["NumberOfStudyRelatedInstances"] = entry["instances"]
        match.representative_instance_pk = entry["first"]
