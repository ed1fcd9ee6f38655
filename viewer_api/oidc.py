"""Single sign-on with a hospital's OpenID Connect provider (authorization code flow + PKCE).

``GET /api/auth/oidc/login?next=/viewer/…`` sends the browser to the provider with a fresh
state, nonce and S256 code challenge. ``GET /api/auth/oidc/callback`` exchanges the code, checks
the id_token (signature against the provider's JWKS, iss, aud, exp, nonce), finds the local
account and redirects to ``next`` with our own access token in the fragment: browsers send
neither fragments to servers nor in Referer headers, so the token stays out of logs.

A pending sign-in lives in this process for ten minutes and works once; the browser that
started it must also carry the matching HttpOnly cookie, so a callback URL can be neither
replayed nor planted in someone else's browser. Several API processes would need a shared
store (or sticky sessions) for pending sign-ins.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote, urlencode, urlsplit

import httpx
import jwt
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse

from cloud.access import AccessDeniedError
from cloud.archive import Archive
from cloud.audit import AuditEntry
from cloud.errors import ArchiveError
from cloud.identity import USERNAME, UserRef
from viewer_api.access_deps import TokensDep, client_address
from viewer_api.deps import ArchiveDep
from viewer_api.problems import HTTPProblem

router = APIRouter(prefix="/api/auth/oidc", tags=["auth"])

CALLBACK_PATH = "/api/auth/oidc/callback"
COOKIE = "imaging_cloud_oidc_state"
# Never a symmetric algorithm: the provider's "key" for those would be our client secret.
ASYMMETRIC = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
TOKEN_FAULTS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.InvalidSignatureError, "has a signature that does not verify"),
    (jwt.ExpiredSignatureError, "has expired"),
    (jwt.InvalidAudienceError, "was issued for another client (aud)"),
    (jwt.InvalidIssuerError, "was issued by another issuer (iss)"),
)
METADATA_SECONDS = 3600.0
CLOCK_SKEW_SECONDS = 60


class SignInError(ArchiveError):
    title = "Single sign-on failed"
    http_status = 401


class SignInStateError(ArchiveError):
    title = "Unknown sign-in"
    http_status = 400


class ProviderUnavailableError(ArchiveError):
    title = "Identity provider unavailable"
    http_status = 502


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    client_id: str
    client_secret: str
    redirect_base: str  # our public base URL, e.g. https://cloud.example.org
    username_claim: str = "preferred_username"
    login_seconds: float = 600.0
    http_timeout: float = 10.0

    @property
    def redirect_uri(self) -> str:
        return self.redirect_base.rstrip("/") + CALLBACK_PATH


@dataclass(frozen=True)
class PendingLogin:
    nonce: str
    verifier: str
    next_path: str
    expires: float


class PendingLogins:
    """Sign-ins between login and callback, each taken at most once."""

    def __init__(self, lifetime_seconds: float, capacity: int = 10_000) -> None:
        self.lifetime_seconds, self.capacity = lifetime_seconds, capacity
        self._pending: dict[str, PendingLogin] = {}
        self._lock = threading.Lock()

    def add(self, nonce: str, verifier: str, next_path: str) -> str:
        now = time.monotonic()
        state = secrets.token_urlsafe(32)
        with self._lock:
            if len(self._pending) >= self.capacity:
                self._pending = {k: v for k, v in self._pending.items() if v.expires > now}
            if len(self._pending) >= self.capacity:
                raise HTTPProblem(503, "Busy", "too many sign-ins in progress; try again shortly")
            self._pending[state] = PendingLogin(
                nonce, verifier, next_path, now + self.lifetime_seconds
            )
        return state

    def take(self, state: str) -> PendingLogin | None:
        with self._lock:
            login = self._pending.pop(state, None)
        return login if login is not None and login.expires > time.monotonic() else None


def safe_next(value: str) -> str:
    """``value`` if it is a path on this site; refuse anything a browser could read as another
    host (``//host``, ``/\\host``, a scheme, tabs or newlines browsers strip)."""
    bad = (
        not value.startswith("/")
        or value.startswith("//")
        or "\\" in value
        or "#" in value
        or len(value) > 2048
        or any(ch.isspace() or not ch.isprintable() for ch in value)
    )
    parts = urlsplit(value)
    if bad or parts.scheme or parts.netloc:
        raise HTTPProblem(400, "Invalid next", "next must be a path on this site, e.g. /viewer/")
    return value


class Provider:
    """The provider's discovery document (cached), code exchange and id_token checks."""

    def __init__(self, config: OidcConfig) -> None:
        self.config = config
        self._metadata: tuple[float, dict[str, Any]] | None = None
        self._jwks: jwt.PyJWKClient | None = None

    async def metadata(self) -> dict[str, Any]:
        cached = self._metadata
        if cached is not None and time.monotonic() - cached[0] < METADATA_SECONDS:
            return cached[1]
        url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            async with httpx.AsyncClient(timeout=self.config.http_timeout) as http:
                answer = await http.get(url)
            answer.raise_for_status()
            document: dict[str, Any] = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ProviderUnavailableError(f"cannot read {url}: {exc}") from exc
        if document.get("issuer") != self.config.issuer:
            raise ProviderUnavailableError(f"{url} names another issuer: {document.get('issuer')}")
        for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
            if not isinstance(document.get(key), str):
                raise ProviderUnavailableError(f"{url} has no {key}")
        self._metadata = (time.monotonic(), document)
        self._jwks = jwt.PyJWKClient(document["jwks_uri"], timeout=self.config.http_timeout)
        return document

    async def exchange(self, code: str, verifier: str) -> str:
        """The id_token the provider gives for ``code``."""
        meta, c = await self.metadata(), self.config
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": c.redirect_uri,
            "code_verifier": verifier,
        }
        headers = {"Accept": "application/json"}
        if "client_secret_post" in meta.get("token_endpoint_auth_methods_supported", ()):
            form |= {"client_id": c.client_id, "client_secret": c.client_secret}
        else:  # client_secret_basic, the default; RFC 6749 2.3.1 form-encodes both parts
            pair = f"{quote(c.client_id, safe='')}:{quote(c.client_secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        try:
            async with httpx.AsyncClient(timeout=c.http_timeout) as http:
                answer = await http.post(meta["token_endpoint"], data=form, headers=headers)
            body = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ProviderUnavailableError(f"token endpoint: {exc}") from exc
        if answer.status_code != 200 or not isinstance(body.get("id_token"), str):
            error = body.get("error", f"HTTP {answer.status_code}")
            raise SignInError(f"the identity provider did not accept the sign-in code: {error}")
        return str(body["id_token"])

    def verify(self, id_token: str, nonce: str, meta: dict[str, Any]) -> dict[str, Any]:
        """The claims of a valid id_token for this sign-in; SignInError naming the fault."""
        c = self.config
        try:
            alg = jwt.get_unverified_header(id_token).get("alg")
        except jwt.InvalidTokenError as exc:
            raise SignInError(f"the identity token is malformed: {exc}") from exc
        accepted = set(meta.get("id_token_signing_alg_values_supported", ["RS256"])) & ASYMMETRIC
        if alg not in accepted:
            raise SignInError(f"the identity token is signed with {alg!r}, which is not accepted")
        assert self._jwks is not None  # set with the metadata
        try:
            key = self._jwks.get_signing_key_from_jwt(id_token)
        except jwt.PyJWKClientConnectionError as exc:
            raise ProviderUnavailableError(f"cannot read the provider's keys: {exc}") from exc
        except jwt.PyJWKClientError as exc:
            raise SignInError(f"the identity token's key is not the provider's: {exc}") from exc
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key.key,
                algorithms=[str(alg)],
                audience=c.client_id,
                issuer=c.issuer,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["iss", "aud", "exp", "iat", "sub"]},
            )
        except jwt.InvalidTokenError as exc:
            fault = next(
                (text for kind, text in TOKEN_FAULTS if isinstance(exc, kind)),
                f"is not valid: {exc}",
            )
            raise SignInError(f"the identity token {fault}") from exc
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != c.client_id:
            raise SignInError("the identity token was issued to another party (azp)")
        if not secrets.compare_digest(str(claims.get("nonce", "")), nonce):
            raise SignInError("the identity token's nonce does not belong to this sign-in")
        return claims


class OidcLogin:
    """What the routes share: the configuration, the provider and the pending sign-ins."""

    def __init__(self, config: OidcConfig) -> None:
        self.config = config
        self.provider = Provider(config)
        self.pending = PendingLogins(config.login_seconds)


async def _oidc(request: Request) -> OidcLogin:
    login: OidcLogin = request.app.state.oidc
    return login


OidcDep = Annotated[OidcLogin, Depends(_oidc)]


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@router.get("/login")
async def login(
    oidc: OidcDep, next_path: Annotated[str, Query(alias="next", max_length=2048)] = "/viewer/"
) -> RedirectResponse:
    path = safe_next(next_path)
    meta = await oidc.provider.metadata()
    nonce, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(64)
    state = oidc.pending.add(nonce, verifier, path)
    params = {
        "response_type": "code",
        "client_id": oidc.config.client_id,
        "redirect_uri": oidc.config.redirect_uri,
        "scope": "openid profile",
        "state": state,
        "nonce": nonce,
        "code_challenge": _challenge(verifier),
        "code_challenge_method": "S256",
    }
    endpoint = meta["authorization_endpoint"]
    response = RedirectResponse(
        f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(params)}", 302
    )
    response.set_cookie(
        COOKIE,
        state,
        max_age=int(oidc.config.login_seconds),
        path="/api/auth/oidc",
        httponly=True,
        samesite="lax",
        secure=oidc.config.redirect_base.startswith("https:"),
    )
    return response


@router.get("/callback")
async def callback(
    request: Request,
    oidc: OidcDep,
    archive: ArchiveDep,
    tokens: TokensDep,
    code: Annotated[str, Query(max_length=4096)] = "",
    state: Annotated[str, Query(max_length=256)] = "",
    error: Annotated[str, Query(max_length=256)] = "",
    error_description: Annotated[str, Query(max_length=1024)] = "",
) -> RedirectResponse:
    pending = oidc.pending.take(state) if state else None  # used up whatever happens next
    if error:
        said = f": {error_description}" if error_description else ""
        raise SignInError(f"the identity provider refused the sign-in ({error}){said}")
    if pending is None:
        raise SignInStateError("this sign-in is unknown, expired or already used; start again")
    if not secrets.compare_digest(request.cookies.get(COOKIE, ""), state):
        raise SignInStateError("this sign-in was started in another browser; start again")
    if not code:
        raise SignInError("the identity provider sent no code")
    id_token = await oidc.provider.exchange(code, pending.verifier)
    meta = await oidc.provider.metadata()
    claims = await run_in_threadpool(oidc.provider.verify, id_token, pending.nonce, meta)
    where = client_address(request)
    user = await run_in_threadpool(_local_user, archive, claims, oidc.config.username_claim, where)
    response = RedirectResponse(f"{pending.next_path}#token={tokens.issue(user)}", 302)
    response.delete_cookie(COOKIE, path="/api/auth/oidc")
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _local_user(
    archive: Archive, claims: dict[str, Any], username_claim: str, where: str
) -> UserRef:
    """The account to sign in; the sign-in or its refusal is audited."""
    user, problem = _find_account(archive, claims, username_claim)
    named = claims.get(username_claim)
    entry = AuditEntry(
        actor_kind="user",
        actor=user.username if user else str(named or f"oidc:{claims['sub']}"),
        action="sign_in",
        role=user.role if user else "",
        hospital_id=(user.hospital_id or "") if user else "",
        outcome="denied" if problem else "allowed",
        client_address=where,
        detail={"method": "oidc", "reason": problem} if problem else {"method": "oidc"},
    )
    archive.audit.append(entry)
    if user is None or problem:
        raise AccessDeniedError(problem)
    return user


def _find_account(
    archive: Archive, claims: dict[str, Any], username_claim: str
) -> tuple[UserRef | None, str]:
    """The active account linked to the token's subject or, the first time, the one named by
    ``username_claim`` (then linked to the subject); else why not."""
    subject = str(claims["sub"])
    if not 0 < len(subject) <= 255 or not subject.isprintable():
        return None, "the identity token's subject (sub) is not usable here"
    user = archive.users.by_oidc_subject(subject)
    if user is None:
        named = claims.get(username_claim)
        if not isinstance(named, str) or not USERNAME.match(named):
            return None, f"the identity token has no usable {username_claim!r} claim"
        user = archive.users.by_username(named)
        if user is None:
            return None, f"there is no account {named!r} here; ask your hospital's administrator"
        if user.status == "active" and not archive.users.link_oidc_subject(named, subject):
            return user, f"the account {named!r} is linked to another identity"
    if user.status != "active":
        return user, f"the account {user.username!r} is {user.status}"
    return user, ""
