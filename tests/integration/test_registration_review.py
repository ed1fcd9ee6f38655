"""Registration, review and account administration over HTTP, and their CLI commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.archive import Archive
from cloud.audit_query import AuditFilter
from cloud.registrations import Registrations
from imaging_cloud.cli import main
from imaging_cloud.node import Node
from tests.support.servers import ADMIN, client

PASSWORD = "correct horse battery"
H1_HOSPITAL = {
    "hospital_id": "H1",
    "name": "First People's Hospital",
    "ae_title": "H1GW",
    "district": "Shenhe",
    "level": "3A",
    "contact": "it@h1.example",
}


def _registration(username: str, hospital: str = "H1", **extra: Any) -> dict[str, Any]:
    return {
        "username": username,
        "password": PASSWORD,
        "full_name": f"Dr {username}",
        "hospital_id": hospital,
        "requested_role": "clinician",
        **extra,
    }


def _sign_in(http: httpx.Client, username: str) -> httpx.Response:
    return http.post("/api/auth/token", data={"username": username, "password": PASSWORD})


def _as(node: Node, username: str) -> httpx.Client:
    """A client signed in over HTTP, as the user would."""
    with client(node, None) as anonymous:
        answer = _sign_in(anonymous, username)
    assert answer.status_code == 200, answer.text
    http = client(node, None)
    http.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
    return http


def _problem(answer: httpx.Response, status: int, words: str = "") -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert words in answer.json()["detail"], answer.json()


def test_registration_review_then_sign_in(node: Node) -> None:
    with client(node, None) as public, client(node) as admin:
        asked = public.post("/api/registrations/hospitals", json=H1_HOSPITAL)
        assert asked.status_code == 202 and asked.json()["state"] == "pending"
        _problem(public.post("/api/registrations/hospitals", json=H1_HOSPITAL), 409, "awaits")
        _problem(public.get("/api/registrations"), 401)
        waiting = admin.get("/api/registrations").json()["hospitals"]
        assert [(h["hospital_id"], h["district"], h["level"]) for h in waiting] == [
            ("H1", "Shenhe", "3A")
        ]
        pk = asked.json()["id"]
        approved = admin.post(f"/api/registrations/hospitals/{pk}/approve")
        assert approved.status_code == 200 and approved.headers["cache-control"] == "no-store"
        credential = approved.json()["gateway_credential"]
        hospital = node.archive.hospitals.authenticate(credential)
        assert hospital is not None and (hospital.hospital_id, hospital.ae_title) == ("H1", "H1GW")
        _problem(admin.post(f"/api/registrations/hospitals/{pk}/approve"), 409, "already approved")
        other = public.post(
            "/api/registrations/hospitals", json={**H1_HOSPITAL, "hospital_id": "H9"}
        )
        rejected = admin.post(
            f"/api/registrations/hospitals/{other.json()['id']}/reject",
            json={"note": "not in this region"},
        )
        assert rejected.status_code == 200 and node.archive.hospitals.by_id("H9") is None
        history = admin.get("/api/registrations", params={"state": "rejected"}).json()
        assert [h["note"] for h in history["hospitals"]] == ["not in this region"]

        # A person registers at the approved hospital; pending accounts cannot sign in.
        _problem(
            public.post("/api/registrations/users", json=_registration("a.b", "H7")),
            400,
            "not registered",
        )
        _problem(
            public.post(
                "/api/registrations/users", json={**_registration("a.b"), "password": "short"}
            ),
            400,
            "at least 10",
        )
        _problem(
            public.post(
                "/api/registrations/users",
                json=_registration("a.b", requested_role="platform_admin"),
            ),
            400,
            "requested_role",
        )
        asked = public.post("/api/registrations/users", json=_registration("li.wei"))
        assert asked.status_code == 202 and asked.json() == {
            "username": "li.wei",
            "status": "pending",
        }
        _problem(public.post("/api/registrations/users", json=_registration("li.wei")), 409)
        _problem(_sign_in(public, "li.wei"), 401)
        users = admin.get("/api/registrations").json()["users"]
        assert [(u["username"], u["requested_role"]) for u in users] == [("li.wei", "clinician")]
        decided = admin.post(
            "/api/registrations/users/li.wei/approve", json={"role": "radiologist"}
        )
        assert decided.status_code == 200, decided.text
        assert (decided.json()["role"], decided.json()["status"]) == ("radiologist", "active")
        token = _sign_in(public, "li.wei").json()["access_token"]
        me = public.get("/api/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert me.json()["role"] == "radiologist" and me.json()["hospital_id"] == "H1"
        listed = {u["username"]: u for u in admin.get("/api/users").json()["users"]}
        assert listed["li.wei"]["reviewed_by"] == ADMIN and listed["li.wei"]["reviewed_at"]

        assert (
            public.post("/api/registrations/users", json=_registration("wu.fei")).status_code == 202
        )
        assert (
            admin.post("/api/registrations/users/wu.fei/reject", json={"note": "?"}).status_code
            == 200
        )
        _problem(_sign_in(public, "wu.fei"), 401)
        _problem(admin.post("/api/registrations/users/wu.fei/approve", json={}), 409, "rejected")
    reviews = node.archive.audit.search(AuditFilter(action="review", actor=ADMIN))
    decisions = sorted(e["detail"]["decision"] for e in reviews)
    assert decisions == ["approve", "approve", "reject", "reject"]


def test_hospital_admin_is_confined_to_its_hospital(sqlite_node: Node) -> None:
    archive = sqlite_node.archive
    for hospital_id in ("H1", "H2"):
        archive.hospitals.add_hospital(hospital_id, hospital_id)
    with client(sqlite_node) as admin, client(sqlite_node, None) as public:
        made = admin.post(
            "/api/users",
            json={
                "username": "admin.h1",
                "password": PASSWORD,
                "role": "hospital_admin",
                "hospital_id": "H1",
            },
        )
        assert made.status_code == 201, made.text
        for username, hospital_id in (("h1.doc", "H1"), ("h2.doc", "H2")):
            body = _registration(username, hospital_id)
            assert public.post("/api/registrations/users", json=body).status_code == 202
    with _as(sqlite_node, "admin.h1") as h1:
        seen = h1.get("/api/registrations").json()
        assert seen["hospitals"] == [] and [u["username"] for u in seen["users"]] == ["h1.doc"]
        _problem(h1.post("/api/registrations/users/h2.doc/approve", json={}), 403, "H1 only")
        for role in ("platform_admin", "regulator", "auditor"):
            _problem(
                h1.post("/api/registrations/users/h1.doc/approve", json={"role": role}),
                403,
                f"only a platform admin assigns the {role} role",
            )
        _problem(
            h1.post("/api/registrations/users/h1.doc/approve", json={"grant": ["delete"]}),
            403,
            "do not hold: delete",
        )
        ok = h1.post("/api/registrations/users/h1.doc/approve", json={"grant": ["view_logs"]})
        assert ok.status_code == 200 and "view_logs" in ok.json()["permissions"]
        _problem(h1.post("/api/registrations/hospitals/1/approve"), 403, "platform admin")
        _problem(h1.patch("/api/users/admin.h1", json={"role": "radiologist"}), 403, "own role")
        _problem(h1.patch("/api/users/admin.h1", json={"grant": ["delete"]}), 403, "own role")
        _problem(h1.post("/api/users/admin.h1/status", json={"status": "retired"}), 403, "own")
        _problem(h1.post("/api/users/h2.doc/status", json={"status": "suspended"}), 403, "H1 only")
        _problem(h1.patch(f"/api/users/{ADMIN}", json={"role": "clinician"}), 403)
        _problem(
            h1.post(
                "/api/users",
                json={
                    "username": "x.y",
                    "password": PASSWORD,
                    "role": "clinician",
                    "hospital_id": "H2",
                },
            ),
            403,
        )
        _problem(h1.get("/api/hospitals/H2/departments"), 403, "H1 only")
        assert {u["hospital_id"] for u in h1.get("/api/users").json()["users"]} == {"H1"}
        assert h1.patch("/api/users/h1.doc", json={"role": "trainee"}).status_code == 200
    with client(sqlite_node) as admin:  # nor can a platform admin promote themself
        _problem(admin.patch(f"/api/users/{ADMIN}", json={"grant": ["delete"]}), 403, "own role")
    refusals = archive.audit.search(AuditFilter(actor="admin.h1", outcome="denied"))
    assert len(refusals) >= 10


def test_suspension_over_http_ends_an_issued_token(node: Node) -> None:
    node.archive.hospitals.add_hospital("H1", "One")
    with client(node) as admin:
        body = {
            "username": "zhao.min",
            "password": PASSWORD,
            "role": "clinician",
            "hospital_id": "H1",
            "full_name": "Zhao Min",
        }
        assert admin.post("/api/users", json=body).status_code == 201
        with _as(node, "zhao.min") as user:
            assert user.get("/api/auth/me").status_code == 200
            suspended = admin.post("/api/users/zhao.min/status", json={"status": "suspended"})
            assert suspended.status_code == 200 and suspended.json()["status"] == "suspended"
            _problem(user.get("/api/auth/me"), 401, "not active")  # the very next request
            admin.post("/api/users/zhao.min/status", json={"status": "active"})
            assert user.get("/api/auth/me").status_code == 200
            admin.post("/api/users/zhao.min/status", json={"status": "retired"})
            _problem(user.get("/api/auth/me"), 401)
        _problem(admin.post("/api/users/zhao.min/status", json={"status": "pending"}), 400)
        _problem(admin.post("/api/users/nobody/status", json={"status": "active"}), 404)
        with client(node, None) as public:
            assert (
                public.post("/api/registrations/users", json=_registration("qian.li")).status_code
                == 202
            )
        _problem(admin.post("/api/users/qian.li/status", json={"status": "active"}), 409, "review")


def test_departments_roles_and_permissions_are_validated(sqlite_node: Node) -> None:
    sqlite_node.archive.hospitals.add_hospital("H1", "One")
    user = {"username": "sun.hao", "password": PASSWORD, "role": "clinician", "hospital_id": "H1"}
    with client(sqlite_node) as admin, client(sqlite_node, None) as public:
        added = admin.post("/api/hospitals/H1/departments", json={"code": "CT", "name": "CT room"})
        assert added.status_code == 201
        _problem(admin.post("/api/hospitals/H1/departments", json={"code": "CT"}), 409)
        _problem(admin.post("/api/hospitals/H8/departments", json={"code": "CT"}), 404)
        listed = admin.get("/api/hospitals/H1/departments").json()["departments"]
        assert listed == [{"hospital_id": "H1", "code": "CT", "name": "CT room"}]
        _problem(admin.post("/api/users", json={**user, "department": "MRI"}), 400, "'MRI'")
        _problem(
            admin.post("/api/users", json={**user, "role": "department_head"}),
            400,
            "needs a department",
        )
        _problem(admin.post("/api/users", json={**user, "role": "patient"}), 400, "unknown role")
        _problem(
            admin.post("/api/users", json={**user, "grant": ["fly"]}), 400, "unknown permission"
        )
        _problem(
            admin.post("/api/users", json={**user, "hospital_id": None, "department": "CT"}),
            400,
            "needs an account of a hospital",
        )
        _problem(
            public.post("/api/registrations/users", json=_registration("a.b", department="MRI")),
            400,
            "'MRI'",
        )
        made = admin.post("/api/users", json={**user, "department": "CT", "grant": ["download"]})
        assert made.status_code == 201 and "download" in made.json()["permissions"]
        _problem(admin.patch("/api/users/sun.hao", json={"department": "MRI"}), 400)
        changed = admin.patch("/api/users/sun.hao", json={"revoke": ["share"]}).json()
        assert "share" not in changed["permissions"] and "download" in changed["permissions"]
        promoted = admin.patch("/api/users/sun.hao", json={"role": "radiologist"}).json()
        stored = {u["username"]: u for u in admin.get("/api/users").json()["users"]}["sun.hao"]
        assert promoted["role"] == "radiologist" and "upload" in promoted["permissions"]
        assert (stored["granted"], stored["revoked"]) == ([], ["share"])  # download is the role's


def test_public_registration_is_rate_limited(sqlite_node: Node) -> None:
    with client(sqlite_node, None) as public:
        for _ in range(20):
            answer = public.post("/api/registrations/users", json=_registration("x.y", "NOPE"))
            assert answer.status_code == 400
        limited = public.post("/api/registrations/hospitals", json=H1_HOSPITAL)
        _problem(limited, 429, "registrations from your address")
        assert int(limited.headers["Retry-After"]) > 0


def test_admin_cli_reviews_and_assigns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path / "cloud")]
    assert main(["admin", "add-hospital", *data, "--hospital-id", "H1", "--name", "One"]) == 0
    assert (
        main(
            [
                "admin",
                "add-department",
                *data,
                "--hospital",
                "H1",
                "--code",
                "CT",
                "--name",
                "CT room",
            ]
        )
        == 0
    )
    assert main(["admin", "add-department", *data, "--hospital", "H1", "--code", "CT"]) == 1
    archive = Archive.open(tmp_path / "cloud")
    try:
        registrations = Registrations(archive.sessions)
        registrations.submit_user(
            "li.na",
            PASSWORD,
            full_name="Li Na",
            hospital_id="H1",
            requested_role="clinician",
            department="CT",
        )
        pk = registrations.submit_hospital("H2", "Two", contact="it@h2.example")
        registrations.submit_hospital("H3", "Three", contact="it@h3.example")
    finally:
        archive.close()
    capsys.readouterr()
    assert main(["admin", "list-registrations", *data]) == 0
    listing = capsys.readouterr().out
    assert "li.na" in listing and "H2" in listing and "H3" in listing
    assert main(["admin", "review-user", *data, "--username", "li.na", "--approve"]) == 0
    assert "li.na approved: clinician at H1" in capsys.readouterr().out
    assert (
        main(
            [
                "admin",
                "assign-role",
                *data,
                "--username",
                "li.na",
                "--role",
                "radiologist",
                "--grant",
                "delete",
                "--revoke",
                "upload",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "radiologist" in out and "delete" in out and "upload" not in out
    assert main(["admin", "assign-role", *data, "--username", "li.na", "--grant", "fly"]) == 1
    assert "unknown permission" in capsys.readouterr().err
    assert main(["admin", "review-hospital", *data, "--id", str(pk), "--approve"]) == 0
    credential = capsys.readouterr().out.strip()
    assert (
        main(
            [
                "admin",
                "review-hospital",
                *data,
                "--id",
                str(pk + 1),
                "--reject",
                "--note",
                "duplicate",
            ]
        )
        == 0
    )
    archive = Archive.open(tmp_path / "cloud")
    try:
        assert archive.hospitals.authenticate(credential).hospital_id == "H2"  # type: ignore[union-attr]
        assert archive.users.authenticate("li.na", PASSWORD).role == "radiologist"
        assert archive.hospitals.by_id("H3") is None
        reviews = archive.audit.search(AuditFilter(action="review", actor="console"))
        assert len(reviews) == 3
    finally:
        archive.close()
