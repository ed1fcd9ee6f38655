"""WADO-RS default delivery: every stored transfer syntax becomes Explicit VR LE, same pixels."""

from __future__ import annotations

import io

import pydicom
import pytest

from tests.support.samples import samples_root
from viewer_api.transcode import to_explicit_little_endian

ROOT = samples_root()
FILES = sorted((ROOT / "transfer_syntaxes").glob("*.dcm")) if ROOT else []


@pytest.mark.skipif(not FILES, reason="shared DICOM samples not found")
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_transcoding_keeps_every_pixel(path) -> None:  # type: ignore[no-untyped-def]
    original = pydicom.dcmread(path)
    converted = pydicom.dcmread(io.BytesIO(to_explicit_little_endian(path.read_bytes())))
    assert converted.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert converted.SOPInstanceUID == original.SOPInstanceUID
    assert (converted.pixel_array == original.pixel_array).all()
