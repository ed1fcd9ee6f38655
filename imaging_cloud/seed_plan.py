"""The plan of a synthetic region, made in memory from one seed: who visits which hospital for
which exam when, whether a mutual-recognition reminder spared the exam, and the reports, views,
citations and QC reviews that follow. `imaging_cloud.seed_region` writes it to an archive.

Deterministic: the same options (and the same "today") give the same plan and the same UIDs.
docs/dashboard.md says why the mix is realistic.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta

from imaging_cloud.seed_catalogue import HospitalSeed
from imaging_cloud.seed_draw import (
    PASSING_QUALITY,
    ZONE,
    Draws,
    Exam,
    PlannedCheck,
    PlannedPatient,
    PlannedQcPlan,
    PlannedReview,
    PlannedStudy,
    PlannedView,
    RegionPlan,
    SeedOptions,
    decline_reason,
    qc_grade,
    staff,
)

CHECKED_ORDERS = 0.85  # share of orders whose HIS asks for a recognition check
QC_SAMPLE = 0.10  # share of a quarter's studies the regional QC plan samples
EPISODE = timedelta(days=30)  # a patient seen this recently is likely back (follow-up)


def plan_region(options: SeedOptions, now: datetime | None = None) -> RegionPlan:
    """The region's history: exactly ``options.studies`` studies performed (orders a reminder
    spared come on top), with the checks, views, citations and QC reviews around them."""
    wanted = options.checked().studies
    orders = wanted
    while True:  # accepted reminders spare exams: order more until enough were performed
        draws = Draws(options, now)
        plan = _orders(draws, orders)
        if len(plan.studies) >= wanted or orders > 3 * wanted:
            break
        orders += wanted - len(plan.studies) + 2
    plan.views = _views(draws, plan)
    plan.qc_plans = _qc_plans(draws, plan.studies)
    return plan


def _orders(draws: Draws, count: int) -> RegionPlan:
    rng, wanted = draws.rng, draws.options.studies
    patients = [draws.patient() for _ in range(max(3, round(wanted * 0.45)))]
    frequency = [min(8.0, rng.paretovariate(1.6)) for _ in patients]  # a few chronic patients
    studies: list[PlannedStudy] = []
    checks: list[PlannedCheck] = []
    for acquired in draws.moments(count):
        if len(studies) >= wanted:
            break
        recent = [s.patient for s in studies[-60:] if acquired - s.acquired < EPISODE]
        if recent and rng.random() < 0.3:  # illness comes in episodes: back within weeks
            patient = rng.choice(recent)
        else:
            patient = rng.choices(patients, weights=frequency)[0]
        hospital = draws.hospital_for(patient)
        exam = draws.exam_for(patient, hospital)
        ordered = acquired - timedelta(hours=rng.uniform(0.2, 48))
        if rng.random() < CHECKED_ORDERS:
            check = _check(draws, patient, hospital, exam, ordered)
            checks.append(check)
            if check.decision == "accepted":
                continue  # the prior was recognised: this exam was not repeated
        studies.append(_study(draws, len(studies), patient, hospital, exam, acquired))
    asked = {id(c.patient) for c in checks}
    used = [p for p in patients if p.studies or id(p) in asked]
    return RegionPlan(draws.options, draws.now, draws.hospitals, used, studies, checks, [], [])


def _check(
    draws: Draws, patient: PlannedPatient, hospital: HospitalSeed, exam: Exam, at: datetime
) -> PlannedCheck:
    """What the recognition service would answer at ``at``: same exam class within the
    code's window, a final report, quality above the bar; newest first."""
    rng, regional = draws.rng, exam.regional
    priors = []
    if regional is not None and regional.recognition_days > 0:
        window = timedelta(days=regional.recognition_days)
        priors = [
            s
            for s in reversed(patient.studies)
            if s.exam.regional is not None
            and s.exam.regional.exam_class == regional.exam_class
            and timedelta(0) <= at - s.acquired <= window
            and s.final_report_by(at)
            and s.quality["overall"] >= PASSING_QUALITY
        ]
    check = PlannedCheck(draws.token("RC-"), patient, hospital, exam, at, priors, "pending")
    if priors:
        roll = rng.random()
        if roll < 0.85:  # the rest of the reminders were never answered
            check.decision = "accepted" if roll < 0.40 else "declined"
            check.reason = decline_reason(rng) if check.decision == "declined" else ""
            check.decided_at = at + timedelta(minutes=rng.uniform(1, 15))
    return check


def _study(
    draws: Draws,
    index: int,
    patient: PlannedPatient,
    hospital: HospitalSeed,
    exam: Exam,
    acquired: datetime,
) -> PlannedStudy:
    rng = draws.rng
    uploaded = acquired + timedelta(hours=draws.upload_delay())
    uploaded = min(uploaded, draws.now - timedelta(minutes=1))
    delay_hours = (uploaded - acquired).total_seconds() / 3600
    reports = draws.reports(exam, acquired)
    missing = rng.random() < 0.06
    scores, lost = draws.quality(delay_hours, bool(reports), missing)
    study = PlannedStudy(
        index, draws.uid("study", index), patient, hospital, exam, acquired, uploaded,
        rng.randint(*exam.images), missing, reports, scores, lost,
    )  # fmt: skip
    patient.studies.append(study)
    return study


def _views(draws: Draws, plan: RegionPlan) -> list[PlannedView]:
    """Who opened which study when: its own hospital's staff, the patient (phone, share
    link), doctors of hospitals the patient went to later (mutual consultation, sometimes
    citing the report), and the doctor who accepted a prior instead of a new exam."""
    rng, views = draws.rng, []
    for study in plan.studies:
        home = study.hospital.hospital_id
        for _ in range(rng.choice((1, 1, 2, 2, 3))):
            kind = rng.choice(("rad", "doc"))
            role = "radiologist" if kind == "rad" else "clinician"
            at = study.uploaded + timedelta(hours=rng.uniform(0.2, 72))
            views.append(PlannedView(at, study, "user", staff(study.hospital, kind), role, home))
        if rng.random() < 0.30:
            at = study.uploaded + timedelta(days=rng.uniform(0.1, 20))
            actor = f"patient:{study.patient.patient_id}"
            views.append(PlannedView(at, study, "patient", actor, "patient", ""))
        if rng.random() < 0.05:
            at = study.uploaded + timedelta(days=rng.uniform(0.5, 10))
            link = f"share-link:{rng.randrange(1, 10_000)}"
            views.append(PlannedView(at, study, "share_link", link, "share_link", ""))
        views.extend(_consultations(draws, study))
    for check in plan.checks:
        if check.decision == "accepted" and check.decided_at is not None:
            doctor = staff(check.hospital, "doc")
            views.append(PlannedView(check.decided_at, check.priors[0], "user", doctor,
                                     "clinician", check.hospital.hospital_id))  # fmt: skip
    return sorted((v for v in views if v.at <= draws.now), key=lambda v: v.at)


def _consultations(draws: Draws, study: PlannedStudy) -> list[PlannedView]:
    rng, found = draws.rng, []
    for later in study.patient.studies:
        gap = later.acquired - study.acquired
        if later.hospital is study.hospital or not timedelta(0) < gap <= timedelta(days=365):
            continue
        if rng.random() < 0.6:
            at = later.acquired - timedelta(hours=rng.uniform(0, 2))
            cites = ""
            if study.final_report_by(at) and rng.random() < 0.4:
                cites = "impression" if rng.random() < 0.7 else "findings"
            doctor = staff(later.hospital, "doc")
            found.append(PlannedView(at, study, "user", doctor, "clinician",
                                     later.hospital.hospital_id, cites))  # fmt: skip
    return found


def _qc_plans(draws: Draws, studies: list[PlannedStudy]) -> list[PlannedQcPlan]:
    """A regional QC sample of 10% every 90 days, reviewed over the following weeks."""
    rng, plans = draws.rng, []
    end = draws.today
    while end > draws.today - timedelta(days=draws.options.days):
        start = end - timedelta(days=89)
        created = datetime.combine(end + timedelta(days=1), time(9), ZONE).astimezone(UTC)
        created = min(created, draws.now - timedelta(hours=1))
        pool = [
            s
            for s in studies
            if start <= s.acquired.astimezone(ZONE).date() <= end and s.uploaded <= created
        ]
        sample = rng.sample(pool, max(1, round(len(pool) * QC_SAMPLE))) if pool else []
        reviews = []
        for study in sorted(sample, key=lambda s: s.index):
            reviewed: datetime | None = created + timedelta(days=rng.uniform(1, 25))
            if reviewed is not None and reviewed > draws.now:
                reviewed = None  # still in the reviewer's queue
            review = PlannedReview(study, created, reviewed)
            if reviewed is not None:
                review.image_grade, review.report_grade = qc_grade(rng), qc_grade(rng)
            reviews.append(review)
        name = f"{start:%Y-%m-%d}~{end:%Y-%m-%d} 全市影像质控抽检 Regional QC sample"
        plans.append(PlannedQcPlan(name, start, end, created, reviews))
        end = start - timedelta(days=1)
    return list(reversed(plans))
