"""The HTTP application: DICOMweb under /dicom-web, health, and problem+json errors."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud.archive import Archive
from cloud.identity import TokenSigner
from cloud.patients import CodeDelivery
from viewer_api import (
    admin_api,
    audit_api,
    auth_api,
    codes_api,
    dashboard_api,
    export_api,
    gateway_api,
    lifecycle_api,
    patient_api,
    patient_web,
    qido,
    recognition_api,
    report_api,
    share_api,
    stow,
    study_admin,
    video_api,
    video_catalogue_api,
    video_export_api,
    video_intake_api,
    video_pages,
    video_review_api,
    viewer,
    wado,
)
from viewer_api.deps import ApiSettings
from viewer_api.oidc import OidcConfig, OidcLogin
from viewer_api.oidc import router as oidc_router
from viewer_api.problems import install_problem_handlers
from viewer_api.quality_api import router as quality_router
from viewer_api.volume_cache import Volumes, open_volume_cache
from viewer_api.web import router as web_router

HealthCheck = Callable[[], bool]
CallNext = Callable[[Request], Awaitable[Response]]


def create_app(
    archive: Archive,
    settings: ApiSettings | None = None,
    *,
    health_checks: dict[str, HealthCheck] | None = None,
    tokens: TokenSigner,
    code_delivery: CodeDelivery | None = None,
    oidc: OidcConfig | None = None,
) -> FastAPI:
    """Build the API around an open archive; ``health_checks`` name the other parts to watch.

    ``code_delivery`` sends patients their sign-in codes (default: the log-only outbox under
    the settings' ``data_dir``). ``oidc`` turns on single sign-on with that OpenID provider."""
    app = FastAPI(
        title="imaging-cloud",
        summary="Regional imaging cloud: DICOMweb archive",
        version="0.1.0",
    )
    app.state.archive = archive
    app.state.tokens = tokens
    app.state.sign_in_limits = auth_api.SignInLimits()
    app.state.api_settings = api_settings = settings or ApiSettings()
    # Made now, not on the first video request: it clears a dead process's cache files.
    app.state.video_clips = video_api.open_video_clips(api_settings)
    patient_api.install(app, archive, code_delivery=code_delivery, data_dir=api_settings.data_dir)
    app.state.volumes = Volumes(
        open_volume_cache(api_settings.volume_cache_bytes, api_settings.volume_cache_url)
    )
    checks = {"index": lambda: _index_ok(archive), **(health_checks or {})}
    install_problem_handlers(app)
    # video_api before wado: it answers rendered/thumbnail for video, hands images to wado
    for router in (qido.router, video_api.router, wado.router, stow.router):
        app.include_router(router, prefix="/dicom-web")
    app.include_router(video_api.viewer)
    app.include_router(gateway_api.router)
    app.include_router(gateway_api.operators)
    app.include_router(viewer.router)
    app.include_router(auth_api.router)
    app.include_router(admin_api.registrations)
    app.include_router(admin_api.accounts)
    if oidc is not None:
        app.state.oidc = OidcLogin(oidc)
        app.include_router(oidc_router)
    app.include_router(study_admin.router)
    app.include_router(export_api.router)
    app.include_router(audit_api.router)
    app.include_router(lifecycle_api.router)
    app.include_router(lifecycle_api.jobs)
    app.include_router(codes_api.router)
    app.include_router(recognition_api.router)
    app.include_router(quality_router)
    app.include_router(web_router)
    for router in (patient_api.router, share_api.router, share_api.workstation):
        app.include_router(router)
    app.include_router(patient_web.router)
    app.include_router(report_api.router)
    app.include_router(report_api.pages)
    app.include_router(dashboard_api.router)
    app.include_router(dashboard_api.pages)
    # surgical video (issue 8): each module has a `router` (API) and `pages` (web pages)
    for module in (
        video_catalogue_api,
        video_review_api,
        video_export_api,
        video_intake_api,
        video_pages,
    ):
        app.include_router(module.router)
        app.include_router(module.pages)

    app.add_middleware(NoStoreForPatients)

    @app.get("/healthz", tags=["health"])
    def healthz() -> Response:
        results = {name: _safe(check) for name, check in checks.items()}
        status = 200 if all(results.values()) else 503
        body = {"status": "ok" if status == 200 else "degraded", "checks": results}
        return JSONResponse(body, status_code=status)

    return app


class NoStoreForPatients:
    """What a patient or a share link opens leaves nothing in the phone's cache.

    Plain ASGI (not ``@app.middleware``): it only rewrites one header of the response start,
    and costs nothing measurable per request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})  # what request.state writes to

        async def send_start(message: Message) -> None:
            who = state.get("principal")
            if message["type"] == "http.response.start" and who is not None and who.kind != "user":
                headers = MutableHeaders(raw=message["headers"])
                headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_start)


def _safe(check: HealthCheck) -> bool:
    try:
        return check()
    except Exception:
        return False


def _index_ok(archive: Archive) -> bool:
    with archive.engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    return True
