from __future__ import annotations

from pathlib import Path

import pytest

from cloud.blobstore import LocalBlobStore, open_blob_store
from cloud.errors import InstanceNotFoundError


def test_put_get_delete(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    store.put("objects/ab/cd/x.dcm", b"data")
    assert store.get("objects/ab/cd/x.dcm") == b"data"
    assert list(store.keys()) == ["objects/ab/cd/x.dcm"]
    store.delete("objects/ab/cd/x.dcm")
    with pytest.raises(InstanceNotFoundError):
        store.get("objects/ab/cd/x.dcm")


@pytest.mark.parametrize(
    "key", ["../escape", "a/../../b", "/etc/passwd", "a//b", "", "a/./b", ".hidden"]
)
def test_keys_cannot_leave_the_store(tmp_path: Path, key: str) -> None:
    store = LocalBlobStore(tmp_path / "root")
    with pytest.raises(ValueError):
        store.put(key, b"x")
    assert not (tmp_path / "escape").exists()


def test_no_temporary_file_is_left_behind(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path)
    store.put("k", b"1")
    store.put("k", b"2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k"]


def test_unknown_scheme_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        open_blob_store("ftp://host/x")
