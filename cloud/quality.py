"""Data-quality scores of every study: computed, stored, kept current and summarised.

`QualityScorer` gathers what the index says about a study (patient, study and series
attributes, instances, the current report, the gateway's latest reconciliation, ingest
conflicts) plus a bounded number of instance headers, scores it with `cloud.quality_score`
under ``config/quality.toml``, and stores a `StudyQuality` row. `score_due` is the periodic
call: studies never scored, and studies that changed since (a new instance, report,
reconciliation or conflict). `summary` gives aggregates only, never a study or a patient.
"""

from __future__ import annotations

import io
import json
import logging
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy import exists, func, or_, select, true
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloud.audit_query import as_utc, stamp
from cloud.crypto import unseal
from cloud.errors import InstanceNotFoundError
from cloud.models import (
    IngestConflict,
    Instance,
    InstanceMetadata,
    Patient,
    Reconciliation,
    Report,
    Series,
    Study,
    StudyQuality,
)
from cloud.quality_policy import DIMENSIONS, QualityPolicy, load_policy
from cloud.quality_score import (
    Header,
    InstanceFacts,
    ReconciliationFacts,
    Score,
    StudyFacts,
    score,
)
from cloud.quality_summary import summarise

if TYPE_CHECKING:
    from cloud.archive import Archive

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Instance:
    """What reading one instance's header needs."""

    series_instance_uid: str
    sop_instance_uid: str
    pk: int
    blob_key: str
    encryption: str
    tier: str


class QualityScorer:
    """Scores studies of ``archive``; ``timezone`` is where acquisition times without an
    offset were taken (the node's ``audit_timezone``)."""

    def __init__(
        self,
        archive: Archive,
        *,
        timezone: str = "Asia/Shanghai",
        policy: QualityPolicy | None = None,
    ) -> None:
        self._archive = archive
        self._sessions = archive.sessions
        self.policy = policy or load_policy()
        try:
            self.zone = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {timezone!r}") from exc

    # --- scoring ----------------------------------------------------------------------------

    def score_study(self, study_pk: int) -> Score:
        """Score one study now and store the result."""
        started = datetime.now(UTC)  # what arrives while we read counts as a change
        with self._sessions() as session:
            study = session.get(Study, study_pk)
            if study is None:
                raise InstanceNotFoundError(f"study {study_pk} is not in the archive")
            facts, instances = self._facts(session, study)
        self._read_headers(facts, instances)
        result = score(facts, self.policy, self.zone)
        row = StudyQuality(
            study_pk=study_pk,
            overall=result.overall,
            findings=json.dumps(result.findings, ensure_ascii=False),
            scored_at=started,
            **result.values,
        )
        for attempt in (1, 2):  # a concurrent first scoring may insert between our two steps
            with self._sessions() as session:
                session.merge(row)
                try:
                    session.commit()
                    break
                except IntegrityError:
                    session.rollback()
                    if attempt == 2:
                        raise
        return result

    def score_new(self, limit: int = 500) -> int:
        """Score up to ``limit`` studies that have no score yet; how many were scored."""
        return self._score_where(StudyQuality.study_pk.is_(None), limit)

    def rescore_changed(self, limit: int = 500) -> int:
        """Rescore up to ``limit`` scored studies that changed since; how many."""
        return self._score_where(StudyQuality.study_pk.is_not(None) & _changed(), limit)

    def score_due(self, limit: int = 500) -> int:
        """New studies first, then changed ones, ``limit`` in all: the periodic call."""
        done = self.score_new(limit)
        return done + (self.rescore_changed(limit - done) if done < limit else 0)

    def _score_where(self, condition: Any, limit: int) -> int:
        statement = (
            select(Study.pk)
            .outerjoin(StudyQuality, StudyQuality.study_pk == Study.pk)
            .where(condition)
            .order_by(Study.pk)
            .limit(max(0, limit))
        )
        with self._sessions() as session:
            pks = list(session.scalars(statement))
        done = 0
        for pk in pks:
            try:
                self.score_study(pk)
                done += 1
            except Exception:  # one study must not stop the pass; it is tried again next time
                logger.exception("quality scoring of study pk %s failed", pk)
        return done

    # --- what a score is made of ------------------------------------------------------------

    def _facts(self, session: Session, study: Study) -> tuple[StudyFacts, list[_Instance]]:
        uid = study.study_instance_uid
        patient = session.get(Patient, study.patient_pk)
        index = {
            "PatientID": patient.patient_id if patient else "",
            "PatientName": patient.patient_name if patient else "",
            "PatientSex": patient.patient_sex if patient else "",
            "PatientBirthDate": patient.patient_birth_date if patient else "",
            "StudyDate": study.study_date,
            "StudyTime": study.study_time,
            "AccessionNumber": study.accession_number,
            "StudyID": study.study_id,
            "StudyDescription": study.study_description,
            "ReferringPhysicianName": study.referring_physician_name,
            "TimezoneOffsetFromUTC": study.timezone_offset_from_utc,
            "InstitutionalDepartmentName": study.department,
        }
        series = list(
            session.scalars(
                select(Series)
                .where(Series.study_pk == study.pk)
                .order_by(Series.series_number, Series.pk)
            )
        )
        order = {s.pk: n for n, s in enumerate(series)}
        uids = {s.pk: s.series_instance_uid for s in series}
        rows = sorted(
            session.execute(select(Instance).where(Instance.series_pk.in_(list(order)))).scalars(),
            key=lambda i: (order[i.series_pk], i.instance_number or 0, i.pk),
        )
        latest = session.scalars(
            select(Reconciliation)
            .where(Reconciliation.study_instance_uid == uid)
            .where(_same_hospital(study.hospital_pk))
            .order_by(Reconciliation.checked_at.desc(), Reconciliation.pk.desc())
            .limit(1)
        ).first()
        sops = select(Instance.sop_instance_uid).where(Instance.series_pk.in_(list(order)))
        conflicts = session.scalar(
            select(func.count(func.distinct(IngestConflict.sop_instance_uid))).where(
                IngestConflict.sop_instance_uid.in_(sops)
            )
        )
        report = session.scalars(
            select(Report.status)
            .where(Report.study_instance_uid == uid)
            .order_by(Report.current.desc(), Report.version.desc())
            .limit(1)
        ).first()
        received = [as_utc(i.received_at) for i in rows]
        facts = StudyFacts(
            study_instance_uid=uid,
            index=index,
            series=[_series_keywords(s) for s in series],
            instances=[
                InstanceFacts(
                    i.sop_class_uid,
                    i.transfer_syntax_uid,
                    i.rows,
                    i.columns,
                    i.bits_allocated,
                    i.number_of_frames,
                )
                for i in rows
            ],
            first_received=min((r for r in received if r is not None), default=None),
            report_status=report,
            reconciliation=None
            if latest is None
            else ReconciliationFacts(latest.gateway_instances, latest.missing, latest.mismatched),
            conflicts=int(conflicts or 0),
        )
        picked = [rows[n] for n in spread(len(rows), self.policy.headers_per_study)]
        to_read = [
            _Instance(uids[i.series_pk], i.sop_instance_uid, i.pk, i.blob_key, i.encryption, i.tier)
            for i in picked
        ]
        return facts, to_read

    def _read_headers(self, facts: StudyFacts, instances: list[_Instance]) -> None:
        for instance in instances:
            try:
                dataset = self._header(facts.study_instance_uid, instance)
            except Exception:  # shredded, missing or unreadable: skipped, and said so
                logger.warning("quality: header of %s unreadable", instance.sop_instance_uid)
                dataset = None
            if dataset is None:
                facts.headers_skipped += 1
            else:
                facts.headers.append(Header(instance.series_instance_uid, dataset))

    def _header(self, study_uid: str, instance: _Instance) -> Dataset | None:
        """The header as received (hot blob), else the cached metadata, else None (cold).

        Read directly, not through `Archive.read`: scoring must neither count as an access
        (tiering statistics) nor bring a cold study back."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if instance.tier == "hot":
                blob = self._archive.blobs.get(instance.blob_key)
                if instance.encryption:
                    key = self._archive.keys.data_key(study_uid)
                    blob = unseal(key, blob, instance.sop_instance_uid)
                return dcmread(io.BytesIO(blob), stop_before_pixels=True)
            with self._sessions() as session:
                cached = session.get(InstanceMetadata, instance.pk)
            if cached is None:
                return None
            return Dataset.from_json(cached.dicom_json, lambda _uri: b"")

    # --- reading ----------------------------------------------------------------------------

    def quality(self, study_instance_uid: str, *, refresh: bool = True) -> dict[str, Any]:
        """The study's stored scores; with ``refresh``, first (re)scored if it has none yet
        or changed since. `InstanceNotFoundError` for an unknown study."""
        with self._sessions() as session:
            study_pk = session.scalar(
                select(Study.pk).where(Study.study_instance_uid == study_instance_uid)
            )
            if study_pk is None:
                raise InstanceNotFoundError(f"study {study_instance_uid} is not in the archive")
            due = session.scalar(
                select(Study.pk)
                .outerjoin(StudyQuality, StudyQuality.study_pk == Study.pk)
                .where(Study.pk == study_pk, or_(StudyQuality.study_pk.is_(None), _changed()))
            )
        if refresh and due is not None:
            self.score_study(study_pk)
        with self._sessions() as session:
            row = session.get(StudyQuality, study_pk)
        if row is None:
            return {"study_instance_uid": study_instance_uid, "scored": False}
        return {
            "study_instance_uid": study_instance_uid,
            "scored": True,
            **{d: getattr(row, d) for d in DIMENSIONS},
            "overall": row.overall,
            "poor": row.overall < self.policy.poor_below,
            "findings": json.loads(row.findings or "[]"),
            "scored_at": stamp(row.scored_at),
        }

    def summary(
        self,
        by: str,
        *,
        hospital_id: str | None = None,
        modality: str | None = None,
        date_from: str | None = None,
        date_to: str | None = None,
    ) -> dict[str, Any]:
        """Aggregates of the stored scores (see `cloud.quality_summary.summarise`)."""
        return summarise(
            self._sessions,
            self.policy,
            by,
            hospital_id=hospital_id,
            modality=modality,
            date_from=date_from,
            date_to=date_to,
        )


def spread(count: int, wanted: int) -> list[int]:
    """Up to ``wanted`` indices of ``count`` items, evenly spread, first and last included."""
    if count <= 0:
        return []
    if wanted >= count:
        return list(range(count))
    if wanted == 1:
        return [0]
    return sorted({round(n * (count - 1) / (wanted - 1)) for n in range(wanted)})


def _changed() -> Any:
    """A study whose instances, report, reconciliation or conflicts are newer than its score.

    Joins, not ``IN (series of the study)``: a subquery two levels down would not correlate
    with the outer study and would match every study's series."""
    since = StudyQuality.scored_at
    newer_instance = (
        select(Instance.pk)
        .join(Series, Series.pk == Instance.series_pk)
        .where(Series.study_pk == Study.pk, Instance.received_at > since)
    )
    newer_report = select(Report.pk).where(
        Report.study_instance_uid == Study.study_instance_uid, Report.received_at > since
    )
    newer_reconciliation = select(Reconciliation.pk).where(
        Reconciliation.study_instance_uid == Study.study_instance_uid,
        Reconciliation.checked_at > since,
    )
    newer_conflict = (
        select(IngestConflict.pk)
        .join(Instance, Instance.sop_instance_uid == IngestConflict.sop_instance_uid)
        .join(Series, Series.pk == Instance.series_pk)
        .where(Series.study_pk == Study.pk, IngestConflict.received_at > since)
    )
    return or_(
        exists(newer_instance),
        exists(newer_report),
        exists(newer_reconciliation),
        exists(newer_conflict),
    )


def _same_hospital(hospital_pk: int | None) -> Any:
    # The owner's gateway speaks for the study; an unowned study takes any reconciliation.
    return Reconciliation.hospital_pk == hospital_pk if hospital_pk is not None else true()


def _series_keywords(series: Series) -> dict[str, str]:
    return {
        "SeriesInstanceUID": series.series_instance_uid,
        "Modality": series.modality,
        "BodyPartExamined": series.body_part_examined,
        "SeriesDescription": series.series_description,
        "SeriesDate": series.series_date,
        "SeriesTime": series.series_time,
    }
