"""Aggregates of the stored data-quality scores, for regulators and hospital admins.

Only counts and averages leave this module: never a study, a UID or a patient. Months are
those of the Study Date (when the exam was done), which is what a quality report is about;
studies with an empty Study Date form a group of their own (``month`` null).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import case, exists, func, select
from sqlalchemy.orm import Session, sessionmaker

from cloud.errors import InstanceNotFoundError, InvalidQueryError
from cloud.models import Hospital, Series, Study, StudyQuality
from cloud.quality_policy import DIMENSIONS, QualityPolicy

SUMMARY_DIMENSIONS = ("hospital", "modality", "month")
_DATE = re.compile(r"^(\d{4})-?(\d{2})-?(\d{2})$")
_MEASURES = ("studies", *DIMENSIONS, "overall", "poor")


def study_date(text: str | None, name: str) -> str | None:
    """``YYYYMMDD`` or ``YYYY-MM-DD`` as a Study Date (``YYYYMMDD``); None if empty."""
    if not text:
        return None
    found = _DATE.match(text.strip())
    try:
        if found is None:
            raise ValueError(text)
        year, month, day = (int(g) for g in found.groups())
        return datetime(year, month, day).strftime("%Y%m%d")
    except ValueError:
        raise InvalidQueryError(f"{name}={text[:40]!r}: use YYYY-MM-DD or YYYYMMDD") from None


def date_range(date_from: str | None, date_to: str | None) -> tuple[str | None, str | None]:
    """Both ends checked (`study_date`) and in order."""
    start, end = study_date(date_from, "from"), study_date(date_to, "to")
    if start and end and start > end:
        raise InvalidQueryError(f"from ({date_from}) is after to ({date_to})")
    return start, end


def hospital_pk(session: Session, hospital_id: str) -> int:
    """The hospital's key; `InstanceNotFoundError` if it is not registered."""
    found = session.scalar(select(Hospital.pk).where(Hospital.hospital_id == hospital_id))
    if found is None:
        raise InstanceNotFoundError(f"hospital {hospital_id} is not registered")
    return int(found)


def summarise(
    sessions: sessionmaker[Session],
    policy: QualityPolicy,
    by: str,
    *,
    hospital_id: str | None = None,
    modality: str | None = None,
    date_from: str | None = None,
    date_to: str | None = None,
) -> dict[str, Any]:
    """Counts and average scores of the scored studies, grouped ``by`` hospital, modality or
    month, and in total.

    Parameters
    ----------
    sessions
        Sessions on the index.
    policy
        Says below which overall score a study counts as poor.
    by
        ``hospital``, ``modality`` (a study with several modalities counts in each) or
        ``month`` (of the Study Date).
    hospital_id, modality, date_from, date_to
        Filters; dates as ``YYYY-MM-DD`` or ``YYYYMMDD``, both ends included.

    Returns
    -------
    dict
        ``groups`` (one per key, with ``studies``, ``poor`` and the average of each
        dimension and of ``overall``) and ``total``.
    """
    if by not in SUMMARY_DIMENSIONS:
        raise InvalidQueryError(f"by={by!r}: use one of {', '.join(SUMMARY_DIMENSIONS)}")
    start, end = date_range(date_from, date_to)
    with sessions() as session:
        conditions: list[Any] = []
        if hospital_id:
            conditions.append(Study.hospital_pk == hospital_pk(session, hospital_id))
        if modality:
            of_modality = select(Series.pk).where(
                Series.study_pk == Study.pk, Series.modality == modality
            )
            conditions.append(exists(of_modality))
        if start:
            conditions.append(Study.study_date >= start)
        if end:
            conditions.append(Study.study_date <= end)
        measures = _measures(policy)
        scored = select().select_from(StudyQuality).join(Study, Study.pk == StudyQuality.study_pk)
        keys, grouped = _grouping(by, scored.add_columns(*measures))
        if keys:
            grouped = grouped.add_columns(*keys)
        rows = session.execute(grouped.where(*conditions).group_by(*keys).order_by(*keys))
        groups = [_label(by, tuple(row)[len(measures) :]) | _values(row) for row in rows]
        total = _values(session.execute(scored.add_columns(*measures).where(*conditions)).one())
    return {
        "by": by,
        "filters": {"hospital_id": hospital_id, "modality": modality, "from": start, "to": end},
        "poor_below": policy.poor_below,
        "groups": groups,
        "total": total,
    }


def _measures(policy: QualityPolicy) -> list[Any]:
    poor = case((StudyQuality.overall < policy.poor_below, 1), else_=0)
    averages = (func.avg(getattr(StudyQuality, d)).label(d) for d in (*DIMENSIONS, "overall"))
    return [func.count().label("studies"), *averages, func.sum(poor).label("poor")]


def _grouping(by: str, statement: Any) -> tuple[list[Any], Any]:
    if by == "hospital":
        keys = [Hospital.hospital_id, Hospital.name]
        return keys, statement.outerjoin(Hospital, Hospital.pk == Study.hospital_pk)
    if by == "month":
        return [func.substr(Study.study_date, 1, 6).label("month")], statement
    pairs = select(Series.study_pk, Series.modality).distinct().subquery()
    return [pairs.c.modality], statement.join(pairs, pairs.c.study_pk == Study.pk)


def _values(row: Any) -> dict[str, Any]:
    found = dict(zip(_MEASURES, tuple(row)[: len(_MEASURES)], strict=True))
    values: dict[str, Any] = {"studies": int(found["studies"] or 0)}
    values["poor"] = int(found["poor"] or 0)
    for name in (*DIMENSIONS, "overall"):
        values[name] = None if found[name] is None else round(float(found[name]), 1)
    return values


def _label(by: str, key: tuple[Any, ...]) -> dict[str, Any]:
    if by == "hospital":
        return {"hospital_id": key[0], "hospital_name": key[1]}
    if by == "month":
        month = str(key[0] or "")
        return {"month": f"{month[:4]}-{month[4:]}" if len(month) == 6 else None}
    return {"modality": key[0] or None}
