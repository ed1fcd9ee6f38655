"""What the collector tests share: small real DICOM bytes, a recording sink, a hand clock."""

from __future__ import annotations

from io import BytesIO

from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from collectors.intake import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SUCCESS, SinkResult

SETTLE = 0.05


def dicom_bytes(patient_id: str = "P1") -> bytes:
    """A small but real Part-10 Secondary Capture object."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientID = patient_id
    dataset.Modality = "OT"
    buffer = BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


class RecordingSink:
    """Stores what it is given; can quarantine non-DICOM input or report a full disk."""

    def __init__(self, *, quarantine_non_dicom: bool = False) -> None:
        self.quarantine_non_dicom = quarantine_non_dicom
        self.disk_full = False
        self.offered: list[tuple[bytes, str]] = []
        self.stored: list[tuple[bytes, str]] = []

    def __call__(self, data: bytes, origin: str) -> SinkResult:
        self.offered.append((data, origin))
        if self.disk_full:
            return SinkResult(OUT_OF_RESOURCES, "disk full")
        if self.quarantine_non_dicom and data[128:132] != b"DICM":
            return SinkResult(CANNOT_UNDERSTAND, "no DICM prefix", quarantined=True)
        self.stored.append((data, origin))
        return SinkResult(SUCCESS)

    @property
    def stored_bytes(self) -> list[bytes]:
        return [data for data, _ in self.stored]


class Clock:
    """A monotonic clock the test moves by hand, so nothing sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float = 2 * SETTLE) -> None:
        self.now += seconds
