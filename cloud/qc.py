"""QC sampling plans and reviews (质控抽查): which studies, drawn how, graded by whom.

A plan names its population (criteria: hospital, modality, Study Date range) and the percent
to review. `QualityControl.sample` draws ``ceil(population x percent / 100)`` studies. The
draw is a ranking by SHA-256 of the plan's seed and each Study Instance UID, so it is
reproducible: sampling again draws nothing new while the population is the same, and when
studies have joined the population it only tops the sample up to the new size, keeping every
study already drawn (their reviews may be under way). Each sampled study becomes a pending
`QcReview`; a reviewer grades image quality and report quality A-D (甲乙丙丁), and the review
passes when both grades reach the policy's pass grades (``config/quality.toml`` [qc]).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cloud.access import AccessDeniedError, AccessPolicy, Principal
from cloud.audit_query import as_utc, stamp
from cloud.errors import ArchiveError, InstanceNotFoundError, InvalidQueryError
from cloud.identity import UserDirectory
from cloud.models import Hospital, QcPlan, QcReview, Series, Study
from cloud.qc_results import qc_results
from cloud.quality_policy import GRADES, QualityPolicy, load_policy
from cloud.quality_summary import date_range, hospital_pk
from cloud.scope import StudyScope

GRADE_ALIASES = {"甲": "A", "乙": "B", "丙": "C", "丁": "D"}
PENDING, DONE = "pending", "done"
_MODALITY = re.compile(r"^[A-Z0-9]{1,16}$")
_CRITERIA = frozenset({"hospital_id", "modality", "from", "to"})


class QcConflictError(ArchiveError):
    """The review is no longer in a state that allows this (graded already)."""

    title = "Conflict"
    http_status = 409


@dataclass(frozen=True)
class Criteria:
    """Which studies a plan draws from; None matches all."""

    hospital_id: str | None = None
    modality: str | None = None
    date_from: str | None = None  # Study Date, YYYYMMDD, included
    date_to: str | None = None

    @classmethod
    def parse(cls, given: Mapping[str, Any]) -> Criteria:
        """Checked criteria from ``{"hospital_id", "modality", "from", "to"}`` (all optional)."""
        unknown = sorted(set(given) - _CRITERIA)
        if unknown:
            raise InvalidQueryError(f"unknown criteria {unknown}: use {sorted(_CRITERIA)}")
        texts = {}
        for key, value in given.items():
            if value is not None and not isinstance(value, str):
                raise InvalidQueryError(f"criteria.{key} must be a string")
            texts[key] = (value or "").strip() or None
        modality = texts.get("modality")
        if modality is not None and not _MODALITY.match(modality):
            raise InvalidQueryError(f"criteria.modality {modality[:20]!r} is not a DICOM modality")
        start, end = date_range(texts.get("from"), texts.get("to"))
        return cls(texts.get("hospital_id"), modality, start, end)

    def as_dict(self) -> dict[str, str]:
        found = {"hospital_id": self.hospital_id, "modality": self.modality}
        found |= {"from": self.date_from, "to": self.date_to}
        return {k: v for k, v in found.items() if v}


@dataclass(frozen=True)
class Sample:
    """What a draw did: population size, target size, rows now in the sample, rows added."""

    plan_id: int
    population: int
    sample_size: int
    sampled: int
    added: int

    def as_dict(self) -> dict[str, int]:
        return self.__dict__.copy()


def rank(seed: str, study_instance_uid: str) -> str:
    """A study's place in a plan's draw: lowest first."""
    return hashlib.sha256(f"{seed}\n{study_instance_uid}".encode()).hexdigest()


def grade(value: str, name: str) -> str:
    """``A``-``D`` (or 甲乙丙丁, any case) as ``A``-``D``; `InvalidQueryError` otherwise."""
    text = GRADE_ALIASES.get(value.strip(), value.strip().upper())
    if text not in GRADES:
        raise InvalidQueryError(f"{name} {value[:10]!r}: use one of A, B, C, D (甲乙丙丁)")
    return text


class QualityControl:
    """QC plans, their samples and reviews, over the index."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        access: AccessPolicy,
        users: UserDirectory,
        policy: QualityPolicy | None = None,
    ) -> None:
        self._sessions = sessions
        self._access = access
        self._users = users
        self.policy = policy or load_policy()

    # --- plans ------------------------------------------------------------------------------

    def create_plan(
        self, name: str, criteria: Criteria, sample_percent: float, created_by: str
    ) -> dict[str, Any]:
        """A new plan; the hospital named by the criteria must be registered."""
        if not name.strip() or len(name) > 128:
            raise InvalidQueryError("name: 1-128 characters")
        if not 0 < sample_percent <= 100:
            raise InvalidQueryError(f"sample_percent {sample_percent}: more than 0, at most 100")
        with self._sessions() as session:
            if criteria.hospital_id:
                hospital_pk(session, criteria.hospital_id)
            plan = QcPlan(
                name=name.strip(),
                criteria=json.dumps(criteria.as_dict()),
                sample_percent=float(sample_percent),
                created_by=created_by,
                created_at=datetime.now(UTC),
            )
            session.add(plan)
            session.commit()
            return self._plan_view(session, plan)

    def plan(self, plan_id: int) -> dict[str, Any]:
        """The plan, its criteria and its results (`results`)."""
        with self._sessions() as session:
            return self._plan_view(session, self._plan(session, plan_id))

    def results(self, plan_id: int | None = None, hospital_id: str | None = None) -> dict[str, Any]:
        """Sampled, done, passed and pass rate (per hospital, in total) and the grades given,
        of one plan or of all, optionally of one hospital's studies."""
        with self._sessions() as session:
            if plan_id is not None:
                self._plan(session, plan_id)
            hospital = hospital_pk(session, hospital_id) if hospital_id else None
            return qc_results(session, plan_pk=plan_id, hospital_pk=hospital)

    def plan_hospital(self, plan_id: int) -> str | None:
        """The hospital a plan is limited to (None: every hospital)."""
        with self._sessions() as session:
            return _criteria(self._plan(session, plan_id)).hospital_id

    def plans(self, hospital_id: str | None = None) -> list[dict[str, Any]]:
        """Every plan, or those limited to ``hospital_id``."""
        with self._sessions() as session:
            found = session.scalars(select(QcPlan).order_by(QcPlan.pk))
            views = [self._plan_view(session, p, results=False) for p in found]
        if hospital_id is not None:
            views = [v for v in views if v["criteria"].get("hospital_id") == hospital_id]
        return views

    @staticmethod
    def _plan(session: Session, plan_id: int) -> QcPlan:
        plan = session.get(QcPlan, plan_id)
        if plan is None:
            raise InstanceNotFoundError(f"QC plan {plan_id} does not exist")
        return plan

    def _plan_view(self, session: Session, plan: QcPlan, *, results: bool = True) -> dict[str, Any]:
        view = {
            "id": plan.pk,
            "name": plan.name,
            "criteria": _criteria(plan).as_dict(),
            "sample_percent": plan.sample_percent,
            "created_by": plan.created_by,
            "created_at": stamp(plan.created_at),
        }
        if results:
            view["results"] = qc_results(session, plan_pk=plan.pk)
        return view

    # --- sampling ---------------------------------------------------------------------------

    def sample(self, plan_id: int) -> Sample:
        """Draw the plan's sample (reproducibly; see the module) into pending reviews."""
        for attempt in (1, 2):  # a concurrent draw of the same plan inserts the same rows
            try:
                return self._draw(plan_id)
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _draw(self, plan_id: int) -> Sample:
        with self._sessions() as session:
            plan = self._plan(session, plan_id)
            found = session.execute(_population(session, _criteria(plan)))
            population = {int(pk): str(uid) for pk, uid in found}
            drawn = set(
                session.scalars(select(QcReview.study_pk).where(QcReview.plan_pk == plan.pk))
            )
            size = math.ceil(len(population) * plan.sample_percent / 100)
            need = size - len(drawn & population.keys())
            seed = _seed(plan)
            candidates = sorted(
                (pk for pk in population if pk not in drawn),
                key=lambda pk: rank(seed, population[pk]),
            )
            now = datetime.now(UTC)
            added = candidates[: max(0, need)]
            for study_pk in added:
                session.add(
                    QcReview(plan_pk=plan.pk, study_pk=study_pk, state=PENDING, sampled_at=now)
                )
            session.commit()
            return Sample(plan.pk, len(population), size, len(drawn) + len(added), len(added))

    # --- reviews ----------------------------------------------------------------------------

    def assign(self, review_id: int, reviewer: str) -> dict[str, Any]:
        """Give a pending review to ``reviewer``, who must hold ``qc_review`` and reach the
        study (`InvalidQueryError` otherwise)."""
        user = self._users.by_username(reviewer)
        if user is None or user.status != "active":
            raise InvalidQueryError(f"reviewer {reviewer[:64]!r} is not an active account")
        who = AccessPolicy.for_user(user)
        with self._sessions() as session:
            review, study_uid = self._review(session, review_id)
            try:
                self._access.require_study(who, "qc_review", study_uid)
            except AccessDeniedError as exc:
                raise InvalidQueryError(
                    f"{reviewer} cannot review this study: {exc.detail}"
                ) from exc
            if review.state != PENDING:
                raise QcConflictError(f"QC review {review_id} is {review.state} already")
            review.reviewer = user.username
            session.commit()
            return _review_view(review, study_uid)

    def review_view(self, review_id: int) -> dict[str, Any]:
        """One review: its plan, study, state and grades."""
        with self._sessions() as session:
            return _review_view(*self._review(session, review_id))

    def review(
        self, review_id: int, reviewer: str, image_grade: str, report_grade: str, comment: str = ""
    ) -> dict[str, Any]:
        """Record the grades of a pending review by ``reviewer`` (who has been checked for
        ``qc_review`` on the study); passed = both grades reach the pass grades."""
        image, report = grade(image_grade, "image_grade"), grade(report_grade, "report_grade")
        if len(comment) > 4000:
            raise InvalidQueryError("comment: at most 4000 characters")
        with self._sessions() as session:
            review, study_uid = self._review(session, review_id)
            if review.state != PENDING:
                raise QcConflictError(f"QC review {review_id} was graded already")
            if review.reviewer and review.reviewer != reviewer:
                raise AccessDeniedError(f"QC review {review_id} is assigned to {review.reviewer}")
            review.reviewer, review.state, review.comment = reviewer, DONE, comment
            review.image_grade, review.report_grade = image, report
            review.passed = self.policy.passes(image, report)
            review.reviewed_at = datetime.now(UTC)
            session.commit()
            return _review_view(review, study_uid)

    @staticmethod
    def _review(session: Session, review_id: int) -> tuple[QcReview, str]:
        found = session.execute(
            select(QcReview, Study.study_instance_uid)
            .join(Study, Study.pk == QcReview.study_pk)
            .where(QcReview.pk == review_id)
        ).first()
        if found is None:
            raise InstanceNotFoundError(f"QC review {review_id} does not exist")
        return found[0], str(found[1])

    def queue(
        self, who: Principal, state: str = PENDING, plan_id: int | None = None, limit: int = 200
    ) -> list[dict[str, Any]]:
        """Reviews for ``who``: those assigned to them and, while pending, the unassigned ones
        of studies in their scope. Study UID, hospital, modalities and date, no patient."""
        scope: StudyScope = self._access.scope(who)
        mine = QcReview.reviewer == who.name
        if state == PENDING:
            mine = mine | (QcReview.reviewer == "")
        statement = (
            select(
                QcReview,
                Study.study_instance_uid,
                Study.study_date,
                Hospital.hospital_id,
                Hospital.name,
            )
            .join(Study, Study.pk == QcReview.study_pk)
            .outerjoin(Hospital, Hospital.pk == Study.hospital_pk)
            .where(QcReview.state == state, mine, scope.condition())
            .order_by(QcReview.pk)
            .limit(limit)
        )
        if plan_id is not None:
            statement = statement.where(QcReview.plan_pk == plan_id)
        with self._sessions() as session:
            rows = session.execute(statement).all()
            modalities = _modalities(session, [row[0].study_pk for row in rows])
        return [
            _review_view(review, uid)
            | {
                "study_date": date,
                "hospital_id": hid,
                "hospital_name": hname,
                "modalities": modalities.get(review.study_pk, []),
            }
            for review, uid, date, hid, hname in rows
        ]


def _criteria(plan: QcPlan) -> Criteria:
    return Criteria.parse(json.loads(plan.criteria or "{}"))


def _seed(plan: QcPlan) -> str:
    # Fixed when the plan is made, so each plan has its own draw and keeps it.
    created = as_utc(plan.created_at)
    return f"qc-plan:{plan.pk}:{created.isoformat() if created else ''}"


def _population(session: Session, criteria: Criteria) -> Any:
    statement = select(Study.pk, Study.study_instance_uid)
    if criteria.hospital_id:
        statement = statement.where(Study.hospital_pk == hospital_pk(session, criteria.hospital_id))
    if criteria.modality:
        statement = statement.where(
            exists(
                select(Series.pk).where(
                    Series.study_pk == Study.pk, Series.modality == criteria.modality
                )
            )
        )
    if criteria.date_from:
        statement = statement.where(Study.study_date >= criteria.date_from)
    if criteria.date_to:
        statement = statement.where(Study.study_date <= criteria.date_to)
    return statement


def _modalities(session: Session, study_pks: list[int]) -> dict[int, list[str]]:
    found: dict[int, set[str]] = {}
    for start in range(0, len(study_pks), 500):
        rows = session.execute(
            select(Series.study_pk, Series.modality).where(
                Series.study_pk.in_(study_pks[start : start + 500])
            )
        )
        for pk, modality in rows:
            found.setdefault(pk, set()).add(modality)
    return {pk: sorted(m for m in values if m) for pk, values in found.items()}


def _review_view(review: QcReview, study_uid: str) -> dict[str, Any]:
    return {
        "id": review.pk,
        "plan_id": review.plan_pk,
        "study_instance_uid": study_uid,
        "state": review.state,
        "reviewer": review.reviewer or None,
        "image_grade": review.image_grade or None,
        "report_grade": review.report_grade or None,
        "passed": review.passed,
        "comment": review.comment,
        "sampled_at": stamp(review.sampled_at),
        "reviewed_at": stamp(review.reviewed_at),
    }
