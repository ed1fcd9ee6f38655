"""AES-256-GCM sealing of blobs and the file-backed key-encryption keys."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from cloud.crypto import (
    HEADER_BYTES,
    MAGIC,
    TAG_BYTES,
    FileKeks,
    KekUnavailableError,
    SealedBlobError,
    is_sealed,
    new_data_key,
    open_keks,
    seal,
    unseal,
)

SOP = "1.2.826.0.1.3680043.8.498.1"
OTHER_SOP = "1.2.826.0.1.3680043.8.498.2"
PLAINTEXT = b"\0" * 128 + b"DICM" + bytes(range(256)) * 40


def test_seal_then_unseal_gives_the_plaintext_back() -> None:
    key = new_data_key()
    blob = seal(key, PLAINTEXT, SOP)
    assert blob[:4] == MAGIC and blob[4] == 1
    assert len(blob) == HEADER_BYTES + len(PLAINTEXT) + TAG_BYTES
    assert PLAINTEXT[128:1024] not in blob
    assert is_sealed(blob) and not is_sealed(PLAINTEXT)
    assert unseal(key, blob, SOP) == PLAINTEXT


def test_every_seal_has_its_own_nonce() -> None:
    key = new_data_key()
    assert seal(key, PLAINTEXT, SOP) != seal(key, PLAINTEXT, SOP)


@pytest.mark.parametrize("where", [5, 16, HEADER_BYTES, HEADER_BYTES + 1000, -1])
def test_a_changed_byte_fails_authentication(where: int) -> None:
    key = new_data_key()
    blob = bytearray(seal(key, PLAINTEXT, SOP))
    blob[where] ^= 0x01
    with pytest.raises(SealedBlobError, match="failed authentication"):
        unseal(key, bytes(blob), SOP)


def test_a_blob_under_another_instance_is_refused() -> None:
    key = new_data_key()
    with pytest.raises(SealedBlobError, match="another instance"):
        unseal(key, seal(key, PLAINTEXT, SOP), OTHER_SOP)


def test_another_key_is_refused() -> None:
    blob = seal(new_data_key(), PLAINTEXT, SOP)
    with pytest.raises(SealedBlobError, match="another key"):
        unseal(new_data_key(), blob, SOP)


def test_header_checks() -> None:
    key = new_data_key()
    blob = seal(key, PLAINTEXT, SOP)
    with pytest.raises(SealedBlobError, match="not a sealed object"):
        unseal(key, PLAINTEXT, SOP)
    with pytest.raises(SealedBlobError, match="version 2"):
        unseal(key, blob[:4] + b"\x02" + blob[5:], SOP)
    with pytest.raises(SealedBlobError, match="truncated"):
        unseal(key, blob[: HEADER_BYTES + TAG_BYTES - 1], SOP)
    with pytest.raises(SealedBlobError, match="failed authentication"):
        unseal(key, blob[:-1], SOP)


def test_file_keks_are_created_private_and_atomically(tmp_path: Path) -> None:
    directory = tmp_path / "keys" / "kek"
    keks = FileKeks(directory)
    current = keks.current_id()
    key_file = directory / f"{current}.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert len(key_file.read_bytes()) == 32
    assert keks.known_ids() == [current]
    assert not [p for p in directory.iterdir() if p.name.startswith(".")]  # no leftovers
    assert FileKeks(directory).current_id() == current  # reopened, the same KEK


def test_first_kek_is_made_once_by_racing_openers(tmp_path: Path) -> None:
    directory = tmp_path / "kek"
    opened: list[FileKeks] = []
    threads = [
        threading.Thread(target=lambda: opened.append(FileKeks(directory))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({keks.current_id() for keks in opened}) == 1
    assert len(list(directory.glob("*.key"))) == 1


def test_wrap_unwrap_and_rotation(tmp_path: Path) -> None:
    keks = open_keks(f"file://{tmp_path / 'kek'}")
    data_key = new_data_key()
    old_id, wrapped = keks.wrap(data_key)
    assert old_id == keks.current_id() and data_key not in wrapped
    assert keks.unwrap(old_id, wrapped) == data_key

    new_id = keks.rotate()
    assert new_id != old_id and keks.current_id() == new_id
    assert keks.known_ids() == [old_id, new_id]
    again_id, rewrapped = keks.wrap(data_key)
    assert again_id == new_id
    assert keks.unwrap(new_id, rewrapped) == data_key
    assert keks.unwrap(old_id, wrapped) == data_key  # the old one still opens until retired
    assert stat.S_IMODE((tmp_path / "kek" / f"{new_id}.key").stat().st_mode) == 0o600

    # Another process (a running node) sees the rotation without reopening.
    assert FileKeks(tmp_path / "kek").current_id() == new_id

    with pytest.raises(SealedBlobError):
        keks.unwrap(new_id, wrapped)  # wrapped under the old KEK
    with pytest.raises(ValueError, match="current"):
        keks.retire(new_id)
    keks.retire(old_id)
    assert keks.known_ids() == [new_id]
    with pytest.raises(KekUnavailableError, match="missing"):
        FileKeks(tmp_path / "kek").unwrap(old_id, wrapped)


@pytest.mark.parametrize("kek_id", ["../token", "a/b", "", ".hidden", "x" * 65])
def test_kek_ids_never_name_a_path_outside(tmp_path: Path, kek_id: str) -> None:
    keks = FileKeks(tmp_path / "kek")
    with pytest.raises(KekUnavailableError, match="invalid KEK id"):
        keks.unwrap(kek_id, b"\0" * 40)


def test_unknown_provider_names_the_seam() -> None:
    with pytest.raises(ValueError, match="KeyEncryptionKeys"):
        open_keks("kms://region/key")
