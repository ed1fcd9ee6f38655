"""Encryption at rest: AES-256-GCM sealing of blobs, and the key-encryption keys (KEKs).

Envelope encryption (Xuzhou spec): every study has its own 256-bit data key (DEK, kept by
`cloud.study_keys`), stored only wrapped by a KEK. Blobs are sealed with the DEK; rotating the
KEK re-wraps the DEKs and rewrites no blob; destroying a study's wrapped DEK makes every copy
of its blobs (replicas, cold bundles, backups) unreadable.

Sealed blob format (all integers big-endian)::

    offset  size  field
    0       4     magic  b"ICE1"
    4       1     format version (1)
    5       12    nonce, random per blob
    17      n+16  AES-256-GCM ciphertext of the Part-10 bytes, then the 16-byte tag

The associated data is ``magic + version + SOP Instance UID`` (ASCII), so a blob moved under
another instance, or with its header edited, fails authentication. Random 96-bit nonces are
safe up to 2**32 blobs per key; a study is far below that.

`KeyEncryptionKeys` is the seam for a key-management service: `FileKeks` keeps KEKs as files
(the embedded default, ``file://`` URLs); a KMS (e.g. ``kms://…``) would implement the same
six calls with the service's encrypt/decrypt (or wrap/unwrap) operations, the KEK never
leaving it. Only the file implementation is built.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from cloud.errors import ArchiveError, BackendUnavailableError

logger = logging.getLogger(__name__)

AES256GCM = "aes256gcm"  # the value of Instance.encryption for sealed blobs
MAGIC = b"ICE1"
VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16
KEY_BYTES = 32
HEADER_BYTES = len(MAGIC) + 1 + NONCE_BYTES
_PREFIX = MAGIC + bytes([VERSION])
_KEK_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_CURRENT = "current"


class SealedBlobError(ArchiveError):
    """A sealed blob fails its checks: tampered, truncated, under another instance, wrong key."""

    dimse_status = 0xC211  # Error: unable to process
    http_status = 500
    title = "Stored object failed its integrity check"


class KeyDestroyedError(ArchiveError):
    """The study's data key was destroyed (crypto-shredded): its objects can never be read.

    HTTP 410 Gone, as for other things that existed and are gone for good; DIMSE 0xC410, in
    the "unable to process" failure range 0xCxxx valid for C-STORE, C-GET and C-MOVE (0xA7xx
    would claim the SCP is out of resources, which it is not). The low byte echoes HTTP 410.
    """

    dimse_status = 0xC410
    http_status = 410
    title = "Study destroyed"


class KekUnavailableError(BackendUnavailableError):
    """A key-encryption key cannot be found or reached (a missing file, an unreachable KMS)."""

    title = "Key-encryption key unavailable"


def seal(data_key: bytes, plaintext: bytes, sop_instance_uid: str) -> bytes:
    """``plaintext`` encrypted and authenticated for the instance ``sop_instance_uid``.

    Parameters
    ----------
    data_key
        The study's 32-byte data key.
    plaintext
        The Part-10 bytes.
    sop_instance_uid
        Bound as associated data: the blob opens only for this instance.
    """
    nonce = secrets.token_bytes(NONCE_BYTES)
    sealed = AESGCM(data_key).encrypt(nonce, plaintext, _aad(sop_instance_uid))
    return b"".join((_PREFIX, nonce, sealed))


def unseal(data_key: bytes, blob: bytes, sop_instance_uid: str) -> bytes:
    """The plaintext of a blob made by `seal`; `SealedBlobError` if any check fails."""
    if len(blob) < HEADER_BYTES + TAG_BYTES:
        raise SealedBlobError(f"sealed blob of {sop_instance_uid} is truncated")
    if blob[: len(MAGIC)] != MAGIC:
        raise SealedBlobError(f"blob of {sop_instance_uid} is not a sealed object")
    if blob[len(MAGIC)] != VERSION:
        raise SealedBlobError(
            f"sealed blob of {sop_instance_uid} has unknown format version {blob[len(MAGIC)]}"
        )
    nonce = blob[len(_PREFIX) : HEADER_BYTES]
    try:
        return AESGCM(data_key).decrypt(nonce, blob[HEADER_BYTES:], _aad(sop_instance_uid))
    except InvalidTag:
        raise SealedBlobError(
            f"sealed blob of {sop_instance_uid} failed authentication "
            "(altered, stored under another instance, or sealed with another key)"
        ) from None


def is_sealed(blob: bytes) -> bool:
    """Whether ``blob`` starts with the sealed-blob header (for tools; readers trust the index)."""
    return blob[: len(_PREFIX)] == _PREFIX


def _aad(sop_instance_uid: str) -> bytes:
    return _PREFIX + sop_instance_uid.encode("ascii")


def seal_bytes(data_key: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """Nonce, then the AES-256-GCM ciphertext and tag of ``plaintext``: the building block of
    formats other than blobs (index backups), which bind their own ``associated_data``."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(data_key).encrypt(nonce, plaintext, associated_data)


def unseal_bytes(data_key: bytes, sealed: bytes, associated_data: bytes, what: str) -> bytes:
    """The plaintext of `seal_bytes` output; `SealedBlobError` naming ``what`` if it fails."""
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise SealedBlobError(f"{what} is truncated")
    try:
        return AESGCM(data_key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated_data)
    except InvalidTag:
        raise SealedBlobError(
            f"{what} failed authentication (altered, truncated, or sealed with another key)"
        ) from None


def new_data_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


class KeyEncryptionKeys(Protocol):
    """Key-encryption keys: wrap and unwrap data keys, rotate, retire old KEKs."""

    def current_id(self) -> str:
        """The id of the KEK new data keys are wrapped with."""

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        """``data_key`` wrapped with the current KEK: (KEK id, wrapped bytes)."""

    def unwrap(self, kek_id: str, wrapped: bytes) -> bytes:
        """The data key ``wrapped`` with KEK ``kek_id``; `KekUnavailableError` if that KEK is
        gone, `SealedBlobError` if ``wrapped`` does not unwrap under it."""

    def rotate(self) -> str:
        """Make a new KEK the current one; its id. Older KEKs stay usable for unwrapping."""

    def known_ids(self) -> list[str]:
        """Every KEK still held (current and not yet retired), oldest first."""

    def retire(self, kek_id: str) -> None:
        """Destroy an old KEK; the caller has made sure no data key is wrapped with it."""


class FileKeks:
    """KEKs as files: ``<directory>/<id>.key`` (32 random bytes, 0600) and ``current``.

    The directory is made 0700 and the first KEK on first use. Every file is written aside,
    fsync'd and linked or renamed into place, so a crash or a racing process never sees a
    half-written key. The current id is re-read from disk on each wrap, so a node that keeps
    running while ``imaging-cloud lifecycle rotate-kek`` runs wraps new keys with the new KEK.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._keks: dict[str, bytes] = {}
        self._lock = threading.Lock()
        if not (directory / _CURRENT).exists():
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            first = self._new_kek()
            if not _create_exclusively(directory / _CURRENT, first.encode("ascii")):
                # Another process made the first KEK at the same moment; it won.
                (directory / f"{first}.key").unlink(missing_ok=True)

    def current_id(self) -> str:
        try:
            kek_id = (self.directory / _CURRENT).read_text(encoding="ascii").strip()
        except OSError as exc:
            raise KekUnavailableError(f"cannot read the current KEK id: {exc.strerror}") from exc
        _check_id(kek_id)
        return kek_id

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:
        kek_id = self.current_id()
        return kek_id, aes_key_wrap(self._kek(kek_id), data_key)

    def unwrap(self, kek_id: str, wrapped: bytes) -> bytes:
        try:
            return aes_key_unwrap(self._kek(kek_id), wrapped)
        except InvalidUnwrap:
            raise SealedBlobError(f"a data key does not unwrap under KEK {kek_id}") from None

    def rotate(self) -> str:
        kek_id = self._new_kek()
        _replace_atomically(self.directory / _CURRENT, kek_id.encode("ascii"))
        logger.info("new key-encryption key is current", extra={"kek_id": kek_id})
        return kek_id

    def known_ids(self) -> list[str]:
        ids = [path.stem for path in self.directory.glob("*.key") if _KEK_ID.match(path.stem)]
        return sorted(ids, key=lambda kek_id: (self._path(kek_id).stat().st_mtime_ns, kek_id))

    def retire(self, kek_id: str) -> None:
        if kek_id == self.current_id():
            raise ValueError(f"KEK {kek_id} is the current one; rotate first")
        self._path(kek_id).unlink(missing_ok=True)
        _fsync_directory(self.directory)
        with self._lock:
            self._keks.pop(kek_id, None)
        logger.info("key-encryption key retired", extra={"kek_id": kek_id})

    def _path(self, kek_id: str) -> Path:
        _check_id(kek_id)
        return self.directory / f"{kek_id}.key"

    def _kek(self, kek_id: str) -> bytes:
        with self._lock:
            kek = self._keks.get(kek_id)
        if kek is not None:
            return kek
        try:
            kek = self._path(kek_id).read_bytes()
        except FileNotFoundError:
            raise KekUnavailableError(
                f"KEK {kek_id} is missing from {self.directory} (retired or not restored)"
            ) from None
        except OSError as exc:
            raise KekUnavailableError(f"cannot read KEK {kek_id}: {exc.strerror}") from exc
        if len(kek) != KEY_BYTES:
            raise KekUnavailableError(f"KEK {kek_id} does not hold {KEY_BYTES} bytes")
        with self._lock:
            self._keks[kek_id] = kek
        return kek

    def _new_kek(self) -> str:
        while True:
            kek_id = f"kek-{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"
            if _create_exclusively(self._path(kek_id), secrets.token_bytes(KEY_BYTES)):
                return kek_id


class NoKeks:
    """Stands in where no KEKs are configured: every wrap or unwrap is refused."""

    def _refuse(self) -> KekUnavailableError:
        return KekUnavailableError("this archive has no key-encryption keys configured")

    def current_id(self) -> str:
        raise self._refuse()

    def wrap(self, data_key: bytes) -> tuple[str, bytes]:  # noqa: ARG002 (protocol signature)
        raise self._refuse()

    def unwrap(self, kek_id: str, wrapped: bytes) -> bytes:  # noqa: ARG002
        raise self._refuse()

    def rotate(self) -> str:
        raise self._refuse()

    def known_ids(self) -> list[str]:
        return []

    def retire(self, kek_id: str) -> None:  # noqa: ARG002
        raise self._refuse()


def open_keks(url: str) -> KeyEncryptionKeys:
    """The KEK provider a URL names: ``file:///path/to/keys/kek``. A KMS plugs in here."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FileKeks(Path(parsed.path))
    raise ValueError(
        f"unsupported KEK provider {parsed.scheme!r} in {url!r}: only file:// is built; a KMS "
        "implements cloud.crypto.KeyEncryptionKeys and is added to open_keks"
    )


def _check_id(kek_id: str) -> None:
    # KEK ids come from the index too: never let one name a path outside the directory.
    if not _KEK_ID.match(kek_id) or ".." in kek_id:
        raise KekUnavailableError(f"invalid KEK id {kek_id!r}")


def _write_aside(path: Path, content: bytes) -> Path:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def _create_exclusively(path: Path, content: bytes) -> bool:
    """Create ``path`` (0600) with ``content`` unless it exists; whether we created it."""
    temporary = _write_aside(path, content)
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        temporary.unlink(missing_ok=True)
    _fsync_directory(path.parent)
    return True


def _replace_atomically(path: Path, content: bytes) -> None:
    temporary = _write_aside(path, content)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
