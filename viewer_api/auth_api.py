"""Sign-in: ``POST /api/auth/token`` (form username, password) and ``GET /api/auth/me``.

Tokens are used as ``Authorization: Bearer …``. Route-by-route enforcement of the role matrix
(`config/roles.toml`) builds on `current_user` in the next increments of issue 5.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.concurrency import run_in_threadpool

from cloud.identity import AuthenticationError, TokenSigner, UserRef
from viewer_api.deps import ArchiveDep
from viewer_api.gateway_api import bearer_token
from viewer_api.rate_limit import FailureLimiter

router = APIRouter(prefix="/api/auth", tags=["auth"])


def token_signer(request: Request) -> TokenSigner:
    signer: TokenSigner = request.app.state.tokens
    return signer


TokensDep = Annotated[TokenSigner, Depends(token_signer)]


async def current_user(request: Request, archive: ArchiveDep, tokens: TokensDep) -> UserRef:
    """The signed-in, still active user of this request; 401 problem+json otherwise."""
    token = bearer_token(request)
    if token is None:
        raise AuthenticationError("sign in first: POST /api/auth/token, then send the token")
    username = tokens.subject(token)
    user = await run_in_threadpool(archive.users.by_username, username)
    if user is None or user.status != "active":
        raise AuthenticationError("the account is not active")
    return user


CurrentUser = Annotated[UserRef, Depends(current_user)]


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
async def me(user: CurrentUser) -> dict[str, Any]:
    return user.as_dict()
