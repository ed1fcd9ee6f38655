"""Replicated blob store on two local directories: verified reads, clean failures, repair."""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import pytest

from cloud.blob_replicas import ReplicaState, ReplicatedBlobStore, content_address_verifier
from cloud.blobstore import BlobDamagedError, LocalBlobStore, open_blob_store
from cloud.errors import BackendUnavailableError, InstanceNotFoundError
from cloud.ingest import blob_key_for
from imaging_cloud.synthetic import StudySpec, ct_series, to_part10


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "disk1", tmp_path / "disk2"


@pytest.fixture
def store(dirs: tuple[Path, Path]) -> ReplicatedBlobStore:
    opened = open_blob_store(f"file://{dirs[0]}", replicas=[f"file://{dirs[1]}"])
    assert isinstance(opened, ReplicatedBlobStore)
    return opened


@pytest.fixture
def instance() -> tuple[str, bytes]:
    """A Part-10 object under its content address, as ingest stores it."""
    data = to_part10(next(ct_series(StudySpec(), slices=1, size=16)))
    return blob_key_for(hashlib.sha256(data).hexdigest()), data


def flip_a_byte(path: Path, offset: int = 300) -> None:
    damaged = bytearray(path.read_bytes())
    damaged[offset] ^= 0x01
    path.write_bytes(bytes(damaged))


def test_put_writes_every_replica(store: ReplicatedBlobStore, dirs, instance) -> None:
    key, data = instance
    store.put(key, data)
    assert (dirs[0] / key).read_bytes() == data
    assert (dirs[1] / key).read_bytes() == data
    assert store.get(key) == data
    assert store.exists(key)
    assert store.names == [f"file://{dirs[0]}", f"file://{dirs[1]}"]


def test_damaged_copy_is_skipped_logged_and_repaired(
    store: ReplicatedBlobStore, dirs, instance, caplog: pytest.LogCaptureFixture
) -> None:
    key, data = instance
    store.put(key, data)
    flip_a_byte(dirs[0] / key)
    with caplog.at_level(logging.WARNING, logger="cloud.blob_replicas"):
        assert store.get(key) == data
    assert f"damaged on replica file://{dirs[0]}" in caplog.text
    assert store.inspect(key) == {
        f"file://{dirs[0]}": ReplicaState.DAMAGED,
        f"file://{dirs[1]}": ReplicaState.GOOD,
    }

    assert store.repair(key) == [f"file://{dirs[0]}"]
    assert (dirs[0] / key).read_bytes() == data
    assert store.repair(key) == []  # nothing left to do
    assert set(store.inspect(key).values()) == {ReplicaState.GOOD}


def test_missing_copy_falls_back_and_is_repaired(store: ReplicatedBlobStore, dirs, instance):
    key, data = instance
    store.put(key, data)
    (dirs[1] / key).unlink()
    (dirs[0] / key).unlink()
    with pytest.raises(InstanceNotFoundError):
        store.get(key)
    store.put(key, data)
    (dirs[0] / key).unlink()
    assert store.get(key) == data
    assert store.repair(key) == [f"file://{dirs[0]}"]
    assert (dirs[0] / key).read_bytes() == data


def test_every_copy_damaged_is_an_error_not_wrong_bytes(store: ReplicatedBlobStore, dirs, instance):
    key, data = instance
    store.put(key, data)
    flip_a_byte(dirs[0] / key)
    flip_a_byte(dirs[1] / key, offset=400)
    with pytest.raises(BlobDamagedError):
        store.get(key)
    with pytest.raises(BlobDamagedError):
        store.repair(key)
    with pytest.raises(InstanceNotFoundError):
        store.repair(blob_key_for("0" * 64))


def test_missing_replica_directory_fails_the_put_and_leaves_nothing(
    store: ReplicatedBlobStore, dirs, instance
) -> None:
    key, data = instance
    shutil.rmtree(dirs[1])  # an unmounted disk: must not be recreated below the mount point
    with pytest.raises(BackendUnavailableError, match=str(dirs[1])):
        store.put(key, data)
    assert not dirs[1].exists()
    assert not (dirs[0] / key).exists()  # the copy this put made on disk1 was undone
    with pytest.raises(BackendUnavailableError):  # maybe on the missing replica: not "404"
        store.get(key)


def test_unwritable_replica_fails_the_put_and_leaves_nothing(
    store: ReplicatedBlobStore, dirs, instance
) -> None:
    key, data = instance
    (dirs[1] / "objects").write_bytes(b"")  # a file where a directory must go (root ignores modes)
    with pytest.raises(BackendUnavailableError, match="not stored"):
        store.put(key, data)
    assert not (dirs[0] / key).exists()


def test_failed_put_never_removes_a_copy_that_was_already_there(
    store: ReplicatedBlobStore, dirs, instance
) -> None:
    """Re-sending a known instance while a replica is down must not lose its blob."""
    key, data = instance
    store.put(key, data)
    shutil.rmtree(dirs[1])
    with pytest.raises(BackendUnavailableError):
        store.put(key, data)
    assert (dirs[0] / key).read_bytes() == data
    assert store.get(key) == data


def test_keys_are_the_union_and_delete_reaches_every_replica(dirs) -> None:
    first, second = LocalBlobStore(dirs[0]), LocalBlobStore(dirs[1])
    store = ReplicatedBlobStore([first, second])
    store.put("both", b"1")
    first.put("only-first", b"2")
    second.put("only-second", b"3")
    assert sorted(store.keys()) == ["both", "only-first", "only-second"]
    assert store.exists("only-second")
    store.delete("only-first")
    store.delete("both")
    store.delete("both")  # idempotent
    assert sorted(store.keys()) == ["only-second"]
    assert not first.exists("both") and not second.exists("both")
    store.close()


def test_copies_that_cannot_be_verified_are_served_and_spread_only_when_they_agree(
    dirs,
) -> None:
    """Blobs sealed with a data key are not their plaintext: the address cannot judge them."""
    first, second = LocalBlobStore(dirs[0]), LocalBlobStore(dirs[1])
    store = ReplicatedBlobStore([first, second])
    key = blob_key_for(hashlib.sha256(b"plaintext").hexdigest())
    sealed = b"ICE1\x01" + bytes(range(200))
    store.put(key, sealed)
    assert store.get(key) == sealed
    assert set(store.inspect(key).values()) == {ReplicaState.UNVERIFIED}
    second.delete(key)
    assert store.repair(key) == [second.url]
    assert second.get(key) == sealed
    second.put(key, sealed[:-1] + b"\x00")
    with pytest.raises(BlobDamagedError, match="none can be verified"):
        store.repair(key)

    # A scrub that can open sealed blobs tells the good copy from the bad one.
    def opens(_key: str, data: bytes) -> bool:
        return data == sealed

    assert store.inspect(key, verify=opens) == {
        first.url: ReplicaState.GOOD,
        second.url: ReplicaState.DAMAGED,
    }
    assert store.repair(key, verify=opens) == [second.url]
    first.put(key, sealed[:-1] + b"\x01")  # now the primary's copy is the bad one
    assert store.get(key, verify=opens) == sealed
    assert store.repair(key, verify=opens) == [first.url]
    assert second.get(key) == sealed


def test_content_address_verifier() -> None:
    data = b"\0" * 128 + b"DICM" + b"rest"
    key = blob_key_for(hashlib.sha256(data).hexdigest())
    assert content_address_verifier(key, data) is True
    assert content_address_verifier(key, data + b"x") is False
    assert content_address_verifier(key, b"sealed bytes") is None
    assert content_address_verifier("cold/series.tar.zst", data) is None
    wrong_fanout = f"objects/00/00/{hashlib.sha256(data).hexdigest()}.dcm"
    assert content_address_verifier(wrong_fanout, data) is None


def test_a_store_named_twice_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="twice"):
        open_blob_store(f"file://{tmp_path}", replicas=[f"file://{tmp_path}/"])
    with pytest.raises(ValueError, match="at least two"):
        ReplicatedBlobStore([LocalBlobStore(tmp_path)])


def test_local_store_refuses_to_recreate_a_vanished_root(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "volume")
    shutil.rmtree(tmp_path / "volume")
    with pytest.raises(BackendUnavailableError, match="missing"):
        store.put("objects/k", b"x")
    assert not (tmp_path / "volume").exists()
