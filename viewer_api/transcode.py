"""Transfer syntax negotiation for WADO-RS and the one transcoding we do: to Explicit VR LE."""

from __future__ import annotations

import io
import warnings

from pydicom import dcmread, dcmwrite
from pydicom.uid import ExplicitVRLittleEndian

from cloud.errors import ArchiveError
from collectors.multipart import MediaRange

# Compressed frame media types (PS3.18 Table 8.7.3-2) and the transfer syntaxes behind them.
FRAME_MEDIA_TYPES: dict[str, set[str]] = {
    "image/jpeg": {
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
    },
    "image/jls": {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"},
    "image/jp2": {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"},
    "image/jphc": {
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
    },
    "image/dicom-rle": {"1.2.840.10008.1.2.5"},
    "video/mpeg": {"1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.101"},
    "video/mp4": {
        "1.2.840.10008.1.2.4.102",
        "1.2.840.10008.1.2.4.103",
        "1.2.840.10008.1.2.4.104",
        "1.2.840.10008.1.2.4.105",
        "1.2.840.10008.1.2.4.106",
    },
    "video/h265": {"1.2.840.10008.1.2.4.107", "1.2.840.10008.1.2.4.108"},
}


# Motion video: pydicom cannot decode it, and PS3.18 8.7.3.5.2 lets an origin server that
# holds pixel data only in lossy compressed form send it as stored instead of the default.
VIDEO_SYNTAXES = frozenset().union(
    *(FRAME_MEDIA_TYPES[t] for t in ("video/mpeg", "video/mp4", "video/h265"))
)


class TranscodeError(ArchiveError):
    """The stored object cannot be delivered in any transfer syntax the client accepts."""

    http_status = 406
    title = "Not acceptable"


def choose_dicom_syntax(accepted: list[MediaRange], stored: str) -> str:
    """Transfer syntax to send an application/dicom object in: the stored one if allowed."""
    wanted: list[str] = []
    defaulted = False
    for entry in accepted:
        if entry.media_type not in ("multipart/related", "application/dicom", "*/*"):
            continue
        if entry.media_type == "multipart/related" and entry.part_type not in (
            None,
            "application/dicom",
        ):
            continue
        # PS3.18 8.7.3.5.2: without a transfer-syntax parameter the default is Explicit VR LE.
        wanted.append(entry.transfer_syntax or ExplicitVRLittleEndian)
        defaulted = defaulted or not entry.transfer_syntax
    if not wanted:
        raise TranscodeError("this resource is available as multipart/related application/dicom")
    if "*" in wanted or stored in wanted:
        return stored
    if stored in VIDEO_SYNTAXES:
        if defaulted:  # lossy-only pixel data: sent as stored, not decompressed
            return stored
        raise TranscodeError(
            f"a video stored as {stored} cannot be decompressed; ask for it as stored "
            "(transfer-syntax=* or its own UID)"
        )
    if ExplicitVRLittleEndian in wanted:
        return ExplicitVRLittleEndian
    raise TranscodeError(
        f"stored as {stored}; can deliver it as stored or as {ExplicitVRLittleEndian}"
    )


def to_explicit_little_endian(part10: bytes) -> bytes:
    """Re-encode a Part-10 object as Explicit VR Little Endian, decompressing its pixels."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = dcmread(io.BytesIO(part10))
            syntax = ds.file_meta.TransferSyntaxUID
            if syntax.is_compressed:
                ds.decompress(generate_instance_uid=False)  # same object, other encoding
            elif not syntax.is_little_endian and "PixelData" in ds:
                # The retired big-endian syntax: pydicom reads the pixels, numpy swaps them.
                pixels = ds.pixel_array
                ds.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
                ds["PixelData"].VR = "OW" if pixels.dtype.itemsize > 1 else "OB"
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            out = io.BytesIO()
            dcmwrite(out, ds, implicit_vr=False, little_endian=True, enforce_file_format=True)
        except Exception as exc:
            raise TranscodeError(f"cannot transcode to Explicit VR Little Endian: {exc}") from exc
    return out.getvalue()
