"""The gateway spool: durable intake, quarantine with reasons, retry schedule, retention."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.spool import Spool, identify
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


@pytest.fixture
def objects() -> list[bytes]:
    study = StudySpec(patient=PatientSpec(patient_id="SP-1", patient_name="Li^Si"))
    return [to_part10(ds) for ds in ct_series(study, slices=3, size=16)]


def test_accepted_object_is_on_disk_and_queued(spool: Spool, objects: list[bytes]) -> None:
    result = spool.accept(objects[0], "test")
    assert result.status == 0 and result.taken
    sha = hashlib.sha256(objects[0]).hexdigest()
    assert spool.object_path(sha).read_bytes() == objects[0]
    [entry] = spool.entries()
    assert (entry.state, entry.sha256, entry.origin) == ("queued", sha, "test")
    assert entry.sop_instance_uid == identify(objects[0])["SOPInstanceUID"]


def test_same_object_twice_is_one_entry(spool: Spool, objects: list[bytes]) -> None:
    spool.accept(objects[0], "first")
    spool.accept(objects[0], "again")
    assert len(spool.entries()) == 1
    assert spool.status().queued == 1


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not dicom at all", "no 'DICM' prefix"),
        (b"\0" * 128 + b"DICM" + b"\x02\x00", "missing SOPClassUID"),
    ],
)
def test_malformed_bytes_are_quarantined_with_reason(
    spool: Spool, payload: bytes, reason: str
) -> None:
    result = spool.accept(payload, "ftp://pacs/out/x.dcm")
    assert result.status == 0xC000 and result.quarantined and result.taken
    assert reason in result.error_comment
    [item] = spool.quarantined()
    assert item["origin"] == "ftp://pacs/out/x.dcm" and reason in item["reason"]
    assert (spool.root / item["file"]).read_bytes() == payload
    assert spool.entries() == []


def test_missing_uid_is_quarantined(spool: Spool, objects: list[bytes]) -> None:
    import io

    import pydicom

    dataset = pydicom.dcmread(io.BytesIO(objects[0]))
    del dataset.SeriesInstanceUID
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    result = spool.accept(buffer.getvalue(), "test")
    assert result.quarantined and "SeriesInstanceUID" in result.error_comment


def test_due_respects_size_budget_and_backoff(spool: Spool, objects: list[bytes]) -> None:
    for data in objects:
        spool.accept(data, "test")
    # Generated UIDs vary in length, so the objects differ by a few bytes: a budget of two of
    # the largest holds any two and never three.
    sizes = sorted(len(data) for data in objects)
    assert 2 * sizes[-1] < sizes[0] + sizes[1] + sizes[2]
    assert len(spool.due(10, max_bytes=2 * sizes[-1])) == 2
    batch = spool.due(10, max_bytes=10**9)
    spool.mark_retry([e.sha256 for e in batch], "cloud down", base_delay=60)
    assert spool.due(10, 10**9) == []
    later = spool.due(10, 10**9, now=time.time() + 61)
    assert len(later) == 3
    status = spool.status()
    assert status.last_error == "cloud down" and status.consecutive_failures == 1
    spool.mark_sent([e.sha256 for e in later])
    assert spool.status().consecutive_failures == 0 and spool.status().sent == 3


def test_purge_keeps_backup_for_retention_period(spool: Spool, objects: list[bytes]) -> None:
    spool.accept(objects[0], "test")
    [entry] = spool.due(1, 10**9)
    spool.mark_sent([entry.sha256])
    assert spool.purge_sent(keep_days=15) == 0
    assert spool.object_path(entry.sha256).exists()
    assert spool.purge_sent(keep_days=15, now=time.time() + 16 * 86400) == 1
    assert not spool.object_path(entry.sha256).exists()
    assert spool.entries()[0].state == "purged"
    # received again after the purge: kept as backup, not sent twice
    spool.accept(objects[0], "test")
    assert spool.entries()[0].state == "sent" and spool.due(1, 10**9) == []


def test_requeue_sends_missing_objects_again(spool: Spool, objects: list[bytes]) -> None:
    spool.accept(objects[0], "test")
    [entry] = spool.due(1, 10**9)
    spool.mark_sent([entry.sha256])
    assert spool.requeue(entry.study_instance_uid, [entry.sop_instance_uid]) == 1
    assert [e.sha256 for e in spool.due(1, 10**9)] == [entry.sha256]


def test_study_waits_for_audit_until_quiet_and_sent(spool: Spool, objects: list[bytes]) -> None:
    for data in objects:
        spool.accept(data, "test")
    study = spool.entries()[0].study_instance_uid
    assert spool.studies_to_reconcile(settle_seconds=0) == []  # still queued
    spool.mark_sent([e.sha256 for e in spool.due(10, 10**9)])
    assert spool.studies_to_reconcile(settle_seconds=3600) == []  # not quiet long enough
    assert spool.studies_to_reconcile(settle_seconds=0) == [study]
    assert len(spool.study_manifest(study)) == 3
    spool.mark_reconciled(study, "match")
    assert spool.studies_to_reconcile(settle_seconds=0) == []


def test_spool_survives_reopen(tmp_path: Path, objects: list[bytes]) -> None:
    first = Spool(tmp_path / "s")
    first.accept(objects[0], "test")
    first.close()
    again = Spool(tmp_path / "s")
    assert again.status().queued == 1


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on damaged values
@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(damage=st.binary(max_size=64), cut=st.integers(min_value=0, max_value=2000))
def test_damaged_bytes_are_stored_or_quarantined_never_raised(
    spool: Spool, objects: list[bytes], damage: bytes, cut: int
) -> None:
    """Whatever arrives, the sink answers: stored (and journaled) or quarantined with a reason."""
    original = objects[0]
    data = original[:cut] + damage + original[cut + len(damage) :]
    result = spool.accept(data, "fuzz")
    assert result.taken
    if result.status == 0:
        sha = hashlib.sha256(data).hexdigest()
        assert spool.object_path(sha).read_bytes() == data
    else:
        assert result.quarantined and result.error_comment
