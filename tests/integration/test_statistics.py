"""The regulator's statistics over HTTP, checked against the index itself.

A seeded region (5 hospitals in 4 districts, 120 studies, with reports, citations, views,
recognition checks, quality scores and QC reviews) on a real node, on SQLite and PostgreSQL.
Every metric's figures, by period and by hospital, district and level, are compared with raw
SQL written here (not the statistics module's queries), bucketed into local days, months and
years in Python. Regulators see numbers and never a patient; a clinician is refused; a
hospital admin sees their own hospital only; CSV says what JSON says.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import text

from imaging_cloud.cli import main
from imaging_cloud.node import Node
from imaging_cloud.seed_draw import SeedOptions
from imaging_cloud.seed_plan import plan_region
from imaging_cloud.seed_region import SeedSummary, seed_region
from tests.support.servers import PASSWORD, client, running_node

ZONE = ZoneInfo("Asia/Shanghai")
OPTIONS = SeedOptions(hospitals=5, studies=120, days=400, seed=7)
PROBLEM = "application/problem+json"


@dataclass
class Region:
    node: Node
    summary: SeedSummary
    regulator: httpx.Client
    dialect: str

    def sql(self, statement: str, **params: Any) -> list[Any]:
        with self.node.archive.engine.connect() as connection:
            return list(connection.execute(text(statement), params))


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.needs_postgres)],
)
def region(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Region]:
    from tests.conftest import POSTGRES_ENV, _postgres_schema_url

    urls: Iterator[str] = iter([""])
    if request.param == "postgresql":
        base = os.environ.get(POSTGRES_ENV)
        if not base:
            pytest.skip(f"{POSTGRES_ENV} not set")
        urls = _postgres_schema_url(base)
    with running_node(tmp_path_factory.mktemp("region") / "node", next(urls)) as node:
        summary = seed_region(node.archive, OPTIONS, accounts=False)
        users = node.archive.users
        users.create_user("regulator", PASSWORD, "regulator")
        users.create_user("doc.yz", PASSWORD, "clinician", hospital_id="CQ-YZ-01")
        users.create_user("admin.jb", PASSWORD, "hospital_admin", hospital_id="CQ-JB-01")
        with client(node, "regulator") as regulator:
            yield Region(node, summary, regulator, request.param)
    for _ in urls:  # drop the PostgreSQL schema
        pass


# --- the index, read directly ----------------------------------------------------------------

WHERE_HOSPITAL = "LEFT JOIN hospitals h ON h.pk = {pk}"
FACTS = {
    "uploads": "SELECT s.created_at AS at, {h} FROM studies s "
    + WHERE_HOSPITAL.format(pk="s.hospital_pk"),
    "images": "SELECT i.received_at AS at, {h}, i.size_bytes FROM instances i "
    "JOIN series se ON se.pk = i.series_pk JOIN studies s ON s.pk = se.study_pk "
    + WHERE_HOSPITAL.format(pk="s.hospital_pk"),
    "views": "SELECT a.at AS at, {h}, a.actor_kind, a.hospital_id AS viewer FROM audit_events a "
    "LEFT JOIN studies s ON s.study_instance_uid = a.study_instance_uid "
    + WHERE_HOSPITAL.format(pk="s.hospital_pk")
    + " WHERE a.action = 'view' AND a.outcome = 'allowed'",
    "citations": "SELECT c.cited_at AS at, {h}, c.field, c.hospital_id AS citer "
    "FROM report_citations c JOIN reports r ON r.pk = c.report_pk "
    + WHERE_HOSPITAL.format(pk="r.hospital_pk"),
    "qc": "SELECT q.reviewed_at AS at, {h}, q.passed FROM qc_reviews q "
    "JOIN studies s ON s.pk = q.study_pk "
    + WHERE_HOSPITAL.format(pk="s.hospital_pk")
    + " WHERE q.state = 'done'",
    "recognition": "SELECT c.requested_at AS at, {h}, c.prior_count, c.decision "
    "FROM recognition_checks c " + WHERE_HOSPITAL.format(pk="c.hospital_pk"),
    "quality": "SELECT s.created_at AS at, {h}, q.overall, q.completeness, q.timeliness, "
    "q.consistency, q.conformance FROM study_quality q JOIN studies s ON s.pk = q.study_pk "
    + WHERE_HOSPITAL.format(pk="s.hospital_pk"),
}
HOSPITAL_COLUMNS = "h.hospital_id, h.name AS hospital, h.district, h.level"


def utc(value: Any) -> datetime:
    """A timestamp as SQLite (text, UTC) or PostgreSQL (aware) hands it back."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def bucket(at: datetime, period: str) -> str:
    local = at.astimezone(ZONE)
    return {"day": f"{local:%Y-%m-%d}", "month": f"{local:%Y-%m}", "year": f"{local:%Y}"}.get(
        period, "all"
    )


def _rate(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 1) if whole else None


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None


# What each metric's row says about a group of fact rows, computed here from scratch.
TALLY: dict[str, Callable[[list[Any]], dict[str, Any]]] = {
    "uploads": lambda rows: {"uploads": len(rows)},
    "images": lambda rows: {"images": len(rows), "bytes": sum(r.size_bytes for r in rows)},
    "views": lambda rows: {
        "views": len(rows),
        "staff_views": sum(r.actor_kind == "user" for r in rows),
        "patient_views": sum(r.actor_kind != "user" for r in rows),
        "cross_hospital_views": sum(
            r.actor_kind == "user" and r.viewer != "" and r.viewer != r.hospital_id for r in rows
        ),
    },
    "citations": lambda rows: {
        "citations": len(rows),
        "findings": sum(r.field == "findings" for r in rows),
        "impression": sum(r.field == "impression" for r in rows),
        "cross_hospital_citations": sum(r.citer not in ("", r.hospital_id) for r in rows),
    },
    "qc": lambda rows: {
        "reviewed": len(rows),
        "passed": sum(bool(r.passed) for r in rows),
        "failed": sum(not r.passed for r in rows),
        "pass_rate": _rate(sum(bool(r.passed) for r in rows), len(rows)),
    },
    "recognition": lambda rows: {
        "checks": len(rows),
        "reminders": sum(r.prior_count > 0 for r in rows),
        "accepted": sum(r.decision == "accepted" for r in rows),
        "declined": sum(r.decision == "declined" for r in rows),
        "acceptance_rate": _rate(
            sum(r.decision == "accepted" for r in rows), sum(r.prior_count > 0 for r in rows)
        ),
    },
    "quality": lambda rows: {
        "scored": len(rows),
        "overall": _mean([r.overall for r in rows]),
        "timeliness": _mean([r.timeliness for r in rows]),
        "low_quality": sum(r.overall < 60 for r in rows),
    },
}
GROUP_KEYS = {
    "hospital": ("hospital_id",),
    "district": ("district",),
    "level": ("level",),
    "none": (),
}


def expected(
    region: Region, metric: str, period: str, by: str, keep: Callable[[Any], bool] = bool
) -> dict[tuple[str, ...], dict[str, Any]]:
    rows = [r for r in region.sql(FACTS[metric].format(h=HOSPITAL_COLUMNS)) if keep(r)]
    groups: dict[tuple[str, ...], list[Any]] = defaultdict(list)
    for row in rows:
        key = tuple(str(getattr(row, k) or "") for k in GROUP_KEYS[by])
        groups[(bucket(utc(row.at), period), *key)].append(row)
    return {key: TALLY[metric](members) for key, members in groups.items()}


def answered(body: dict[str, Any], period: str, by: str) -> dict[tuple[str, ...], dict[str, Any]]:
    found = {}
    for row in body["rows"]:
        key = (row.get("period", "all"), *(str(row.get(k) or "") for k in GROUP_KEYS[by]))
        assert key not in found, f"two rows for {key}"
        found[key] = row
    return found


def assert_same(
    wanted: dict[tuple[str, ...], dict[str, Any]], got: dict[tuple[str, ...], dict[str, Any]]
) -> None:
    assert set(got) == set(wanted)
    for key, values in wanted.items():
        for column, value in values.items():
            assert got[key][column] == pytest.approx(value, abs=0.11), (key, column)


def get(http: httpx.Client, path: str, **params: Any) -> dict[str, Any]:
    response = http.get(path, params=params)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# --- the figures -----------------------------------------------------------------------------

SHAPES = [
    ("month", "none"),
    ("day", "hospital"),
    ("year", "district"),
    ("none", "level"),
    ("month", "hospital"),
]


@pytest.mark.parametrize("metric", list(TALLY))
@pytest.mark.parametrize(("period", "by"), SHAPES)
def test_every_metric_matches_the_index(region: Region, metric: str, period: str, by: str) -> None:
    body = get(region.regulator, f"/api/statistics/{metric}", period=period, by=by)
    assert body["rows"], f"the seeded region has {metric}"
    assert_same(expected(region, metric, period, by), answered(body, period, by))
    (total,) = expected(region, metric, "none", "none").values()
    for column, value in total.items():
        assert body["totals"][column] == pytest.approx(value, abs=0.11)


def test_the_seed_made_every_kind_of_figure(region: Region) -> None:
    counts = region.summary.counts
    assert counts["studies"] == 120
    assert counts["instances"] == region.sql("SELECT count(*) FROM instances")[0][0]
    assert min(counts["views"], counts["citations"], counts["qc_reviews"], counts["checks"]) > 0
    assert counts["reminders"] > 0 and counts["accepted"] > 0
    assert len({h for (h,) in region.sql("SELECT district FROM hospitals")}) == 4
    by_patient = region.sql(
        "SELECT p.patient_id, count(DISTINCT s.hospital_pk) FROM studies s "
        "JOIN patients p ON p.pk = s.patient_pk GROUP BY p.patient_id"
    )
    assert any(hospitals > 1 for _, hospitals in by_patient), "patients visit several hospitals"
    modalities = {m for (m,) in region.sql("SELECT DISTINCT modality FROM series")}
    assert {"CT", "DX"} <= modalities and len(modalities) >= 4


def test_sql_group_by_agrees_per_district_and_level(region: Region) -> None:
    for by in ("district", "level"):
        counted = dict(
            region.sql(
                f"SELECT h.{by}, count(*) FROM studies s JOIN hospitals h ON h.pk = s.hospital_pk "
                f"GROUP BY h.{by}"
            )
        )
        body = get(region.regulator, "/api/statistics/uploads", period="none", by=by)
        assert {row[by]: row["uploads"] for row in body["rows"]} == counted


def test_filters_narrow_by_local_dates_and_place(region: Region) -> None:
    today = datetime.now(ZONE).date()
    start, end = today - timedelta(days=120), today - timedelta(days=30)
    district = region.sql("SELECT district FROM hospitals ORDER BY pk")[0][0]

    def keep(row: Any) -> bool:
        day = utc(row.at).astimezone(ZONE).date()
        return start <= day <= end and row.district == district

    for metric in ("uploads", "views", "recognition"):
        body = get(
            region.regulator,
            f"/api/statistics/{metric}",
            period="day",
            by="hospital",
            district=district,
            **{"from": start.isoformat(), "to": end.isoformat()},
        )
        assert_same(
            expected(region, metric, "day", "hospital", keep), answered(body, "day", "hospital")
        )
        assert body["filters"] == {
            "from": start.isoformat(),
            "to": end.isoformat(),
            "district": district,
        }
    level = region.sql("SELECT level FROM hospitals WHERE hospital_id = 'CQ-NA-01'")[0][0]
    body = get(region.regulator, "/api/statistics/uploads", period="month", level=level)
    wanted = expected(region, "uploads", "month", "none", lambda r: r.level == level)
    assert_same(wanted, answered(body, "month", "none"))
    body = get(region.regulator, "/api/statistics/images", period="year", hospital_id="CQ-YZ-01")
    wanted = expected(region, "images", "year", "none", lambda r: r.hospital_id == "CQ-YZ-01")
    assert_same(wanted, answered(body, "year", "none"))


def test_drill_down_district_hospitals_months_days(region: Region) -> None:
    http = region.regulator
    districts = get(http, "/api/statistics/uploads", period="none", by="district")
    top = max(districts["rows"], key=lambda r: r["uploads"])
    assert top["drill"] == {"by": "hospital", "district": top["district"]}
    hospitals = get(http, "/api/statistics/uploads", period="none", **top["drill"])
    assert sum(r["uploads"] for r in hospitals["rows"]) == top["uploads"]
    assert {r["district"] for r in hospitals["rows"]} == {top["district"]}
    busiest = max(hospitals["rows"], key=lambda r: r["uploads"])
    assert busiest["drill"] == {
        "by": "none",
        "hospital_id": busiest["hospital_id"],
        "period": "month",
    }
    months = get(http, "/api/statistics/uploads", **busiest["drill"])
    assert sum(r["uploads"] for r in months["rows"]) == busiest["uploads"]
    month = max(months["rows"], key=lambda r: r["uploads"])
    first = date.fromisoformat(month["period"] + "-01")
    assert month["drill"]["period"] == "day" and month["drill"]["from"] == first.isoformat()
    days = get(
        http, "/api/statistics/uploads", hospital_id=busiest["hospital_id"], **month["drill"]
    )
    assert sum(r["uploads"] for r in days["rows"]) == month["uploads"]
    assert all(r["period"].startswith(month["period"]) for r in days["rows"])
    assert all(r["drill"] is None for r in days["rows"]), "days are the bottom"


def test_summary_and_hospitals_match_the_index(region: Region) -> None:
    body = get(region.regulator, "/api/statistics/summary")
    for metric in TALLY:
        (total,) = expected(region, metric, "none", "none").values()
        for column, value in total.items():
            assert body["totals"][metric][column] == pytest.approx(value, abs=0.11)
    places = get(region.regulator, "/api/statistics/hospitals")["hospitals"]
    assert [p["hospital_id"] for p in places] == sorted(region.summary.hospitals)
    uploads = dict(
        region.sql(
            "SELECT h.hospital_id, count(*) FROM studies s "
            "JOIN hospitals h ON h.pk = s.hospital_pk GROUP BY h.hospital_id"
        )
    )
    for place in places:
        assert 29.3 < place["latitude"] < 29.8 and 106.3 < place["longitude"] < 106.8
        assert place["uploads"] == uploads.get(place["hospital_id"], 0)
        assert place["district"] and place["level"] and place["hospital"]


def test_csv_is_excel_ready_and_says_what_json_says(region: Region) -> None:
    params = {"period": "month", "by": "hospital"}
    data = get(region.regulator, "/api/statistics/qc", **params)
    for path, extra in (("/api/statistics/qc.csv", {}), ("/api/statistics/qc", {"format": "csv"})):
        response = region.regulator.get(path, params={**params, **extra})
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert 'filename="qc-month-hospital.csv"' in response.headers["content-disposition"]
        assert response.content.startswith(b"\xef\xbb\xbf"), "UTF-8 with BOM for Excel"
        lines = list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))
        assert list(lines[0]) == data["keyColumns"] + data["valueColumns"]
        assert len(lines) == len(data["rows"])
        for line, row in zip(lines, data["rows"], strict=True):
            assert line["hospital"] == row["hospital"]  # Chinese names survive
            for column in data["valueColumns"]:
                assert line[column] == ("" if row[column] is None else str(row[column]))


def test_regulators_see_no_patient_data(region: Region) -> None:
    secrets = set(region.summary.patient_ids)
    for name in region.summary.patient_names:
        alphabetic, ideographic, _ = name.split("=")
        secrets |= {
            alphabetic,
            ideographic,
            ideographic.replace("^", ""),
            alphabetic.replace("^", " "),
        }
    secrets |= {uid for (uid,) in region.sql("SELECT study_instance_uid FROM studies")}
    secrets |= {a for (a,) in region.sql("SELECT accession_number FROM studies")}
    answers = [
        region.regulator.get("/api/statistics"),
        region.regulator.get("/api/statistics/summary"),
        region.regulator.get("/api/statistics/hospitals"),
    ]
    for metric in TALLY:
        for period, by in SHAPES:
            answers.append(
                region.regulator.get(
                    f"/api/statistics/{metric}", params={"period": period, "by": by}
                )
            )
        answers.append(region.regulator.get(f"/api/statistics/{metric}.csv"))
    for response in answers:
        assert response.status_code == 200
        body = response.content.decode("utf-8")
        leaked = [s for s in secrets if s and s in body]
        assert not leaked, f"{response.url} shows {leaked[:3]}"


def test_who_may_see_statistics(region: Region) -> None:
    node = region.node
    with client(node, "doc.yz") as clinician:
        refused = clinician.get("/api/statistics/uploads")
        assert refused.status_code == 403
        assert refused.headers["content-type"] == PROBLEM
        assert "view_statistics" in refused.json()["detail"]
    with client(node, None) as nobody:
        assert nobody.get("/api/statistics/summary").status_code == 401
    with client(node, "admin.jb") as admin:
        own = get(admin, "/api/statistics/uploads", period="none", by="hospital")
        assert [r["hospital_id"] for r in own["rows"]] == ["CQ-JB-01"]
        assert own["filters"] == {"hospital_id": "CQ-JB-01"}
        places = get(admin, "/api/statistics/hospitals")["hospitals"]
        assert [p["hospital_id"] for p in places] == ["CQ-JB-01"]
        other = admin.get("/api/statistics/uploads", params={"hospital_id": "CQ-YZ-01"})
        assert other.status_code == 403 and other.headers["content-type"] == PROBLEM
    events = region.sql(
        "SELECT actor, outcome, patient_id, study_instance_uid, detail FROM audit_events "
        "WHERE action = 'statistics' ORDER BY seq"
    )
    assert any(e.actor == "regulator" and e.outcome == "allowed" for e in events)
    assert any(e.actor == "admin.jb" and e.outcome == "denied" for e in events)
    assert all(e.patient_id == "" and e.study_instance_uid == "" for e in events)
    assert any("/api/statistics/summary" in json.loads(e.detail)["path"] for e in events)


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/api/statistics/uploads", {"period": "week"}, 400),
        ("/api/statistics/uploads", {"by": "ward"}, 400),
        ("/api/statistics/uploads", {"from": "2025-13-01"}, 400),
        ("/api/statistics/uploads", {"from": "2026-03-01", "to": "2026-02-01"}, 400),
        ("/api/statistics/uploads", {"district": "x" * 65}, 400),
        ("/api/statistics/uploads", {"format": "xlsx"}, 400),
        ("/api/statistics/births", {}, 404),
        ("/api/statistics/births.csv", {}, 404),
        ("/api/statistics/uploads", {"hospital_id": "NO-SUCH"}, 404),
        ("/api/statistics/summary", {"to": "yesterday"}, 400),
    ],
)
def test_bad_input_is_refused_precisely(
    region: Region, path: str, params: dict[str, str], status: int
) -> None:
    response = region.regulator.get(path, params=params)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    assert response.json()["detail"]


def test_the_dashboard_page_and_its_charting_library_are_served(region: Region) -> None:
    with client(region.node, None) as browser:
        page = browser.get("/dashboard/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        policy = page.headers["content-security-policy"]
        assert "script-src 'self';" in policy and "unsafe" not in policy
        assert "__PLOTLY_VERSION__" not in page.text
        src = page.text.split('src="vendor/plotly.min.js?v=')[1].split('"')[0]
        script = browser.get(f"/dashboard/vendor/plotly.min.js?v={src}")
        assert script.status_code == 200 and "plotly.js v" in script.text[:200]
        assert "immutable" in script.headers["cache-control"]
        assert script.headers["content-encoding"] == "gzip"
        assert browser.get("/dashboard/static/dashboard.js").status_code == 200
        assert browser.get("/dashboard/static/nope.js").status_code == 404


# --- the seed itself -------------------------------------------------------------------------


def test_the_plan_is_the_same_for_the_same_seed() -> None:
    today = date(2026, 3, 1)
    first = plan_region(SeedOptions(hospitals=4, studies=40, seed=3, today=today))
    again = plan_region(SeedOptions(hospitals=4, studies=40, seed=3, today=today))
    other = plan_region(SeedOptions(hospitals=4, studies=40, seed=4, today=today))
    assert [s.uid for s in first.studies] == [s.uid for s in again.studies]
    assert [p.patient_id for p in first.patients] == [p.patient_id for p in again.patients]
    assert [s.uid for s in first.studies] != [s.uid for s in other.studies]
    assert len(first.studies) == 40
    last = datetime(2026, 3, 2, tzinfo=ZONE)
    assert all(s.uploaded < last for s in first.studies)


def test_seed_region_command(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "seed-region",
        "--data-dir",
        str(tmp_path),
        "--hospitals",
        "2",
        "--studies",
        "6",
        "--days",
        "30",
        "--no-progress",
    ]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "seeded hospitals: CQ-YZ-01, CQ-JB-01" in printed
    assert "studies 6" in printed and "regulator" in printed
    assert main(args) == 1, "a second seed into the same data dir is refused"
    assert "already seeded" in capsys.readouterr().err
