"""The regulator's figures over HTTP, and the dashboard page that draws them.

``GET /api/statistics`` lists the metrics; ``/api/statistics/summary`` gives every metric's
totals (the dashboard's tiles); ``/api/statistics/hospitals`` the hospitals with where they are
and their totals (the map); ``/api/statistics/{metric}`` one metric by ``period`` (day, month,
year, none) and ``by`` (hospital, district, level, none) within ``from``/``to`` (local dates),
``hospital_id``, ``district`` and ``level``, as JSON or, with ``format=csv`` or the ``.csv``
suffix, as UTF-8 CSV with a byte-order mark (so Excel reads Chinese names).

Everything needs ``view_statistics``. Regional and platform roles see the whole region;
hospital-scoped holders (hospital admins) see their own hospital only: their queries are
pinned to it and asking for another is refused. Answers hold aggregates only, never a patient
or a study. Every request is audited (action ``statistics``, no patient).

The page is ``/dashboard/`` (static files in ``viewer_api/static/dashboard/``, the viewer's
CSP); it draws with plotly.js, served from the installed ``plotly`` package at
``/dashboard/vendor/plotly.min.js``: no CDN, no build step.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import importlib.util
import re
import threading
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import RedirectResponse

from cloud.access import AccessDeniedError, Principal
from cloud.archive import Archive
from cloud.errors import InstanceNotFoundError
from cloud.statistics import (
    DEFAULT_TIMEZONE,
    MAX_TEXT,
    Statistics,
    StatisticsQuery,
    StatisticsTable,
    as_csv_rows,
    parse_day,
)
from cloud.statistics_metrics import metric_catalogue
from viewer_api.access_deps import audit_entry, require
from viewer_api.csv_export import csv_response
from viewer_api.deps import ArchiveDep
from viewer_api.problems import HTTPProblem
from viewer_api.web import PAGE_HEADERS, STATIC_DIR, load_static

router = APIRouter(prefix="/api/statistics", tags=["statistics"])
pages = APIRouter(tags=["dashboard"], include_in_schema=False)

RegulatorDep = Annotated[Principal, Depends(require("view_statistics"))]
Text = Annotated[str, Query(max_length=MAX_TEXT)]
Day = Annotated[str, Query(max_length=10, description="YYYY-MM-DD, local calendar")]


async def statistics_service(request: Request, archive: ArchiveDep) -> Statistics:
    """The app's `Statistics`, made on first use in ``app.state.statistics_timezone`` (the
    composition root may set it from the settings' ``audit_timezone``)."""
    found: Statistics | None = getattr(request.app.state, "statistics", None)
    if found is None:
        zone = getattr(request.app.state, "statistics_timezone", DEFAULT_TIMEZONE)
        found = Statistics(archive.sessions, zone)
        request.app.state.statistics = found
    return found


StatisticsDep = Annotated[Statistics, Depends(statistics_service)]


def _query(
    period: Literal["day", "month", "year", "none"] = "month",
    by: Literal["hospital", "district", "level", "none"] = "none",
    from_: Annotated[str, Query(alias="from", max_length=10)] = "",
    to: Day = "",
    hospital_id: Text = "",
    district: Text = "",
    level: Text = "",
) -> StatisticsQuery:
    return StatisticsQuery(
        period=period,
        by=by,
        start=parse_day(from_, "from"),
        end=parse_day(to, "to"),
        hospital_id=hospital_id.strip(),
        district=district.strip(),
        level=level.strip(),
    ).checked()


QueryDep = Annotated[StatisticsQuery, Depends(_query)]


def _admitted(
    archive: Archive, who: Principal, request: Request, query: StatisticsQuery
) -> StatisticsQuery:
    """``query`` as ``who`` may ask it (pinned to their hospital if hospital-scoped), audited."""
    detail = {"path": request.url.path, "query": str(request.url.query)[:1000]}
    try:
        if who.scope_kind not in ("region", "platform"):
            own = who.hospital_id
            if not own:
                raise AccessDeniedError("statistics need a regional role or a hospital")
            if query.hospital_id and query.hospital_id != own:
                raise AccessDeniedError(
                    f"hospital roles see their own hospital's statistics only ({own})"
                )
            query = replace(query, hospital_id=own)
    except AccessDeniedError:
        archive.audit.append(audit_entry(who, request, "statistics", outcome="denied",
                                         detail=detail))  # fmt: skip
        raise
    if query.hospital_id and archive.hospitals.by_id(query.hospital_id) is None:
        raise InstanceNotFoundError(f"no hospital {query.hospital_id!r} is registered")
    archive.audit.append(audit_entry(who, request, "statistics", detail=detail))
    return query


def _table_json(table: StatisticsTable, timezone: str) -> dict[str, Any]:
    return {
        "metric": table.metric,
        "title": table.title,
        "period": table.query.period,
        "by": table.query.by,
        "timezone": timezone,
        "filters": table.query.filters(),
        "keyColumns": list(table.key_columns),
        "valueColumns": list(table.value_columns),
        "rows": table.rows,
        "totals": table.totals,
    }


def _csv(table: StatisticsTable) -> Response:
    name = "-".join(part for part in (table.metric, table.query.period, table.query.by))
    return csv_response(as_csv_rows(table), f"{name}.csv")


@router.get("")
async def catalogue(who: RegulatorDep) -> dict[str, Any]:  # noqa: ARG001 - the permission check
    """The metrics, the columns of each and when each is counted; periods and dimensions."""
    return {
        "metrics": metric_catalogue(),
        "periods": ["day", "month", "year", "none"],
        "dimensions": ["hospital", "district", "level", "none"],
    }


@router.get("/summary")
async def summary(
    request: Request,
    who: RegulatorDep,
    query: QueryDep,
    archive: ArchiveDep,
    statistics: StatisticsDep,
) -> dict[str, Any]:
    """Every metric's totals within the filters (``period`` and ``by`` are ignored)."""

    def run() -> dict[str, Any]:
        admitted = _admitted(archive, who, request, query)
        return {
            "filters": admitted.filters(),
            "timezone": statistics.timezone,
            "totals": statistics.summary(admitted),
        }

    return await run_in_threadpool(run)


@router.get("/hospitals")
async def hospitals(
    request: Request,
    who: RegulatorDep,
    query: QueryDep,
    archive: ArchiveDep,
    statistics: StatisticsDep,
) -> dict[str, Any]:
    """The hospitals (id, name, district, level, latitude, longitude) with their uploads,
    images, views and average quality within the filters."""

    def run() -> dict[str, Any]:
        admitted = _admitted(archive, who, request, query)
        return {"filters": admitted.filters(), "hospitals": statistics.hospitals(admitted)}

    return await run_in_threadpool(run)


async def _metric(
    metric: str,
    csv_wanted: bool,
    request: Request,
    who: Principal,
    query: StatisticsQuery,
    archive: Archive,
    statistics: Statistics,
) -> Any:
    def run() -> StatisticsTable:
        admitted = _admitted(archive, who, request, query)
        return statistics.table(metric, admitted)

    table = await run_in_threadpool(run)
    return _csv(table) if csv_wanted else _table_json(table, statistics.timezone)


@router.get("/{metric}.csv", response_class=Response)
async def metric_csv(
    metric: str,
    request: Request,
    who: RegulatorDep,
    query: QueryDep,
    archive: ArchiveDep,
    statistics: StatisticsDep,
) -> Any:
    """One metric as CSV (header row, UTF-8 with BOM)."""
    return await _metric(metric, True, request, who, query, archive, statistics)


@router.get("/{metric}")
async def metric_rows(
    metric: str,
    request: Request,
    who: RegulatorDep,
    query: QueryDep,
    archive: ArchiveDep,
    statistics: StatisticsDep,
    format: Literal["json", "csv"] = "json",
) -> Any:
    """One metric's rows by ``period`` and ``by``, its totals, and each row's drill-down
    (the parameters one level below it)."""
    return await _metric(metric, format == "csv", request, who, query, archive, statistics)


# --- the page --------------------------------------------------------------------------------

PAGES = load_static(STATIC_DIR.parent / "dashboard")
# plotly.js keeps its rules (mode bar, cursors, tooltips) in one <style> element it creates
# empty and fills through the CSSOM, which CSP does not govern, and inserts one stylesheet of
# its map library as text when it loads. The page's CSP admits exactly those by hash (the
# empty string's, and the stylesheet's computed from the installed file); scripts and every
# other style stay as strict as the viewer's pages.
EMPTY_STYLE = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
_INLINE_CSS = re.compile(rb"\.textContent='(\.[^'\\]{1,500000})'")
VENDOR_CACHE = "public, max-age=31536000, immutable"  # the URL carries plotly's version


def _plotly_file() -> Path | None:
    spec = importlib.util.find_spec("plotly")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "package_data" / "plotly.min.js"
    return path if path.is_file() else None


class _Vendor:
    """plotly.min.js read once, with its gzip form made on first use (4.8 MB → 1.4 MB)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._body: bytes | None = None
        self._gzip: bytes | None = None
        self.path = _plotly_file()
        self.version = _plotly_version(self.path)
        self._csp: str | None = None

    def page_csp(self) -> str:
        """The dashboard page's Content-Security-Policy (see `EMPTY_STYLE`)."""
        with self._lock:
            if self._csp is None:
                if self._body is None and self.path is not None:
                    self._body = self.path.read_bytes()
                body = self._body or b""
                hashes = [EMPTY_STYLE, *(_sha256(m.group(1)) for m in _INLINE_CSS.finditer(body))]
                styles = " ".join(f"'{h}'" for h in dict.fromkeys(hashes))
                self._csp = PAGE_HEADERS["Content-Security-Policy"].replace(
                    "style-src 'self';", f"style-src 'self' {styles};"
                )
            return self._csp

    def body(self, compressed: bool) -> bytes:
        with self._lock:
            if self._body is None:
                if self.path is None:
                    raise HTTPProblem(
                        404, "Not found", "plotly is not installed (pip install plotly)"
                    )
                self._body = self.path.read_bytes()
            if not compressed:
                return self._body
            if self._gzip is None:
                self._gzip = gzip.compress(self._body, compresslevel=6, mtime=0)
            return self._gzip


def _sha256(text: bytes) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text).digest()).decode("ascii")


def _plotly_version(path: Path | None) -> str:
    if path is None:
        return "missing"
    head = path.read_bytes()[:200].decode("ascii", "replace")
    marker = "plotly.js v"
    start = head.find(marker)
    if start < 0:
        return str(int(path.stat().st_mtime))
    return head[start + len(marker) :].split()[0]


VENDOR = _Vendor()


def _page(name: str) -> Response:
    page = PAGES.get(name)
    if page is None:
        raise HTTPProblem(404, "Not found", f"the dashboard has no {name!r}")
    body = page.body.replace(b"__PLOTLY_VERSION__", VENDOR.version.encode("ascii", "replace"))
    headers = {**PAGE_HEADERS, "Content-Security-Policy": VENDOR.page_csp()}
    return Response(body, media_type=page.media_type, headers=headers)


@pages.get("/dashboard")
def dashboard_redirect(request: Request) -> RedirectResponse:
    query = request.url.query
    return RedirectResponse("/dashboard/" + (f"?{query}" if query else ""), status_code=308)


@pages.get("/dashboard/")
def dashboard_page() -> Response:
    return _page("index.html")


@pages.get("/dashboard/static/{name}")
def dashboard_static(name: str, request: Request) -> Response:
    found = PAGES.get(name)
    if found is None or name.endswith(".html"):
        raise HTTPProblem(404, "Not found", f"the dashboard has no file {name!r}")
    headers = {"ETag": found.etag, "Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if request.headers.get("if-none-match") == found.etag:
        return Response(status_code=304, headers=headers)
    return Response(found.body, media_type=found.media_type, headers=headers)


@pages.get("/dashboard/vendor/plotly.min.js")
async def plotly_js(request: Request, v: str = "") -> Response:
    """plotly.js from the installed ``plotly`` package; cached for a year when the URL names
    the version the page was built with (``?v=``), revalidated otherwise."""
    compressed = "gzip" in request.headers.get("accept-encoding", "")
    body = await run_in_threadpool(VENDOR.body, compressed)
    headers = {
        "Cache-Control": VENDOR_CACHE if v == VENDOR.version else "no-cache",
        "ETag": f'"plotly-{VENDOR.version}{"-gz" if compressed else ""}"',
        "Vary": "Accept-Encoding",
        "X-Content-Type-Options": "nosniff",
    }
    if compressed:
        headers["Content-Encoding"] = "gzip"
    if request.headers.get("if-none-match") == headers["ETag"]:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="text/javascript; charset=utf-8", headers=headers)
