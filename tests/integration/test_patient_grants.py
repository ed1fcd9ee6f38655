"""Patients over HTTP: sign-in with a one-time code, their studies at every hospital, and the
authorisations they give hospitals (Chongqing spec: a QR request, time-bound, revocable).

Hospitals A and B hold studies of one patient; a clinician at B sees A's study only while the
patient's grant for B is active. Codes are read from the outbox the log-only delivery writes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from cloud.models import AuditEvent, GrantRequest, OneTimeCode, PatientGrant
from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.servers import PASSWORD, client, http_base

PATIENT = "500101199001011234"  # a resident ID number, as the gateways put it in PatientID
OTHER = "500101198502023456"
PROBLEM = "application/problem+json"


@dataclass(frozen=True)
class Stored:
    uid: str
    series: str
    sop: str

    def rendered(self) -> str:
        return (
            f"/viewer-api/studies/{self.uid}/series/{self.series}"
            f"/instances/{self.sop}/frames/1/rendered"
        )


def store(node: Node, hospital: str, patient: str, date: str, what: str) -> Stored:
    spec = StudySpec(
        patient=PatientSpec(patient_id=patient, patient_name="Li^Na=李^娜="),
        study_date=date,
        study_description=what,
        accession_number=f"A{date}"[:16],
    )
    found = node.archive.hospitals.by_id(hospital)
    assert found is not None
    datasets = list(ct_series(spec, slices=2, size=16))
    for ds in datasets:
        node.archive.store(to_part10(ds), source="test", hospital_pk=found.pk)
    return Stored(
        spec.study_instance_uid, str(datasets[0].SeriesInstanceUID), str(datasets[0].SOPInstanceUID)
    )


@dataclass
class World:
    node: Node
    at_a: Stored  # the patient's study at hospital A
    at_b: Stored  # ... and at hospital B (newer)
    old_at_a: Stored  # an older one at A
    other: Stored  # another patient's study at A


@pytest.fixture
def world(node: Node) -> World:
    node.archive.hospitals.add_hospital("HA", "Hospital A 甲医院")
    node.archive.hospitals.add_hospital("HB", "Hospital B 乙医院")
    node.archive.users.create_user("doc.b", PASSWORD, "clinician", hospital_id="HB")
    return World(
        node,
        at_a=store(node, "HA", PATIENT, "20250110", "CT chest"),
        at_b=store(node, "HB", PATIENT, "20250301", "CT abdomen"),
        old_at_a=store(node, "HA", PATIENT, "20230505", "CT head"),
        other=store(node, "HA", OTHER, "20250201", "CT knee"),
    )


# --- helpers ---------------------------------------------------------------------------------


def outbox_codes(node: Node, patient_id: str) -> list[str]:
    path = node.settings.data_dir / "outbox" / "codes.jsonl"
    if not path.exists():
        return []
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    return [e["code"] for e in entries if e["patient_id"] == patient_id]


def request_code(http: httpx.Client, node: Node, patient_id: str) -> str:
    """Ask for a code and wait for it in the outbox (it is sent after the answer)."""
    before = len(outbox_codes(node, patient_id))
    answer = http.post("/api/patient/code", json={"patient_id": patient_id})
    assert answer.status_code == 202, answer.text
    deadline = time.monotonic() + 10
    while len(codes := outbox_codes(node, patient_id)) == before:
        assert time.monotonic() < deadline, "no code was delivered"
        time.sleep(0.02)
    return codes[-1]


def sign_in(node: Node, patient_id: str = PATIENT) -> httpx.Client:
    """An HTTP client signed in as the patient."""
    with client(node, None) as http:
        code = request_code(http, node, patient_id)
        answer = http.post("/api/patient/session", json={"patient_id": patient_id, "code": code})
    assert answer.status_code == 200, answer.text
    assert answer.json()["expires_in"] == 1800
    assert answer.headers["cache-control"] == "no-store"
    headers = {"Authorization": f"Bearer {answer.json()['access_token']}"}
    return httpx.Client(base_url=http_base(node), headers=headers, timeout=30)


def doctor(node: Node) -> httpx.Client:
    return client(node, "doc.b")


def reaches(http: httpx.Client, study: Stored) -> bool:
    """Study JSON, QIDO and a rendered frame agree: all allowed or all refused."""
    detail = http.get(f"/viewer-api/studies/{study.uid}")
    qido = http.get("/dicom-web/studies", params={"StudyInstanceUID": study.uid})
    frame = http.get(study.rendered())
    assert qido.status_code in (200, 204), qido.text
    found = qido.status_code == 200 and len(qido.json()) == 1
    assert {detail.status_code, frame.status_code} <= {200, 403}, (detail.text, frame.text)
    results = {detail.status_code == 200, frame.status_code == 200, found}
    assert len(results) == 1, f"study JSON, frame and QIDO disagree: {detail}, {frame}, {found}"
    if frame.status_code == 200:
        assert frame.headers["content-type"] == "image/jpeg"
    else:
        assert detail.headers["content-type"] == PROBLEM
    return results.pop()


def audit_actions(node: Node) -> list[tuple[str, str, str]]:
    with node.archive.sessions() as session:
        rows = session.execute(
            select(AuditEvent.action, AuditEvent.outcome, AuditEvent.patient_id)
        ).all()
    return [(row[0], row[1], row[2]) for row in rows]


def move_to_past(node: Node, table: Any, column: Any, pk: int) -> None:
    with node.archive.sessions() as session:
        past = datetime.now(UTC) - timedelta(seconds=1)
        session.execute(update(table).where(table.pk == pk).values({column: past}))
        session.commit()


# --- sign-in ---------------------------------------------------------------------------------


def test_code_sign_in_and_the_studies_of_every_hospital_newest_first(world: World) -> None:
    node = world.node
    with sign_in(node) as patient:
        answer = patient.get("/api/patient/studies")
        assert answer.status_code == 200
        assert answer.headers["cache-control"] == "no-store"
        studies = answer.json()
    uids = [s["study_instance_uid"] for s in studies]
    assert uids == [world.at_b.uid, world.at_a.uid, world.old_at_a.uid]
    newest = studies[0]
    assert newest["hospital_name"] == "Hospital B 乙医院" and newest["modalities"] == ["CT"]
    assert newest["images"] == 2 and newest["report"] is None
    assert newest["study_description"] == "CT abdomen" and newest["study_date"] == "20250301"
    assert newest["thumbnail"] == {
        "series_instance_uid": world.at_b.series,
        "sop_instance_uid": world.at_b.sop,
    }
    with node.archive.sessions() as session:
        stored = session.scalars(select(OneTimeCode.code_sha256)).all()
    assert stored and all(len(h) == 64 for h in stored)
    assert ("sign_in", "allowed", PATIENT) in audit_actions(node)


def test_unknown_ids_get_the_same_answer_and_no_code(world: World) -> None:
    node = world.node
    with client(node, None) as http:
        known = http.post("/api/patient/code", json={"patient_id": PATIENT})
        unknown = http.post("/api/patient/code", json={"patient_id": "999999999999999999"})
        assert (known.status_code, known.json()) == (unknown.status_code, unknown.json())
        assert known.status_code == 202
        deadline = time.monotonic() + 10
        while not outbox_codes(node, PATIENT):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)
        assert outbox_codes(node, "999999999999999999") == []
        refused = http.post(
            "/api/patient/session", json={"patient_id": "999999999999999999", "code": "123456"}
        )
        wrong = http.post("/api/patient/session", json={"patient_id": PATIENT, "code": "x"})
        assert refused.status_code == wrong.status_code == 401
        assert refused.json()["detail"] == wrong.json()["detail"]
        for bad in ("a\x00b", "back\\slash", "x" * 65):
            answer = http.post("/api/patient/code", json={"patient_id": bad})
            assert answer.status_code == 400 and answer.headers["content-type"] == PROBLEM


def test_wrong_codes_401_then_429_and_expired_codes_are_refused(world: World) -> None:
    node = world.node
    with client(node, None) as http:
        code = request_code(http, node, PATIENT)
        wrong = f"{(int(code) + 1) % 1_000_000:06d}"
        for _ in range(5):
            answer = http.post("/api/patient/session", json={"patient_id": PATIENT, "code": wrong})
            assert answer.status_code == 401 and answer.headers["content-type"] == PROBLEM
        locked = http.post("/api/patient/session", json={"patient_id": PATIENT, "code": code})
        assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
    assert audit_actions(node).count(("sign_in", "denied", PATIENT)) == 5

    with client(node, None) as http:  # another patient: the lockout is per ID
        code = request_code(http, node, OTHER)
        with node.archive.sessions() as session:
            pk = session.scalar(select(OneTimeCode.pk).where(OneTimeCode.patient_id == OTHER))
        assert pk is not None
        move_to_past(node, OneTimeCode, "expires_at", pk)
        expired = http.post("/api/patient/session", json={"patient_id": OTHER, "code": code})
        assert expired.status_code == 401
        fresh = request_code(http, node, OTHER)
        assert (
            http.post("/api/patient/session", json={"patient_id": OTHER, "code": fresh}).status_code
            == 200
        )
        used = http.post("/api/patient/session", json={"patient_id": OTHER, "code": fresh})
        assert used.status_code == 401, "a code works once"


def test_a_patient_token_reaches_only_that_patients_studies(world: World) -> None:
    with sign_in(world.node) as patient:
        assert reaches(patient, world.at_a) and reaches(patient, world.at_b)
        assert not reaches(patient, world.other)
        refused = patient.get(f"/viewer-api/studies/{world.other.uid}")
        assert refused.status_code == 403
        assert patient.get("/api/share-links").status_code == 200
    with doctor(world.node) as staff:
        assert staff.get("/api/patient/studies").status_code == 403


# --- grants ----------------------------------------------------------------------------------


def test_qr_grant_lets_hospital_b_see_a_until_revoked(world: World) -> None:
    node = world.node
    with doctor(node) as staff, sign_in(node) as patient:
        assert reaches(staff, world.at_b), "own-hospital studies need no grant"
        assert not reaches(staff, world.at_a)

        asked = staff.post("/api/grant-requests", json={"patient_id": PATIENT, "valid_hours": 2})
        assert asked.status_code == 201, asked.text
        body = asked.json()
        code = body["code_url"].rsplit("/", 1)[1]
        assert body["code_url"] == f"{http_base(node)}/patient/authorise/{code}"
        assert body["qr_png"] == body["code_url"] + "/qr.png" and body["state"] == "pending"
        qr = httpx.get(body["qr_png"])
        assert qr.status_code == 200 and qr.content.startswith(b"\x89PNG")
        with node.archive.sessions() as session:
            assert code not in json.dumps(
                [
                    list(r)
                    for r in session.execute(
                        select(GrantRequest.code_sha256, GrantRequest.visit)
                    ).all()
                ]
            )
        assert staff.get(f"/api/grant-requests/{body['id']}").json()["state"] == "pending"

        shown = patient.get(f"/api/patient/grant-requests/{code}").json()
        assert shown["hospital_name"] == "Hospital B 乙医院" and shown["valid_hours"] == 2
        approved = patient.post(f"/api/patient/grant-requests/{code}/approve")
        assert approved.status_code == 200 and approved.json()["state"] == "approved"
        assert staff.get(f"/api/grant-requests/{body['id']}").json()["state"] == "approved"
        again = patient.post(f"/api/patient/grant-requests/{code}/approve")
        assert again.status_code == 410, "a request code works once"
        assert httpx.get(body["qr_png"]).status_code == 410

        assert reaches(staff, world.at_a) and reaches(staff, world.old_at_a)
        assert not reaches(staff, world.other), "the grant covers this patient only"

        grants = patient.get("/api/patient/grants").json()
        assert [(g["hospital_name"], g["method"], g["active"]) for g in grants] == [
            ("Hospital B 乙医院", "qr", True)
        ]
        expires = datetime.fromisoformat(grants[0]["expires_at"])
        assert abs((expires - datetime.now(UTC)).total_seconds() - 7200) < 60
        revoked = patient.post(f"/api/patient/grants/{grants[0]['id']}/revoke")
        assert revoked.status_code == 200 and revoked.json()["active"] is False
        assert not reaches(staff, world.at_a), "revocation takes effect at once"
        assert patient.get("/api/patient/grants").json()[0]["revoked_at"] is not None

    actions = audit_actions(node)
    for action in ("grant_request", "grant", "grant_revoke"):
        assert (action, "allowed", PATIENT) in actions, action


def test_a_grant_made_on_the_patient_page_ends_when_it_expires(world: World) -> None:
    node = world.node
    with doctor(node) as staff, sign_in(node) as patient:
        hospitals = patient.get("/api/patient/hospitals").json()
        assert {"hospital_id": "HB", "name": "Hospital B 乙医院"} in hospitals
        for hours in (0, 73):
            bad = patient.post(
                "/api/patient/grants", json={"hospital_id": "HB", "valid_hours": hours}
            )
            assert bad.status_code == 400
        made = patient.post("/api/patient/grants", json={"hospital_id": "HB", "valid_hours": 1})
        assert made.status_code == 201 and made.json()["method"] == "patient_page"
        assert reaches(staff, world.at_a)
        move_to_past(node, PatientGrant, "expires_at", made.json()["id"])
        assert not reaches(staff, world.at_a), "an expired grant lets nothing through"
        assert patient.get("/api/patient/grants").json()[0]["active"] is False
    assert ("grant", "allowed", PATIENT) in audit_actions(node)


def test_grant_requests_expire_and_belong_to_one_patient(world: World) -> None:
    node = world.node
    with doctor(node) as staff, sign_in(node) as patient, sign_in(node, OTHER) as other:
        body = staff.post("/api/grant-requests", json={"patient_id": PATIENT}).json()
        code = body["code_url"].rsplit("/", 1)[1]
        assert other.get(f"/api/patient/grant-requests/{code}").status_code == 403
        assert other.post(f"/api/patient/grant-requests/{code}/approve").status_code == 403
        assert patient.get("/api/patient/grant-requests/no-such-code").status_code == 404
        assert patient.get(f"/api/patient/grant-requests/{code}").json()["valid_hours"] == 24

        move_to_past(node, GrantRequest, "expires_at", body["id"])
        late = patient.post(f"/api/patient/grant-requests/{code}/approve")
        assert late.status_code == 410 and "expired" in late.json()["detail"]
        assert staff.get(f"/api/grant-requests/{body['id']}").json()["state"] == "expired"
        assert httpx.get(body["qr_svg"]).status_code == 410
        assert not reaches(staff, world.at_a)

        declined = staff.post("/api/grant-requests", json={"patient_id": PATIENT}).json()
        code = declined["code_url"].rsplit("/", 1)[1]
        answer = patient.post(f"/api/patient/grant-requests/{code}/decline")
        assert answer.json()["state"] == "declined"
        assert patient.post(f"/api/patient/grant-requests/{code}/approve").status_code == 410
        assert not reaches(staff, world.at_a)


def test_only_hospital_staff_ask_and_only_their_hospital_polls(world: World) -> None:
    node = world.node
    node.archive.users.create_user("doc.a", PASSWORD, "clinician", hospital_id="HA")
    with doctor(node) as staff, client(node) as admin, client(node, "doc.a") as other:
        for hours in (0, 73):
            bad = staff.post(
                "/api/grant-requests", json={"patient_id": PATIENT, "valid_hours": hours}
            )
            assert bad.status_code == 400 and bad.headers["content-type"] == PROBLEM
        asked = staff.post("/api/grant-requests", json={"patient_id": PATIENT}).json()
        assert other.get(f"/api/grant-requests/{asked['id']}").status_code == 404
        refused = admin.post("/api/grant-requests", json={"patient_id": PATIENT})
        assert refused.status_code == 403, "a platform admin belongs to no hospital"
    with sign_in(node) as patient:
        assert patient.post("/api/grant-requests", json={"patient_id": PATIENT}).status_code == 403
