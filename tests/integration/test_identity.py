"""Sign-in: argon2 passwords, signed tokens, roles from config, suspension takes effect at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cloud.archive import Archive
from cloud.directory_admin import DirectoryAdmin, console_principal
from cloud.errors import InvalidQueryError
from cloud.identity import AuthenticationError, TokenSigner, UserDirectory, roles
from cloud.models import User
from imaging_cloud.cli import main
from imaging_cloud.node import Node
from tests.support.servers import client

PASSWORD = "correct horse battery"


def test_roles_are_data_with_the_regional_roles() -> None:
    matrix = roles()
    assert {"clinician", "radiologist", "hospital_admin", "regulator", "auditor",
            "platform_admin"} <= set(matrix)  # fmt: skip
    assert not matrix["regulator"].phi and "live_view" not in matrix["regulator"].permissions
    assert "delete" in matrix["platform_admin"].permissions


def test_passwords_are_stored_as_argon2_and_checked(archive: Archive) -> None:
    archive.hospitals.add_hospital("H1", "One")
    DirectoryAdmin(archive.sessions).add_department(console_principal(), "H1", "Radiology")
    user = archive.users.create_user("li.wei", PASSWORD, "clinician", hospital_id="H1",
                                     department="Radiology")  # fmt: skip
    assert (user.hospital_id, user.department, user.status) == ("H1", "Radiology", "active")
    with archive.sessions() as session:
        stored = session.query(User).one().password_hash
    assert stored.startswith("$argon2") and PASSWORD not in stored
    assert archive.users.authenticate("li.wei", PASSWORD).username == "li.wei"
    for username, password in (("li.wei", "wrong password!"), ("nobody", PASSWORD)):
        with pytest.raises(AuthenticationError, match="wrong username or password"):
            archive.users.authenticate(username, password)


@pytest.mark.parametrize(
    ("username", "password", "role", "hospital", "words"),
    [
        ("x", PASSWORD, "clinician", None, "username"),
        ("ok.user", "short", "clinician", None, "at least 10"),
        ("ok.user", PASSWORD, "janitor", None, "unknown role"),
        ("ok.user", PASSWORD, "clinician", "NOWHERE", "not registered"),
    ],
)
def test_bad_users_are_refused(
    archive: Archive, username: str, password: str, role: str, hospital: str | None, words: str
) -> None:
    with pytest.raises(InvalidQueryError, match=words):
        archive.users.create_user(username, password, role, hospital_id=hospital)


def test_tokens_expire_and_forgeries_fail(tmp_path: Path, archive: Archive) -> None:
    user = UserDirectory(archive.sessions).create_user("wang.fang", PASSWORD, "radiologist")
    signer = TokenSigner(tmp_path / "keys" / "token.key", lifetime_seconds=1)
    assert (tmp_path / "keys" / "token.key").stat().st_mode & 0o077 == 0
    token = signer.issue(user)
    assert signer.subject(token) == "wang.fang"
    other = TokenSigner(tmp_path / "other.key")
    with pytest.raises(AuthenticationError, match="not valid"):
        other.subject(token)
    time.sleep(2.1)
    with pytest.raises(AuthenticationError, match="expired"):
        signer.subject(token)


def test_sign_in_over_http_and_suspension_takes_effect_at_once(sqlite_node: Node) -> None:
    sqlite_node.archive.users.create_user("zhao.min", PASSWORD, "clinician")
    with client(sqlite_node, None) as http:
        refused = http.post("/api/auth/token", data={"username": "zhao.min", "password": "nope!"})
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        answer = http.post("/api/auth/token", data={"username": "zhao.min", "password": PASSWORD})
        assert answer.status_code == 200
        body = answer.json()
        assert body["token_type"] == "bearer" and body["user"]["role"] == "clinician"
        bearer = {"Authorization": f"Bearer {body['access_token']}"}
        me = http.get("/api/auth/me", headers=bearer)
        assert me.status_code == 200 and me.json()["username"] == "zhao.min"
        assert "live_view" in me.json()["permissions"]
        assert http.get("/api/auth/me").status_code == 401
        assert (
            http.get("/api/auth/me", headers={"Authorization": "Bearer x.y.z"}).status_code == 401
        )
        sqlite_node.archive.users.set_status("zhao.min", "suspended")
        assert http.get("/api/auth/me", headers=bearer).status_code == 401  # at once
        again = http.post("/api/auth/token", data={"username": "zhao.min", "password": PASSWORD})
        assert again.status_code == 401


def test_admin_cli_creates_and_retires_users(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ["--data-dir", str(tmp_path / "cloud")]
    assert main(["admin", "create-user", *data, "--username", "qian.li", "--password",
                 PASSWORD, "--role", "auditor"]) == 0  # fmt: skip
    assert "qian.li created: auditor" in capsys.readouterr().out
    assert main(["admin", "create-user", *data, "--username", "qian.li", "--password",
                 PASSWORD, "--role", "auditor"]) == 1  # fmt: skip
    assert "already exists" in capsys.readouterr().err
    assert main(["admin", "set-user-status", *data, "--username", "qian.li",
                 "--status", "retired"]) == 0  # fmt: skip
    archive = Archive.open(tmp_path / "cloud")
    try:
        with pytest.raises(AuthenticationError):
            archive.users.authenticate("qian.li", PASSWORD)
    finally:
        archive.close()


def test_password_guessing_is_slowed_down(sqlite_node: Node) -> None:
    sqlite_node.archive.users.create_user("sun.hao", PASSWORD, "radiologist")
    with client(sqlite_node) as http:
        for _ in range(5):
            wrong = http.post("/api/auth/token", data={"username": "sun.hao", "password": "guess"})
            assert wrong.status_code == 401
        locked = http.post("/api/auth/token", data={"username": "sun.hao", "password": PASSWORD})
        assert locked.status_code == 429  # even the right password, until the window passes
        assert int(locked.headers["Retry-After"]) > 0
        assert "failed attempts" in locked.json()["detail"]
        # another account from the same address is not locked by this one's failures
        sqlite_node.archive.users.create_user("he.yu", PASSWORD, "clinician")
        fine = http.post("/api/auth/token", data={"username": "he.yu", "password": PASSWORD})
        assert fine.status_code == 200
