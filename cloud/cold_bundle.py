"""The cold tier's unit: one series as one zstd-compressed tar, sealed when its study is.

A bundle is an ordinary POSIX tar of the series' Part-10 objects, exactly as received (members
``<SOP Instance UID>.dcm``), compressed with zstd. Anyone can open an unsealed one with
``zstd -d | tar x``; a sealed one is that stream encrypted with the study's data key
(`cloud.crypto.seal`, bound to ``series-bundle/<Series Instance UID>``), so destroying the key
shreds the cold copy too. Members are packed and unpacked one at a time (streaming), so memory
holds one object plus the compressed bundle, never the whole series twice.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable, Iterator

import zstandard

from cloud.crypto import seal, unseal
from cloud.errors import ArchiveError

LEVEL = 3  # zstd's default: ~2x on CT at several hundred MB/s; higher levels cost far more CPU


class BundleDamagedError(ArchiveError):
    """A cold bundle cannot be opened: truncated, altered, or not a bundle at all."""

    http_status = 500
    title = "Cold bundle damaged"


def bundle_key(study_uid: str, series_uid: str, *, sealed: bool) -> str:
    """Where a series' bundle lives in the cold store."""
    return f"series/{study_uid}/{series_uid}.tar.zst" + (".ice" if sealed else "")


def _aad(series_uid: str) -> str:
    return f"series-bundle/{series_uid}"


def pack(members: Iterable[tuple[str, bytes]], *, data_key: bytes | None, series_uid: str) -> bytes:
    """The bundle of ``members`` (SOP Instance UID, Part-10 bytes), sealed if ``data_key``."""
    compressed = io.BytesIO()
    compressor = zstandard.ZstdCompressor(level=LEVEL, threads=-1, write_checksum=True)
    with compressor.stream_writer(compressed, closefd=False) as writer:
        with tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for sop_uid, data in members:
                info = tarfile.TarInfo(f"{sop_uid}.dcm")
                info.size, info.mode = len(data), 0o600  # mtime 0: same bytes, same bundle
                tar.addfile(info, io.BytesIO(data))
    bundle = compressed.getvalue()
    return seal(data_key, bundle, _aad(series_uid)) if data_key is not None else bundle


def unpack(
    bundle: bytes, *, data_key: bytes | None, series_uid: str
) -> Iterator[tuple[str, bytes]]:
    """The members of a bundle, one at a time, as (SOP Instance UID, Part-10 bytes)."""
    if data_key is not None:
        bundle = unseal(data_key, bundle, _aad(series_uid))
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(bundle))
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:
            for info in tar:
                handle = tar.extractfile(info) if info.isfile() else None
                name = info.name
                if handle is None or not name.endswith(".dcm") or "/" in name:
                    raise BundleDamagedError(f"bundle of series {series_uid} holds {name!r}")
                yield name.removesuffix(".dcm"), handle.read()
    except (tarfile.TarError, zstandard.ZstdError, EOFError) as exc:
        raise BundleDamagedError(f"bundle of series {series_uid} is damaged: {exc}") from exc
