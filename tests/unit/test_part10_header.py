from __future__ import annotations

import io

import pydicom

from collectors.part10 import file_meta_header


def test_header_reads_back_with_pydicom_and_carries_the_sender() -> None:
    header = file_meta_header("1.2.840.10008.5.1.4.1.1.2", "1.2.3.45", "1.2.840.10008.1.2", "CT01")
    ds = pydicom.dcmread(io.BytesIO(header), force=False)
    meta = ds.file_meta
    assert meta.MediaStorageSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert meta.MediaStorageSOPInstanceUID == "1.2.3.45"  # odd length, padded with NUL
    assert meta.TransferSyntaxUID == "1.2.840.10008.1.2"
    assert meta.SourceApplicationEntityTitle == "CT01"
    assert meta.FileMetaInformationGroupLength == len(header) - 132 - 12
