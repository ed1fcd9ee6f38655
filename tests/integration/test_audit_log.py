"""The audit log end to end: anomaly alerts, exports, the `imaging-cloud audit` command and
the `/api/audit` routes, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from cloud.archive import Archive
from cloud.audit import AuditEntry, AuditLog
from cloud.audit_anomalies import AccessAlertEvent, AnomalyDetector, AnomalyPolicy, list_alerts
from cloud.audit_export import export_lines, sd_escape, syslog_line
from cloud.audit_query import AuditFilter
from cloud.identity import TokenSigner
from imaging_cloud.audit_cli import install_audit
from imaging_cloud.settings import load_settings
from tests.support.asgi_server import serving
from viewer_api import audit_api
from viewer_api.problems import install_problem_handlers

T0 = datetime(2025, 3, 14, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai, a working hour
PASSWORD = "correct horse battery"
SYSLOG = re.compile(
    r'^<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>\S+) imaging-cloud - AUDIT '
    r'\[audit@32473(?P<params>(?: [a-z_]+="(?:[^"\\\]]|\\["\\\]])*")+)\] (?P<msg>.*)\n$'
)  # fmt: skip
PARAM = re.compile(r' ([a-z_]+)="((?:[^"\\\]]|\\["\\\]])*)"')


def unescape(value: str) -> str:
    return re.sub(r'\\(["\\\]])', r"\1", value)


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def act(actor: str = "li.wei", action: str = "download", **fields: Any) -> AuditEntry:
    base: dict[str, Any] = {
        "role": "radiologist",
        "hospital_id": "H1",
        "client_address": "10.0.0.1",
    }
    base.update(fields)
    kind = base.pop("actor_kind", "user")
    return AuditEntry(kind, actor, action, **base)


def watched(
    archive: Archive, clock: Clock, **policy: Any
) -> tuple[AuditLog, list[AccessAlertEvent]]:
    raised: list[AccessAlertEvent] = []
    detector = AnomalyDetector(archive.sessions, AnomalyPolicy(**policy), notify=raised.append)
    return AuditLog(archive.sessions, clock=clock, detector=detector), raised


def kinds(raised: list[AccessAlertEvent]) -> list[str]:
    return [alert.kind for alert in raised]


# --- anomaly rules -------------------------------------------------------------------------


def test_an_address_unseen_for_the_account_raises_an_alert(archive: Archive) -> None:
    clock = Clock(T0 - timedelta(days=200))
    log, raised = watched(archive, clock)
    log.append(act(client_address="10.0.0.7"))  # too long ago to count
    clock.now = T0 - timedelta(days=3)
    log.append(act(client_address="10.0.0.1"))
    log.append(act(actor="new.user", client_address="10.0.0.2"))  # first use: the baseline
    assert raised == []
    # A fresh detector (a restarted node) learns the history from the audit table.
    clock.now = T0
    log, raised = watched(archive, clock)
    log.append(act(client_address="10.0.0.1"))
    assert raised == []
    log.append(act(client_address="10.9.9.9"))
    log.append(act(client_address="10.9.9.9"))  # known now
    log.append(act(actor_kind="patient", actor="patient:P1", client_address="172.16.0.1"))
    log.append(act(actor_kind="patient", actor="patient:P1", client_address="172.16.0.2"))
    assert kinds(raised) == ["unusual_address"]
    assert raised[0].actor == "li.wei" and "10.9.9.9" in raised[0].message
    clock.advance(3600 * 2)
    log.append(act(client_address="10.0.0.7"))  # last seen 200 days ago: unusual again
    assert kinds(raised) == ["unusual_address", "unusual_address"]


def test_activity_outside_working_hours_raises_an_alert(archive: Archive) -> None:
    shanghai_19_59 = datetime(2025, 3, 14, 11, 59, tzinfo=UTC)
    clock = Clock(shanghai_19_59)
    log, raised = watched(archive, clock)
    log.append(act(action="view"))
    assert raised == []
    clock.advance(60)  # 20:00 local
    log.append(act(action="view_end"))  # the end of a session seen before 20:00
    assert raised == []
    log.append(act(action="view"))
    log.append(act(action="view", actor_kind="patient", actor="patient:P1"))  # patients: any time
    log.append(act(action="view", actor_kind="system", actor="retention"))
    assert kinds(raised) == ["unusual_hour"]
    assert "20:00 Asia/Shanghai" in raised[0].message
    night_shift, raised = watched(archive, clock, working_hours_start=19, working_hours_end=7)
    night_shift.append(act(action="view", actor="night.nurse"))
    assert raised == []


def test_a_burst_of_downloads_raises_one_alert_per_window(archive: Archive) -> None:
    clock = Clock()
    log, raised = watched(archive, clock, burst_downloads=3, burst_minutes=10, dedup_minutes=60)
    for _ in range(3):
        clock.advance(20)
        log.append(act())
    log.append(act(outcome="denied", action="download"))  # refused: not a download
    assert raised == []
    log.append(act())
    assert kinds(raised) == ["download_burst"]
    for _ in range(10):
        log.append(act())
    assert kinds(raised) == ["download_burst"]  # deduplicated
    clock.advance(3601)
    for _ in range(4):
        log.append(act())
    assert kinds(raised) == ["download_burst", "download_burst"]
    # Spread out, the same number of downloads is fine.
    for _ in range(6):
        clock.advance(240)
        log.append(act(actor="slow.reader"))
    assert [a.actor for a in raised] == ["li.wei", "li.wei"]


def test_repeated_refusals_raise_an_alert(archive: Archive) -> None:
    clock = Clock()
    log, raised = watched(archive, clock, denied_attempts=3, denied_minutes=5)
    for _ in range(2):
        log.append(act(action="access", outcome="denied", detail={"permission": "delete"}))
    clock.advance(301)
    log.append(act(action="access", outcome="denied", detail={"permission": "delete"}))
    log.append(act(action="access", outcome="denied", detail={"permission": "delete"}))
    assert raised == []
    log.append(act(action="access", outcome="denied", detail={"permission": "export"}))
    assert kinds(raised) == ["denied_attempts"]
    assert raised[0].message == "3 refused requests in 5 min (last: export)"


def test_mass_deletion_raises_an_alert(archive: Archive) -> None:
    clock = Clock()
    log, raised = watched(archive, clock, mass_deletions=2, deletion_minutes=10)
    log.append(act(action="delete", role="platform_admin"))
    log.append(act(action="delete", role="platform_admin"))
    assert raised == []
    log.append(act(action="delete", role="platform_admin"))
    assert kinds(raised) == ["mass_deletion"]


def test_zero_turns_a_rule_off(archive: Archive) -> None:
    clock = Clock()
    log, raised = watched(archive, clock, burst_downloads=0, denied_attempts=0, mass_deletions=0)
    for _ in range(5):
        log.append(act())
        log.append(act(action="delete"))
        log.append(act(action="access", outcome="denied"))
    assert raised == []


def test_alerts_are_stored_and_listed(archive: Archive) -> None:
    clock = Clock()
    log, _ = watched(archive, clock, mass_deletions=1)
    log.append(act(action="delete"))
    seq = log.append(act(action="delete"))
    log.append(act(actor="h2.admin", hospital_id="H2", action="delete"))
    log.append(act(actor="h2.admin", hospital_id="H2", action="delete"))
    every = list_alerts(archive.sessions)
    assert [(a["kind"], a["actor"]) for a in every] == [
        ("mass_deletion", "h2.admin"),
        ("mass_deletion", "li.wei"),
    ]
    assert every[1]["audit_seq"] == seq and every[1]["hospital_id"] == "H1"
    assert [a["actor"] for a in list_alerts(archive.sessions, hospital_id="H1")] == ["li.wei"]
    assert list_alerts(archive.sessions, since=T0 + timedelta(seconds=1)) == []
    assert list_alerts(archive.sessions, kind="unusual_hour") == []


class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = HTTPServer(("127.0.0.1", 0), _Hook)
    _Hook.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", _Hook.received
    server.shutdown()
    server.server_close()


def test_alerts_are_posted_to_the_webhook(
    archive: Archive, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = webhook
    detector = AnomalyDetector(archive.sessions, AnomalyPolicy(denied_attempts=1), url)
    log = AuditLog(archive.sessions, clock=Clock(), detector=detector)
    seq = log.append(act(action="access", outcome="denied", detail={"permission": "delete"}))
    detector.drain()
    detector.close()
    assert received == [
        {
            "source": "audit",
            "hospital_id": "H1",
            "kind": "denied_attempts",
            "message": "1 refused requests in 10 min (last: delete)",
            "state": "raised",
            "at": T0.isoformat(),
            "actor_kind": "user",
            "actor": "li.wei",
            "audit_seq": seq,
        }
    ]


def test_a_failing_webhook_or_store_never_fails_the_append(archive: Archive) -> None:
    detector = AnomalyDetector(
        archive.sessions, AnomalyPolicy(denied_attempts=1), "http://127.0.0.1:9/nothing-here"
    )
    log = AuditLog(archive.sessions, clock=Clock(), detector=detector)
    with archive.engine.begin() as connection:
        connection.execute(text("DROP TABLE access_alerts"))
    assert log.append(act(action="access", outcome="denied")) == 1
    detector.drain()
    detector.close()
    assert log.verify().ok


# --- export formats ------------------------------------------------------------------------


def seeded(archive: Archive) -> AuditLog:
    log = AuditLog(archive.sessions, clock=Clock())
    log.append(act(detail={"path": "/a"}, patient_id="P1", study_instance_uid="1.2.3"))
    log.append(act(actor='odd"name\\with]chars', action="access", outcome="denied"))
    log.append(act(actor="wang.fang", action="view_end", duration_seconds=12.5,
                   view_started_at=T0, view_ended_at=T0 + timedelta(seconds=12.5)))  # fmt: skip
    return log


def test_json_lines_export_one_object_per_entry(archive: Archive) -> None:
    log = seeded(archive)
    lines = list(export_lines(log.iter_events(AuditFilter()), "jsonl"))
    objects = [json.loads(line) for line in lines]
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines)
    assert [o["seq"] for o in objects] == [1, 2, 3]
    assert objects[1]["prev_hash"] == objects[0]["entry_hash"]
    assert objects[0]["detail"] == {"path": "/a"} and objects[0]["patient_id"] == "P1"
    assert objects[2]["duration_seconds"] == 12.5


def test_syslog_export_is_rfc5424_with_escaped_parameters(archive: Archive) -> None:
    log = seeded(archive)
    lines = list(export_lines(log.iter_events(AuditFilter()), "syslog", hostname="cloud-1"))
    parsed = [SYSLOG.match(line) for line in lines]
    assert all(parsed), lines
    first, denied, ended = (match.groupdict() for match in parsed if match)
    assert (first["pri"], denied["pri"]) == ("109", "108")  # log audit; notice / warning
    assert first["ts"] == "2025-03-14T02:00:00.000000Z" and first["host"] == "cloud-1"
    params = dict(PARAM.findall(denied["params"]))
    assert params["actor"] == 'odd\\"name\\\\with\\]chars'
    assert params["seq"] == "2" and params["outcome"] == "denied"
    first_params = dict(PARAM.findall(first["params"]))
    assert json.loads(unescape(first_params["detail"])) == {"path": "/a"}
    assert len(first_params["entry_hash"]) == 64
    assert "for 12.5 s" in ended["msg"]
    assert sd_escape('a"b\\c]d') == 'a\\"b\\\\c\\]d'
    assert syslog_line({"seq": 1, "at": None, "actor": "x\ny"}, "h").count("\n") == 1


# --- the command ---------------------------------------------------------------------------


def cli(tmp_path: Path, database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).with_name("imaging-cloud")), "audit", *args]
    command += ["--data-dir", str(tmp_path / "data")]
    if database_url:
        command += ["--database-url", database_url]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow  # heavy: CI runs it, the quick local run leaves it out
def test_the_audit_command_verifies_searches_and_exports(
    archive: Archive, tmp_path: Path, database_url: str
) -> None:
    log = seeded(archive)
    for n in range(3):
        log.append(act(action="search", detail={"n": n}))
    done = cli(tmp_path, database_url, "verify")
    assert done.returncode == 0, done.stderr
    last = log.search(AuditFilter(limit=1))[0]["entry_hash"]
    assert done.stdout == f"audit chain OK: 6 entries, last hash {last}\n"

    found = cli(tmp_path, database_url, "search", "--json", "--outcome", "denied")
    assert [json.loads(line)["seq"] for line in found.stdout.splitlines()] == [2]
    table = cli(tmp_path, database_url, "search", "--action", "search", "--limit", "2")
    assert [line.split("\t")[0] for line in table.stdout.splitlines()] == ["6", "5"]
    bad = cli(tmp_path, database_url, "search", "--since", "last tuesday")
    assert bad.returncode == 2 and "ISO 8601" in bad.stderr

    out = tmp_path / "audit.log"
    exported = cli(tmp_path, database_url, "export", "--format", "syslog", "-o", str(out),
                   "--until", "2030-01-01")  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    lines = out.read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(lines) == 6 and all(SYSLOG.match(line) for line in lines)
    streamed = cli(tmp_path, database_url, "export", "--since", "2025-03-14T02:00:00Z")
    assert [json.loads(line)["seq"] for line in streamed.stdout.splitlines()] == [1, 2, 3, 4, 5, 6]

    with archive.engine.begin() as connection:
        connection.execute(text("UPDATE audit_events SET client_address = '6.6.6.6' WHERE seq = 3"))
    broken = cli(tmp_path, database_url, "verify")
    assert broken.returncode == 1
    assert "seq 3: hash mismatch (entry changed)" in broken.stdout.splitlines()


# --- HTTP ----------------------------------------------------------------------------------


@pytest.fixture
def http(archive: Archive, tmp_path: Path) -> Iterator[tuple[httpx.Client, dict[str, str]]]:
    """The audit router in an app of its own, and a token per role."""
    archive.hospitals.add_hospital("H1", "One")
    archive.hospitals.add_hospital("H2", "Two")
    tokens = TokenSigner(tmp_path / "keys" / "token.key")
    people = {
        "auditor.a": ("auditor", None),
        "admin.h1": ("hospital_admin", "H1"),
        "doc.h1": ("clinician", "H1"),
        "root": ("platform_admin", None),
    }
    issued = {}
    for name, (role, hospital) in people.items():
        user = archive.users.create_user(name, PASSWORD, role, hospital_id=hospital)
        issued[name] = tokens.issue(user)
    log = archive.audit
    log.append(act(actor="doc.h1", patient_id="P1", study_instance_uid="1.2.3"))
    log.append(act(actor="doc.h2", hospital_id="H2", patient_id="P2"))
    log.append(act(actor_kind="patient", actor="patient:P2", hospital_id="", patient_id="P2"))
    app = FastAPI()
    app.state.archive, app.state.tokens = archive, tokens
    install_problem_handlers(app)
    app.include_router(audit_api.router)
    with serving(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield client, issued


def get(http: tuple[httpx.Client, dict[str, str]], who: str | None, url: str) -> Any:
    client, tokens = http
    headers = {"Authorization": f"Bearer {tokens[who]}"} if who else {}
    return client.get(url, headers=headers)


def test_auditors_see_every_event_without_patient_identity(
    http: tuple[httpx.Client, dict[str, str]],
) -> None:
    answer = get(http, "auditor.a", "/api/audit/events?action=download")
    assert answer.status_code == 200, answer.text
    events = answer.json()["events"]
    assert [e["actor"] for e in events] == ["patient:(redacted)", "doc.h2", "doc.h1"]
    assert {e["patient_id"] for e in events} == {"(redacted)"}
    refused = get(http, "auditor.a", "/api/audit/events?patient_id=P1")
    assert refused.status_code == 403
    assert refused.headers["content-type"] == "application/problem+json"
    own = get(http, "auditor.a", "/api/audit/events?action=audit_search&limit=1").json()
    assert own["events"][0]["actor"] == "auditor.a"  # reading the log is audited too


def test_hospital_admins_see_their_hospital_only(
    http: tuple[httpx.Client, dict[str, str]],
) -> None:
    events = get(http, "admin.h1", "/api/audit/events?action=download").json()["events"]
    assert [(e["actor"], e["patient_id"]) for e in events] == [("doc.h1", "P1")]
    alerts = get(http, "admin.h1", "/api/audit/alerts")
    assert alerts.status_code == 200 and alerts.json()["alerts"] == []
    assert get(http, "admin.h1", "/api/audit/verify").status_code == 403


def test_roles_without_view_logs_are_refused_and_audited(
    http: tuple[httpx.Client, dict[str, str]],
) -> None:
    assert get(http, None, "/api/audit/events").status_code == 401
    refused = get(http, "doc.h1", "/api/audit/events")
    assert refused.status_code == 403
    denied = get(http, "root", "/api/audit/events?outcome=denied").json()["events"]
    assert [(e["actor"], e["detail"]) for e in denied] == [("doc.h1", {"permission": "view_logs"})]


def test_bad_filters_are_400_problems(http: tuple[httpx.Client, dict[str, str]]) -> None:
    for query in ("since=yesterday", "until=2025-13-01", "outcome=maybe", "limit=0", "study=abc"):
        answer = get(http, "root", f"/api/audit/events?{query}")
        assert answer.status_code == 400, query
        assert answer.headers["content-type"] == "application/problem+json"


def test_export_streams_json_lines_and_syslog(http: tuple[httpx.Client, dict[str, str]]) -> None:
    answer = get(http, "root", "/api/audit/export?action=download")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/x-ndjson")
    assert "attachment" in answer.headers["content-disposition"]
    assert [json.loads(line)["seq"] for line in answer.text.splitlines()] == [1, 2, 3]
    syslog = get(http, "auditor.a", "/api/audit/export?format=syslog&since=2000-01-01")
    assert syslog.headers["content-type"].startswith("text/plain")
    lines = syslog.text.splitlines(keepends=True)
    assert len(lines) >= 3 and all(SYSLOG.match(line) for line in lines)
    assert 'patient_id="(redacted)"' in lines[0]
    assert get(http, "root", "/api/audit/export?format=xml").status_code == 400


def test_verify_and_alerts_over_http(
    http: tuple[httpx.Client, dict[str, str]], archive: Archive
) -> None:
    report = get(http, "auditor.a", "/api/audit/verify").json()
    assert report["ok"] is True and report["problems"] == []
    detector = AnomalyDetector(archive.sessions, AnomalyPolicy(denied_attempts=1))
    AuditLog(archive.sessions, detector=detector).append(
        act(actor="patient:P2", actor_kind="patient", hospital_id="", outcome="denied")
    )
    alerts = get(http, "auditor.a", "/api/audit/alerts?kind=denied_attempts").json()["alerts"]
    assert [(a["kind"], a["actor"]) for a in alerts] == [("denied_attempts", "patient:(redacted)")]
    assert get(http, "root", "/api/audit/alerts").json()["alerts"][0]["actor"] == "patient:P2"
    assert get(http, "root", "/api/audit/alerts?kind=bogus").status_code == 400
    with archive.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_events WHERE seq = 2"))
    broken = get(http, "root", "/api/audit/verify").json()
    assert broken["ok"] is False and broken["problems"][0] == "seq 2: missing (entry deleted)"


def test_a_node_wires_the_audit_log_from_its_settings(archive: Archive, tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, audit_burst_downloads=7, audit_view_idle_seconds=5)
    detector = install_audit(archive, settings)
    try:
        assert archive.audit.detector is detector
        assert archive.audit.view_idle_seconds == 5
        assert detector.policy.burst_downloads == 7
        assert (detector.policy.working_hours_start, detector.policy.timezone) == (
            7,
            "Asia/Shanghai",
        )
        archive.audit.record_view(act(action="view", study_instance_uid="1.2.3"))
    finally:
        archive.audit.close()
        detector.close()
    assert [e["action"] for e in archive.audit.iter_events(AuditFilter())] == ["view", "view_end"]
    with pytest.raises(ValueError, match="time zone"):
        AnomalyDetector(archive.sessions, AnomalyPolicy(timezone="Mars/Olympus"))
