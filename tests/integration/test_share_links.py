"""Share links over HTTP: lifetimes, passwords, guessing limits, expiry and revocation, what
an opened link reaches, what the index keeps, the QR codes; and the report's QR code.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import segno
from PIL import Image
from sqlalchemy import select, text, update

from cloud.models import AuditEvent, ShareLink
from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.servers import PASSWORD, client, http_base

PATIENT = "500101199001011234"
PROBLEM = "application/problem+json"
LINK_PASSWORD = "tea-house-42"


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


def store(node: Node, hospital: str, patient: str, date: str) -> Stored:
    spec = StudySpec(patient=PatientSpec(patient_id=patient), study_date=date)
    found = node.archive.hospitals.by_id(hospital)
    assert found is not None
    datasets = list(ct_series(spec, slices=2, size=16))
    for ds in datasets:
        node.archive.store(to_part10(ds), source="test", hospital_pk=found.pk)
    first = datasets[0]
    return Stored(spec.study_instance_uid, str(first.SeriesInstanceUID), str(first.SOPInstanceUID))


@dataclass
class World:
    node: Node
    first: Stored  # the patient's study at hospital A
    second: Stored  # another study of the same patient at A
    at_b: Stored  # one at hospital B

    def patient(self) -> httpx.Client:
        token = self.node.tokens.issue_for(
            f"patient:{PATIENT}", "patient", lifetime_seconds=1800, pid=PATIENT
        )
        return bearer(self.node, token)


def bearer(node: Node, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=http_base(node), headers=headers, timeout=30)


@pytest.fixture
def world(node: Node) -> World:
    node.archive.hospitals.add_hospital("HA", "Hospital A")
    node.archive.hospitals.add_hospital("HB", "Hospital B")
    return World(
        node,
        first=store(node, "HA", PATIENT, "20250101"),
        second=store(node, "HA", PATIENT, "20240101"),
        at_b=store(node, "HB", PATIENT, "20250301"),
    )


def share(http: httpx.Client, uids: list[str], expires_in: int = 3600, **extra: Any) -> Any:
    answer = http.post(
        "/api/share-links", json={"study_uids": uids, "expires_in": expires_in, **extra}
    )
    assert answer.status_code == 201, answer.text
    return answer.json()


def token_of(link: dict[str, Any]) -> str:
    return str(link["url"]).rsplit("/", 1)[1]


def open_link(node: Node, token: str, password: str | None = None) -> httpx.Response:
    body = {} if password is None else {"password": password}
    with bearer(node) as anonymous:
        return anonymous.post(f"/api/share/{token}/open", json=body)


def audit_rows(node: Node) -> list[tuple[str, str, str]]:
    with node.archive.sessions() as session:
        rows = session.execute(
            select(AuditEvent.action, AuditEvent.outcome, AuditEvent.actor_kind)
        ).all()
    return [(row[0], row[1], row[2]) for row in rows]


def expire(node: Node, link_id: int) -> None:
    with node.archive.sessions() as session:
        past = datetime.now(UTC) - timedelta(seconds=1)
        session.execute(update(ShareLink).where(ShareLink.pk == link_id).values(expires_at=past))
        session.commit()


def test_each_offered_lifetime_is_accepted_and_nothing_else(world: World) -> None:
    with world.patient() as patient:
        for seconds in (300, 1800, 3600, 86400):
            link = share(patient, [world.first.uid], seconds)
            left = (datetime.fromisoformat(link["expires_at"]) - datetime.now(UTC)).total_seconds()
            assert seconds - 60 < left <= seconds
            assert link["url"] == f"{http_base(world.node)}/s/{token_of(link)}"
            assert link["qr_png"] == link["url"] + "/qr.png"
        bad_requests: list[dict[str, Any]] = [
            {"study_uids": [world.first.uid], "expires_in": 60},
            {"study_uids": [world.first.uid], "expires_in": 7200},
            {"study_uids": [world.first.uid], "expires_in": 0},
            {"study_uids": [], "expires_in": 300},
            {"study_uids": [f"1.2.{n}" for n in range(51)], "expires_in": 300},
            {"study_uids": [world.first.uid], "expires_in": 300, "password": "short"},
        ]
        for body in bad_requests:
            refused = patient.post("/api/share-links", json=body)
            assert refused.status_code == 400, body
            assert refused.headers["content-type"] == PROBLEM
        assert (
            "expires_in must be one of 300, 1800, 3600, 86400"
            in patient.post("/api/share-links", json=bad_requests[0]).json()["detail"]
        )
        assert len(patient.get("/api/share-links").json()) == 4


def test_password_flow_and_what_an_opened_link_reaches(world: World) -> None:
    node = world.node
    with world.patient() as patient:
        link = share(patient, [world.first.uid, world.at_b.uid], 1800, password=LINK_PASSWORD)
    token = token_of(link)
    with bearer(node) as anonymous:
        status = anonymous.get(f"/api/share/{token}").json()
        assert status["password"] is True and status["studies"] == 2
        page = anonymous.get(f"/s/{token}")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["cache-control"] == "no-store"
        assert page.headers["referrer-policy"] == "no-referrer"
    missing = open_link(node, token)
    assert missing.status_code == 401 and "needs a password" in missing.json()["detail"]
    wrong = open_link(node, token, "not-the-password")
    assert wrong.status_code == 401 and wrong.headers["content-type"] == PROBLEM
    assert "wrong password" in wrong.json()["detail"]
    opened = open_link(node, token, LINK_PASSWORD)
    assert opened.status_code == 200, opened.text
    assert opened.headers["cache-control"] == "no-store"
    body = opened.json()
    assert 1700 < body["expires_in"] <= 1800 and sorted(body["study_uids"]) == sorted(
        [world.first.uid, world.at_b.uid]
    )
    with bearer(node, body["access_token"]) as viewer:
        for study in (world.first, world.at_b):
            detail = viewer.get(f"/viewer-api/studies/{study.uid}")
            assert detail.status_code == 200 and detail.headers["cache-control"] == "no-store"
            frame = viewer.get(study.rendered())
            assert frame.status_code == 200 and frame.headers["content-type"] == "image/jpeg"
        qido = viewer.get("/dicom-web/studies", params={"PatientID": PATIENT})
        assert {s["0020000D"]["Value"][0] for s in qido.json()} == {world.first.uid, world.at_b.uid}
        assert viewer.get(f"/viewer-api/studies/{world.second.uid}").status_code == 403
        assert viewer.get(world.second.rendered()).status_code == 403
        assert viewer.get("/api/share-links").status_code == 403, "a link makes no links"
    rows = audit_rows(node)
    assert ("share", "allowed", "patient") in rows
    assert ("share_open", "denied", "share_link") in rows
    assert ("share_open", "allowed", "share_link") in rows


def test_the_sixth_wrong_password_is_refused_with_429(world: World) -> None:
    with world.patient() as patient:
        token = token_of(share(patient, [world.first.uid], password=LINK_PASSWORD))
    for _ in range(5):
        assert open_link(world.node, token, "guess-guess").status_code == 401
    locked = open_link(world.node, token, LINK_PASSWORD)
    assert locked.status_code == 429 and int(locked.headers["retry-after"]) > 0
    assert locked.headers["content-type"] == PROBLEM
    denied = [r for r in audit_rows(world.node) if r[:2] == ("share_open", "denied")]
    assert len(denied) == 5


def test_expired_and_unknown_links(world: World) -> None:
    node = world.node
    with world.patient() as patient:
        link = share(patient, [world.first.uid], 300)
        token = token_of(link)
        opened = open_link(node, token).json()["access_token"]
        assert opened and int(open_link(node, token).json()["expires_in"]) <= 300
        expire(node, link["id"])
        assert patient.get("/api/share-links").json()[0]["active"] is False
    gone = open_link(node, token)
    assert gone.status_code == 410 and "expired" in gone.json()["detail"]
    with bearer(node) as anonymous:
        assert anonymous.get(f"/api/share/{token}").status_code == 410
        assert anonymous.get(f"/s/{token}/qr.png").status_code == 410
        assert anonymous.get(f"/s/{token}").status_code == 200  # the page explains
        unknown = anonymous.post("/api/share/not-a-token/open", json={})
        assert unknown.status_code == 404 and "does not exist" in unknown.json()["detail"]
    with bearer(node, opened) as viewer:
        assert viewer.get(f"/viewer-api/studies/{world.first.uid}").status_code == 401


def test_revocation_stops_even_an_opened_link_at_once(world: World) -> None:
    node = world.node
    node.archive.users.create_user("doc.a", PASSWORD, "clinician", hospital_id="HA")
    with world.patient() as patient:
        link = share(patient, [world.first.uid])
        token = token_of(link)
        access = open_link(node, token).json()["access_token"]
        with bearer(node, access) as viewer:
            assert viewer.get(f"/viewer-api/studies/{world.first.uid}").status_code == 200
            with client(node, "doc.a") as stranger:
                assert stranger.delete(f"/api/share-links/{link['id']}").status_code == 404
            revoked = patient.delete(f"/api/share-links/{link['id']}")
            assert revoked.status_code == 200 and revoked.json()["revoked_at"]
            refused = viewer.get(f"/viewer-api/studies/{world.first.uid}")
            assert refused.status_code == 401 and "revoked" in refused.json()["detail"]
            assert viewer.get(world.first.rendered()).status_code == 401
    gone = open_link(node, token)
    assert gone.status_code == 410 and "revoked" in gone.json()["detail"]
    assert ("share_revoke", "allowed", "patient") in audit_rows(node)


def test_the_index_holds_no_plaintext_token(world: World) -> None:
    with world.patient() as patient:
        token = token_of(share(patient, [world.first.uid], password=LINK_PASSWORD))
    with world.node.archive.engine.connect() as connection:
        dumped = json.dumps(
            [
                [str(value) for value in row]
                for table in ("share_links", "share_link_studies", "audit_events")
                for row in connection.execute(text(f"SELECT * FROM {table}"))
            ]
        )
    assert token not in dumped and LINK_PASSWORD not in dumped
    assert "$argon2" in dumped


def modules(png: bytes, scale: int = 8, border: int = 4) -> list[list[int]]:
    """The dark/light modules of a QR code PNG, sampled at each module's centre."""
    image = Image.open(io.BytesIO(png)).convert("L")
    count = image.width // scale - 2 * border

    def dark(row: int, column: int) -> int:
        centre = ((column + border) * scale + scale // 2, (row + border) * scale + scale // 2)
        value = image.getpixel(centre)
        assert isinstance(value, int)
        return int(value < 128)

    return [[dark(r, c) for c in range(count)] for r in range(count)]


def assert_qr_encodes(png: bytes, svg: str, url: str) -> None:
    expected = segno.make(url, error="m", micro=False)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    assert image.size == expected.symbol_size(scale=8, border=4)
    assert modules(png) == [list(row) for row in expected.matrix], "the PNG is not that URL"
    assert "<svg" in svg and re.search(r"<path[^>]* d=\"M", svg)


def test_share_qr_codes_encode_the_link(world: World) -> None:
    with world.patient() as patient:
        link = share(patient, [world.first.uid])
    with bearer(world.node) as anonymous:
        png = anonymous.get(link["qr_png"])
        svg = anonymous.get(link["qr_svg"])
    assert png.headers["content-type"] == "image/png"
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert_qr_encodes(png.content, svg.text, link["url"])


def test_staff_share_what_their_scope_holds(world: World) -> None:
    node = world.node
    node.archive.users.create_user("doc.b", PASSWORD, "clinician", hospital_id="HB")
    node.archive.users.create_user("trainee.b", PASSWORD, "trainee", hospital_id="HB")
    with client(node, "doc.b") as staff, client(node, "trainee.b") as trainee:
        link = share(staff, [world.at_b.uid])
        assert [entry["id"] for entry in staff.get("/api/share-links").json()] == [link["id"]]
        refused = staff.post(
            "/api/share-links", json={"study_uids": [world.first.uid], "expires_in": 300}
        )
        assert refused.status_code == 403
        no_share = trainee.post(
            "/api/share-links", json={"study_uids": [world.at_b.uid], "expires_in": 300}
        )
        assert no_share.status_code == 403
    with world.patient() as patient:
        assert patient.get("/api/share-links").json() == [], "each sees their own links"
    assert ("share", "denied", "user") in audit_rows(node)


def test_report_qr_leads_doctors_to_the_viewer_and_patients_to_their_page(world: World) -> None:
    node = world.node
    with world.patient() as patient:
        ref = next(
            s["ref"]
            for s in patient.get("/api/patient/studies").json()
            if s["study_instance_uid"] == world.first.uid
        )
    assert world.first.uid not in ref
    with client(node) as admin, bearer(node) as anonymous:
        png = admin.get(f"/api/studies/{world.first.uid}/report-qr.png")
        svg = admin.get(f"/api/studies/{world.first.uid}/report-qr.svg")
        assert png.status_code == 200, png.text
        assert_qr_encodes(png.content, svg.text, f"{http_base(node)}/r/{ref}")
        assert anonymous.get(f"/api/studies/{world.first.uid}/report-qr.png").status_code == 401
        landing = anonymous.get(f"/r/{ref}")
        assert landing.status_code == 200 and landing.headers["cache-control"] == "no-store"
        assert f'href="/viewer/?study={world.first.uid}"' in landing.text
        assert f'href="/patient/?study={ref}"' in landing.text
        forged = ref.split(".")[0] + ".AAAAAAAAAAAAAAAAAAAAAA"
        for bad in (forged, "1", "nothing"):
            assert anonymous.get(f"/r/{bad}").status_code == 404
