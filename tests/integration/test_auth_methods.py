"""``GET /api/auth/methods``: which sign-in methods the pages offer, without a token.

With no OpenID provider configured only the password form is offered; with one (the stub
provider on 127.0.0.1, as in test_oidc_login) the answer names the single sign-on route, and
that route leads to the provider.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.support.oidc_stub import CLIENT_ID, CLIENT_SECRET, running_oidc_stub
from tests.support.servers import http_base, running_node


def test_without_a_provider_only_passwords(tmp_path: Path) -> None:
    with running_node(tmp_path / "node") as node, httpx.Client(base_url=http_base(node)) as http:
        answer = http.get("/api/auth/methods")  # no token: the sign-in form asks before sign-in
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"password": True, "oidc": False, "oidc_login": None}
        assert http.get("/api/auth/oidc/login").status_code == 404


def test_with_a_provider_the_single_sign_on_route(tmp_path: Path) -> None:
    with (
        running_oidc_stub() as stub,
        running_node(
            tmp_path / "node",
            oidc_issuer=stub.issuer,
            oidc_client_id=CLIENT_ID,
            oidc_client_secret=CLIENT_SECRET,
        ) as node,
        httpx.Client(base_url=http_base(node), timeout=30) as http,
    ):
        answer = http.get("/api/auth/methods")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body == {"password": True, "oidc": True, "oidc_login": "/api/auth/oidc/login"}
        login = http.get(body["oidc_login"], params={"next": "/viewer/authorise.html?patient_id=1"})
        assert login.status_code == 302
        where = urlsplit(login.headers["location"])
        assert f"{where.scheme}://{where.netloc}" == stub.issuer
        query = parse_qs(where.query)
        assert query["redirect_uri"] == [f"{http_base(node)}/api/auth/oidc/callback"]
