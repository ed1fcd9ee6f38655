"""Volumes added online on local directories: where writes go, where reads look, refresh."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session, sessionmaker

from cloud.blobstore import LocalBlobStore
from cloud.database import create_index_engine, migrate, session_factory, sqlite_url
from cloud.errors import BackendUnavailableError, InstanceNotFoundError
from cloud.volumes import (
    VolumeError,
    VolumeSet,
    add_volume,
    list_volumes,
    set_writable,
    store_urls,
    table_loader,
)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    engine = create_index_engine(sqlite_url(tmp_path))
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def clock() -> Clock:
    return Clock()


class ReadOnlyStore(LocalBlobStore):
    """A bucket whose credentials only read."""

    def __init__(self) -> None:
        pass

    def put(self, key: str, data: bytes) -> None:
        raise BackendUnavailableError(f"cannot write blob {key}: read-only file system")


class ForgetfulStore(ReadOnlyStore):
    """Accepts writes and returns something else (a misconfigured gateway)."""

    def put(self, key: str, data: bytes) -> None:
        pass

    def get(self, key: str) -> bytes:
        return b"?"


def disk(tmp_path: Path, name: str) -> str:
    """A new, existing volume directory's URL (the operator mounts and makes it first)."""
    (tmp_path / name).mkdir()
    return f"file://{tmp_path / name}"


def volume_set(tmp_path: Path, sessions: sessionmaker[Session], clock: Clock) -> VolumeSet:
    return VolumeSet(LocalBlobStore(tmp_path / "base"), table_loader(sessions, "hot"), clock=clock)


def test_writes_go_to_the_newest_volume_and_old_blobs_stay_readable(
    tmp_path: Path, sessions: sessionmaker[Session], clock: Clock
) -> None:
    volumes = volume_set(tmp_path, sessions, clock)
    volumes.put("objects/old", b"old")
    assert (tmp_path / "base" / "objects" / "old").read_bytes() == b"old"

    second = add_volume(sessions, disk(tmp_path, "disk2"), "hot", "ops")
    third = add_volume(sessions, disk(tmp_path, "disk3"), "hot", "ops")
    assert [v.url for v in list_volumes(sessions, "hot")] == [second.url, third.url]
    assert volumes.refresh()
    assert volumes.writing_to == third.url
    volumes.put("objects/new", b"new")
    assert (tmp_path / "disk3" / "objects" / "new").read_bytes() == b"new"
    assert not (tmp_path / "base" / "objects" / "new").exists()
    assert volumes.get("objects/old") == b"old"
    assert volumes.exists("objects/old") and volumes.exists("objects/new")
    # read order: the write target, then newest to oldest
    assert [name for name, _ in volumes.volumes()] == [third.url, second.url, volumes.base_name]

    set_writable(sessions, third.url, False)  # retired: read, never written
    volumes.refresh()
    volumes.put("objects/later", b"later")
    assert (tmp_path / "disk2" / "objects" / "later").exists()
    assert volumes.get("objects/new") == b"new"

    volumes.put("objects/old", b"old")  # a second copy on another volume
    assert sorted(volumes.keys()) == ["objects/later", "objects/new", "objects/old"]
    volumes.delete("objects/old")
    assert not (tmp_path / "base" / "objects" / "old").exists()
    assert not (tmp_path / "disk2" / "objects" / "old").exists()
    with pytest.raises(InstanceNotFoundError):
        volumes.get("objects/old")
    assert set(store_urls(volumes)) == {volumes.base_name, second.url, third.url}


def test_an_unreachable_volume_is_not_reported_as_not_found(
    tmp_path: Path, sessions: sessionmaker[Session], clock: Clock
) -> None:
    volumes = volume_set(tmp_path, sessions, clock)
    volumes.put("objects/on-base", b"a")
    url = add_volume(sessions, disk(tmp_path, "disk2"), "hot", "ops").url
    volumes.refresh()
    volumes.put("objects/on-disk2", b"b")
    assert volumes.get("objects/on-disk2") == b"b"
    with pytest.raises(InstanceNotFoundError):
        volumes.get("objects/nowhere")
    assert not volumes.exists("objects/nowhere")

    shutil.rmtree(tmp_path / "disk2")  # unmounted
    assert volumes.get("objects/on-base") == b"a"  # a copy elsewhere is still served
    assert volumes.exists("objects/on-base")
    for key in ("objects/on-disk2", "objects/nowhere"):
        with pytest.raises(BackendUnavailableError, match="disk2"):
            volumes.get(key)
        with pytest.raises(BackendUnavailableError):
            volumes.exists(key)
    with pytest.raises(BackendUnavailableError):  # never quietly onto an older disk
        volumes.put("objects/next", b"c")
    assert not (tmp_path / "disk2").exists()  # and not recreated below the mount point

    # a node (re)started while the disk is away opens it later, once it is back
    restarted = volume_set(tmp_path, sessions, clock)
    with pytest.raises(BackendUnavailableError, match="does not exist"):
        restarted.get("objects/nowhere")
    (tmp_path / "disk2").mkdir()
    clock.now += 5
    restarted.put("objects/next", b"c")
    assert (tmp_path / "disk2" / "objects" / "next").exists()
    assert restarted.writing_to == url


def test_a_volume_added_by_another_process_is_used_within_the_interval(
    tmp_path: Path, sessions: sessionmaker[Session], clock: Clock
) -> None:
    serving = volume_set(tmp_path, sessions, clock)
    other_engine = create_index_engine(sqlite_url(tmp_path))  # another process's connection
    try:
        other = VolumeSet(
            LocalBlobStore(tmp_path / "base"),
            table_loader(session_factory(other_engine), "hot"),
            clock=clock,
        )
        other.put("objects/a", b"a")
        url = add_volume(session_factory(other_engine), disk(tmp_path, "disk2"), "hot", "ops").url
        clock.now += 4
        serving.put("objects/b", b"b")  # not yet due
        assert (tmp_path / "base" / "objects" / "b").exists()
        clock.now += 1.5
        serving.put("objects/c", b"c")
        assert serving.writing_to == url
        assert (tmp_path / "disk2" / "objects" / "c").exists()
        assert serving.get("objects/a") == b"a"
    finally:
        other_engine.dispose()


def test_a_failed_refresh_keeps_the_volumes_it_had(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [(disk(tmp_path, "disk2"), True)]
    broken = False

    def load() -> list[tuple[str, bool]]:
        if broken:
            raise RuntimeError("index unreachable")
        return rows

    volumes = VolumeSet(LocalBlobStore(tmp_path / "base"), load, clock=clock)
    broken = True
    clock.now += 10
    with caplog.at_level(logging.ERROR, logger="cloud.volumes"):
        volumes.put("objects/a", b"a")
    assert "keeping the previous one" in caplog.text
    assert (tmp_path / "disk2" / "objects" / "a").exists()
    caplog.clear()
    volumes.put("objects/b", b"b")  # not retried on every call
    assert not caplog.text


def test_concurrent_writers_during_refreshes_lose_nothing(tmp_path: Path, clock: Clock) -> None:
    rows: list[tuple[str, bool]] = []
    volumes = VolumeSet(LocalBlobStore(tmp_path / "base"), lambda: list(rows), clock=clock)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for i in range(40):
                volumes.put(f"objects/{worker}-{i}", b"x")
                clock.now += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    rows.append((disk(tmp_path, "disk2"), True))
    for thread in threads:
        thread.join()
    assert not errors
    assert len(set(volumes.keys())) == 160
    assert all(volumes.get(f"objects/{w}-{i}") == b"x" for w in range(4) for i in range(40))


def test_add_volume_refuses_what_it_cannot_use(
    tmp_path: Path, sessions: sessionmaker[Session]
) -> None:
    with pytest.raises(VolumeError, match="unknown tier 'warm'"):
        add_volume(sessions, disk(tmp_path, "a"), "warm", "ops")
    with pytest.raises(VolumeError, match="does not exist"):
        add_volume(sessions, f"file://{tmp_path / 'not-mounted'}", "hot", "ops")
    assert not (tmp_path / "not-mounted").exists()
    with pytest.raises(VolumeError, match="cannot be opened"):
        add_volume(sessions, "ftp://example.org/blobs", "hot", "ops")
    with pytest.raises(VolumeError, match="absolute"):
        add_volume(sessions, "file://relative/blobs", "hot", "ops")
    readonly = disk(tmp_path, "ro")
    with pytest.raises(VolumeError, match=r"failed its probe: .*read-only"):
        add_volume(sessions, readonly, "hot", "ops", opener=lambda _url: ReadOnlyStore())
    with pytest.raises(VolumeError, match="other bytes"):
        add_volume(sessions, readonly, "hot", "ops", opener=lambda _url: ForgetfulStore())
    base = disk(tmp_path, "base")
    with pytest.raises(VolumeError, match="already in use"):
        add_volume(sessions, base + "/", "hot", "ops", in_use=[base])
    (tmp_path / "base" / "inner").mkdir()
    with pytest.raises(VolumeError, match="overlaps"):
        add_volume(sessions, f"{base}/inner", "hot", "ops", in_use=[base])
    assert list_volumes(sessions) == []

    added = add_volume(sessions, readonly, "cold", "ops")
    assert (added.tier, added.writable, added.added_by) == ("cold", True, "ops")
    assert list((tmp_path / "ro").iterdir()) == []  # the probe cleaned up
    with pytest.raises(VolumeError, match="already in use"):
        add_volume(sessions, readonly, "hot", "ops")
    with pytest.raises(VolumeError, match="not a volume"):
        set_writable(sessions, f"file://{tmp_path / 'elsewhere'}", False)
    assert set_writable(sessions, readonly, False).writable is False
