"""Retention and destruction on a real archive (SQLite and PostgreSQL): classification,
refusals, legal hold, extension, crypto-shredding, destruction records and their verification,
the console commands, and legal hold over HTTP."""

from __future__ import annotations

import argparse
import contextlib
import io
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select, text, update

from cloud.archive import Archive
from cloud.audit_query import AuditFilter
from cloud.destruction import Destruction
from cloud.errors import InvalidQueryError
from cloud.models import DestructionRecord, Instance, Series, Study, StudyKey
from cloud.query import Query
from cloud.retention import Actor, Retention, RetentionRefusedError
from cloud.retention_policy import add_years
from imaging_cloud.node import Node
from imaging_cloud.retention_cli import CommandError, add_retention_commands
from imaging_cloud.synthetic import (
    UID_ROOT,
    PatientSpec,
    StudySpec,
    ct_series,
    secondary_capture,
    to_part10,
)
from tests.support.servers import PASSWORD, client

VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
OFFICER = Actor(kind="user", name="records.officer", role="platform_admin")
TODAY = date(2026, 6, 1)


def store_ct(archive: Archive, study_date: str, patient_id: str = "PID-CT", **more: int) -> str:
    spec = StudySpec(patient=PatientSpec(patient_id=patient_id), study_date=study_date)
    for ds in ct_series(spec, slices=3, size=16):
        archive.store(to_part10(ds), source="test", **more)
    return spec.study_instance_uid


def store_video(archive: Archive, study_date: str, patient_id: str = "PID-VID") -> str:
    """A tiny Video Endoscopic Image Storage object (a secondary capture relabelled)."""
    spec = StudySpec(patient=PatientSpec(patient_id=patient_id), study_date=study_date)
    ds = next(secondary_capture(spec, 1, size=8))
    ds.SOPClassUID = VIDEO_ENDOSCOPIC
    ds.Modality = "ES"
    ds.SOPInstanceUID = generate_uid(UID_ROOT)
    archive.store(to_part10(ds), source="test")
    return spec.study_instance_uid


def blob_keys(archive: Archive, uid: str) -> list[str]:
    with archive.sessions() as session:
        return list(
            session.scalars(
                select(Instance.blob_key)
                .join(Series, Instance.series_pk == Series.pk)
                .join(Study, Series.study_pk == Study.pk)
                .where(Study.study_instance_uid == uid)
            )
        )


def services(archive: Archive, today: date = TODAY) -> tuple[Retention, Destruction]:
    retention = Retention(archive, today=lambda: today)
    return retention, Destruction(archive, retention)


def audit_actions(archive: Archive, uid: str) -> list[str]:
    events = archive.audit.iter_events(AuditFilter(study_instance_uid=uid))
    return [event["action"] for event in events]


# --- classification ------------------------------------------------------------------------


def test_defaults_by_modality_and_sop_class_and_retain_until(archive: Archive) -> None:
    retention, _ = services(archive)
    ct = store_ct(archive, "20250314")
    video = store_video(archive, "20250314")
    undated = store_ct(archive, "", patient_id="PID-UNDATED")
    assert retention.classify_new() == 3
    assert retention.classify_new() == 0  # nothing new

    ct_life = retention.lifecycle(ct)
    assert (ct_life.category, ct_life.level, ct_life.retention_class) == (
        "health_status",
        4,
        "imaging",
    )
    assert ct_life.retain_until == date(2040, 3, 14)
    video_life = retention.lifecycle(video)
    assert video_life.retention_class == "surgical_field_video"
    assert video_life.retain_until == date(2030, 3, 14)
    received = datetime.now(UTC).date()  # no Study Date: counted from the day it arrived
    assert retention.lifecycle(undated).retain_until == add_years(received, 15)


def test_a_series_added_later_reclassifies_and_never_shortens(archive: Archive) -> None:
    retention, _ = services(archive)
    video = store_video(archive, "20250314", patient_id="PID-MIX")
    retention.classify_new()
    assert retention.lifecycle(video).retention_class == "surgical_field_video"
    spec = StudySpec(
        patient=PatientSpec(patient_id="PID-MIX"),
        study_instance_uid=video,
        study_date="20250314",
    )
    archive.store(to_part10(next(ct_series(spec, slices=1, size=8))), source="test")
    assert retention.classify_new() == 1
    assert retention.lifecycle(video).retention_class == "imaging"
    assert retention.lifecycle(video).retain_until == date(2040, 3, 14)


def test_shortening_by_reclassification_needs_an_approver(archive: Archive) -> None:
    retention, _ = services(archive)
    ct = store_ct(archive, "20250314")
    retention.classify(ct)
    with pytest.raises(RetentionRefusedError, match=r"shorten retention from 2040-03-14 to 2026"):
        retention.reclassify(ct, actor=OFFICER, retention_class="safety_video")
    longer = retention.reclassify(ct, actor=OFFICER, level=5)
    assert longer.retain_until == date(2055, 3, 14) and longer.classified_by == "records.officer"
    assert "retention_classified" in audit_actions(archive, ct)


# --- refusals, legal hold, extension -------------------------------------------------------


def test_nothing_is_destroyed_before_retain_until_or_unclassified(archive: Archive) -> None:
    retention, destruction = services(archive)
    ct = store_ct(archive, "20250314")
    with pytest.raises(RetentionRefusedError, match="has not been classified"):
        destruction.destroy(ct, approved_by="chief", actor=OFFICER)
    retention.classify(ct)
    with pytest.raises(RetentionRefusedError, match="not due for destruction before 2040-03-15"):
        destruction.check(ct, date(2040, 3, 14))
    destruction.check(ct, date(2040, 3, 15))  # the day after retain-until it would be due
    with pytest.raises(RetentionRefusedError) as refused:
        destruction.destroy(ct, approved_by="chief", actor=OFFICER)
    assert refused.value.detail == (
        f"study {ct} is retained until 2040-03-14 (imaging, level 4): "
        "not due for destruction before 2040-03-15"
    )
    assert retention.due_for_destruction() == []
    assert archive.locate(ct)  # still there


def test_legal_hold_stops_destruction_and_extension_moves_retain_until(archive: Archive) -> None:
    retention, destruction = services(archive)
    video = store_video(archive, "20150110")
    retention.classify_new()
    assert [d.study_instance_uid for d in retention.due_for_destruction()] == [video]

    with pytest.raises(InvalidQueryError, match="needs a reason"):
        retention.hold(video, reason="  ", actor=OFFICER)
    with pytest.raises(InvalidQueryError, match="NUL"):
        retention.hold(video, reason="a\x00b", actor=OFFICER)
    retention.hold(video, reason="court order 2026-17", actor=OFFICER)
    assert retention.due_for_destruction() == []
    with pytest.raises(RetentionRefusedError, match="is on legal hold: court order 2026-17"):
        destruction.destroy(video, approved_by="chief", actor=OFFICER)
    retention.release(video, actor=OFFICER, reason="case closed")
    with pytest.raises(RetentionRefusedError, match="not on legal hold"):
        retention.release(video, actor=OFFICER)

    extended = retention.extend(video, approved_by="chief.records", actor=OFFICER, years=10)
    assert extended.retain_until == date(2030, 1, 10) and extended.extended_by == "chief.records"
    assert retention.due_for_destruction() == []
    with pytest.raises(RetentionRefusedError, match="must move that later"):
        retention.extend(video, approved_by="chief", actor=OFFICER, until=date(2029, 1, 1))
    with pytest.raises(RetentionRefusedError, match="at most"):
        retention.extend(video, approved_by="chief", actor=OFFICER, years=31)
    with pytest.raises(RetentionRefusedError, match="not due for destruction before 2030-01-11"):
        destruction.destroy(video, approved_by="chief", actor=OFFICER)
    actions = audit_actions(archive, video)
    assert {"legal_hold", "legal_hold_released", "retention_extended"} <= set(actions)


def test_a_retain_until_below_the_policy_is_refused(archive: Archive) -> None:
    retention, destruction = services(archive)
    ct = store_ct(archive, "20250314")
    retention.classify(ct)
    with archive.sessions() as session:  # someone edits the row behind the policy's back
        session.execute(text("UPDATE study_lifecycle SET retain_until = '20200101'"))
        session.commit()
    with pytest.raises(RetentionRefusedError, match="earlier than the policy allows"):
        destruction.destroy(ct, approved_by="chief", actor=OFFICER)


# --- destruction and its records -----------------------------------------------------------


@dataclass
class Destroyed:
    archive: Archive
    destruction: Destruction
    uids: list[str]
    keys: dict[str, list[str]]
    sealed: dict[str, bool]  # had a live data key before destruction


@pytest.fixture
def destroyed(archive: Archive) -> Destroyed:
    """Three studies past their retention, destroyed under the policy."""
    retention, destruction = services(archive)
    uids = [
        store_video(archive, "20150110", patient_id="PID-A"),
        store_ct(archive, "20000301", patient_id="PID-B"),
        store_video(archive, "20180505", patient_id="PID-C"),
    ]
    retention.classify_new()
    assert {d.study_instance_uid for d in retention.due_for_destruction()} == set(uids)
    keys = {uid: blob_keys(archive, uid) for uid in uids}
    sealed = {uid: live_key(archive, uid) for uid in uids}
    for uid in uids:
        destruction.destroy(uid, approved_by="chief.records", actor=OFFICER)
    return Destroyed(archive, destruction, uids, keys, sealed)


def test_destroy_removes_the_study_and_appends_a_verifiable_record(destroyed: Destroyed) -> None:
    archive = destroyed.archive
    for uid in destroyed.uids:
        assert archive.search(Query("study", {"StudyInstanceUID": uid})) == []
        assert all(not archive.blobs.exists(key) for key in destroyed.keys[uid])
        assert "destroyed" in audit_actions(archive, uid)
    with archive.sessions() as session:
        records = list(session.scalars(select(DestructionRecord).order_by(DestructionRecord.seq)))
    assert [r.seq for r in records] == [1, 2, 3]
    assert records[1].prev_hash == records[0].entry_hash
    assert records[1].instances == 3 and records[1].retention_class == "imaging"
    assert records[0].approved_by == "chief.records"
    assert [r.key_destroyed for r in records] == [destroyed.sealed[u] for u in destroyed.uids]
    assert all(not live_key(archive, uid) for uid in destroyed.uids)
    assert "PID-A" not in records[0].patient_id_sha256  # a digest, not the ID
    report = destroyed.destruction.verify()
    assert report.ok, report.problems
    assert report.records == 3


def test_a_changed_record_is_named(destroyed: Destroyed) -> None:
    with destroyed.archive.sessions() as session:
        session.execute(
            text("UPDATE destruction_records SET approved_by = 'mallory' WHERE seq = 2")
        )
        session.commit()
    report = destroyed.destruction.verify()
    assert not report.ok
    assert "seq 2: hash mismatch (record changed)" in report.problems


def test_a_deleted_record_leaves_a_gap(destroyed: Destroyed) -> None:
    with destroyed.archive.sessions() as session:
        session.execute(text("DELETE FROM destruction_records WHERE seq = 2"))
        session.commit()
    problems = destroyed.destruction.verify().problems
    assert "seq 2: missing (record deleted)" in problems


def test_a_deleted_last_record_is_caught_by_its_audit_anchor(destroyed: Destroyed) -> None:
    with destroyed.archive.sessions() as session:
        session.execute(text("DELETE FROM destruction_records WHERE seq = 3"))
        session.commit()
    problems = destroyed.destruction.verify().problems
    assert any(p.startswith("seq 3: missing, but the audit log") for p in problems), problems


def test_a_resurrected_blob_is_reported(destroyed: Destroyed) -> None:
    uid = destroyed.uids[1]
    key = destroyed.keys[uid][0]
    destroyed.archive.blobs.put(key, b"restored from an old backup")
    problems = destroyed.destruction.verify().problems
    assert f"seq 2: blob {key} of destroyed study {uid} is present again" in problems


def live_key(archive: Archive, uid: str) -> bool:
    with archive.sessions() as session:
        key = session.get(StudyKey, uid)
    return key is not None and key.wrapped_key is not None and key.destroyed_at is None


def test_crypto_shredding_destroys_the_data_key_first(archive: Archive) -> None:
    retention, destruction = services(archive)
    uid = store_video(archive, "20150110")
    retention.classify(uid)
    if not live_key(archive, uid):  # stored unsealed: give it a key as if it had been sealed
        with archive.sessions() as session:
            session.add(
                StudyKey(
                    study_instance_uid=uid,
                    kek_id="kek-1",
                    wrapped_key=b"\x01" * 40,
                    created_at=datetime.now(UTC),
                )
            )
            session.commit()
    key_store = archive.keys
    archive.keys = None  # type: ignore[assignment]  # an archive opened without its key store
    with pytest.raises(RetentionRefusedError, match="no key store to destroy it with"):
        destruction.destroy(uid, approved_by="chief", actor=OFFICER)
    archive.keys = key_store
    assert archive.locate(uid) and live_key(archive, uid)  # refused before anything changed
    result = destruction.destroy(uid, approved_by="chief", actor=OFFICER)
    assert result.key_destroyed and not live_key(archive, uid)
    assert destruction.verify().ok
    with archive.sessions() as session:  # the key comes back from somewhere
        session.execute(update(StudyKey).values(wrapped_key=b"\x02" * 40, destroyed_at=None))
        session.commit()
    problems = destruction.verify().problems
    assert f"seq 1: the data key of destroyed study {uid} is not destroyed" in problems


# --- console commands ----------------------------------------------------------------------


def run_cli(data_dir: Path, database_url: str, *argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser()
    add_retention_commands(parser.add_subparsers(dest="lifecycle_command", required=True))
    options = ["--data-dir", str(data_dir)]
    if database_url:
        options += ["--database-url", database_url]
    args = parser.parse_args([*argv, *options])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = args.handler(args)
    return code, out.getvalue()


def test_cli_destroy_dry_run_shows_what_is_due_and_changes_nothing(
    archive: Archive, tmp_path: Path, database_url: str
) -> None:
    data_dir = tmp_path / "data"  # the archive fixture's
    due_uid = store_video(archive, "20150110")
    kept = store_ct(archive, "20250314")
    code, out = run_cli(data_dir, database_url, "classify")
    assert code == 0 and "classified 2 studies" in out

    code, out = run_cli(data_dir, database_url, "destroy")
    assert code == 0
    assert due_uid in out and kept not in out
    assert "1 studies due for destruction" in out and "dry run: nothing destroyed" in out
    assert archive.locate(due_uid)
    with archive.sessions() as session:
        assert session.scalar(select(DestructionRecord.seq)) is None

    with pytest.raises(CommandError, match="--approved-by"):
        run_cli(data_dir, database_url, "destroy", "--execute")
    with pytest.raises(CommandError, match="previews only"):
        run_cli(
            data_dir,
            database_url,
            "destroy",
            "--execute",
            "--approved-by",
            "chief",
            "--as-of",
            "2045-01-01",
        )
    code, out = run_cli(data_dir, database_url, "due", "--as-of", "2041-01-01")
    assert kept in out and due_uid in out

    code, out = run_cli(
        data_dir, database_url, "destroy", "--execute", "--approved-by", "chief", "--no-progress"
    )
    assert code == 0 and f"destroyed {due_uid}: record 1" in out
    assert archive.search(Query("study", {"StudyInstanceUID": due_uid})) == []
    code, out = run_cli(data_dir, database_url, "verify", "--no-progress")
    assert code == 0 and "destruction records OK: 1 records" in out
    with archive.sessions() as session:
        session.execute(text("UPDATE destruction_records SET instances = 99"))
        session.commit()
    code, out = run_cli(data_dir, database_url, "verify", "--no-progress")
    assert code == 1 and "seq 1: hash mismatch" in out


def test_cli_hold_and_extend(archive: Archive, tmp_path: Path, database_url: str) -> None:
    data_dir = tmp_path / "data"
    uid = store_video(archive, "20150110")
    code, out = run_cli(data_dir, database_url, "hold", uid, "--reason", "audit 7", "--by", "li")
    assert code == 0 and "legal hold: audit 7" in out
    code, out = run_cli(data_dir, database_url, "destroy")
    assert uid not in out
    run_cli(data_dir, database_url, "release", uid, "--by", "li")
    code, out = run_cli(
        data_dir, database_url, "extend", uid, "--years", "20", "--approved-by", "chief"
    )
    assert "retained until 2040-01-10 (approved by chief)" in out


# --- HTTP ----------------------------------------------------------------------------------


def _mount(node: Node) -> None:
    """Until the lead registers the router in viewer_api/app.py, add it to this node's app."""
    from viewer_api import lifecycle_api

    paths = {getattr(route, "path", "") for route in node.app.routes}
    if "/api/studies/{study}/legal-hold" not in paths:
        node.app.include_router(lifecycle_api.router)


def test_legal_hold_over_http(node: Node) -> None:
    _mount(node)
    archive = node.archive
    archive.hospitals.add_hospital("H1", "Hospital One")
    h1 = archive.hospitals.by_id("H1")
    assert h1 is not None
    archive.users.create_user("clin", PASSWORD, "clinician", hospital_id="H1")
    uid = store_ct(archive, "20250314", hospital_pk=h1.pk)
    base = f"/api/studies/{uid}"

    with client(node, "clin") as clinician:
        seen = clinician.get(f"{base}/lifecycle")
        assert seen.status_code == 200, seen.text
        assert seen.json()["retention_class"] == "imaging" and not seen.json()["stored"]
        refused = clinician.post(f"{base}/legal-hold", json={"reason": "mine"})
        assert refused.status_code == 403
        assert refused.headers["content-type"] == "application/problem+json"
        assert clinician.delete(f"{base}/legal-hold").status_code == 403
        extension = clinician.post(f"{base}/retention-extension", json={"years": 1})
        assert extension.status_code == 403

    with client(node) as admin:
        assert admin.post(f"{base}/legal-hold", json={"reason": ""}).status_code == 400
        held = admin.post(f"{base}/legal-hold", json={"reason": "court order 2026-17"})
        assert held.status_code == 200, held.text
        assert held.json()["legal_hold"] and held.json()["hold_reason"] == "court order 2026-17"
        life = admin.get(f"{base}/lifecycle").json()
        assert life["stored"] and life["retain_until"] == "2040-03-14"
        assert life["series"][0]["modality"] == "CT"
        moved = admin.post(
            f"{base}/retention-extension", json={"years": 5, "approved_by": "chief.records"}
        )
        assert moved.status_code == 200, moved.text
        assert moved.json()["retain_until"] == "2045-03-14"
        assert moved.json()["extended_by"] == "chief.records"
        earlier = admin.post(f"{base}/retention-extension", json={"until": "2030-01-01"})
        assert earlier.status_code == 409 and "must move that later" in earlier.json()["detail"]
        released = admin.delete(f"{base}/legal-hold", params={"reason": "case closed"})
        assert released.status_code == 200 and not released.json()["legal_hold"]
        assert admin.delete(f"{base}/legal-hold").status_code == 409
        unknown = admin.get("/api/studies/1.2.3.999/lifecycle")
        assert unknown.status_code in (403, 404)

    events = list(archive.audit.iter_events(AuditFilter(study_instance_uid=uid)))
    holds = [e for e in events if e["action"] == "legal_hold"]
    assert holds and holds[0]["actor"] == "test-admin"
    assert holds[0]["detail"]["reason"] == "court order 2026-17"
    assert any(e["action"] == "retention_extended" for e in events)
