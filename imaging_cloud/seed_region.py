"""``imaging-cloud seed-region``: a synthetic city region in an archive, for the regulator
dashboard, demos and tests.

Hospitals (district, level, coordinates around Chongqing) and their staff accounts; residents
who visit several hospitals; studies of several modalities stored through `Archive.store` with
the hospital's ownership (small synthetic images), then dated back to when they were acquired
and uploaded; reports (draft, final, amended), citations, views (audit entries, action
``view``), mutual-recognition checks with the doctors' decisions, data-quality scores, QC
sampling plans and reviews. The plan is `imaging_cloud.seed_plan`; docs/dashboard.md says
what it makes and why the mix is realistic.

Every seeded audit entry carries ``"seed": "seed-region"`` in its detail, so synthetic history
can never be mistaken for real access.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cloud.archive import Archive
from cloud.audit import AuditEntry
from cloud.errors import ArchiveError
from cloud.exam_codes import ExamCodes
from cloud.models import (
    ExamCodeMapping,
    Hospital,
    Instance,
    QcPlan,
    QcReview,
    RecognitionCheck,
    Report,
    ReportCitation,
    Series,
    Study,
    StudyExam,
    StudyQuality,
)
from imaging_cloud.progress import Update, progress_bar, show_progress
from imaging_cloud.seed_draw import (
    ZONE,
    PlannedCheck,
    PlannedReview,
    PlannedStudy,
    PlannedView,
    RegionPlan,
    ReportVersion,
    SeedOptions,
)
from imaging_cloud.seed_plan import QC_SAMPLE, plan_region
from imaging_cloud.synthetic import UID_ROOT, PatientSpec, StudySpec, ct_series, to_part10

logger = logging.getLogger(__name__)

SEED_PASSWORD = "seed-region-2026"  # the seeded accounts' password unless --password is given
SEED_MARK = {"seed": "seed-region"}
STAFF_ROLES = (("admin", "hospital_admin"), ("rad", "radiologist"), ("doc", "clinician"))
PASSED_GRADES = {"A", "B"}  # a QC review passes when both grades are at least B (乙)


class SeedError(ArchiveError):
    http_status = 409
    title = "Region already seeded"


@dataclass
class SeedSummary:
    """What was made; the patient identities let tests prove none of them leaks."""

    hospitals: list[str]
    accounts: list[tuple[str, str, str]]
    counts: Counter[str] = field(default_factory=Counter)
    patient_ids: list[str] = field(default_factory=list)
    patient_names: list[str] = field(default_factory=list)


def seed_region(
    archive: Archive,
    options: SeedOptions,
    *,
    password: str = SEED_PASSWORD,
    accounts: bool = True,
    progress: Callable[[str, int], Any] | None = None,
) -> SeedSummary:
    """Write a planned region into ``archive``; refuses if its hospitals already exist.

    ``accounts=False`` skips the staff accounts (argon2 hashing is slow on purpose; tests make
    the few they sign in with). ``progress(description, total)`` is a context manager giving
    an ``update(done, total)`` (as `imaging_cloud.progress.progress_bar`); default: none.
    """
    plan = plan_region(options)
    for hospital in plan.hospitals:
        if archive.hospitals.by_id(hospital.hospital_id) is not None:
            raise SeedError(f"hospital {hospital.hospital_id} exists: seed a fresh data dir")
    bar = progress or (lambda _what, _total: progress_bar(False, ""))
    ExamCodes.of(archive).codes()  # the regional code table from config, as recognition sees it
    pks = _hospitals(archive, plan)
    summary = SeedSummary(list(pks), _accounts(archive, plan, password) if accounts else [])
    study_pks: dict[int, int] = {}
    with bar("storing studies", len(plan.studies)) as update_bar:
        for done, study in enumerate(plan.studies, 1):
            study_pks[study.index] = _store(archive, study, pks, options.image_size)
            summary.counts["instances"] += study.images
            update_bar(done, len(plan.studies))
    summary.counts["studies"] = len(plan.studies)
    _rows(archive, plan, pks, study_pks, summary.counts)
    # History is not live access: the anomaly rules (new address, night hours) stay out.
    detector, archive.audit.detector = archive.audit.detector, None
    try:
        with bar("writing views to the audit log", len(plan.views)) as update_bar:
            _views(archive, plan.views, update_bar)
    finally:
        archive.audit.detector = detector
    summary.counts["views"] = len(plan.views)
    summary.patient_ids = [p.patient_id for p in plan.patients]
    summary.patient_names = [p.name for p in plan.patients]
    summary.counts["patients"] = len(plan.patients)
    return summary


def _hospitals(archive: Archive, plan: RegionPlan) -> dict[str, int]:
    pks = {}
    for seed in plan.hospitals:
        archive.hospitals.add_hospital(seed.hospital_id, seed.name)  # credential not kept
        with archive.sessions() as session:
            row = session.scalar(select(Hospital).where(Hospital.hospital_id == seed.hospital_id))
            assert row is not None
            row.district, row.level = seed.district, seed.level
            row.latitude, row.longitude = seed.latitude, seed.longitude
            pks[seed.hospital_id] = row.pk
            session.commit()
    return pks


def _accounts(archive: Archive, plan: RegionPlan, password: str) -> list[tuple[str, str, str]]:
    wanted = [("regulator", "regulator", ""), ("auditor", "auditor", "")]
    for hospital in plan.hospitals:
        slug = hospital.hospital_id.lower()
        for kind, role in STAFF_ROLES:
            wanted.append((f"{kind}.{slug}", role, hospital.hospital_id))
    for username, role, hospital_id in wanted:
        if archive.users.by_username(username) is None:
            archive.users.create_user(username, password, role, hospital_id=hospital_id or None)
    return wanted


def _datasets(study: PlannedStudy, size: int) -> list[Dataset]:
    exam, patient, hospital = study.exam, study.patient, study.hospital
    local = study.acquired.astimezone(ZONE)
    spec = StudySpec(
        patient=PatientSpec(patient.patient_id, patient.name, patient.birth_date, patient.sex),
        study_instance_uid=study.uid,
        study_date=f"{local:%Y%m%d}",
        study_time=f"{local:%H%M%S}",
        accession_number=f"{hospital.local_prefix}{local:%y}{study.index:06d}"[:16],
        study_description=exam.local_name[:64],
        referring_physician_name="Referrer^Synthetic",
        institution_name=hospital.name[:64],
        department=exam.department,
    )
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator = exam.local_code, f"99{hospital.local_prefix}"
    code.CodeMeaning = exam.local_name[:64]
    datasets = list(ct_series(spec, slices=study.images, size=size))
    for number, ds in enumerate(datasets, 1):
        ds.SOPClassUID, ds.Modality = exam.sop_class_uid, exam.modality
        ds.SeriesInstanceUID = _uid(study, "series")
        ds.FrameOfReferenceUID = _uid(study, "frame")
        ds.SOPInstanceUID = _uid(study, "sop", number)
        ds.SeriesDescription = exam.local_name[:64]
        ds.ProcedureCodeSequence = Sequence([code])
        if not study.body_part_missing:
            ds.BodyPartExamined = exam.body_part
    return datasets


def _uid(study: PlannedStudy, *parts: object) -> str:
    return str(generate_uid(UID_ROOT, entropy_srcs=[study.uid, *map(str, parts)]))


def _store(archive: Archive, study: PlannedStudy, pks: dict[str, int], size: int) -> int:
    """Store the study's objects as its hospital's, then date it back to its upload."""
    owner = pks[study.hospital.hospital_id]
    for ds in _datasets(study, size):
        archive.store(to_part10(ds), source="seed-region", hospital_pk=owner)
    with archive.sessions() as session:
        study_pk = session.scalar(select(Study.pk).where(Study.study_instance_uid == study.uid))
        assert study_pk is not None
        series = select(Series.pk).where(Series.study_pk == study_pk).scalar_subquery()
        session.execute(update(Study).where(Study.pk == study_pk).values(created_at=study.uploaded))
        session.execute(
            update(Series).where(Series.study_pk == study_pk).values(created_at=study.uploaded)
        )
        session.execute(
            update(Instance)
            .where(Instance.series_pk.in_(series))
            .values(received_at=study.uploaded)
        )
        session.commit()
    return study_pk


def _rows(
    archive: Archive,
    plan: RegionPlan,
    pks: dict[str, int],
    study_pks: dict[int, int],
    counts: Counter[str],
) -> None:
    """Exams, code mappings, reports, citations, quality, checks and QC, in one transaction."""
    with archive.sessions() as session:
        reports = _study_rows(session, plan, pks, study_pks, counts)
        session.flush()  # report primary keys, for the citations
        for view in plan.views:
            if view.cites and view.study.index in reports:
                _cite(session, plan, view, reports[view.study.index])
                counts["citations"] += 1
        for check in plan.checks:
            session.add(_check_row(check, pks))
            counts["checks"] += 1
            counts["reminders"] += bool(check.priors)
            counts["accepted"] += check.decision == "accepted"
        for qc in plan.qc_plans:
            criteria = {"from": qc.start.isoformat(), "to": qc.end.isoformat()}
            qc_plan = QcPlan(name=qc.name, sample_percent=100 * QC_SAMPLE,
                             created_by="seed-region", created_at=qc.created_at,
                             criteria=json.dumps(criteria))  # fmt: skip
            session.add(qc_plan)
            session.flush()
            for review in qc.reviews:
                session.add(_review_row(qc_plan.pk, study_pks[review.study.index], review))
                counts["qc_reviews"] += 1
        session.commit()


def _study_rows(
    session: Session,
    plan: RegionPlan,
    pks: dict[str, int],
    study_pks: dict[int, int],
    counts: Counter[str],
) -> dict[int, Report]:
    """Each study's exam, quality and report versions, and each hospital's code mappings;
    returns the current report of each reported study."""
    reports: dict[int, Report] = {}
    local_codes: dict[tuple[int, str], list[PlannedStudy]] = {}
    for study in plan.studies:
        pk, hospital_pk = study_pks[study.index], pks[study.hospital.hospital_id]
        regional = study.exam.regional
        session.add(StudyExam(
            study_pk=pk, local_code=study.exam.local_code,
            regional_code=regional.regional_code if regional else "",
            exam_class=regional.exam_class if regional else "",
            body_part=study.exam.body_part, normalised_at=study.uploaded,
        ))  # fmt: skip
        local_codes.setdefault((hospital_pk, study.exam.local_code), []).append(study)
        findings = json.dumps(study.quality_findings, ensure_ascii=False)
        session.add(StudyQuality(study_pk=pk, **study.quality, scored_at=study.uploaded,
                                 findings=findings))  # fmt: skip
        for version, planned in enumerate(study.reports, 1):
            row = _report(study, planned, version, hospital_pk)
            session.add(row)
            reports[study.index] = row
        counts["reports"] += bool(study.reports)
    for (hospital_pk, code), studies in local_codes.items():
        regional = studies[0].exam.regional
        session.add(ExamCodeMapping(
            hospital_pk=hospital_pk, local_code=code, local_name=studies[0].exam.local_name,
            regional_code=regional.regional_code if regional else "",
            seen_count=len(studies), first_seen_at=studies[0].uploaded,
            last_seen_at=studies[-1].uploaded, updated_by="seed-region",
            updated_at=studies[0].uploaded,
        ))  # fmt: skip
    return reports


def _report(study: PlannedStudy, planned: ReportVersion, version: int, hospital_pk: int) -> Report:
    local = study.acquired.astimezone(ZONE)
    at = planned.received_at.astimezone(ZONE)
    return Report(
        study_instance_uid=study.uid, version=version, current=version == len(study.reports),
        hospital_pk=hospital_pk, patient_id=study.patient.patient_id,
        accession_number=f"{study.hospital.local_prefix}{local:%y}{study.index:06d}"[:16],
        exam_type=study.exam.modality, body_part=study.exam.body_part,
        exam_name=study.exam.local_name, local_exam_code=study.exam.local_code,
        request_date=f"{local:%Y%m%d}", exam_date=f"{local:%Y%m%d}",
        report_date=f"{at:%Y%m%d}", report_time=f"{at:%H%M%S}",
        findings=planned.findings, impression=planned.impression,
        reporting_physician=planned.reporting, reviewing_physician=planned.reviewing,
        status=planned.status, source="json", received_at=planned.received_at,
    )  # fmt: skip


def _cite(session: Session, plan: RegionPlan, view: PlannedView, report: Report) -> None:
    text = report.impression if view.cites == "impression" else report.findings
    raw = hashlib.sha256(f"{plan.options.seed}:{view.at.isoformat()}:{view.actor}".encode())
    session.add(ReportCitation(
        citation_id="CIT-" + raw.hexdigest()[:12].upper(), report_pk=report.pk,
        study_instance_uid=view.study.uid, field=view.cites,
        text_sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        actor=view.actor, actor_kind=view.actor_kind, hospital_id=view.hospital_id,
        cited_at=view.at,
    ))  # fmt: skip


def _check_row(check: PlannedCheck, pks: dict[str, int]) -> RecognitionCheck:
    regional = check.exam.regional
    accepted = check.priors[0].uid if check.decision == "accepted" else ""
    return RecognitionCheck(
        check_id=check.check_id, patient_id=check.patient.patient_id,
        hospital_pk=pks[check.hospital.hospital_id], exam_code=check.exam.local_code,
        regional_code=regional.regional_code if regional else "",
        body_part=check.exam.body_part, priors=json.dumps([s.uid for s in check.priors]),
        prior_count=len(check.priors), requested_by=f"doc.{check.hospital.hospital_id.lower()}",
        requested_at=check.requested_at, decision=check.decision,
        decision_reason=check.reason, accepted_study_uid=accepted,
        decided_by=f"doc.{check.hospital.hospital_id.lower()}" if check.decided_at else "",
        decided_at=check.decided_at,
    )  # fmt: skip


def _review_row(plan_pk: int, study_pk: int, review: PlannedReview) -> QcReview:
    done = review.reviewed_at is not None
    grades = {review.image_grade, review.report_grade}
    return QcReview(
        plan_pk=plan_pk, study_pk=study_pk, reviewer="qc.reviewer" if done else "",
        state="done" if done else "pending", image_grade=review.image_grade,
        report_grade=review.report_grade, passed=grades <= PASSED_GRADES if done else None,
        sampled_at=review.sampled_at, reviewed_at=review.reviewed_at,
    )  # fmt: skip


def _views(archive: Archive, views: list[PlannedView], update_bar: Update) -> None:
    for done, view in enumerate(views, 1):
        study = view.study
        archive.audit.append(
            AuditEntry(
                actor_kind=view.actor_kind, actor=view.actor, role=view.role,
                hospital_id=view.hospital_id, action="view",
                study_instance_uid=study.uid, patient_id=study.patient.patient_id,
                client_address=_address(view),
                detail={**SEED_MARK, "path": f"/viewer-api/studies/{study.uid}"},
                view_started_at=view.at,
            ),
            at=view.at,
        )  # fmt: skip
        update_bar(done, len(views))


def _address(view: PlannedView) -> str:
    """A stable address per actor: a hospital's subnet for its staff, a mobile one otherwise."""
    digest = hashlib.sha256(view.actor.encode()).digest()
    if view.actor_kind == "user":
        return f"10.{digest[0]}.{digest[1]}.{digest[2] % 250 + 2}"
    return f"100.64.{digest[1]}.{digest[2] % 250 + 2}"


# --- the command -----------------------------------------------------------------------------


def add_seed_command(
    commands: Any,
    archive_options: Callable[[argparse.ArgumentParser], None],
    open_archive: Callable[[argparse.Namespace], Archive],
) -> None:
    """``imaging-cloud seed-region``."""
    parser = commands.add_parser(
        "seed-region", help="fill a fresh data dir with a synthetic region (dashboard, demos)"
    )
    archive_options(parser)
    parser.add_argument("--hospitals", type=int, default=8, help="1-10 (default 8)")
    parser.add_argument("--studies", type=int, default=400, help="studies performed")
    parser.add_argument("--days", type=int, default=400, help="history length in days")
    parser.add_argument("--seed", type=int, default=7, help="random seed (same seed, same data)")
    parser.add_argument("--today", type=datetime.fromisoformat, help="last day (YYYY-MM-DD)")
    parser.add_argument("--image-size", type=int, default=16, help="pixels per side (8-128)")
    parser.add_argument("--password", default=SEED_PASSWORD, help="the seeded accounts' password")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)

    def handler(args: argparse.Namespace) -> int:
        options = SeedOptions(
            hospitals=args.hospitals, studies=args.studies, days=args.days, seed=args.seed,
            today=args.today.date() if args.today else None, image_size=args.image_size,
        )  # fmt: skip
        try:
            options.checked()
        except ValueError as exc:
            print(f"imaging-cloud seed-region: {exc}")
            return 2
        enabled = show_progress(args)
        archive = open_archive(args)
        try:
            summary = seed_region(
                archive, options, password=args.password,
                progress=lambda what, total: progress_bar(enabled, what, total),
            )  # fmt: skip
        finally:
            archive.close()
        _print_summary(summary, args.password)
        return 0

    parser.set_defaults(handler=handler)


def _print_summary(summary: SeedSummary, password: str) -> None:
    print("seeded hospitals: " + ", ".join(summary.hospitals))
    print(", ".join(f"{name} {count}" for name, count in sorted(summary.counts.items())))
    print(f"accounts (password {password!r}):")
    for username, role, hospital in summary.accounts:
        print(f"  {username:22} {role:15} {hospital or '(region)'}")
    print("dashboard: /dashboard/ (sign in as regulator)")
    print(f"seeded at {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
