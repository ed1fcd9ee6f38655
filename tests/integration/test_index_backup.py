"""Backups of the index on SQLite and PostgreSQL: taken online, encrypted, pruned, scheduled,
refused when damaged, and restored into an index that serves the backup moment's objects."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import Engine, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

import cloud.backup_format as backup_format
import cloud.pg_tools as pg_tools
from cloud.archive import Archive
from cloud.crypto import KekUnavailableError
from cloud.database import create_index_engine
from cloud.index_backup import IndexBackupError, IndexBackups
from cloud.models import Instance, Patient, Study, StudyLifecycle
from imaging_cloud import backup_cli
from imaging_cloud.cli import main as imaging_cloud
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10

T0 = datetime(2026, 3, 14, 8, 0, tzinfo=UTC)


@pytest.fixture
def backups(archive: Archive, tmp_path: Path) -> IndexBackups:
    return IndexBackups(archive.engine, tmp_path / "backups", archive.keys.keks)


@pytest.fixture
def restore_url(tmp_path: Path, database_url: str) -> Iterator[str]:
    """An empty place to restore into: a new SQLite file, or a schema in a new PostgreSQL
    database (a schema cannot be restored under another name beside itself)."""
    if not database_url:
        yield f"sqlite:///{tmp_path / 'restored' / 'index.sqlite3'}"
        return
    server = make_url(database_url).set(query={})
    name = f"icb_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    target = server.set(database=name).update_query_dict({"options": "-csearch_path=restored"})
    try:
        yield target.render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def store_study(archive: Archive, patient_id: str, slices: int = 3) -> tuple[str, dict[str, bytes]]:
    """A stored synthetic CT study: its UID and SOP Instance UID -> Part-10 bytes."""
    study = StudySpec(
        patient=PatientSpec(patient_id=patient_id, patient_name=f"Wang^{patient_id}=王^小東="),
        accession_number=f"A-{patient_id}",
    )
    files = {}
    for ds in ct_series(study, slices=slices, size=16):
        files[str(ds.SOPInstanceUID)] = to_part10(ds)
        archive.store(files[str(ds.SOPInstanceUID)], source="test")
    return study.study_instance_uid, files


def contents(engine: Engine) -> tuple[set[str], set[str], set[str]]:
    with engine.connect() as connection:
        return (
            set(connection.scalars(select(Study.study_instance_uid))),
            set(connection.scalars(select(Instance.sop_instance_uid))),
            set(connection.scalars(select(Patient.patient_id))),
        )


def open_restored(tmp_path: Path, url: str) -> Archive:
    """A node's archive on the restored index, with the original blob store and KEKs."""
    data = tmp_path / "data"
    return Archive.open(
        tmp_path / "restored-node",
        url,
        f"file://{data / 'blobs'}",
        kek_url=f"file://{data / 'keys' / 'kek'}",
    )


def target_is_empty(url: str) -> bool:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(parsed.database or "")
        return not path.exists() and not any(path.parent.glob("*"))
    engine = sqlalchemy.create_engine(parsed.set(query={}), poolclass=NullPool)
    try:
        with engine.connect() as connection:
            found = connection.scalar(
                text(
                    "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\\_%'"
                )
            )
    finally:
        engine.dispose()
    return found == 0


def test_restored_index_holds_the_backup_moment(
    archive: Archive, backups: IndexBackups, restore_url: str, tmp_path: Path
) -> None:
    deleted_later, _ = store_study(archive, "PID-A")
    kept, kept_files = store_study(archive, "PID-B")
    at_backup = contents(archive.engine)

    backup = backups.create()

    added_later, _ = store_study(archive, "PID-C")
    archive.delete_study(deleted_later)
    assert backups.list() == [backup]
    assert backup.revision and backup.kek_id == archive.keys.keks.current_id()
    stored = backup.path.read_bytes()
    assert b"PID-A" not in stored and "王".encode() not in stored  # encrypted, not just zstd
    backups.verify(backup)

    backups.restore(backup, restore_url)

    restored = open_restored(tmp_path, restore_url)
    try:
        assert contents(restored.engine) == at_backup
        studies, _, patients = contents(restored.engine)
        assert deleted_later in studies and added_later not in studies
        assert "PID-C" not in patients
        instances = restored.locate(kept)
        assert {stored.sop_instance_uid: restored.read(stored) for stored in instances} == (
            kept_files
        )
    finally:
        restored.close()


def _segments(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of each sealed segment of a backup file."""
    data = path.read_bytes()
    offset = 4 + 1 + 16
    offset += 1 + data[offset]
    offset += 2 + int.from_bytes(data[offset : offset + 2], "big")
    found = []
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 4], "big")
        found.append((offset, length + 4))
        offset += 4 + length
    return found


@pytest.mark.parametrize("damage", ["altered", "last segment cut off", "no manifest match"])
def test_damaged_backup_is_refused_and_nothing_is_written(
    archive: Archive,
    backups: IndexBackups,
    restore_url: str,
    monkeypatch: pytest.MonkeyPatch,
    damage: str,
) -> None:
    store_study(archive, "PID-A")
    # Small segments: the damage is found after a part of the snapshot went through already.
    monkeypatch.setattr(backup_format, "SEGMENT_BYTES", 1024)
    backup = backups.create()
    segments = _segments(backup.path)
    assert len(segments) > 3
    data = bytearray(backup.path.read_bytes())
    last_offset, last_length = segments[-1]
    if damage == "altered":
        data[last_offset + last_length // 2] ^= 0x01
        backup.path.write_bytes(bytes(data))
        expected = "damaged or altered"
    elif damage == "last segment cut off":
        backup.path.write_bytes(bytes(data[:last_offset]))
        expected = "damaged or altered"  # the new last one was not sealed as the last
    else:
        backup = replace(backup, sha256="0" * 64)
        expected = "does not match its manifest"

    with pytest.raises(IndexBackupError, match=expected):
        backups.verify(backup)
    with pytest.raises(IndexBackupError, match=expected):
        backups.restore(backup, restore_url)
    assert target_is_empty(restore_url)


def test_a_live_or_occupied_target_is_refused(
    archive: Archive, backups: IndexBackups, tmp_path: Path, database_url: str
) -> None:
    store_study(archive, "PID-A")
    backup = backups.create()
    if database_url:  # the live schema is not empty
        with pytest.raises(IndexBackupError, match="not empty"):
            backups.restore(backup, database_url)
        with pytest.raises(IndexBackupError, match="SQLite files only"):
            backups.restore(backup, database_url, force=True)
        return
    live = f"sqlite:///{tmp_path / 'data' / 'index.sqlite3'}"
    with pytest.raises(IndexBackupError, match="already holds an index"):
        backups.restore(backup, live)
    with pytest.raises(IndexBackupError, match="in use"):
        backups.restore(backup, live, force=True)  # the archive (a node) has it open
    store_study(archive, "PID-B")
    archive.engine.dispose()  # the node stopped

    backups.restore(backup, live, force=True)

    assert len(contents(archive.engine)[0]) == 1
    assert len(list((tmp_path / "data").glob("index.sqlite3.before-restore-*"))) == 1


def test_backup_under_a_rotated_kek_still_restores(
    archive: Archive, backups: IndexBackups, restore_url: str, tmp_path: Path
) -> None:
    study, files = store_study(archive, "PID-A")
    old_kek = archive.keys.keks.current_id()
    before_rotation = backups.create(now=T0)
    new_kek = archive.keys.keks.rotate()
    archive.keys.rewrap()
    after_rotation = backups.create(now=T0 + timedelta(hours=1))
    assert (before_rotation.kek_id, after_rotation.kek_id) == (old_kek, new_kek)
    assert backups.kek_ids() == {old_kek: 1, new_kek: 1}  # the old one is still needed

    backups.restore(before_rotation, restore_url)

    restored = open_restored(tmp_path, restore_url)
    try:
        instances = restored.locate(study)  # its study key is still under the old KEK
        assert {stored.sop_instance_uid: restored.read(stored) for stored in instances} == files
    finally:
        restored.close()
    archive.keys.keks.retire(old_kek)
    with pytest.raises(KekUnavailableError):
        backups.verify(before_rotation)
    backups.verify(after_rotation)


def test_due_hourly_with_level_3_studies_else_daily(
    archive: Archive, backups: IndexBackups
) -> None:
    study, _ = store_study(archive, "PID-A")
    assert backups.due(T0) and backups.interval() == timedelta(days=1)
    first = backups.run_if_due(T0)
    assert first is not None and backups.latest() == first
    assert backups.run_if_due(T0 + timedelta(hours=2)) is None
    assert backups.due(T0 + timedelta(hours=24))

    with archive.sessions() as session:
        pk = session.scalar(select(Study.pk).where(Study.study_instance_uid == study))
        lifecycle = StudyLifecycle(
            study_pk=pk,
            category="imaging",
            level=2,
            retention_class="test",
            retain_until="20400101",
            classified_at=T0,
        )
        session.add(lifecycle)
        session.commit()
        assert backups.interval() == timedelta(days=1)
        lifecycle.level = 3
        session.add(lifecycle)
        session.commit()

    assert backups.interval() == timedelta(hours=1)
    assert not backups.due(T0 + timedelta(minutes=59))
    assert backups.run_if_due(T0 + timedelta(minutes=30)) is None
    second = backups.run_if_due(T0 + timedelta(minutes=61))
    assert second is not None and backups.list() == [second, first]


def test_only_the_newest_backups_are_kept(archive: Archive, tmp_path: Path) -> None:
    store_study(archive, "PID-A")
    directory = tmp_path / "backups"
    backups = IndexBackups(archive.engine, directory, archive.keys.keks, keep=3)
    made = [backups.create(now=T0 + timedelta(hours=hour)) for hour in range(4)]
    # Leftovers of a crashed run: a file never given its manifest, a temporary file.
    (directory / "index-20200101T000000Z.sqlite.zst.ice").write_bytes(b"unfinished")
    (directory / ".index-20200101T000000Z.sqlite.zst.ice.0123.tmp").write_bytes(b"partial")

    made.append(backups.create(now=T0 + timedelta(hours=4)))

    assert backups.list() == made[:1:-1]
    files = {path.name for path in directory.iterdir()} - {".lock"}
    assert files == {b.name for b in made[2:]} | {b.manifest.name for b in made[2:]}


def test_cli_backup_list_verify_restore(
    tmp_path: Path, database_url: str, restore_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    archive = Archive.open(data, database_url)
    try:
        before, _ = store_study(archive, "PID-A")
    finally:
        archive.close()
    node = ["--data-dir", str(data)] + (["--database-url", database_url] if database_url else [])

    assert backup_cli.main(["backup-index", *node, "--keep", "2"]) == 0
    assert "backed up the index to" in capsys.readouterr().out
    assert backup_cli.main(["list-backups", *node, "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert backup_cli.main(["verify-backup", *node]) == 0
    assert f"{listed['file']} OK" in capsys.readouterr().out

    archive = Archive.open(data, database_url)
    try:
        store_study(archive, "PID-B")
    finally:
        archive.close()
    if database_url:
        target = ["--to-database-url", restore_url]
    else:
        assert (
            backup_cli.main(["restore-index", listed["file"], *node, "--to-data-dir", str(data)])
            == 1
        )
        assert "already holds an index" in capsys.readouterr().err
        target = ["--to-data-dir", str(Path(make_url(restore_url).database or "").parent)]
    assert backup_cli.main(["restore-index", listed["file"], *node, *target]) == 0
    assert "restored " in capsys.readouterr().out

    restored = open_restored(tmp_path, restore_url)
    try:
        assert contents(restored.engine)[0] == {before}
    finally:
        restored.close()


def test_lifecycle_group_offers_the_backup_commands(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        imaging_cloud(["lifecycle", "list-backups", "--help"])
    except SystemExit as exc:
        if exc.code != 0:
            pytest.skip("imaging_cloud.lifecycle_cli does not register add_backup_commands yet")
    capsys.readouterr()
    assert imaging_cloud(["lifecycle", "--data-dir", str(tmp_path), "list-backups"]) == 0
    assert "0 index backups in" in capsys.readouterr().out


def test_postgres_tools_get_the_password_by_environment_only(
    archive: Archive, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not database_url:
        pytest.skip("pg_dump is for PostgreSQL")
    store_study(archive, "PID-A")
    secret = "not-for-argv"  # the test server trusts local connections: any password works
    url = make_url(database_url).set(password=secret).render_as_string(hide_password=False)
    started: list[tuple[list[str], dict[str, str]]] = []
    popen = pg_tools.subprocess.Popen

    def recording(argv: list[str], **options: Any) -> Any:
        started.append((argv, options["env"]))
        return popen(argv, **options)

    monkeypatch.setattr(pg_tools.subprocess, "Popen", recording)
    engine = create_index_engine(url)
    try:
        backup = IndexBackups(engine, tmp_path / "backups", archive.keys.keks).create()
    finally:
        engine.dispose()

    assert backup.schema == make_url(database_url).query["options"].split("=")[-1]
    ((argv, environment),) = started
    assert argv[0] == "pg_dump" and not any(secret in argument for argument in argv)
    assert environment["PGPASSWORD"] == secret
