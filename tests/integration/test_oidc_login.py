"""Single sign-on over HTTP against a real (stub) OpenID Provider on 127.0.0.1.

The redirects are followed by hand, as a browser would: login → provider's authorize →
our callback → ``next#token=…`` → the token works on /api/auth/me.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import ValidationError

from cloud.audit_query import AuditFilter
from imaging_cloud.node import Node
from imaging_cloud.settings import load_settings
from tests.support.oidc_stub import CLIENT_ID, CLIENT_SECRET, OidcStub, running_oidc_stub
from tests.support.ports import free_ports

PASSWORD = "correct horse battery"


@pytest.fixture
def stub(request: pytest.FixtureRequest) -> Iterator[OidcStub]:
    with running_oidc_stub(getattr(request, "param", "client_secret_post")) as started:
        yield started


@pytest.fixture
def node(tmp_path: Path, stub: OidcStub) -> Iterator[Node]:
    """A node whose single sign-on goes to ``stub`` (HTTP only: no DICOM needed here)."""
    http_port, dicom_port = free_ports(2)
    settings = load_settings(
        data_dir=tmp_path / "node",
        http_port=http_port,
        dicom_port=dicom_port,
        oidc_issuer=stub.issuer,
        oidc_client_id=CLIENT_ID,
        oidc_client_secret=CLIENT_SECRET,
        oidc_redirect_base=f"http://127.0.0.1:{http_port}",
    )
    started = Node(settings)
    started.archive.hospitals.add_hospital("H1", "One")
    started.archive.users.create_user("li.wei", PASSWORD, "radiologist", hospital_id="H1")
    server = started.http_server()
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield started
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        started.close()


@pytest.fixture
def browser(node: Node) -> Iterator[httpx.Client]:
    """Keeps cookies like a browser; redirects are followed by the tests, one by one."""
    base = f"http://127.0.0.1:{node.settings.http_port}"
    with httpx.Client(base_url=base, timeout=30) as http:
        yield http


def _start(browser: httpx.Client, next_path: str = "/viewer/?study=1.2.3") -> str:
    """Log in at the stub; the URL it sends the browser back to (our callback)."""
    login = browser.get("/api/auth/oidc/login", params={"next": next_path})
    assert login.status_code == 302, login.text
    cookie = login.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    authorize = urlsplit(login.headers["location"])
    query = parse_qs(authorize.query)
    assert query["code_challenge_method"] == ["S256"] and query["nonce"] and query["state"]
    at_provider = browser.get(login.headers["location"])
    assert at_provider.status_code == 302
    return at_provider.headers["location"]


def _token_of(location: str) -> str:
    parts = urlsplit(location)
    assert "token" not in parts.query
    return parse_qs(parts.fragment)["token"][0]


def _problem(answer: httpx.Response, status: int, words: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert words in answer.json()["detail"], answer.json()


@pytest.mark.parametrize("stub", ["client_secret_post", "client_secret_basic"], indirect=True)
def test_sign_in_links_the_account_and_the_token_works(
    node: Node, stub: OidcStub, browser: httpx.Client
) -> None:
    stub.user = {"sub": "idp-0001", "preferred_username": "li.wei"}
    answer = browser.get(_start(browser))
    assert answer.status_code == 302, answer.text
    location = answer.headers["location"]
    assert location.startswith("/viewer/?study=1.2.3#token=")
    assert answer.headers["cache-control"] == "no-store"
    me = browser.get("/api/auth/me", headers={"Authorization": f"Bearer {_token_of(location)}"})
    assert me.status_code == 200 and me.json()["username"] == "li.wei"
    assert node.archive.users.by_oidc_subject("idp-0001").username == "li.wei"  # type: ignore[union-attr]
    assert stub.token_requests[-1]["basic"] == (stub.auth_method == "client_secret_basic")
    # Next time the subject alone finds the account, whatever the username claim says.
    stub.user = {"sub": "idp-0001", "preferred_username": "someone.else"}
    again = browser.get(_start(browser))
    assert again.status_code == 302 and "#token=" in again.headers["location"]
    # ... and a suspended account is refused at once.
    node.archive.users.set_status("li.wei", "suspended")
    _problem(browser.get(_start(browser)), 403, "is suspended")


def test_state_works_once_and_only_in_the_browser_that_started(
    node: Node, stub: OidcStub, browser: httpx.Client
) -> None:
    stub.user = {"sub": "idp-0002", "preferred_username": "li.wei"}
    callback = _start(browser)
    with httpx.Client(timeout=30) as elsewhere:  # no cookie: a planted callback URL
        _problem(elsewhere.get(callback), 400, "another browser")
    callback = _start(browser)
    assert browser.get(callback).status_code == 302
    _problem(browser.get(callback), 400, "unknown, expired or already used")  # replay
    _problem(browser.get("/api/auth/oidc/callback?code=x&state=made-up"), 400, "unknown")
    _problem(browser.get("/api/auth/oidc/callback?code=x"), 400, "unknown")


def test_unknown_and_not_active_users_are_refused(
    node: Node, stub: OidcStub, browser: httpx.Client
) -> None:
    stub.user = {"sub": "idp-0003", "preferred_username": "nobody.here"}
    _problem(browser.get(_start(browser)), 403, "no account 'nobody.here'")
    stub.user = {"sub": "idp-0003"}
    _problem(browser.get(_start(browser)), 403, "no usable 'preferred_username' claim")
    node.archive.users.create_user(
        "zhou.pending", PASSWORD, "clinician", hospital_id="H1", status="pending"
    )
    stub.user = {"sub": "idp-0004", "preferred_username": "zhou.pending"}
    _problem(browser.get(_start(browser)), 403, "is pending")
    refused = node.archive.audit.search(AuditFilter(action="sign_in", outcome="denied"))
    assert {e["actor"] for e in refused} == {"nobody.here", "oidc:idp-0003", "zhou.pending"}


@pytest.mark.parametrize(
    ("bend", "words"),
    [
        (
            {"mangle": lambda t: t[:-6] + ("AAAAAA" if not t.endswith("AAAAAA") else "BBBBBB")},
            "signature that does not verify",
        ),
        ({"claims_override": {"aud": "another-client"}}, "another client (aud)"),
        ({"claims_override": {"nonce": "not-this-one"}}, "nonce does not belong"),
        ({"claims_override": {"exp": int(time.time()) - 600}}, "has expired"),
        ({"claims_override": {"iss": "https://evil.example"}}, "another issuer (iss)"),
        ({"kid": "rotated-away"}, "key is not the provider's"),
    ],
)
def test_bad_id_tokens_are_refused_precisely(
    node: Node, stub: OidcStub, browser: httpx.Client, bend: dict[str, object], words: str
) -> None:
    stub.user = {"sub": "idp-0005", "preferred_username": "li.wei"}
    callback = _start(browser)
    for name, value in bend.items():
        if name == "kid":  # the token names a key the provider's JWKS does not hold
            stub.mangle = lambda t, kid=str(value): _with_kid(t, kid)
        else:
            setattr(stub, name, value)
    _problem(browser.get(callback), 401, words)
    assert node.archive.users.by_oidc_subject("idp-0005") is None


def _with_kid(token: str, kid: str) -> str:
    header, payload, signature = token.split(".")
    decoded = json.loads(base64.urlsafe_b64decode(header + "=="))
    decoded["kid"] = kid
    encoded = base64.urlsafe_b64encode(json.dumps(decoded).encode()).rstrip(b"=").decode()
    return f"{encoded}.{payload}.{signature}"


def test_provider_errors_are_a_clear_401(stub: OidcStub, browser: httpx.Client) -> None:
    stub.deny = "access_denied"
    _problem(browser.get(_start(browser)), 401, "refused the sign-in (access_denied)")


@pytest.mark.parametrize(
    "next_path",
    [
        "https://evil.example/",
        "//evil.example/x",
        "/\\evil.example",
        "\\\\evil.example",
        "evil.example",
        "/\t/evil.example",
        "/viewer/#x",
        "javascript:alert(1)",
    ],
)
def test_open_redirects_are_refused(browser: httpx.Client, next_path: str) -> None:
    answer = browser.get("/api/auth/oidc/login", params={"next": next_path})
    _problem(answer, 400, "path on this site")
    assert "location" not in answer.headers


def test_sign_in_is_off_without_an_issuer(sqlite_node: Node) -> None:
    base = f"http://127.0.0.1:{sqlite_node.settings.http_port}"
    assert httpx.get(f"{base}/api/auth/oidc/login").status_code == 404


@pytest.mark.parametrize(
    ("given", "words"),
    [
        ({"oidc_issuer": "https://idp.example"}, "needs oidc_client_id"),
        ({"oidc_issuer": "http://idp.example", "oidc_client_id": "c",
          "oidc_redirect_base": "https://cloud.example"}, "oidc_issuer must be an https"),
        ({"oidc_issuer": "https://idp.example", "oidc_client_id": "c",
          "oidc_redirect_base": "cloud.example"}, "oidc_redirect_base must be an https"),
    ],
)  # fmt: skip
def test_incomplete_or_plain_http_settings_are_refused(
    tmp_path: Path, given: dict[str, str], words: str
) -> None:
    with pytest.raises(ValidationError, match=words):
        load_settings(data_dir=tmp_path, **given)
