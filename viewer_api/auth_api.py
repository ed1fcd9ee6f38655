"""Sign-in: ``POST /api/auth/token`` (form username, password), ``GET /api/auth/me`` and
``GET /api/auth/methods`` (public: which sign-in methods the pages may offer).

Tokens are used as ``Authorization: Bearer …`` on every route; `viewer_api.access_deps`
checks them against the role matrix (`config/roles.toml`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.concurrency import run_in_threadpool

from cloud.identity import AuthenticationError
from viewer_api.access_deps import PrincipalDep, TokensDep
from viewer_api.deps import ArchiveDep
from viewer_api.rate_limit import FailureLimiter

router = APIRouter(prefix="/api/auth", tags=["auth"])

OIDC_LOGIN = "/api/auth/oidc/login"


@dataclass(frozen=True)
class SignInLimits:
    """Failed sign-ins per account (guessing one password) and per client address (trying
    many accounts); the address limit is higher because a hospital's staff share a NAT."""

    per_user: FailureLimiter = field(default_factory=lambda: FailureLimiter(5, 900))
    per_address: FailureLimiter = field(default_factory=lambda: FailureLimiter(50, 900))


@router.post("/token")
async def issue_token(
    request: Request,
    username: Annotated[str, Form(max_length=64)],
    password: Annotated[str, Form(max_length=1024)],
    archive: ArchiveDep,
    tokens: TokensDep,
) -> dict[str, Any]:
    limits: SignInLimits = request.app.state.sign_in_limits
    client = request.client.host if request.client else "unknown"
    limits.per_user.check(username)
    limits.per_address.check(client)
    try:
        user = await run_in_threadpool(archive.users.authenticate, username, password)
    except AuthenticationError:
        limits.per_user.failed(username)
        limits.per_address.failed(client)
        raise
    limits.per_user.succeeded(username)
    return {
        "access_token": tokens.issue(user),
        "token_type": "bearer",
        "expires_in": tokens.lifetime_seconds,
        "user": user.as_dict(),
    }


@router.get("/me")
async def me(who: PrincipalDep) -> dict[str, Any]:
    return who.as_dict()


@router.get("/methods")
async def methods(request: Request) -> dict[str, Any]:
    """How staff can sign in here (no token needed): the pages offer the hospital's single
    sign-on link only when an OpenID provider is configured."""
    oidc = getattr(request.app.state, "oidc", None) is not None
    return {"password": True, "oidc": oidc, "oidc_login": OIDC_LOGIN if oidc else None}
