"""Figures for the regulator: uploads, images, views, citations, QC, mutual recognition and data
quality, by day, month or year and by hospital, district or hospital level.

Only counts, sums, averages and rates leave this module; no row names a patient or a study, so
the answers are safe for roles without patient data (regulators).

When each metric is counted (calendar days in the reporting time zone, default Asia/Shanghai):

============  ===============================================  ==============================
metric        counted at                                       attributed to
============  ===============================================  ==============================
uploads       ``studies.created_at`` (first object received)   the study's hospital
images        ``instances.received_at``                        the study's hospital
views         ``audit_events.at``, action ``view`` (a viewing  the study's hospital
              session opening a study; allowed only)
citations     ``report_citations.cited_at``                    the report's hospital
qc            ``qc_reviews.reviewed_at`` of reviews done       the study's hospital
recognition   ``recognition_checks.requested_at`` (decisions   the ordering hospital
              count with their check)
quality       ``studies.created_at`` of the scored study       the study's hospital
============  ===============================================  ==============================

Upload times, not Study Date, because the region measures its own traffic (a study acquired
years ago and uploaded today is today's work) and because the index's timestamps are exact,
while Study Date is what a modality's clock said. Bucketing uses the dialect's own functions
(``strftime`` on SQLite with the zone's current UTC offset, ``to_char(timezone(...))`` on
PostgreSQL, exact across daylight saving) inside a subquery, so the outer GROUP BY names plain
columns on both.
"""

from __future__ import annotations

import calendar
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import ColumnElement, func, literal, select
from sqlalchemy.orm import Session, sessionmaker

from cloud.errors import InvalidQueryError
from cloud.models import Hospital
from cloud.statistics_metrics import (
    METRICS,
    Metric,
    metric,
)

logger = logging.getLogger(__name__)

PERIODS = ("day", "month", "year", "none")
DIMENSIONS = ("hospital", "district", "level", "none")
DEFAULT_TIMEZONE = "Asia/Shanghai"
MAX_TEXT = 64  # longest district, level or hospital id accepted in a filter


@dataclass(frozen=True)
class StatisticsQuery:
    """What to aggregate: one bucket per ``period`` and ``by`` group, within the filters.

    ``start`` and ``end`` are inclusive calendar dates in the reporting time zone.
    """

    period: str = "month"
    by: str = "none"
    start: date | None = None
    end: date | None = None
    hospital_id: str = ""
    district: str = ""
    level: str = ""

    def checked(self) -> StatisticsQuery:
        """This query, or `InvalidQueryError` naming what is wrong with it."""
        if self.period not in PERIODS:
            raise InvalidQueryError(f"period {self.period!r}: use one of {', '.join(PERIODS)}")
        if self.by not in DIMENSIONS:
            raise InvalidQueryError(f"by {self.by!r}: use one of {', '.join(DIMENSIONS)}")
        if self.start and self.end and self.start > self.end:
            raise InvalidQueryError(f"from {self.start} is after to {self.end}")
        for name in ("hospital_id", "district", "level"):
            if len(getattr(self, name)) > MAX_TEXT:
                raise InvalidQueryError(f"{name} is longer than {MAX_TEXT} characters")
        return self

    def filters(self) -> dict[str, str]:
        """The filters as query parameters (only those set)."""
        given = {
            "from": self.start.isoformat() if self.start else "",
            "to": self.end.isoformat() if self.end else "",
            "hospital_id": self.hospital_id,
            "district": self.district,
            "level": self.level,
        }
        return {key: value for key, value in given.items() if value}


def parse_day(text: str, name: str) -> date | None:
    """``YYYY-MM-DD`` (or ``YYYYMMDD``) as a date; "" as None; anything else refused."""
    text = text.strip()
    if not text:
        return None
    for form in ("%Y-%m-%d", "%Y%m%d"):
        try:
            found = datetime.strptime(text, form).date()
        except ValueError:
            continue
        if 1900 <= found.year <= 2999:
            return found
    raise InvalidQueryError(f"{name} {text[:40]!r}: use a date as YYYY-MM-DD")


# The columns that name a group, per dimension (hospital rows carry where the hospital is).
GROUP_COLUMNS: dict[str, tuple[str, ...]] = {
    "hospital": ("hospital_id", "hospital", "district", "level"),
    "district": ("district",),
    "level": ("level",),
    "none": (),
}


@dataclass
class StatisticsTable:
    """A metric's rows (one per period and group) and its totals over the same filters."""

    metric: str
    title: str
    query: StatisticsQuery
    key_columns: tuple[str, ...]
    value_columns: tuple[str, ...]
    rows: list[dict[str, Any]] = field(default_factory=list)
    totals: dict[str, Any] = field(default_factory=dict)

    @property
    def columns(self) -> tuple[str, ...]:
        return self.key_columns + self.value_columns


# --- the queries ----------------------------------------------------------------------------


class Statistics:
    """Aggregate queries over the index, portable between SQLite and PostgreSQL."""

    def __init__(self, sessions: sessionmaker[Session], timezone: str = DEFAULT_TIMEZONE) -> None:
        try:
            self.zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {timezone!r}") from exc
        self.timezone = timezone
        self._sessions = sessions

    def table(self, name: str, query: StatisticsQuery) -> StatisticsTable:
        """``name``'s rows for ``query`` (see the module docstring for what is counted when)."""
        chosen, query = metric(name), query.checked()
        keys = (("period",) if query.period != "none" else ()) + GROUP_COLUMNS[query.by]
        table = StatisticsTable(chosen.name, chosen.title, query, keys, chosen.columns)
        with self._sessions() as session:
            table.rows = self._rows(session, chosen, query)
            overall = replace(query, period="none", by="none")
            found = self._rows(session, chosen, overall)
        table.totals = found[0] if found else {}
        for row in table.rows:
            row["drill"] = drill(query, row)
        return table

    def summary(self, query: StatisticsQuery) -> dict[str, dict[str, Any]]:
        """Every metric's totals over the filters of ``query`` (the dashboard's tiles)."""
        overall = replace(query.checked(), period="none", by="none")
        with self._sessions() as session:
            return {
                name: next(iter(self._rows(session, chosen, overall)), {})
                for name, chosen in METRICS.items()
            }

    def hospitals(self, query: StatisticsQuery) -> list[dict[str, Any]]:
        """The hospitals matching the filters, where they are, and their totals (for the map)."""
        query = replace(query.checked(), period="none", by="hospital")
        conditions = self._hospital_filters(query)
        with self._sessions() as session:
            found = session.execute(
                select(Hospital).where(*conditions).order_by(Hospital.hospital_id)
            ).scalars()
            answer = {
                h.hospital_id: {
                    "hospital_id": h.hospital_id,
                    "hospital": h.name,
                    "district": h.district,
                    "level": h.level,
                    "latitude": h.latitude,
                    "longitude": h.longitude,
                    "active": h.active,
                }
                for h in found
            }
            for name in ("uploads", "images", "views", "quality"):
                chosen = METRICS[name]
                for row in self._rows(session, chosen, query):
                    known = answer.get(row["hospital_id"])
                    if known is not None:
                        known.update({c: row[c] for c in chosen.columns})
        empty = {c: 0 for name in ("uploads", "images", "views") for c in METRICS[name].columns}
        return [{**empty, **row} for row in answer.values()]

    # --- building blocks -----------------------------------------------------------------

    def _rows(
        self, session: Session, chosen: Metric, query: StatisticsQuery
    ) -> list[dict[str, Any]]:
        facts = chosen.facts().subquery("facts")
        dialect = session.get_bind().dialect.name
        groups = _group_expressions(query.by)
        inner = (
            select(
                self._bucket(facts.c.at, query.period, dialect).label("period"),
                *groups,
                *(column for column in facts.c if column.key not in ("at", "hospital_pk")),
            )
            .select_from(facts)
            .outerjoin(Hospital, Hospital.pk == facts.c.hospital_pk)
            .where(*self._time_filters(facts.c.at, query), *self._hospital_filters(query))
            .subquery("grouped")
        )
        keys = [inner.c.period, *(inner.c[name] for name in GROUP_COLUMNS[query.by])]
        statement = select(*keys, *chosen.aggregates(inner)).group_by(*keys).order_by(*keys)
        rows = []
        for found in session.execute(statement).mappings():
            row = {key: _plain(value) for key, value in found.items()}
            if query.period == "none":
                del row["period"]
            chosen.derive(row)
            rows.append(row)
        return rows

    def _bucket(self, at: ColumnElement[Any], period: str, dialect: str) -> ColumnElement[str]:
        if period == "none":
            return literal("all")
        if dialect == "postgresql":
            form = {"day": "YYYY-MM-DD", "month": "YYYY-MM", "year": "YYYY"}[period]
            return func.to_char(func.timezone(self.timezone, at), form)
        # SQLite: the zone's offset now (exact for zones without daylight saving, as China's).
        offset = datetime.now(self.zone).utcoffset() or timedelta(0)
        minutes = int(offset.total_seconds() // 60)
        form = {"day": "%Y-%m-%d", "month": "%Y-%m", "year": "%Y"}[period]
        return func.strftime(form, at, f"{minutes:+d} minutes")

    def _time_filters(
        self, at: ColumnElement[Any], query: StatisticsQuery
    ) -> list[ColumnElement[bool]]:
        conditions = []
        if query.start:
            conditions.append(at >= self.start_of(query.start))
        if query.end:
            conditions.append(at < self.start_of(query.end + timedelta(days=1)))
        return conditions

    def start_of(self, day: date) -> datetime:
        """The UTC instant the local calendar ``day`` begins."""
        return datetime.combine(day, time(0), self.zone).astimezone(UTC)

    @staticmethod
    def _hospital_filters(query: StatisticsQuery) -> list[ColumnElement[bool]]:
        conditions = []
        if query.hospital_id:
            conditions.append(Hospital.hospital_id == query.hospital_id)
        if query.district:
            conditions.append(Hospital.district == query.district)
        if query.level:
            conditions.append(Hospital.level == query.level)
        return conditions


def _group_expressions(by: str) -> list[ColumnElement[Any]]:
    columns = {
        "hospital_id": Hospital.hospital_id,
        "hospital": Hospital.name,
        "district": func.coalesce(Hospital.district, ""),
        "level": func.coalesce(Hospital.level, ""),
    }
    return [columns[name].label(name) for name in GROUP_COLUMNS[by]]


def _plain(value: Any) -> Any:
    """Decimal (PostgreSQL sums and averages) as int or float, for JSON and CSV."""
    if value is None or isinstance(value, (str, int, float)):
        return value
    as_float = float(value)
    return int(as_float) if as_float.is_integer() else as_float


# --- drill-down ------------------------------------------------------------------------------


def drill(query: StatisticsQuery, row: dict[str, Any]) -> dict[str, str] | None:
    """The query parameters one level below ``row``: district or level → its hospitals →
    a hospital's months → a month's days. None at the bottom."""
    if query.by in ("district", "level"):
        return {"by": "hospital", query.by: str(row.get(query.by) or "")}
    if query.by == "hospital":
        if not row.get("hospital_id"):
            return None
        return {"by": "none", "hospital_id": str(row["hospital_id"]), "period": "month"}
    bucket = str(row.get("period", ""))
    if query.period == "year" and bucket.isdigit():
        first, last = date(int(bucket), 1, 1), date(int(bucket), 12, 31)
        return {"period": "month", **_within(query, first, last)}
    if query.period == "month" and len(bucket) == 7:
        year, month = int(bucket[:4]), int(bucket[5:])
        first = date(year, month, 1)
        last = date(year, month, calendar.monthrange(year, month)[1])
        return {"period": "day", **_within(query, first, last)}
    return None


def _within(query: StatisticsQuery, first: date, last: date) -> dict[str, str]:
    """``first``..``last`` narrowed to the query's own range (a drill never widens it)."""
    start = max(first, query.start) if query.start else first
    end = min(last, query.end) if query.end else last
    return {"from": start.isoformat(), "to": end.isoformat()}


def as_csv_rows(table: StatisticsTable) -> Sequence[Sequence[Any]]:
    """Header and rows for a CSV file (drill hints left out)."""
    columns = table.columns
    return [list(columns), *([row.get(c, "") for c in columns] for row in table.rows)]
