"""The pieces of a synthetic region's plan and the random draws that make them: residents
(ID numbers with a valid check digit, Chinese names), when exams happen, where and which,
reports, data-quality scores. `imaging_cloud.seed_plan` puts them together.

Every draw comes from one `random.Random(seed)`, so a plan is reproducible.
"""

from __future__ import annotations

import base64
import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from pydicom.uid import generate_uid

from imaging_cloud.seed_catalogue import (
    DECLINE_REASONS,
    DEFAULT_TEXTS,
    DISTRICT_CODE,
    EXAMS,
    GIVEN_NAMES,
    HOSPITALS,
    LEVEL_WEIGHT,
    PHYSICIANS,
    QC_GRADE_WEIGHTS,
    QC_GRADES,
    REPORT_TEXTS,
    SURNAMES,
    UNMAPPED,
    ExamSeed,
    HospitalSeed,
)
from imaging_cloud.synthetic import UID_ROOT

ZONE = ZoneInfo("Asia/Shanghai")
AMENDMENT = " 补充报告: 已与临床沟通 (amended after talking to the clinician)"
PASSING_QUALITY = 60.0  # a prior is offered only above this overall data-quality score


@dataclass(frozen=True)
class SeedOptions:
    hospitals: int = 8
    studies: int = 400
    days: int = 400
    seed: int = 7
    today: date | None = None  # the last day of data (default: today in Asia/Shanghai)
    image_size: int = 16

    def checked(self) -> SeedOptions:
        if not 1 <= self.hospitals <= len(HOSPITALS):
            raise ValueError(f"--hospitals: 1 to {len(HOSPITALS)}")
        if not 1 <= self.studies <= 100_000 or not 7 <= self.days <= 3650:
            raise ValueError("--studies: 1 to 100000; --days: 7 to 3650")
        if not 8 <= self.image_size <= 128:
            raise ValueError("--image-size: 8 to 128 pixels")
        return self


@dataclass
class PlannedPatient:
    patient_id: str
    name: str  # DICOM PN: alphabetic=ideographic=
    sex: str
    birth_date: str
    district: str
    studies: list[PlannedStudy] = field(default_factory=list)


@dataclass
class ReportVersion:
    status: str  # draft | final
    received_at: datetime
    findings: str
    impression: str
    reporting: str
    reviewing: str


@dataclass
class Exam:
    local_code: str
    local_name: str
    modality: str
    body_part: str
    images: tuple[int, int]
    sop_class_uid: str
    department: str
    regional: ExamSeed | None  # None: a local code the region has not mapped


@dataclass
class PlannedStudy:
    index: int
    uid: str
    patient: PlannedPatient
    hospital: HospitalSeed
    exam: Exam
    acquired: datetime  # UTC
    uploaded: datetime  # UTC: the cloud received it
    images: int
    body_part_missing: bool
    reports: list[ReportVersion]
    quality: dict[str, float]
    quality_findings: list[dict[str, object]]

    def final_report_by(self, moment: datetime) -> bool:
        return any(r.status == "final" and r.received_at <= moment for r in self.reports)


@dataclass
class PlannedCheck:
    check_id: str
    patient: PlannedPatient
    hospital: HospitalSeed
    exam: Exam
    requested_at: datetime
    priors: list[PlannedStudy]
    decision: str  # pending | accepted | declined
    reason: str = ""
    decided_at: datetime | None = None


@dataclass
class PlannedView:
    at: datetime
    study: PlannedStudy
    actor_kind: str  # user | patient | share_link
    actor: str
    role: str
    hospital_id: str
    cites: str = ""  # findings | impression: the viewer copied it with a citation


@dataclass
class PlannedReview:
    study: PlannedStudy
    sampled_at: datetime
    reviewed_at: datetime | None
    image_grade: str = ""
    report_grade: str = ""


@dataclass
class PlannedQcPlan:
    name: str
    start: date
    end: date
    created_at: datetime
    reviews: list[PlannedReview]


@dataclass
class RegionPlan:
    options: SeedOptions
    now: datetime
    hospitals: list[HospitalSeed]
    patients: list[PlannedPatient]
    studies: list[PlannedStudy]
    checks: list[PlannedCheck]
    views: list[PlannedView]
    qc_plans: list[PlannedQcPlan]


def staff(hospital: HospitalSeed, kind: str) -> str:
    """The seeded account of a hospital: ``rad.`` (radiologist), ``doc.`` (clinician),
    ``admin.`` (hospital admin) + the hospital id in lower case."""
    return f"{kind}.{hospital.hospital_id.lower()}"


class Draws:
    def __init__(self, options: SeedOptions, now: datetime | None = None) -> None:
        self.options = options.checked()
        self.rng = random.Random(options.seed)
        real_now = now or datetime.now(UTC)
        self.today = options.today or real_now.astimezone(ZONE).date()
        end_of_today = datetime.combine(self.today + timedelta(days=1), time(0), ZONE)
        self.now = min(real_now, end_of_today.astimezone(UTC))
        self.hospitals = list(HOSPITALS[: options.hospitals])

    # --- identities ----------------------------------------------------------------------

    def uid(self, *parts: object) -> str:
        return str(generate_uid(UID_ROOT, entropy_srcs=[str(self.options.seed), *map(str, parts)]))

    def token(self, prefix: str) -> str:
        raw = self.rng.getrandbits(64).to_bytes(8, "big")
        return prefix + base64.b32encode(raw).decode("ascii")[:12]

    def patient(self) -> PlannedPatient:
        rng = self.rng
        district = rng.choice(sorted({h.district for h in self.hospitals}))
        age = min(95, max(0, int(rng.gauss(52, 18))))
        birth = self.today - timedelta(days=365 * age + rng.randrange(365))
        sex = rng.choice("MF")
        serial = 2 * rng.randrange(50, 499) + (1 if sex == "M" else 0)  # odd serial: male
        body = f"{DISTRICT_CODE[district]}{birth:%Y%m%d}{serial:03d}"
        surname, given = rng.choice(SURNAMES), rng.choice(GIVEN_NAMES)
        name = f"{surname[1]}^{given[1]}={surname[0]}^{given[0]}="
        return PlannedPatient(body + _check_digit(body), name, sex, f"{birth:%Y%m%d}", district)

    # --- the timeline --------------------------------------------------------------------

    def moments(self, count: int) -> list[datetime]:
        """Acquisition times over the last ``days`` days: fewer on weekends, growing use."""
        days = self.options.days
        first = self.today - timedelta(days=days - 1)
        weights = []
        for offset in range(days):
            day = first + timedelta(days=offset)
            weekend = {5: 0.45, 6: 0.35}.get(day.weekday(), 1.0)
            weights.append(weekend * (0.6 + 0.8 * offset / days))  # the region's uptake grows
        chosen = self.rng.choices(range(days), weights=weights, k=count)
        result = []
        for offset in chosen:
            hour = self.rng.uniform(8, 18) if self.rng.random() < 0.9 else self.rng.uniform(0, 24)
            local = datetime.combine(first + timedelta(days=offset), time(0), ZONE)
            moment = (local + timedelta(hours=hour)).astimezone(UTC)
            if moment > self.now - timedelta(hours=2):  # today, later than now: earlier today
                moment = self.now - timedelta(hours=self.rng.uniform(2, 10))
            result.append(moment)
        return sorted(result)

    def hospital_for(self, patient: PlannedPatient) -> HospitalSeed:
        near = [h for h in self.hospitals if h.district == patient.district]
        pool = near if near and self.rng.random() < 0.65 else self.hospitals
        weights = [LEVEL_WEIGHT.get(h.level, 1.0) for h in pool]
        return self.rng.choices(pool, weights=weights)[0]

    def exam_for(self, patient: PlannedPatient, hospital: HospitalSeed) -> Exam:
        rng = self.rng
        if patient.studies and rng.random() < 0.35:  # a follow-up of an earlier exam
            earlier = rng.choice(patient.studies).exam
            if earlier.regional is not None:
                return _exam(hospital, earlier.regional)
        if HOSPITALS.index(hospital) % 3 == 0 and rng.random() < 0.04:
            code, name, modality, part, images, sop = rng.choice(UNMAPPED)
            local = f"{hospital.local_prefix}-{code}"
            return Exam(local, name, modality, part, images, sop, "放射科 Radiology", None)
        seed = rng.choices(EXAMS, weights=[e.weight for e in EXAMS])[0]
        if seed.modality == "MG" and patient.sex == "M":
            seed = EXAMS[0]
        return _exam(hospital, seed)

    # --- one exam order, and what follows from it ---------------------------------------

    def reports(self, study_exam: Exam, acquired: datetime) -> list[ReportVersion]:
        rng = self.rng
        if rng.random() < 0.08:
            return []  # never reported (or reported outside the system)
        key = study_exam.regional.exam_class if study_exam.regional else ""
        texts = REPORT_TEXTS.get(key, DEFAULT_TEXTS)
        findings, impression = texts[0] if rng.random() < 0.6 else texts[1]
        reporting, reviewing = rng.sample(PHYSICIANS, 2)
        at = acquired + timedelta(hours=rng.uniform(0.5, 30))
        if at > self.now:
            return []  # not reported yet
        final_at = at + timedelta(hours=rng.uniform(0.2, 20))
        if final_at > self.now or rng.random() < 0.06:
            return [ReportVersion("draft", at, findings, impression, reporting, "")]
        versions = [ReportVersion("final", final_at, findings, impression, reporting, reviewing)]
        corrected = final_at + timedelta(days=rng.uniform(0.5, 5))
        if rng.random() < 0.04 and corrected < self.now:  # an amended report: a new version
            amended = impression + AMENDMENT
            versions.append(
                ReportVersion("final", corrected, findings, amended, reporting, reviewing)
            )
        return versions

    def quality(
        self, delay_hours: float, reported: bool, body_part_missing: bool
    ) -> tuple[dict[str, float], list[dict[str, object]]]:
        """Scores as the quality service would give them, with the reasons points were lost."""
        lost: list[dict[str, object]] = []
        completeness = 100.0
        if not reported:
            completeness -= 25
            lost.append({"dimension": "completeness", "points": 25, "reason": "no report"})
        if body_part_missing:
            completeness -= 10
            lost.append({"dimension": "completeness", "points": 10,
                         "reason": "BodyPartExamined missing"})  # fmt: skip
        timeliness = 100.0 if delay_hours <= 24 else max(0.0, 100 * (168 - delay_hours) / 144)
        if timeliness < 100:
            lost.append({"dimension": "timeliness", "points": round(100 - timeliness, 1),
                         "reason": f"uploaded {delay_hours:.0f} h after acquisition"})  # fmt: skip
        consistency = 100.0
        if self.rng.random() < 0.03:
            consistency = 70.0
            reason = "the gateway reported 1 instance more than the cloud holds"
            lost.append({"dimension": "consistency", "points": 30, "reason": reason})
        conformance = 100.0 if self.rng.random() > 0.02 else 85.0
        if conformance < 100:
            lost.append({"dimension": "conformance", "points": 15,
                         "reason": "private transfer syntax converted on ingest"})  # fmt: skip
        scores = {
            "completeness": completeness,
            "timeliness": round(timeliness, 1),
            "consistency": consistency,
            "conformance": conformance,
        }
        scores["overall"] = round(sum(scores.values()) / 4, 1)
        return scores, lost

    def upload_delay(self) -> float:
        """Hours from acquisition to the cloud: mostly minutes, a tail of late gateways."""
        roll = self.rng.random()
        if roll < 0.70:
            return self.rng.uniform(0.05, 2)
        if roll < 0.90:
            return self.rng.uniform(2, 24)
        if roll < 0.98:
            return self.rng.uniform(24, 72)
        return self.rng.uniform(72, 240)


def _exam(hospital: HospitalSeed, seed: ExamSeed) -> Exam:
    local = f"{hospital.local_prefix}{EXAMS.index(seed) + 1:03d}"  # SH: at most 16 characters
    return Exam(local, seed.name, seed.modality, seed.body_part, seed.images,
                seed.sop_class_uid, seed.department, seed)  # fmt: skip


def _check_digit(body: str) -> str:
    """ISO 7064 MOD 11-2, as resident ID numbers end."""
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    total = sum(int(d) * w for d, w in zip(body, weights, strict=True))
    return "10X98765432"[total % 11]


def qc_grade(rng: random.Random) -> str:
    return rng.choices(QC_GRADES, weights=QC_GRADE_WEIGHTS)[0]


def decline_reason(rng: random.Random) -> str:
    return rng.choice(DECLINE_REASONS)
