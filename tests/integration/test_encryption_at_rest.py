"""Encryption at rest on SQLite and PostgreSQL: sealed blobs, plaintext reads, key rotation,
crypto-shredding, and stores written before encryption was switched on."""

from __future__ import annotations

import hashlib
import io
import json
import stat
from email import message_from_bytes
from pathlib import Path

import httpx
import pydicom
import pytest
from sqlalchemy import select

from cloud.archive import Archive
from cloud.crypto import AES256GCM, KeyDestroyedError, SealedBlobError, is_sealed
from cloud.errors import DuplicateInstanceError
from cloud.models import IngestConflict, Instance, InstanceMetadata, StudyKey
from collectors.multipart import stream_parts
from collectors.storage_scp import ReceivedObject
from imaging_cloud.cli import main as cli
from imaging_cloud.node import archive_sink
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.servers import client, running_node

DICOM_ALL = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def stow(http: httpx.Client, files: list[bytes]) -> httpx.Response:
    body = b"".join(stream_parts((("application/dicom", f) for f in files), "xyz"))
    content_type = 'multipart/related; type="application/dicom"; boundary=xyz'
    return http.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})


def parts_of(response: httpx.Response) -> list[bytes]:
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = message_from_bytes(head + response.content)
    return [part.get_payload(decode=True) for part in message.get_payload()]


def _store(archive: Archive, files: list[bytes]) -> str:
    outcomes = [archive.store(data, source="test") for data in files]
    return outcomes[0].study_instance_uid


def _rows(archive: Archive) -> list[StudyKey]:
    with archive.sessions() as session:
        return list(session.scalars(select(StudyKey).order_by(StudyKey.study_instance_uid)))


def _reopen(archive: Archive, data_dir: Path, database_url: str, **options: bool) -> Archive:
    """The same archive opened afresh: nothing cached in memory (keys, KEKs)."""
    archive.close()
    return Archive.open(data_dir, database_url, **options)


def _other_study() -> StudySpec:
    return StudySpec(patient=PatientSpec(patient_id="PID-2", patient_name="Li^Na"))


def test_blobs_at_rest_hold_no_plaintext_and_reads_give_the_originals(
    archive: Archive, ct_files: list[bytes], tmp_path: Path
) -> None:
    study_uid = _store(archive, ct_files)
    found = archive.locate(study_uid)
    by_uid = {pydicom.dcmread(io.BytesIO(f)).SOPInstanceUID: f for f in ct_files}
    with archive.engine.connect() as connection:
        rows = connection.execute(select(Instance.sop_instance_uid, Instance.encryption))
        marked: dict[str, str] = {row[0]: row[1] for row in rows}
    for stored in found:
        original = by_uid[stored.sop_instance_uid]
        pixels = pydicom.dcmread(io.BytesIO(original)).PixelData
        run = pixels[len(pixels) // 2 : len(pixels) // 2 + 48]
        assert run in original and b"XiaoDong" in original  # what must not be seen at rest
        on_disk = (tmp_path / "data" / "blobs" / stored.blob_key).read_bytes()
        assert is_sealed(on_disk) and stored.blob_key.endswith(".ice")
        assert run not in on_disk and b"XiaoDong" not in on_disk and b"DICM" not in on_disk
        assert marked[stored.sop_instance_uid] == AES256GCM == stored.encryption
        # the index describes the plaintext; reads return it exactly
        plain = archive.read(stored)
        assert plain == original and stored.size_bytes == len(original)
        with archive.engine.connect() as connection:
            sha = connection.scalar(
                select(Instance.sha256).where(Instance.sop_instance_uid == stored.sop_instance_uid)
            )
        assert sha == hashlib.sha256(plain).hexdigest()
    assert "XiaoDong" in archive.metadata_json(found[0])  # metadata comes from the plaintext
    assert archive.read_dataset(found[0]).PatientID == "PID-1"
    rows = _rows(archive)
    assert [r.study_instance_uid for r in rows] == [study_uid]  # one data key per study
    kek_dir = tmp_path / "data" / "keys" / "kek"
    assert (kek_dir / f"{rows[0].kek_id}.key").exists()
    assert stat.S_IMODE((kek_dir / f"{rows[0].kek_id}.key").stat().st_mode) == 0o600
    assert rows[0].wrapped_key is not None and len(rows[0].wrapped_key) == 40


def test_a_blob_moved_under_another_instance_is_refused(
    archive: Archive, ct_files: list[bytes], tmp_path: Path
) -> None:
    first, second = archive.locate(_store(archive, ct_files))[:2]
    blobs = tmp_path / "data" / "blobs"
    (blobs / second.blob_key).write_bytes((blobs / first.blob_key).read_bytes())
    with pytest.raises(SealedBlobError, match="another instance"):
        archive.read(second)
    assert archive.read(first) in ct_files


def test_resending_keeps_one_sealed_blob_and_reads_back(
    archive: Archive, ct_files: list[bytes], tmp_path: Path
) -> None:
    _store(archive, ct_files)
    again = archive.store(ct_files[0], source="test")
    assert again.already_stored
    stored = archive.locate(again.study_instance_uid, sop_instance_uid=again.sop_instance_uid)[0]
    assert archive.read(stored) == ct_files[0]
    sealed = list((tmp_path / "data" / "blobs").rglob("*.ice"))
    assert len(sealed) == len(ct_files) and not list((tmp_path / "data" / "blobs").rglob("*.dcm"))


def test_rotation_rewraps_every_key_and_the_old_kek_can_be_retired(
    archive: Archive, database_url: str, tmp_path: Path, study: StudySpec
) -> None:
    data_dir = tmp_path / "data"
    files = {
        _store(archive, [to_part10(ds) for ds in ct_series(spec, slices=2, size=16)]): spec
        for spec in (study, _other_study(), _other_study())
    }
    old_kek = archive.keys.keks.current_id()
    blobs_before = {p: p.read_bytes() for p in (data_dir / "blobs").rglob("*.ice")}

    new_kek = archive.keys.keks.rotate()
    report = archive.keys.rewrap(batch_size=2)
    assert report.rewrapped == 3 and report.current_kek_id == new_kek
    rows = _rows(archive)
    assert {r.kek_id for r in rows} == {new_kek}
    assert all(r.rewrapped_at is not None for r in rows)
    assert {p: p.read_bytes() for p in (data_dir / "blobs").rglob("*.ice")} == blobs_before

    retired, in_use = archive.keys.retire_unused()
    assert (retired, in_use) == ([old_kek], {})
    assert not (data_dir / "keys" / "kek" / f"{old_kek}.key").exists()

    archive = _reopen(archive, data_dir, database_url)
    try:
        for study_uid in files:
            for stored in archive.locate(study_uid):
                assert hashlib.sha256(archive.read(stored)).hexdigest()
                assert archive.read_dataset(stored).StudyInstanceUID == study_uid
        # a new study after the rotation is wrapped with the new KEK
        _store(archive, [to_part10(ds) for ds in ct_series(_other_study(), slices=1, size=16)])
        assert {r.kek_id for r in _rows(archive)} == {new_kek}
    finally:
        archive.close()


def test_an_interrupted_rotation_resumes_where_it_stopped(
    archive: Archive, database_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    studies = [
        _store(archive, [to_part10(ds) for ds in ct_series(_other_study(), slices=1, size=16)])
        for _ in range(5)
    ]
    old_kek = archive.keys.keks.current_id()
    new_kek = archive.keys.keks.rotate()

    def interrupt(done: int, _total: int) -> None:
        if done >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        archive.keys.rewrap(batch_size=2, progress=interrupt)
    assert sorted(r.kek_id for r in _rows(archive)) == sorted([new_kek] * 2 + [old_kek] * 3)
    retired, in_use = archive.keys.retire_unused()
    assert retired == [] and in_use == {old_kek: 3}  # still needed: kept
    assert (data_dir / "keys" / "kek" / f"{old_kek}.key").exists()

    archive = _reopen(archive, data_dir, database_url)
    try:
        for study_uid in studies:  # half-way, everything reads
            archive.read(archive.locate(study_uid)[0])
        assert archive.keys.rewrap(batch_size=2).rewrapped == 3
        assert {r.kek_id for r in _rows(archive)} == {new_kek}
        assert archive.keys.retire_unused() == ([old_kek], {})
    finally:
        archive.close()
    archive = Archive.open(data_dir, database_url)
    try:
        for study_uid in studies:
            archive.read(archive.locate(study_uid)[0])
    finally:
        archive.close()


def test_rotate_kek_and_keys_status_commands(
    archive: Archive,
    database_url: str,
    tmp_path: Path,
    ct_files: list[bytes],
    capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir = tmp_path / "data"
    study_uid = _store(archive, ct_files)
    old_kek = archive.keys.keks.current_id()
    archive.close()
    where = ["--data-dir", str(data_dir), "--database-url", database_url]
    assert cli(["lifecycle", "rotate-kek", *where, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "1 study keys re-wrapped" in out and "--retire-old" in out
    assert (data_dir / "keys" / "kek" / f"{old_kek}.key").exists()  # kept until retired

    assert cli(["lifecycle", *where, "rotate-kek", "--resume", "--retire-old"]) == 0
    out = capsys.readouterr().out
    assert f"retired KEK {old_kek}" in out
    assert not (data_dir / "keys" / "kek" / f"{old_kek}.key").exists()

    assert cli(["lifecycle", "keys-status", *where, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["encryption"] is True
    assert status["keks"] == [{"kek_id": status["current_kek_id"], "study_keys": 1}]
    assert status["instances_by_encryption"] == {AES256GCM: len(ct_files)}
    assert status["destroyed_study_keys"] == 0

    reopened = Archive.open(data_dir, database_url)
    try:
        assert reopened.read(reopened.locate(study_uid)[0]) in ct_files
    finally:
        reopened.close()


def test_destroying_a_study_key_shreds_only_that_study(
    archive: Archive, ct_files: list[bytes]
) -> None:
    destroyed_uid = _store(archive, ct_files)
    kept_files = [to_part10(ds) for ds in ct_series(_other_study(), slices=2, size=16)]
    kept_uid = _store(archive, kept_files)
    stored = archive.locate(destroyed_uid)[0]
    archive.metadata_json(stored)  # cached in the index, as a plaintext copy of the header

    assert archive.keys.destroy(destroyed_uid) is True
    assert archive.keys.destroy(destroyed_uid) is False  # already destroyed
    row = _rows_by_study(archive)[destroyed_uid]
    assert row.wrapped_key is None and row.destroyed_at is not None
    with archive.sessions() as session:
        assert session.get(InstanceMetadata, stored.pk) is None
    with pytest.raises(KeyDestroyedError) as refused:
        archive.read(stored)
    assert (refused.value.http_status, refused.value.dimse_status) == (410, 0xC410)
    with pytest.raises(KeyDestroyedError):
        archive.locate(destroyed_uid)
    with pytest.raises(KeyDestroyedError):
        archive.metadata_json(stored)
    with pytest.raises(KeyDestroyedError, match="destroyed"):
        archive.store(ct_files[0], source="test")  # the study is never re-created
    other = next(
        ct_series(
            StudySpec(patient=PatientSpec(patient_id="PID-1"), study_instance_uid=destroyed_uid),
            slices=1,
            size=16,
        )
    )
    with pytest.raises(KeyDestroyedError):
        archive.store(to_part10(other), source="test")  # nor added to

    ds = pydicom.dcmread(io.BytesIO(ct_files[1]))
    received = ReceivedObject(ct_files[1], ds.SOPClassUID, ds.SOPInstanceUID, "MODALITY", "::1")
    assert archive_sink(archive)(received).status == 0xC410  # C-STORE refused the same way

    for found in archive.locate(kept_uid):  # the other study is untouched
        assert archive.read(found) in kept_files


def test_a_study_without_a_key_is_tombstoned_when_destroyed(
    archive: Archive, ct_files: list[bytes], database_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    plain = _reopen(archive, data_dir, database_url, encryption=False)
    try:
        study_uid = _store(plain, ct_files)
        assert plain.keys.destroy(study_uid) is False  # no key: deleting the blobs destroys it
        with pytest.raises(KeyDestroyedError):
            plain.locate(study_uid)
        with pytest.raises(KeyDestroyedError):
            plain.store(ct_files[0], source="test")
    finally:
        plain.close()


def test_a_store_written_without_encryption_reads_with_it_on(
    archive: Archive, ct_files: list[bytes], database_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    plain = _reopen(archive, data_dir, database_url, encryption=False)
    try:
        study_uid = _store(plain, ct_files[:3])
        assert not plain.encrypts
    finally:
        plain.close()
    assert list((data_dir / "blobs").rglob("*.dcm")) and not list(
        (data_dir / "blobs").rglob("*.ice")
    )

    sealed = Archive.open(data_dir, database_url)
    try:
        assert sealed.encrypts
        # a re-send of an object stored in the clear is a duplicate and changes nothing
        assert sealed.store(ct_files[0], source="test").already_stored
        assert not list((data_dir / "blobs").rglob("*.ice"))
        _store(sealed, ct_files[3:])  # the rest of the study arrives sealed
        found = sealed.locate(study_uid)
        assert sorted(s.encryption for s in found) == ["", "", "", AES256GCM, AES256GCM]
        assert sorted(sealed.read(s) for s in found) == sorted(ct_files)
        assert {json.loads(sealed.metadata_json(s))["00100020"]["Value"][0] for s in found} == {
            "PID-1"
        }
    finally:
        sealed.close()

    # and back: with encryption off again, the sealed objects still read
    plain = Archive.open(data_dir, database_url, encryption=False)
    try:
        assert sorted(plain.read(s) for s in plain.locate(study_uid)) == sorted(ct_files)
        assert plain.store(ct_files[4], source="test").already_stored
        assert len(list((data_dir / "blobs").rglob("*.ice"))) == 2  # the sealed blob kept
    finally:
        plain.close()


def test_a_conflict_naming_another_study_is_kept_readable(
    archive: Archive, study: StudySpec
) -> None:
    original = next(ct_series(study, slices=1, size=16))
    archive.store(to_part10(original), source="test")
    original.StudyInstanceUID = _other_study().study_instance_uid
    changed = to_part10(original)
    with pytest.raises(DuplicateInstanceError):
        archive.store(changed, source="test")
    with archive.engine.connect() as connection:
        conflict = connection.execute(select(IngestConflict.pk, IngestConflict.received_blob_key))
        conflict_pk, blob_key = conflict.one()
    assert is_sealed(archive.blobs.get(blob_key))
    assert archive.read_conflict(conflict_pk) == changed


def test_dicomweb_serves_the_originals_and_410_for_a_destroyed_study(
    tmp_path: Path, database_url: str, ct_files: list[bytes]
) -> None:
    kept_files = [to_part10(ds) for ds in ct_series(_other_study(), slices=2, size=16)]
    with running_node(tmp_path / "node", database_url) as node, client(node) as http:
        assert node.archive.encrypts
        assert stow(http, ct_files).status_code == 200
        assert stow(http, kept_files).status_code == 200
        study_uid = pydicom.dcmread(io.BytesIO(ct_files[0])).StudyInstanceUID
        kept_uid = pydicom.dcmread(io.BytesIO(kept_files[0])).StudyInstanceUID
        assert len(http.get("/dicom-web/studies", params={"PatientID": "PID-1"}).json()) == 1

        retrieved = http.get(f"/dicom-web/studies/{study_uid}", headers={"Accept": DICOM_ALL})
        assert retrieved.status_code == 200
        digests = sorted(hashlib.sha256(p).hexdigest() for p in parts_of(retrieved))
        assert digests == sorted(hashlib.sha256(f).hexdigest() for f in ct_files)
        metadata = http.get(f"/dicom-web/studies/{study_uid}/metadata").json()
        assert {m["00100020"]["Value"][0] for m in metadata} == {"PID-1"}

        assert node.archive.keys.destroy(study_uid)
        for path in (f"/dicom-web/studies/{study_uid}", f"/dicom-web/studies/{study_uid}/metadata"):
            gone = http.get(path, headers={"Accept": DICOM_ALL})
            assert gone.status_code == 410
            assert gone.headers["content-type"].startswith("application/problem+json")
            assert gone.json()["title"] == "Study destroyed"
        refused = stow(http, ct_files[:1])
        assert refused.status_code in (409, 410)

        kept = http.get(f"/dicom-web/studies/{kept_uid}", headers={"Accept": DICOM_ALL})
        assert sorted(parts_of(kept)) == sorted(kept_files)


def _rows_by_study(archive: Archive) -> dict[str, StudyKey]:
    return {row.study_instance_uid: row for row in _rows(archive)}
