"""A local OpenID Provider for tests: discovery, JWKS, authorize and token endpoints.

The authorize endpoint signs in ``stub.user`` without a form and redirects back with a code;
the token endpoint checks the client's secret, the redirect URI and the PKCE verifier, and
answers with an RS256 id_token (key generated here with `cryptography`). Tests bend the
id_token through ``stub.claims_override`` and ``stub.mangle`` to play a faulty provider.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI, Form, Header, Request
from fastapi.responses import JSONResponse, RedirectResponse

from tests.support.asgi_server import serving

CLIENT_ID = "imaging-cloud"
CLIENT_SECRET = "stub-client-secret"


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    nonce: str
    challenge: str
    claims: dict[str, Any]


@dataclass
class OidcStub:
    auth_method: str = "client_secret_post"  # or client_secret_basic
    issuer: str = ""  # set once serving
    user: dict[str, Any] = field(default_factory=lambda: {"sub": "stub-sub-1"})
    claims_override: dict[str, Any] = field(default_factory=dict)
    mangle: Callable[[str], str] | None = None
    deny: str = ""  # an OAuth error code the authorize endpoint answers with
    kid: str = "stub-key-1"
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    grants: dict[str, _Grant] = field(default_factory=dict)
    token_requests: list[dict[str, Any]] = field(default_factory=list)

    def id_token(self, grant: _Grant) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": grant.client_id,
            "iat": now,
            "exp": now + 300,
            "nonce": grant.nonce,
            **grant.claims,
            **self.claims_override,
        }
        token = jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid})
        return self.mangle(token) if self.mangle else token

    def jwks(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/.well-known/openid-configuration")
        def discovery() -> dict[str, Any]:
            return {
                "issuer": self.issuer,
                "authorization_endpoint": f"{self.issuer}/authorize",
                "token_endpoint": f"{self.issuer}/token",
                "jwks_uri": f"{self.issuer}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "token_endpoint_auth_methods_supported": [self.auth_method],
                "code_challenge_methods_supported": ["S256"],
            }

        @app.get("/jwks")
        def keys() -> dict[str, Any]:
            return self.jwks()

        @app.get("/authorize")
        def authorize(request: Request) -> RedirectResponse:
            q = request.query_params
            back = {"state": q.get("state", "")}
            if self.deny:
                back |= {"error": self.deny, "error_description": "the user said no"}
            else:
                assert q.get("response_type") == "code" and q.get("code_challenge_method") == "S256"
                assert "openid" in q.get("scope", "").split()
                code = secrets.token_urlsafe(16)
                self.grants[code] = _Grant(
                    q["client_id"],
                    q["redirect_uri"],
                    q["nonce"],
                    q["code_challenge"],
                    dict(self.user),
                )
                back["code"] = code
            return RedirectResponse(f"{q['redirect_uri']}?{urlencode(back)}", 302)

        @app.post("/token")
        def token(
            grant_type: str = Form(),
            code: str = Form(),
            redirect_uri: str = Form(),
            code_verifier: str = Form(),
            client_id: str = Form(""),
            client_secret: str = Form(""),
            authorization: str = Header(""),
        ) -> JSONResponse:
            self.token_requests.append({"client_id": client_id, "basic": bool(authorization)})
            if authorization.startswith("Basic "):
                pair = base64.b64decode(authorization[6:]).decode()
                client_id, _, client_secret = pair.partition(":")
            grant = self.grants.pop(code, None)
            challenge = base64.urlsafe_b64encode(hashlib.sha256(code_verifier.encode()).digest())
            if (
                grant_type != "authorization_code"
                or grant is None
                or (client_id, client_secret) != (CLIENT_ID, CLIENT_SECRET)
                or redirect_uri != grant.redirect_uri
                or challenge.rstrip(b"=").decode() != grant.challenge
            ):
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            body = {
                "access_token": "stub",
                "token_type": "Bearer",
                "id_token": self.id_token(grant),
            }
            return JSONResponse(body)

        return app


@contextmanager
def running_oidc_stub(auth_method: str = "client_secret_post") -> Iterator[OidcStub]:
    """A stub provider on a free loopback port; its issuer is its base URL."""
    stub = OidcStub(auth_method=auth_method)
    with serving(stub.app()) as base_url:
        stub.issuer = base_url
        yield stub
