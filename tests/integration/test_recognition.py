"""Mutual recognition over HTTP, as a HIS calls it when a doctor orders an exam.

One patient has chest CTs at three hospitals of the region: some qualify as priors (same exam
class, within the code's window, report final, QC passed), the others fail exactly one rule
each. The doctor at H1 is offered the qualifying ones newest first, decides once, and every
step is audited. Codes arrive as the region's codes or as a hospital's local codes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from cloud.code_tables import RecognitionSettings, SeedData, TableSeed, load_seed
from cloud.exam_codes import ExamCodes
from cloud.models import (
    AuditEvent,
    PatientGrant,
    QcPlan,
    QcReview,
    RecognitionCheck,
    Report,
    Study,
    StudyQuality,
)
from cloud.recognition import Recognition
from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.servers import PASSWORD, client

PATIENT = "500101198807154321"  # resident ID number, the region's patient identity
OTHER_PATIENT = "500103197001011111"
PROBLEM = "application/problem+json"


def days_ago(days: int) -> str:
    today = datetime.now(ZoneInfo("Asia/Shanghai")).date()
    return (today - timedelta(days=days)).strftime("%Y%m%d")


@dataclass(frozen=True)
class Prior:
    """How a stored study should fare: its report, QC and expected verdict."""

    hospital: str
    code: str
    days: int
    report: str = "final"  # final | draft | none
    qc: float | None = 85.0
    review: bool | None = None  # a QC reviewer's verdict, if any
    patient: str = PATIENT
    body_part: str = ""


PRIORS = {
    "recent_h2": Prior("H2", "H2-CT-CHEST", 10),  # H2's local code, mapped to CT-CHEST-PLAIN
    "own_low_dose": Prior("H1", "CT-CHEST-LD", 40, qc=90.0),  # same class, other code
    "too_old": Prior("H2", "CT-CHEST-PLAIN", 70),  # beyond the 60-day window
    "enhanced": Prior("H3", "CT-CHEST-CE", 5),  # another exam class
    "draft_report": Prior("H3", "CT-CHEST-PLAIN", 3, report="draft"),
    "no_report": Prior("H3", "CT-CHEST-PLAIN", 6, report="none"),
    "low_score": Prior("H2", "CT-CHEST-PLAIN", 2, qc=40.0),
    "review_failed": Prior("H1", "CT-CHEST-PLAIN", 1, qc=95.0, review=False),
    "review_passed": Prior("H3", "CT-CHEST-HR", 20, qc=50.0, review=True),  # reviewer outranks
    "no_qc": Prior("H3", "CT-CHEST-PLAIN", 4, qc=None),
    "other_patient": Prior("H1", "CT-CHEST-PLAIN", 1, patient=OTHER_PATIENT),
    "knee": Prior("H2", "DR-EXTREMITY", 5, body_part="KNEE"),
    "abdomen_film": Prior("H1", "DR-ABD-ERECT", 1),  # never recognised (0 days)
    "us_5_days": Prior("H2", "US-ABD", 5),
    "us_9_days": Prior("H2", "US-ABD", 9),  # the ultrasound window is 7 days
}
QUALIFYING_CHEST = ["recent_h2", "review_passed", "own_low_dose"]  # newest first


@dataclass
class World:
    node: Node
    uids: dict[str, str]

    def http(self, username: str) -> httpx.Client:
        return client(self.node, username)

    def hospital_pk(self, hospital_id: str) -> int:
        found = self.node.archive.hospitals.by_id(hospital_id)
        assert found is not None
        return found.pk


def _store(node: Node, key: str, prior: Prior) -> str:
    hospital = node.archive.hospitals.by_id(prior.hospital)
    assert hospital is not None
    spec = StudySpec(
        patient=PatientSpec(patient_id=prior.patient, patient_name="Chen^Jing=陈^静="),
        study_date=days_ago(prior.days),
        study_description=f"synthetic {key}",
        accession_number=f"A-{key}"[:16],
    )
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = prior.code, "99RIS", key
    for ds in ct_series(spec, slices=1, size=16):
        ds.ProcedureCodeSequence = [item]
        if prior.body_part:
            ds.BodyPartExamined = prior.body_part
        node.archive.store(to_part10(ds), source="test", hospital_pk=hospital.pk)
    return spec.study_instance_uid


def _judge(node: Node, uid: str, prior: Prior, plan_pk: int) -> None:
    """The report, quality score and QC review the other services would have stored."""
    now = datetime.now(UTC)
    with node.archive.sessions() as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        assert study is not None
        if prior.report != "none":
            session.add(
                Report(
                    study_instance_uid=uid, version=1, current=True, hospital_pk=study.hospital_pk,
                    patient_id=prior.patient, status=prior.report, findings="双肺纹理清晰。",
                    impression=f"胸部CT未见明显异常 ({uid[-6:]})", received_at=now,
                )
            )  # fmt: skip
        if prior.qc is not None:
            session.add(
                StudyQuality(
                    study_pk=study.pk, completeness=prior.qc, timeliness=prior.qc,
                    consistency=prior.qc, conformance=prior.qc, overall=prior.qc, scored_at=now,
                )
            )  # fmt: skip
        if prior.review is not None:
            session.add(
                QcReview(
                    plan_pk=plan_pk, study_pk=study.pk, reviewer="qc.expert", state="done",
                    image_grade="A" if prior.review else "D", report_grade="A",
                    passed=prior.review, sampled_at=now, reviewed_at=now,
                )
            )  # fmt: skip
        session.commit()


@pytest.fixture
def world(node: Node) -> Iterator[World]:
    hospitals = node.archive.hospitals
    hospitals.add_hospital("H1", "重庆医科大学附属第一医院 First Affiliated Hospital of CQMU")
    hospitals.add_hospital("H2", "重庆市人民医院 Chongqing General Hospital")
    hospitals.add_hospital("H3", "江北区中医院 Jiangbei TCM Hospital")
    users = node.archive.users
    users.create_user("doc.h1", PASSWORD, "clinician", hospital_id="H1")
    users.create_user("doc2.h1", PASSWORD, "radiologist", hospital_id="H1")
    users.create_user("rad.h2", PASSWORD, "radiologist", hospital_id="H2")
    users.create_user("reg", PASSWORD, "regulator")
    with node.archive.sessions() as session:
        plan = QcPlan(name="2026 chest CT sample", criteria="{}", sample_percent=5.0,
                      created_by="qc.lead", created_at=datetime.now(UTC))  # fmt: skip
        session.add(plan)
        session.commit()
        plan_pk = plan.pk
    with client(node) as http:  # H2's RIS sends its own code for a plain chest CT
        mapped = http.put(
            "/api/exam-code-mappings/H2/H2-CT-CHEST", json={"regional_code": "CT-CHEST-PLAIN"}
        )
        assert mapped.status_code == 200, mapped.text
    uids = {}
    for key, prior in PRIORS.items():
        uids[key] = _store(node, key, prior)
        _judge(node, uids[key], prior, plan_pk)
    yield World(node, uids)


def check(http: httpx.Client, exam_code: str, body_part: str = "", **more: str) -> httpx.Response:
    body = {"patient_id": PATIENT, "hospital_id": "H1", "exam_code": exam_code,
            "body_part": body_part, **more}  # fmt: skip
    return http.post("/api/recognition/check", json=body)


def _problem(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    detail: str = response.json()["detail"]
    assert detail
    return detail


def _offered(answer: dict[str, Any], world: World) -> list[str]:
    by_uid = {uid: key for key, uid in world.uids.items()}
    return [by_uid[p["studyInstanceUid"]] for p in answer["priors"]]


# --- which priors qualify --------------------------------------------------------------------


def test_only_qualifying_priors_are_offered_newest_first(world: World) -> None:
    with world.http("doc.h1") as http:
        answer = check(http, "CT-CHEST-PLAIN", "胸部")
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert answer.headers["cache-control"] == "no-store"
    assert _offered(result, world) == QUALIFYING_CHEST
    assert result["checkId"].startswith("RC-") and len(result["checkId"]) == 19
    assert (result["regionalCode"], result["examClass"], result["bodyPart"]) == (
        "CT-CHEST-PLAIN", "CT-CHEST", "CHEST",
    )  # fmt: skip
    assert result["recognitionDays"] == 60

    recent, reviewed, own = result["priors"]
    base = str(http.base_url).rstrip("/")
    assert recent["studyDate"] == days_ago(10)
    assert recent["hospital"] == {"id": "H2", "name": "重庆市人民医院 Chongqing General Hospital"}
    assert recent["examName"] == "胸部CT平扫 / CT chest, plain"
    assert recent["qc"] == {"passed": True, "score": 85.0}
    assert reviewed["qc"] == {"passed": True, "score": 50.0}  # a reviewer passed it
    assert recent["viewerUrl"] == f"{base}/viewer/?study={world.uids['recent_h2']}"
    # another hospital's study without the patient's grant: a reminder, not the report text
    assert recent["report"] == {"status": "final"} and recent["viewable"] is False
    assert recent["authoriseUrl"] == f"{base}/viewer/authorise.html?patient_id={PATIENT}"
    # H1's own study: the doctor may read it anyway, so the impression comes along
    assert own["viewable"] is True and "authoriseUrl" not in own
    assert own["report"]["impression"].startswith("胸部CT未见明显异常")
    assert own["examName"] == "胸部低剂量CT / CT chest, low-dose screening"
    assert "patient_name" not in answer.text and "陈" not in answer.text


def test_a_local_order_code_and_a_grant_change_what_is_shown(world: World) -> None:
    with world.http("test-admin") as http:
        http.put("/api/exam-code-mappings/H1/CT0012", json={"regional_code": "CT-CHEST-PLAIN"})
    with world.node.archive.sessions() as session:
        session.add(
            PatientGrant(
                patient_id=PATIENT, hospital_pk=world.hospital_pk("H1"), method="qr",
                granted_at=datetime.now(UTC), expires_at=datetime.now(UTC) + timedelta(hours=2),
            )
        )  # fmt: skip
        session.commit()
    with world.http("doc.h1") as http:
        answer = check(http, "CT0012")  # H1's HIS sends its own code; no body part given
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["regionalCode"] == "CT-CHEST-PLAIN" and result["examCode"] == "CT0012"
    assert result["bodyPart"] == "CHEST"  # the code's body part
    assert _offered(result, world) == QUALIFYING_CHEST
    # the patient authorised H1: other hospitals' priors are viewable, with their impression
    assert all(p["viewable"] and p["report"]["impression"] for p in result["priors"])


def test_windows_body_parts_and_never_recognised_exams(world: World) -> None:
    with world.http("doc.h1") as http:
        ultrasound = check(http, "US-ABD").json()
        knee = check(http, "DR-EXTREMITY", "膝关节").json()
        hand = check(http, "DR-EXTREMITY", "HAND").json()
        abdomen_film = check(http, "DR-ABD-ERECT").json()
        enhanced = check(http, "CT-CHEST-CE").json()
    assert _offered(ultrasound, world) == ["us_5_days"]  # 7-day window
    assert _offered(knee, world) == ["knee"] and knee["bodyPart"] == "KNEE"
    assert _offered(hand, world) == []
    assert abdomen_film["recognitionDays"] == 0 and abdomen_film["priors"] == []
    assert _offered(enhanced, world) == ["enhanced"]


def test_qc_unknown_qualifies_only_when_configured(world: World) -> None:
    """``qc_required = false`` in config/exam_codes.toml lets a study without QC qualify."""
    seed = load_seed()
    lenient = SeedData(seed.codes, seed.entries, RecognitionSettings(qc_required=False))
    sessions = world.node.archive.sessions
    codes = ExamCodes(sessions, world.node.archive.metadata_json_by_pk,
                      seed=TableSeed(sessions, lenient))  # fmt: skip
    result = Recognition(sessions, codes).check(PATIENT, "H1", "CT-CHEST-PLAIN", "", "doc.h1")
    by_uid = {uid: key for key, uid in world.uids.items()}
    offered = [by_uid[p.study_instance_uid] for p in result.priors]
    assert offered == ["no_qc", *QUALIFYING_CHEST]
    assert result.priors[0].qc_score is None and result.priors[0].qc_passed


# --- decisions -------------------------------------------------------------------------------


def test_the_doctors_decision_is_recorded_once(world: World) -> None:
    with world.http("doc.h1") as http:
        first = check(http, "CT-CHEST-PLAIN").json()
        second = check(http, "CT-CHEST-PLAIN").json()
        url = f"/api/recognition/checks/{first['checkId']}"
        not_offered = http.post(
            f"{url}/decision",
            json={"decision": "accepted", "study_instance_uid": world.uids["too_old"]},
        )
        accepted = http.post(
            f"{url}/decision",
            json={"decision": "accepted", "study_instance_uid": world.uids["recent_h2"],
                  "reason": "外院近期胸部CT质量合格"},
        )  # fmt: skip
        again = http.post(f"{url}/decision", json={"decision": "declined", "reason": "changed"})
        no_reason = http.post(
            f"/api/recognition/checks/{second['checkId']}/decision",
            json={"decision": "declined", "reason": "  "},
        )
    with world.http("doc2.h1") as http:  # a colleague at the same hospital
        declined = http.post(
            f"/api/recognition/checks/{second['checkId']}/decision",
            json={"decision": "declined", "reason": "病情变化, 需复查 / condition changed"},
        )
        state = http.get(url)
    assert accepted.status_code == 200, accepted.text
    assert accepted.json()["decision"] == {
        "state": "accepted",
        "reason": "外院近期胸部CT质量合格",
        "studyInstanceUid": world.uids["recent_h2"],
        "decidedBy": "doc.h1",
        "decidedAt": accepted.json()["decision"]["decidedAt"],
    }
    assert "was already accepted by doc.h1" in _problem(again, 409)
    assert "one of the priors" in _problem(not_offered, 400)
    assert "reason" in _problem(no_reason, 400)
    assert declined.status_code == 200 and declined.json()["decision"]["state"] == "declined"
    assert state.status_code == 200
    shown = state.json()
    assert shown["decision"]["state"] == "accepted" and shown["requestedBy"] == "doc.h1"
    assert [p["studyInstanceUid"] for p in shown["priors"]] == [
        world.uids[key] for key in QUALIFYING_CHEST
    ]
    assert all(p["viewerUrl"].endswith(p["studyInstanceUid"]) for p in shown["priors"])

    with world.node.archive.sessions() as session:
        rows = {row.check_id: row for row in session.scalars(select(RecognitionCheck)).all()}
    stored = rows[first["checkId"]]
    assert (stored.decision, stored.prior_count, stored.regional_code) == (
        "accepted", 3, "CT-CHEST-PLAIN",
    )  # fmt: skip
    assert stored.accepted_study_uid == world.uids["recent_h2"] and stored.decided_at is not None
    assert rows[second["checkId"]].decision_reason.startswith("病情变化")


def test_an_empty_check_can_only_be_declined(world: World) -> None:
    with world.http("doc.h1") as http:
        empty = check(http, "MR-KNEE").json()
        url = f"/api/recognition/checks/{empty['checkId']}/decision"
        accept = http.post(url, json={"decision": "accepted", "study_instance_uid": "1.2.3"})
        decline = http.post(url, json={"decision": "declined", "reason": "no prior"})
    assert empty["priors"] == []
    assert "offered none" in _problem(accept, 400)
    assert decline.status_code == 200


# --- who may ask, and the record of it ----------------------------------------------------


def test_only_the_ordering_hospitals_staff_may_check_and_decide(world: World) -> None:
    with world.http("doc.h1") as http:
        made = check(http, "CT-CHEST-PLAIN").json()
    url = f"/api/recognition/checks/{made['checkId']}"
    with world.http("rad.h2") as http:
        for_h1 = check(http, "CT-CHEST-PLAIN")  # hospital_id H1 is not theirs
        read = http.get(url)
        decide = http.post(f"{url}/decision", json={"decision": "declined", "reason": "x"})
    with world.http("reg") as http:
        regulator = check(http, "CT-CHEST-PLAIN")
    with world.http("test-admin") as http:
        admin_check = check(http, "CT-CHEST-PLAIN")  # no hospital: never an ordering doctor
        admin_read = http.get(url)
        admin_decide = http.post(f"{url}/decision", json={"decision": "declined", "reason": "x"})
    for response in (for_h1, read, decide, regulator, admin_check, admin_decide):
        _problem(response, 403)
    assert admin_read.status_code == 200  # platform support may look a check up
    with world.http("doc.h1") as http:
        assert http.get(url).json()["decision"]["state"] == "pending"

    with world.node.archive.sessions() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.patient_id == PATIENT).order_by(AuditEvent.seq)
        ).all()
    checks = [e for e in events if e.action == "recognition_check"]
    assert len(checks) == 1 and checks[0].actor == "doc.h1" and checks[0].hospital_id == "H1"
    detail = json.loads(checks[0].detail)
    assert detail["check"] == made["checkId"] and len(detail["priors"]) == 3
    denied = [e for e in events if e.outcome == "denied"]
    assert {e.actor for e in denied} == {"rad.h2", "test-admin"}
    reads = [e.actor for e in events if e.action == "recognition_read"]
    assert reads == ["test-admin", "doc.h1"]


def test_bad_requests_are_refused_precisely(world: World) -> None:
    with world.http("doc.h1") as http:
        unmapped = check(http, "H1-LOCAL-999")
        unknown_part = check(http, "CT-CHEST-PLAIN", "elbowish")
        missing = http.post("/api/recognition/check", json={"patient_id": PATIENT})
        extra = check(http, "CT-CHEST-PLAIN", colour="red")
        control = check(http, "CT\x00CHEST")
        not_json = http.post(
            "/api/recognition/check", content=b"{", headers={"content-type": "application/json"}
        )
        no_check = http.get("/api/recognition/checks/RC-NOSUCHCHECK0000")
        bad_id = http.get("/api/recognition/checks/%20drop")
        bad_decision = http.post(
            "/api/recognition/checks/RC-NOSUCHCHECK0000/decision", json={"decision": "maybe"}
        )
        no_check_decision = http.post(
            "/api/recognition/checks/RC-NOSUCHCHECK0000/decision",
            json={"decision": "declined", "reason": "x"},
        )
    with world.http("test-admin") as http:
        http.delete("/api/exam-codes/CT-CHEST-HR")
        unmapped_report = http.get("/api/exam-codes/unmapped", params={"hospital_id": "H1"})
    with world.http("doc.h1") as http:
        retired_code = check(http, "CT-CHEST-HR")
    assert "H1-LOCAL-999" in _problem(unmapped, 422)
    assert "body part" in _problem(unknown_part, 400)
    assert "CT-CHEST-HR" in _problem(retired_code, 422)
    for response in (missing, extra, control, not_json, bad_id, bad_decision):
        _problem(response, 400)
    _problem(no_check, 404)
    _problem(no_check_decision, 404)
    # the unknown order code is waiting for an administrator to map it
    listed = {m["localCode"]: m for m in unmapped_report.json()["unmapped"]}
    assert listed["H1-LOCAL-999"]["seenCount"] == 1
