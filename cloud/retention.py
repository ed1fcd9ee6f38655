"""Classification and retention of studies: category, level, retain-until, legal hold, extension.

Each study gets a `StudyLifecycle` row from the policy (`cloud.retention_policy`): retain until
its Study Date (or the day it was received) plus the years of its retention class. Automatic
runs only ever lengthen a retention; shortening needs a named approver, a legal hold stops
destruction whatever the date, and every change is an entry in the audit log.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import exists, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloud.archive import Archive
from cloud.audit_query import as_utc
from cloud.errors import InstanceNotFoundError, InvalidQueryError
from cloud.models import Instance, Patient, Series, Study, StudyLifecycle
from cloud.retention_policy import (
    Actor,
    DueStudy,
    Lifecycle,
    Policy,
    PolicyError,
    RetentionRefusedError,
    Rule,
    SeriesFacts,
    add_years,
    as_date,
    load_policy,
    utc_today,
    yyyymmdd,
)

logger = logging.getLogger(__name__)

__all__ = [
    "POLICY_ACTOR",
    "Actor",
    "DueStudy",
    "Lifecycle",
    "PolicyError",
    "Retention",
    "RetentionRefusedError",
    "as_date",
    "load_policy",
    "series_facts",
    "yyyymmdd",
]

POLICY_ACTOR = "policy"  # classified_by of rows the policy wrote; others were edited by a person
NAME_LENGTH = 64  # approver and editor names, as the columns hold them
BATCH = 500


class Retention:
    """The retention service over an archive's index; safe to share between threads."""

    def __init__(
        self,
        archive: Archive,
        policy: Policy | None = None,
        *,
        today: Callable[[], date] = utc_today,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.archive = archive
        self.policy = policy or load_policy()
        self.today = today
        self._clock = clock
        self._sessions = archive.sessions

    # --- reading ---------------------------------------------------------------------------

    def lifecycle(self, study_instance_uid: str, *, with_series: bool = False) -> Lifecycle:
        """The stored classification, or what the policy would store (``stored`` False)."""
        with self._sessions() as session:
            study = _study(session, study_instance_uid)
            facts = series_facts(session, [study.pk]).get(study.pk, [])
            row = session.get(StudyLifecycle, study.pk)
            rule, base, until = self._computed(study, facts)
            series = [self._series_dict(item) for item in facts] if with_series else []
            if row is None:
                return Lifecycle(
                    study_instance_uid,
                    rule.category,
                    rule.level,
                    rule.retention_class,
                    base,
                    until,
                    stored=False,
                    series=series,
                )
            return _view(study_instance_uid, row, base, series)

    def _series_dict(self, facts: SeriesFacts) -> dict[str, Any]:
        rule = self.policy.classify_series(facts)
        return {
            "series_instance_uid": facts.series_instance_uid,
            "modality": facts.modality,
            "category": rule.category,
            "level": rule.level,
            "retention_class": rule.retention_class,
        }

    def due_for_destruction(
        self, today: date | None = None, limit: int | None = None
    ) -> list[DueStudy]:
        """Studies whose retain-until lies before ``today`` and that are not on legal hold."""
        cutoff = yyyymmdd(today or self.today())
        statement = (
            select(
                Study.study_instance_uid,
                StudyLifecycle.category,
                StudyLifecycle.level,
                StudyLifecycle.retention_class,
                StudyLifecycle.retain_until,
                func.count(Instance.pk),
                func.coalesce(func.sum(Instance.size_bytes), 0),
            )
            .join(Study, Study.pk == StudyLifecycle.study_pk)
            .outerjoin(Series, Series.study_pk == Study.pk)
            .outerjoin(Instance, Instance.series_pk == Series.pk)
            .where(StudyLifecycle.retain_until < cutoff, StudyLifecycle.legal_hold.is_(False))
            .group_by(
                Study.pk,
                Study.study_instance_uid,
                StudyLifecycle.category,
                StudyLifecycle.level,
                StudyLifecycle.retention_class,
                StudyLifecycle.retain_until,
            )
            .order_by(StudyLifecycle.retain_until, Study.pk)
            .limit(limit)
        )
        with self._sessions() as session:
            return [
                DueStudy(uid, category, level, klass, as_date(until), int(count), int(size))
                for uid, category, level, klass, until, count, size in session.execute(statement)
            ]

    # --- classifying -----------------------------------------------------------------------

    def classify(self, study_instance_uid: str) -> Lifecycle:
        """Store the policy's classification of one study (see `classify_all` for the rules)."""
        with self._sessions() as session:
            study = _study(session, study_instance_uid)
            self._classify_studies(session, [study])
            session.commit()
        return self.lifecycle(study_instance_uid)

    def classify_new(self) -> int:
        """Classify studies without a lifecycle row, and re-apply the policy to studies the
        policy classified before an instance was added; returns how many were written.

        Meant for a periodic job: cheap when nothing is new.
        """
        newer = (
            select(Instance.pk)
            .join(Series, Instance.series_pk == Series.pk)
            .where(Series.study_pk == Study.pk, Instance.received_at > StudyLifecycle.classified_at)
        )
        pending = or_(
            StudyLifecycle.study_pk.is_(None),
            (StudyLifecycle.classified_by == POLICY_ACTOR) & exists(newer),
        )
        return self._run(pending)

    def classify_all(self) -> int:
        """Apply the policy to every study: missing rows are created, rows the policy wrote are
        brought up to date (never to an earlier retain-until), rows edited by a person are
        left as they are. Returns how many rows were written."""
        return self._run(
            or_(StudyLifecycle.study_pk.is_(None), StudyLifecycle.classified_by == POLICY_ACTOR)
        )

    def _run(self, condition: Any) -> int:
        done, after = 0, 0
        while True:
            statement = (
                select(Study)
                .outerjoin(StudyLifecycle, StudyLifecycle.study_pk == Study.pk)
                .where(condition, Study.pk > after)
                .order_by(Study.pk)
                .limit(BATCH)
            )
            with self._sessions() as session:
                studies = list(session.scalars(statement))
                if not studies:
                    return done
                try:
                    done += self._classify_studies(session, studies)
                    session.commit()
                except IntegrityError:  # another job classified one of them meanwhile
                    session.rollback()
                    logger.info("concurrent classification; the next run picks up the rest")
            after = studies[-1].pk

    def _classify_studies(self, session: Session, studies: list[Study]) -> int:
        facts = series_facts(session, [s.pk for s in studies])
        rows = {
            row.study_pk: row
            for row in session.scalars(
                select(StudyLifecycle)
                .where(StudyLifecycle.study_pk.in_([s.pk for s in studies]))
                .with_for_update()
            )
        }
        now, written = self._clock(), 0
        for study in studies:
            rule, _base, until = self._computed(study, facts.get(study.pk, []))
            row = rows.get(study.pk)
            if row is None:
                session.add(
                    StudyLifecycle(
                        study_pk=study.pk,
                        category=rule.category,
                        level=rule.level,
                        retention_class=rule.retention_class,
                        retain_until=yyyymmdd(until),
                        legal_hold=False,
                        hold_reason="",
                        extended_by="",
                        classified_at=now,
                        classified_by=POLICY_ACTOR,
                    )
                )
            elif row.classified_by == POLICY_ACTOR:
                row.category, row.level = rule.category, rule.level
                row.retention_class = rule.retention_class
                row.retain_until = max(row.retain_until, yyyymmdd(until))
                row.classified_at = now
            else:
                continue
            written += 1
        return written

    def _computed(self, study: Study, facts: Iterable[SeriesFacts]) -> tuple[Rule, date, date]:
        rule = self.policy.classify(facts)
        base = self.base_date(study)
        return rule, base, add_years(base, self.policy.years(rule.retention_class, rule.level))

    def base_date(self, study: Study) -> date:
        """The Study Date, or the day the study was first received if it has none."""
        found = self.policy.plausible(study.study_date)
        if found is not None:
            return found
        received = as_utc(study.created_at)
        return received.date() if received is not None else self.today()

    # --- editing ---------------------------------------------------------------------------

    def reclassify(
        self,
        study_instance_uid: str,
        *,
        actor: Actor,
        category: str | None = None,
        level: int | None = None,
        retention_class: str | None = None,
        approved_by: str = "",
        reason: str = "",
    ) -> Lifecycle:
        """Set a study's category, level or retention class by hand. A change that would move
        retain-until earlier needs ``approved_by``; it never goes below the class's minimum."""
        approved_by = _name(approved_by, "approved_by", required=False)
        with self._sessions() as session:
            study, row, patient_id = self._row(session, study_instance_uid)
            wanted = Rule(
                category or row.category,
                row.level if level is None else level,
                retention_class or row.retention_class,
            )
            try:
                self.policy.check_rule(wanted, "the request")
            except PolicyError as exc:
                raise InvalidQueryError(str(exc)) from exc
            base = self.base_date(study)
            until = yyyymmdd(
                add_years(base, self.policy.years(wanted.retention_class, wanted.level))
            )
            before = _snapshot(row)
            if until < row.retain_until:
                if not approved_by:
                    raise RetentionRefusedError(
                        f"study {study_instance_uid}: this would shorten retention from "
                        f"{_iso(row.retain_until)} to {_iso(until)}; an approver must be named"
                    )
                row.extended_by = ""  # an earlier extension no longer holds
            else:
                until = row.retain_until if row.extended_by else until
            row.category, row.level, row.retention_class = (
                wanted.category,
                wanted.level,
                wanted.retention_class,
            )
            row.retain_until = until
            row.classified_by = actor.name[:NAME_LENGTH]
            row.classified_at = self._clock()
            detail = {
                "before": before,
                "after": _snapshot(row),
                "approved_by": approved_by,
                "reason": reason,
            }
            session.commit()
        self.archive.audit.append(
            actor.entry("retention_classified", study_instance_uid, patient_id, detail)
        )
        return self.lifecycle(study_instance_uid)

    def hold(self, study_instance_uid: str, *, reason: str, actor: Actor) -> Lifecycle:
        """Put a study on legal hold: it is not destroyed, whatever its retain-until says."""
        reason = _text(reason, "reason")
        if not reason:
            raise InvalidQueryError("a legal hold needs a reason (case number, order, ...)")
        with self._sessions() as session:
            _study_row, row, patient_id = self._row(session, study_instance_uid)
            previous = row.hold_reason if row.legal_hold else ""
            row.legal_hold, row.hold_reason = True, reason
            session.commit()
        detail = {"reason": reason, "previous_reason": previous}
        self.archive.audit.append(actor.entry("legal_hold", study_instance_uid, patient_id, detail))
        return self.lifecycle(study_instance_uid)

    def release(self, study_instance_uid: str, *, actor: Actor, reason: str = "") -> Lifecycle:
        """End a legal hold; the study's retain-until applies again."""
        with self._sessions() as session:
            _study_row, row, patient_id = self._row(session, study_instance_uid)
            if not row.legal_hold:
                raise RetentionRefusedError(f"study {study_instance_uid} is not on legal hold")
            detail = {"hold_reason": row.hold_reason, "reason": reason.strip()}
            row.legal_hold, row.hold_reason = False, ""
            session.commit()
        self.archive.audit.append(
            actor.entry("legal_hold_released", study_instance_uid, patient_id, detail)
        )
        return self.lifecycle(study_instance_uid)

    def extend(
        self,
        study_instance_uid: str,
        *,
        approved_by: str,
        actor: Actor,
        until: date | None = None,
        years: int | None = None,
        reason: str = "",
    ) -> Lifecycle:
        """Keep a study longer, by approval: to ``until`` or by ``years`` from its current
        retain-until (at most the policy's ``extension.max_years``)."""
        approved_by = _name(approved_by, "approved_by", required=True)
        if (until is None) == (years is None):
            raise InvalidQueryError("give either a date to retain until or a number of years")
        if years is not None and years < 1:
            raise InvalidQueryError("an extension is at least one year")
        with self._sessions() as session:
            _study_row, row, patient_id = self._row(session, study_instance_uid)
            current = as_date(row.retain_until)
            target = until if until is not None else add_years(current, years or 0)
            if target <= current:
                raise RetentionRefusedError(
                    f"study {study_instance_uid} is already retained until {current.isoformat()}; "
                    "an extension must move that later"
                )
            ceiling = add_years(current, self.policy.extension_max_years)
            if target > ceiling:
                raise RetentionRefusedError(
                    f"one extension may reach {ceiling.isoformat()} at most "
                    f"({self.policy.extension_max_years} years); asked {target.isoformat()}"
                )
            row.retain_until, row.extended_by = yyyymmdd(target), approved_by
            session.commit()
        detail = {
            "from": current.isoformat(),
            "to": target.isoformat(),
            "approved_by": approved_by,
            "reason": reason.strip(),
        }
        self.archive.audit.append(
            actor.entry("retention_extended", study_instance_uid, patient_id, detail)
        )
        return self.lifecycle(study_instance_uid)

    def _row(self, session: Session, uid: str) -> tuple[Study, StudyLifecycle, str]:
        """The study, its lifecycle row (classified now if it had none, locked) and patient."""
        study = _study(session, uid)
        row = session.get(StudyLifecycle, study.pk, with_for_update=True)
        if row is None:
            self._classify_studies(session, [study])
            session.flush()
            row = session.get(StudyLifecycle, study.pk, with_for_update=True)
            assert row is not None
        patient_id = session.scalar(
            select(Patient.patient_id).where(Patient.pk == study.patient_pk)
        )
        return study, row, patient_id or ""


def _study(session: Session, uid: str) -> Study:
    study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
    if study is None:
        raise InstanceNotFoundError(f"study {uid} is not in the archive")
    return study


def series_facts(session: Session, study_pks: list[int]) -> dict[int, list[SeriesFacts]]:
    """Per study: each series' modality, description and SOP classes."""
    statement = (
        select(
            Series.study_pk,
            Series.pk,
            Series.series_instance_uid,
            Series.modality,
            Series.series_description,
            Instance.sop_class_uid,
        )
        .outerjoin(Instance, Instance.series_pk == Series.pk)
        .where(Series.study_pk.in_(study_pks))
        .distinct()
    )
    series: dict[int, tuple[int, str, str, str, set[str]]] = {}
    for study_pk, series_pk, uid, modality, description, sop_class in session.execute(statement):
        entry = series.setdefault(series_pk, (study_pk, uid, modality, description, set()))
        if sop_class:
            entry[4].add(sop_class)
    found: dict[int, list[SeriesFacts]] = {}
    for study_pk, uid, modality, description, classes in series.values():
        found.setdefault(study_pk, []).append(
            SeriesFacts(uid, modality or "", description or "", frozenset(classes))
        )
    return found


def _view(uid: str, row: StudyLifecycle, base: date, series: list[dict[str, Any]]) -> Lifecycle:
    return Lifecycle(
        uid,
        row.category,
        row.level,
        row.retention_class,
        base,
        as_date(row.retain_until),
        row.legal_hold,
        row.hold_reason,
        row.extended_by,
        as_utc(row.classified_at),
        row.classified_by,
        True,
        series,
    )


def _snapshot(row: StudyLifecycle) -> dict[str, Any]:
    return {
        "category": row.category,
        "level": row.level,
        "retention_class": row.retention_class,
        "retain_until": _iso(row.retain_until),
    }


def _iso(value: str) -> str:
    return as_date(value).isoformat()


def _text(value: str, what: str) -> str:
    """Free text as the index can hold it (PostgreSQL refuses NUL in text columns)."""
    if "\x00" in value:
        raise InvalidQueryError(f"{what} contains a NUL character")
    return value.strip()


def _name(value: str, what: str, *, required: bool) -> str:
    value = _text(value, what)
    if required and not value:
        raise InvalidQueryError(f"{what} must name the person who approved")
    if len(value) > NAME_LENGTH:
        raise InvalidQueryError(f"{what} is longer than {NAME_LENGTH} characters")
    return value
