"""The audit hash chain: tampering of every kind is named, concurrent appends stay linear,
viewing sessions are coalesced. Runs on SQLite and PostgreSQL (the `archive` fixture)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

from sqlalchemy import text

from cloud.archive import Archive
from cloud.audit import GENESIS, AuditEntry, AuditLog, entry_hash
from cloud.audit_query import AuditFilter

T0 = datetime(2025, 3, 14, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai


class Clock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def entry(n: int = 0, **fields: object) -> AuditEntry:
    base: dict[str, object] = {
        "actor_kind": "user",
        "actor": f"user{n % 3}",
        "action": "download",
        "role": "radiologist",
        "hospital_id": "H1",
        "study_instance_uid": f"1.2.826.0.1.{n}",
        "patient_id": f"P{n}",
        "client_address": "10.0.0.1",
        "detail": {"n": n, "path": "/x", "nested": {"b": 1, "a": [1, 2]}},
    }
    base.update(fields)
    return AuditEntry(**base)  # type: ignore[arg-type]


def filled(archive: Archive, count: int = 10) -> AuditLog:
    log = archive.audit
    for n in range(count):
        log.append(entry(n))
    return log


def sql(archive: Archive, statement: str, **params: object) -> None:
    with archive.engine.begin() as connection:
        connection.execute(text(statement), params)


# --- the hash ------------------------------------------------------------------------------


def test_entry_hash_covers_every_field_and_the_previous_hash() -> None:
    original = entry(1, duration_seconds=2.5, view_started_at=T0)
    digest = entry_hash(1, T0, original, GENESIS)
    assert digest == entry_hash(1, T0, original, GENESIS)
    assert len(digest) == 64
    # The same moment in another zone is the same instant, hence the same hash.
    shanghai = T0.astimezone(timezone(timedelta(hours=8)))
    assert entry_hash(1, shanghai, original, GENESIS) == digest
    changed = [
        entry_hash(2, T0, original, GENESIS),
        entry_hash(1, T0 + timedelta(microseconds=1), original, GENESIS),
        entry_hash(1, T0, original, "f" * 64),
    ]
    for name, value in {
        "actor": "mallory",
        "role": "clinician",
        "hospital_id": "H2",
        "action": "view",
        "outcome": "denied",
        "study_instance_uid": "1.2.3",
        "patient_id": "P9",
        "client_address": "10.6.6.6",
        "detail": {"n": 2},
        "view_started_at": T0 + timedelta(seconds=1),
        "view_ended_at": T0,
        "duration_seconds": 2.6,
    }.items():
        fields: dict[str, object] = {"duration_seconds": 2.5, "view_started_at": T0, name: value}
        changed.append(entry_hash(1, T0, entry(1, **fields), GENESIS))
    assert digest not in changed and len(set(changed)) == len(changed)


# --- a good chain --------------------------------------------------------------------------


def test_an_empty_chain_verifies(archive: Archive) -> None:
    report = archive.audit.verify()
    assert (report.ok, report.entries, report.last_seq, report.last_hash) == (True, 0, 0, GENESIS)


def test_appends_form_a_chain_that_verifies_in_batches(archive: Archive) -> None:
    log = filled(archive, 23)
    calls: list[tuple[int, int]] = []
    report = log.verify(lambda done, total: calls.append((done, total)), batch_size=5)
    assert report.ok, report.problems
    assert (report.entries, report.last_seq) == (23, 23)
    assert calls[0] == (5, 23) and calls[-1] == (23, 23) and len(calls) == 5
    newest = log.search(AuditFilter(limit=1))[0]
    assert newest["seq"] == 23 and newest["entry_hash"] == report.last_hash
    assert newest["detail"] == {"n": 22, "path": "/x", "nested": {"a": [1, 2], "b": 1}}


def test_odd_values_are_stored_as_hashed(archive: Archive) -> None:
    log = archive.audit
    log.append(entry(1, actor="x" * 300, duration_seconds=3, detail={"when": T0, "k": (1, 2)}))
    log.append(entry(2, view_started_at=datetime(2025, 3, 14, 10, 0)))  # naive: taken as UTC
    log.append(entry(3), at=datetime(2025, 3, 14, 18, 0, tzinfo=timezone(timedelta(hours=8))))
    assert log.verify().ok, log.verify().problems
    first = log.search(AuditFilter(action="download", limit=10))[-1]
    assert len(first["actor"]) == 128 and first["duration_seconds"] == 3.0


def test_concurrent_appends_stay_linear(archive: Archive) -> None:
    log = archive.audit
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for n in range(50):
                log.append(entry(worker * 100 + n, actor=f"worker{worker}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    report = log.verify()
    assert report.ok, report.problems
    assert (report.entries, report.last_seq) == (400, 400)
    seqs = [event["seq"] for event in log.iter_events(AuditFilter(), batch_size=64)]
    assert seqs == list(range(1, 401))


def test_two_logs_on_one_database_share_the_chain(archive: Archive) -> None:
    # Two AuditLog objects have separate in-process locks, as two processes would: the
    # database lock on the chain head alone keeps the chain linear.
    logs = [archive.audit, AuditLog(archive.sessions)]
    errors: list[BaseException] = []

    def work(log: AuditLog, worker: int) -> None:
        try:
            for n in range(25):
                log.append(entry(n, actor=f"w{worker}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(logs[i % 2], i)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    report = archive.audit.verify()
    assert report.ok and report.entries == 100, report.problems


# --- tampering -----------------------------------------------------------------------------


def test_a_changed_entry_is_named(archive: Archive) -> None:
    filled(archive)
    sql(archive, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 4")
    report = archive.audit.verify()
    assert not report.ok
    assert report.problems == ["seq 4: hash mismatch (entry changed)"]


def test_a_changed_detail_is_named(archive: Archive) -> None:
    filled(archive)
    sql(archive, "UPDATE audit_events SET detail = '{\"n\": 99}' WHERE seq = 2")
    sql(archive, "UPDATE audit_events SET detail = 'not json' WHERE seq = 7")
    problems = archive.audit.verify().problems
    assert problems == [
        "seq 2: hash mismatch (entry changed)",
        "seq 7: detail is not a JSON object (entry changed)",
    ]


def test_a_changed_and_rehashed_entry_breaks_the_next_link(archive: Archive) -> None:
    log = filled(archive)
    row = log.search(AuditFilter(actor="", limit=100, offset=5))[0]  # seq 5
    assert row["seq"] == 5
    forged = entry(4, actor="mallory")
    at = datetime.fromisoformat(row["at"])
    new_hash = entry_hash(5, at, forged, row["prev_hash"])
    sql(
        archive,
        "UPDATE audit_events SET actor = 'mallory', detail = :detail, entry_hash = :h "
        "WHERE seq = 5",
        detail='{"n": 4, "nested": {"a": [1, 2], "b": 1}, "path": "/x"}',
        h=new_hash,
    )
    problems = log.verify().problems
    assert len(problems) == 1 and problems[0].startswith("seq 6: prev_hash does not link to seq 5")


def test_a_deleted_middle_entry_is_a_gap(archive: Archive) -> None:
    filled(archive)
    sql(archive, "DELETE FROM audit_events WHERE seq = 5")
    assert archive.audit.verify().problems == ["seq 5: missing (entry deleted)"]
    sql(archive, "DELETE FROM audit_events WHERE seq IN (7, 8)")
    assert archive.audit.verify().problems == [
        "seq 5: missing (entry deleted)",
        "seq 7..8: missing (2 entries deleted)",
    ]


def test_deleted_first_entries_are_a_gap(archive: Archive) -> None:
    filled(archive)
    sql(archive, "DELETE FROM audit_events WHERE seq <= 2")
    assert archive.audit.verify().problems == ["seq 1..2: missing (2 entries deleted)"]


def test_a_deleted_tail_disagrees_with_the_head(archive: Archive) -> None:
    filled(archive)
    sql(archive, "DELETE FROM audit_events WHERE seq = 10")
    report = archive.audit.verify()
    assert (report.ok, report.entries, report.last_seq) == (False, 9, 9)
    assert report.problems == [
        "chain head names seq 10 but the last entry is seq 9: entries 10..10 were deleted"
    ]


def test_a_forged_row_is_detected(archive: Archive) -> None:
    log = filled(archive)
    last = log.search(AuditFilter(limit=1))[0]
    forged = entry(10, actor="mallory")
    digest = entry_hash(11, T0, forged, last["entry_hash"])
    sql(
        archive,
        "INSERT INTO audit_events (seq, at, actor_kind, actor, role, hospital_id, action, "
        "outcome, study_instance_uid, patient_id, client_address, detail, prev_hash, "
        "entry_hash) VALUES (11, :at, 'user', 'mallory', 'radiologist', 'H1', 'download', "
        "'allowed', '1.2.826.0.1.10', 'P10', '10.0.0.1', :detail, :prev, :h)",
        at=T0,
        detail='{"n": 10, "nested": {"a": [1, 2], "b": 1}, "path": "/x"}',
        prev=last["entry_hash"],
        h=digest,
    )
    # A perfectly hashed row appended behind the log's back: the head does not know it.
    assert log.verify().problems == [
        "entries after seq 10 (up to 11) are not in the chain head: written outside the audit log"
    ]


def test_a_replaced_entry_is_detected(archive: Archive) -> None:
    filled(archive)
    sql(archive, "DELETE FROM audit_events WHERE seq = 3")
    sql(
        archive,
        "INSERT INTO audit_events (seq, at, actor_kind, actor, role, hospital_id, action, "
        "outcome, study_instance_uid, patient_id, client_address, detail, prev_hash, "
        "entry_hash) VALUES (3, :at, 'user', 'mallory', '', '', 'search', 'allowed', '', '', "
        "'', '{}', :prev, :h)",
        at=T0,
        prev="0" * 64,
        h="1" * 64,
    )
    problems = archive.audit.verify().problems
    assert problems[0].startswith("seq 3: prev_hash does not link to seq 2")
    assert "seq 3: hash mismatch (entry changed)" in problems
    assert any(p.startswith("seq 4: prev_hash does not link") for p in problems)


def test_reordered_entries_are_detected(archive: Archive) -> None:
    filled(archive)
    # Swap the content of seq 3 and seq 4, hashes and all.
    sql(archive, "UPDATE audit_events SET seq = 1000 WHERE seq = 3")
    sql(archive, "UPDATE audit_events SET seq = 3 WHERE seq = 4")
    sql(archive, "UPDATE audit_events SET seq = 4 WHERE seq = 1000")
    problems = archive.audit.verify().problems
    assert "seq 3: hash mismatch (entry changed)" in problems
    assert "seq 4: hash mismatch (entry changed)" in problems
    assert any(p.startswith("seq 3: prev_hash does not link") for p in problems)


def test_a_changed_head_is_detected(archive: Archive) -> None:
    filled(archive)
    sql(archive, "UPDATE audit_chain_head SET last_hash = :h WHERE pk = 1", h="2" * 64)
    assert archive.audit.verify().problems == [
        "seq 10: chain head hash differs (the last entry was replaced)"
    ]


# --- viewing sessions ----------------------------------------------------------------------


def view(actor: str = "li.wei", study: str = "1.2.3", path: str = "/frames/1") -> AuditEntry:
    return AuditEntry(
        "user", actor, "view", role="clinician", hospital_id="H1", study_instance_uid=study,
        patient_id="P1", client_address="10.0.0.5", detail={"path": path},
    )  # fmt: skip


def actions(log: AuditLog) -> list[tuple[str, str, str]]:
    return [
        (e["action"], e["actor"], e["study_instance_uid"]) for e in log.iter_events(AuditFilter())
    ]


def test_reads_are_coalesced_into_a_viewing_session(archive: Archive) -> None:
    clock = Clock()
    log = AuditLog(archive.sessions, clock=clock, view_idle_seconds=60)
    log.record_view(view())  # written at once: durable even if the process dies now
    assert actions(log) == [("view", "li.wei", "1.2.3")]
    for _ in range(4):
        clock.advance(30)
        log.record_view(view(path="/frames/2"))
    assert log.flush_views() == 0  # last read 0 s ago
    clock.advance(59)
    assert log.flush_views() == 0 and log.open_views() == 1
    clock.advance(1)
    assert log.flush_views() == 1 and log.open_views() == 0
    events = list(log.iter_events(AuditFilter()))
    start, end = events
    assert start["view_started_at"] == start["at"] == T0.isoformat(timespec="microseconds")
    assert start["detail"] == {"path": "/frames/1"}
    assert end["action"] == "view_end"
    assert end["view_started_at"] == start["view_started_at"]
    assert end["view_ended_at"] == (T0 + timedelta(seconds=120)).isoformat(timespec="microseconds")
    assert end["duration_seconds"] == 120.0
    assert end["detail"] == {"reads": 5, "start_seq": start["seq"]}
    assert (end["client_address"], end["patient_id"], end["role"]) == (
        "10.0.0.5",
        "P1",
        "clinician",
    )
    assert log.verify().ok


def test_sessions_are_per_actor_and_study_and_restart_after_idle(archive: Archive) -> None:
    clock = Clock()
    log = AuditLog(archive.sessions, clock=clock, view_idle_seconds=60)
    log.record_view(view())
    log.record_view(view(study="1.2.4"))
    log.record_view(view(actor="wang.fang"))
    clock.advance(90)
    log.record_view(view())  # the old session was idle: it ends, a new one starts
    assert actions(log) == [
        ("view", "li.wei", "1.2.3"),
        ("view", "li.wei", "1.2.4"),
        ("view", "wang.fang", "1.2.3"),
        ("view_end", "li.wei", "1.2.3"),
        ("view", "li.wei", "1.2.3"),
    ]
    log.close()  # every open session ends
    assert sorted(actions(log)[5:]) == [
        ("view_end", "li.wei", "1.2.3"),
        ("view_end", "li.wei", "1.2.4"),
        ("view_end", "wang.fang", "1.2.3"),
    ]
    assert log.open_views() == 0


def test_the_flusher_thread_ends_idle_sessions(archive: Archive) -> None:
    clock = Clock()
    log = AuditLog(archive.sessions, clock=clock, view_idle_seconds=60)
    log.start_flusher(0.02)
    try:
        log.record_view(view())
        clock.advance(61)
        for _ in range(250):
            if log.open_views() == 0:
                break
            threading.Event().wait(0.02)
        assert [a for a, _, _ in actions(log)] == ["view", "view_end"]
    finally:
        log.close()


def test_an_anomaly_check_never_fails_an_append(archive: Archive) -> None:
    class Broken:
        def observe(self, seq: int, at: datetime, entry: AuditEntry) -> None:
            raise RuntimeError("boom")

    log = AuditLog(archive.sessions, detector=Broken())
    assert log.append(entry(1)) == 1
    assert log.verify().ok


# --- search --------------------------------------------------------------------------------


def test_search_filters(archive: Archive) -> None:
    clock = Clock()
    log = AuditLog(archive.sessions, clock=clock)
    for n in range(6):
        clock.advance(60)
        log.append(entry(n, outcome="denied" if n == 5 else "allowed",
                         hospital_id="H2" if n >= 4 else "H1"))  # fmt: skip
    assert [e["seq"] for e in log.search(AuditFilter())] == [6, 5, 4, 3, 2, 1]
    assert [e["seq"] for e in log.search(AuditFilter(actor="user1"))] == [5, 2]
    assert [e["seq"] for e in log.search(AuditFilter(outcome="denied"))] == [6]
    assert [e["seq"] for e in log.search(AuditFilter(hospital_id="H2"))] == [6, 5]
    assert [e["seq"] for e in log.search(AuditFilter(patient_id="P3"))] == [4]
    assert [e["seq"] for e in log.search(AuditFilter(study_instance_uid="1.2.826.0.1.0"))] == [1]
    window = AuditFilter(since=T0 + timedelta(minutes=2), until=T0 + timedelta(minutes=4))
    assert [e["seq"] for e in log.search(window)] == [3, 2]
    assert [e["seq"] for e in log.search(AuditFilter(limit=2, offset=1))] == [5, 4]
    assert [e["seq"] for e in log.iter_events(AuditFilter(hospital_id="H1"), batch_size=2)] == [
        1, 2, 3, 4,
    ]  # fmt: skip


def test_hospital_scope_covers_its_people_and_its_studies(
    archive: Archive, ct_files: list[bytes]
) -> None:
    archive.hospitals.add_hospital("H1", "One")
    archive.hospitals.add_hospital("H2", "Two")
    h1 = archive.hospitals.by_id("H1")
    assert h1 is not None
    for data in ct_files:
        outcome = archive.store(data, source="test", hospital_pk=h1.pk)
    owned = outcome.study_instance_uid
    log = archive.audit
    log.append(entry(1, actor="h1.doctor", hospital_id="H1"))  # seq 1
    log.append(entry(2, actor="h2.doctor", hospital_id="H2"))  # seq 2
    log.append(entry(3, actor_kind="patient", actor="patient:PID-1", hospital_id="",
                     study_instance_uid=owned))  # fmt: skip
    log.append(entry(4, actor="h2.doctor", hospital_id="H2", study_instance_uid=owned))
    seqs = {
        h: [e["seq"] for e in log.search(AuditFilter(scope_hospital_id=h))] for h in ("H1", "H2")
    }
    assert seqs == {"H1": [4, 3, 1], "H2": [4, 2]}


def test_verify_while_entries_are_appended(archive: Archive) -> None:
    log = filled(archive, 50)
    stop = threading.Event()

    def keep_appending() -> None:
        n = 0
        while not stop.is_set():
            log.append(entry(n))
            n += 1

    writer = threading.Thread(target=keep_appending)
    writer.start()
    try:
        reports = [log.verify(batch_size=16) for _ in range(3)]
    finally:
        stop.set()
        writer.join()
    assert all(report.ok for report in reports), [r.problems for r in reports]
    assert log.verify().ok
