"""Data-quality scores over HTTP with a real node, on SQLite and PostgreSQL.

Two hospitals upload studies through the archive as their gateways would (with their
hospital key), reconcile some of them through the gateway API with their credential, and
send reports (rows inserted directly: report ingest is built elsewhere). Each study is made
to fail in one known way; the test asks what a radiologist, a regulator and a hospital admin
see: the scores, the findings that say why, and summaries that match direct SQL counts.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import func, select

from cloud.errors import DuplicateInstanceError
from cloud.models import AuditEvent, Hospital, Report, Study, StudyQuality
from cloud.quality import QualityScorer
from imaging_cloud.node import Node
from imaging_cloud.synthetic import (
    UID_ROOT,
    PatientSpec,
    StudySpec,
    ct_series,
    secondary_capture,
    to_part10,
)
from tests.support.servers import PASSWORD, http_base, running_node

PROBLEM = "application/problem+json"
SHANGHAI = ZoneInfo("Asia/Shanghai")
SHARE = 80 / 13  # each of the 13 required attributes of config/quality.toml; report: 20
USERS = {  # username: (role, hospital)
    "radiologist": ("radiologist", "H1"),
    "clinician_h2": ("clinician", "H2"),
    "regulator": ("regulator", None),
    "admin_h1": ("hospital_admin", "H1"),
}


@dataclass
class World:
    node: Node
    credentials: dict[str, str]
    studies: dict[str, str] = field(default_factory=dict)  # name -> Study Instance UID
    patients: dict[str, str] = field(default_factory=dict)  # name -> Patient ID

    def http(self, username: str) -> httpx.Client:
        user = self.node.archive.users.by_username(username)
        assert user is not None
        headers = {"Authorization": f"Bearer {self.node.tokens.issue(user)}"}
        return httpx.Client(base_url=http_base(self.node), headers=headers, timeout=30)

    def hospital_pk(self, hospital_id: str) -> int:
        found = self.node.archive.hospitals.by_id(hospital_id)
        assert found is not None
        return found.pk


def _acquired(hours_ago: float) -> tuple[str, str]:
    moment = datetime.now(SHANGHAI) - timedelta(hours=hours_ago)
    return moment.strftime("%Y%m%d"), moment.strftime("%H%M%S")


def _datasets(
    name: str, hospital: str, *, hours_ago: float = 2, sex: str = "M", accession: str = ""
) -> list[Dataset]:
    """A 3-slice CT with every attribute the policy requires, acquired ``hours_ago``."""
    date, time = _acquired(hours_ago)
    spec = StudySpec(
        patient=PatientSpec(
            patient_id=f"P-{name}",
            patient_name=f"Zhang^{name}=张^{name}",
            birth_date="19800101",
            sex=sex,
        ),
        study_date=date,
        study_time=time,
        accession_number=accession if accession != "" else f"A-{name}"[:16],
        study_description="CT chest",
        institution_name=f"Hospital {hospital}",
    )
    datasets = list(ct_series(spec, slices=3, size=16))
    for ds in datasets:
        ds.BodyPartExamined = "CHEST"
    return datasets


def _store(world: World, name: str, hospital: str, datasets: list[Dataset]) -> list[bytes]:
    files = [to_part10(ds) for ds in datasets]
    for data in files:
        world.node.archive.store(data, source="test", hospital_pk=world.hospital_pk(hospital))
    world.studies[name] = str(datasets[0].StudyInstanceUID)
    world.patients[name] = str(datasets[0].PatientID)
    return files


def _reconcile(world: World, name: str, hospital: str, manifest: dict[str, str]) -> None:
    """What the hospital's gateway does once a study has gone quiet."""
    headers = {"Authorization": f"Bearer {world.credentials[hospital]}"}
    path = f"/gateway-api/v1/studies/{world.studies[name]}/reconcile"
    with httpx.Client(base_url=http_base(world.node), headers=headers, timeout=30) as http:
        answer = http.post(path, json={"instances": manifest})
    assert answer.status_code == 200, answer.text


def _manifest(files: list[bytes], datasets: list[Dataset]) -> dict[str, str]:
    return {
        str(ds.SOPInstanceUID): hashlib.sha256(data).hexdigest()
        for ds, data in zip(datasets, files, strict=True)
    }


def _report(world: World, name: str, hospital: str, status: str) -> None:
    with world.node.archive.sessions() as session:
        session.add(
            Report(
                study_instance_uid=world.studies[name],
                version=1,
                current=True,
                hospital_pk=world.hospital_pk(hospital),
                patient_id=world.patients[name],
                exam_type="CT",
                findings="双肺纹理清晰。",
                impression="胸部CT未见异常。",
                reporting_physician="Li^Hua",
                status=status,
                received_at=datetime.now(UTC),
            )
        )
        session.commit()


def _build(world: World) -> None:
    """One study per way of losing points (see each test)."""
    complete = _datasets("complete", "H1")
    files = _store(world, "complete", "H1", complete)
    _reconcile(world, "complete", "H1", _manifest(files, complete))
    _report(world, "complete", "H1", "final")

    incomplete = _datasets("incomplete", "H1", sex="", accession="-")
    for ds in incomplete:
        ds.AccessionNumber = ""
        del ds.BodyPartExamined, ds.InstitutionName
    _store(world, "incomplete", "H1", incomplete)

    draft = _datasets("draft", "H2")
    _store(world, "draft", "H2", draft)
    _report(world, "draft", "H2", "draft")

    late = _datasets("late", "H2", hours_ago=96)
    _store(world, "late", "H2", late)
    _report(world, "late", "H2", "final")

    mismatch = _datasets("mismatch", "H1")
    files = _store(world, "mismatch", "H1", mismatch)
    manifest = _manifest(files, mismatch)
    manifest[str(mismatch[0].SOPInstanceUID)] = "0" * 64  # the gateway holds other bytes
    manifest[f"{UID_ROOT}999.1"] = "1" * 64  # and one instance the cloud never received
    _reconcile(world, "mismatch", "H1", manifest)
    _report(world, "mismatch", "H1", "final")

    inconsistent = _datasets("inconsistent", "H1")
    inconsistent[2].PatientID = "P-SOMEONE-ELSE"  # filed under the study's patient anyway
    _store(world, "inconsistent", "H1", inconsistent)
    resent = inconsistent[1]
    resent.SeriesDescription = "edited after sending"  # same SOP Instance UID, other bytes
    with pytest.raises(DuplicateInstanceError):
        world.node.archive.store(
            to_part10(resent), source="test", hospital_pk=world.hospital_pk("H1")
        )
    _report(world, "inconsistent", "H1", "final")

    odd = _datasets("odd", "H2")
    odd[0].PatientAge = "45Y"  # AS needs three digits: 045Y
    odd[0].ContentDate = "2025-03-14"  # DA is YYYYMMDD
    spec = StudySpec(
        study_instance_uid=str(odd[0].StudyInstanceUID),
        patient=PatientSpec(
            patient_id="P-odd", patient_name="Zhang^odd=张^odd", birth_date="19800101", sex="M"
        ),
        study_date=odd[0].StudyDate,
        study_time=odd[0].StudyTime,
        accession_number="A-odd",
        study_description="CT chest",
        institution_name="Hospital H2",
    )
    capture = next(secondary_capture(spec, 1))
    capture.SOPClassUID = f"{UID_ROOT}77.1"  # a private SOP class nobody else can read
    capture.BodyPartExamined = "CHEST"
    _store(world, "odd", "H2", [*odd, capture])
    _report(world, "odd", "H2", "final")


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.needs_postgres)],
)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    from tests.conftest import POSTGRES_ENV, _postgres_schema_url

    urls: Iterator[str] = iter([""])
    if request.param == "postgresql":
        base = os.environ.get(POSTGRES_ENV)
        if not base:
            pytest.skip(f"{POSTGRES_ENV} not set")
        urls = _postgres_schema_url(base)
    with running_node(tmp_path_factory.mktemp("quality"), next(urls)) as node:
        archive = node.archive
        credentials = {
            "H1": archive.hospitals.add_hospital("H1", "First People's Hospital 第一人民医院"),
            "H2": archive.hospitals.add_hospital("H2", "Central Hospital 中心医院"),
        }
        for username, (role, hospital) in USERS.items():
            archive.users.create_user(username, PASSWORD, role, hospital_id=hospital)
        built = World(node, credentials)
        _build(built)
        yield built
    for _ in urls:  # drop the PostgreSQL schema
        pass


def _quality(world: World, name: str, username: str = "radiologist") -> dict:
    with world.http(username) as http:
        answer = http.get(f"/api/studies/{world.studies[name]}/quality")
    assert answer.status_code == 200, answer.text
    return answer.json()


def _lost(found: dict, dimension: str) -> dict[str, dict]:
    return {
        f["code"]: f for f in found["findings"] if f["dimension"] == dimension and f["points"] > 0
    }


def test_complete_study_gets_full_marks_and_the_read_is_audited(world: World) -> None:
    found = _quality(world, "complete")
    assert found["scored"] is True
    for dimension in ("completeness", "timeliness", "consistency", "conformance", "overall"):
        assert found[dimension] == 100, (dimension, found["findings"])
    assert not [f for f in found["findings"] if f["points"] > 0]
    delay = next(f for f in found["findings"] if f["code"] == "upload_delay")
    assert 1.9 < delay["hours"] < 2.2  # acquired 2 h before the upload, Shanghai time
    with world.node.archive.sessions() as session:
        views = session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(
                AuditEvent.actor == "radiologist",
                AuditEvent.action == "view",
                AuditEvent.study_instance_uid == world.studies["complete"],
            )
        )
    assert views >= 1


def test_missing_attributes_and_report_cost_completeness(world: World) -> None:
    found = _quality(world, "incomplete")
    lost = [f for f in found["findings"] if f["dimension"] == "completeness" and f["points"]]
    missing = {f["attribute"] for f in lost if f["code"] == "missing_attribute"}
    assert missing == {"AccessionNumber", "PatientSex", "BodyPartExamined", "InstitutionName"}
    assert "no_report" in {f["code"] for f in lost}
    assert found["completeness"] == pytest.approx(100 - 20 - 4 * SHARE, abs=0.5)
    assert found["overall"] < 100

    draft = _quality(world, "draft", "clinician_h2")
    assert draft["completeness"] == 90
    assert set(_lost(draft, "completeness")) == {"report_not_final"}


def test_late_upload_costs_timeliness_in_proportion(world: World) -> None:
    found = _quality(world, "late", "clinician_h2")
    late = _lost(found, "timeliness")["late_upload"]
    assert 95.9 < late["hours"] < 96.3
    # full marks up to 24 h, none at 168 h: 96 h is half-way
    assert found["timeliness"] == pytest.approx(50, abs=0.5)
    assert found["completeness"] == found["consistency"] == found["conformance"] == 100


def test_gateway_reconciliation_mismatch_costs_consistency(world: World) -> None:
    found = _quality(world, "mismatch")
    assert set(_lost(found, "consistency")) == {
        "reconciliation_missing",
        "reconciliation_mismatched",
    }
    assert found["consistency"] == 20
    assert "4 instances" in _lost(found, "consistency")["reconciliation_missing"]["detail"]


def test_ingest_conflict_and_another_patient_cost_consistency(world: World) -> None:
    found = _quality(world, "inconsistent")
    lost = _lost(found, "consistency")
    assert set(lost) == {"ingest_conflict", "patient_identity"}
    assert found["consistency"] == 100 - 10 - 30
    assert "1 of 3" in lost["patient_identity"]["detail"]
    assert "P-SOMEONE-ELSE" not in str(found)  # findings name attributes, never values


def test_unregistered_sop_class_and_invalid_values_cost_conformance(world: World) -> None:
    found = _quality(world, "odd", "clinician_h2")
    lost = _lost(found, "conformance")
    assert set(lost) == {"unknown_sop_class", "invalid_values"}
    assert {"PatientAge", "ContentDate"} <= set(lost["invalid_values"]["attributes"])
    assert found["conformance"] == 100 - 30 - 2 * 5


def test_study_quality_refusals_are_problems(world: World) -> None:
    with world.http("clinician_h2") as http:
        other = http.get(f"/api/studies/{world.studies['complete']}/quality")
        unknown = http.get(f"/api/studies/{UID_ROOT}404.404/quality")
    assert other.status_code == 403 and other.headers["content-type"] == PROBLEM
    assert unknown.status_code in (403, 404) and unknown.headers["content-type"] == PROBLEM
    with world.http("regulator") as http:  # statistics only: no study's details
        answer = http.get(f"/api/studies/{world.studies['complete']}/quality")
    assert answer.status_code == 403 and answer.headers["content-type"] == PROBLEM


def test_periodic_pass_scores_new_and_changed_studies(world: World) -> None:
    scorer = QualityScorer(world.node.archive)
    scorer.score_due()
    assert scorer.score_due() == 0  # everything is current
    fresh = _datasets("fresh", "H1")
    _store(world, "fresh", "H1", fresh[:2])
    assert scorer.quality(world.studies["fresh"], refresh=False)["scored"] is False
    assert scorer.score_due() == 1
    before = scorer.quality(world.studies["fresh"], refresh=False)
    assert "no_report" in _lost(before, "completeness")

    _store(world, "fresh", "H1", fresh[2:])  # a late instance and then the report
    _report(world, "fresh", "H1", "final")
    assert scorer.score_new() == 0 and scorer.rescore_changed() == 1
    after = scorer.quality(world.studies["fresh"], refresh=False)
    assert after["completeness"] == 100 and after["scored_at"] > before["scored_at"]


def _sql_by_hospital(world: World) -> dict[str | None, tuple[int, float]]:
    with world.node.archive.sessions() as session:
        rows = session.execute(
            select(Hospital.hospital_id, func.count(), func.avg(StudyQuality.overall))
            .select_from(StudyQuality)
            .join(Study, Study.pk == StudyQuality.study_pk)
            .outerjoin(Hospital, Hospital.pk == Study.hospital_pk)
            .group_by(Hospital.hospital_id)
        )
        return {h: (int(n), round(float(avg), 1)) for h, n, avg in rows}


def test_summary_matches_sql_and_carries_no_patient_data(world: World) -> None:
    QualityScorer(world.node.archive).score_due()
    with world.http("regulator") as http:
        by_hospital = http.get("/api/quality/summary", params={"by": "hospital"})
        by_modality = http.get("/api/quality/summary", params={"by": "modality"})
        by_month = http.get("/api/quality/summary", params={"by": "month", "hospital_id": "H2"})
    assert by_hospital.status_code == 200, by_hospital.text
    groups = {g["hospital_id"]: g for g in by_hospital.json()["groups"]}
    expected = _sql_by_hospital(world)
    assert {h: (g["studies"], g["overall"]) for h, g in groups.items()} == expected
    assert by_hospital.json()["total"]["studies"] == sum(n for n, _ in expected.values())
    assert groups["H1"]["hospital_name"].startswith("First People's Hospital")
    assert groups["H1"]["poor"] >= 0

    modalities = {g["modality"]: g["studies"] for g in by_modality.json()["groups"]}
    assert modalities["CT"] == by_hospital.json()["total"]["studies"]
    assert modalities["OT"] == 1  # the study with the private secondary capture

    months = by_month.json()["groups"]
    assert sum(g["studies"] for g in months) == expected["H2"][0]
    everything = by_hospital.text + by_modality.text + by_month.text
    for name, uid in world.studies.items():
        assert uid not in everything and world.patients[name] not in everything
    assert "Zhang" not in everything and "张" not in everything


@pytest.mark.parametrize(
    ("username", "params", "status"),
    [
        ("admin_h1", {"hospital_id": "H2"}, 403),  # another hospital's figures
        ("clinician_h2", {}, 403),  # no view_statistics
        ("regulator", {"by": "patient"}, 400),
        ("regulator", {"from": "2025-13-45"}, 400),
        ("regulator", {"from": "2025-06-01", "to": "2025-01-01"}, 400),
        ("regulator", {"modality": "ct; drop"}, 400),
        ("regulator", {"hospital_id": "NOPE"}, 404),
    ],
)
def test_summary_refusals(world: World, username: str, params: dict, status: int) -> None:
    with world.http(username) as http:
        answer = http.get("/api/quality/summary", params=params)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM


def test_hospital_admin_sees_own_hospital_only(world: World) -> None:
    QualityScorer(world.node.archive).score_due()
    with world.http("admin_h1") as http:
        answer = http.get("/api/quality/summary")
    assert answer.status_code == 200, answer.text
    assert [g["hospital_id"] for g in answer.json()["groups"]] == ["H1"]
    assert answer.json()["total"]["studies"] == _sql_by_hospital(world)["H1"][0]
