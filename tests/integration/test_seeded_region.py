"""Every issue-7 feature through its API on the documented seed (`imaging-cloud seed-region`):
reports and citations, mutual recognition, data quality, QC sampling and grading, and the
regulator's figures, for the hospitals, patients and exams the seed made."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from imaging_cloud.node import Node
from imaging_cloud.seed_draw import SeedOptions
from imaging_cloud.seed_region import SeedSummary, seed_region
from tests.support.servers import PASSWORD, client, running_node

OPTIONS = SeedOptions(hospitals=4, studies=90, days=200, seed=11)


@dataclass
class Region:
    node: Node
    summary: SeedSummary

    def sql(self, statement: str, **params: Any) -> list[Any]:
        with self.node.archive.engine.connect() as connection:
            return list(connection.execute(text(statement), params))

    def staff(self, role: str, hospital_id: str) -> httpx.Client:
        username = f"{role}.{hospital_id.lower()}"
        if self.node.archive.users.by_username(username) is None:
            self.node.archive.users.create_user(username, PASSWORD, role, hospital_id=hospital_id)
        return client(self.node, username)


@pytest.fixture(scope="module")
def region(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Region]:
    with running_node(tmp_path_factory.mktemp("seeded") / "node") as node:
        summary = seed_region(node.archive, OPTIONS, accounts=False)
        yield Region(node, summary)


def _ok(answer: httpx.Response, status: int = 200) -> Any:
    assert answer.status_code == status, answer.text
    return answer.json()


def test_a_doctor_reads_and_cites_a_seeded_final_report(region: Region) -> None:
    uid, hospital_id = region.sql(
        "SELECT r.study_instance_uid, h.hospital_id FROM reports r "
        "JOIN hospitals h ON h.pk = r.hospital_pk "
        "WHERE r.current AND r.status = 'final' ORDER BY r.pk LIMIT 1"
    )[0]
    with region.staff("clinician", hospital_id) as doctor:
        report = _ok(doctor.get(f"/api/studies/{uid}/report"))
        assert report["status"] == "final" and report["findings"] and report["impression"]
        cited = _ok(
            doctor.post(f"/api/studies/{uid}/report/cite", json={"field": "impression"}), 201
        )
        traced = _ok(doctor.get(f"/api/citations/{cited['citationId']}"))
        assert traced["text"] == report["impression"]


def test_a_seeded_recent_exam_is_offered_instead_of_a_repeat(region: Region) -> None:
    # A final, QC-passed study inside its code's recognition window, of a patient who also
    # visits another hospital: ordering the same exam there must remind the doctor of it.
    rows = region.sql(
        "SELECT s.study_instance_uid, p.patient_id, e.regional_code, h.hospital_id, "
        "s.study_date, c.recognition_days FROM studies s "
        "JOIN patients p ON p.pk = s.patient_pk JOIN hospitals h ON h.pk = s.hospital_pk "
        "JOIN study_exams e ON e.study_pk = s.pk "
        "JOIN regional_exam_codes c ON c.code = e.regional_code "
        "JOIN reports r ON r.study_instance_uid = s.study_instance_uid "
        "AND r.current AND r.status = 'final' "
        "JOIN study_quality q ON q.study_pk = s.pk AND q.overall >= 60 "
        "WHERE c.recognition_days > 0 ORDER BY s.study_date DESC"
    )
    today = datetime.now(UTC) + timedelta(hours=8)  # the seed's days are Asia/Shanghai days
    recent = [
        row
        for row in rows
        if (today - datetime.strptime(row[4], "%Y%m%d").replace(tzinfo=UTC)).days < row[5]
    ]
    assert recent, "the seed must hold priors that qualify (it claims reminders)"
    uid, patient_id, code, owner, _date, _days = recent[0]
    other = next(h for h in region.summary.hospitals if h != owner)
    with region.staff("clinician", other) as doctor:
        body = {"patient_id": patient_id, "hospital_id": other, "exam_code": code, "body_part": ""}
        checked = _ok(doctor.post("/api/recognition/check", json=body))
        offered = {p["studyInstanceUid"] for p in checked["priors"]}
        assert uid in offered
        decision = {"decision": "accepted", "study_instance_uid": uid, "reason": "近期外院检查"}
        url = f"/api/recognition/checks/{checked['checkId']}/decision"
        assert doctor.post(url, json=decision).status_code == 200


def test_quality_scores_and_a_qc_round_on_seeded_studies(region: Region) -> None:
    uid, hospital_id = region.sql(
        "SELECT s.study_instance_uid, h.hospital_id FROM studies s "
        "JOIN hospitals h ON h.pk = s.hospital_pk ORDER BY s.pk LIMIT 1"
    )[0]
    with region.staff("radiologist", hospital_id) as radiologist:
        scores = _ok(radiologist.get(f"/api/studies/{uid}/quality"))
        assert 0 <= scores["overall"] <= 100
    with client(region.node) as admin:  # a platform admin draws a sample of the region
        plan = _ok(
            admin.post(
                "/api/qc/plans",
                json={
                    "name": "季度抽查",
                    "criteria": {"hospital_id": hospital_id},
                    "sample_percent": 20,
                },
            ),
            201,
        )
        _ok(admin.post(f"/api/qc/plans/{plan['id']}/sample"))
    with region.staff("radiologist", hospital_id) as radiologist:
        queue = _ok(radiologist.get("/api/qc/reviews", params={"plan": plan["id"]}))["reviews"]
        assert queue, "a 20 % sample of a seeded hospital is not empty"
        graded = radiologist.post(
            f"/api/qc/reviews/{queue[0]['id']}",
            json={"image_grade": "A", "report_grade": "B", "comment": "合格"},
        )
        assert graded.status_code == 200, graded.text


def test_the_regulator_figures_match_the_seeded_rows(region: Region) -> None:
    region.node.archive.users.create_user("regulator", PASSWORD, "regulator")
    with client(region.node, "regulator") as regulator:
        summary = _ok(regulator.get("/api/statistics/summary"))
        text_of_answer = regulator.get("/api/statistics/hospitals").text
    # (the other tests of this module ran first: their check and cite are counted too)
    totals = summary["totals"]
    assert totals["uploads"]["uploads"] == region.sql("SELECT count(*) FROM studies")[0][0]
    assert totals["images"]["images"] == region.sql("SELECT count(*) FROM instances")[0][0]
    reminders = region.sql("SELECT count(*) FROM recognition_checks WHERE prior_count > 0")
    assert totals["recognition"]["reminders"] == reminders[0][0]
    flat = str(summary)
    for patient_id in region.summary.patient_ids:
        assert patient_id not in flat and patient_id not in text_of_answer
