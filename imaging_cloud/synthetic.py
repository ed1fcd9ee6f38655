"""Synthetic DICOM studies for the demo, the tests and the benchmarks.

Everything made here is labelled as synthetic (``Manufacturer`` = ``IMAGING-CLOUD SYNTHETIC``)
so it can never be mistaken for patient data.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

MANUFACTURER = "IMAGING-CLOUD SYNTHETIC"
UID_ROOT = "1.2.826.0.1.3680043.10.1370."  # below pydicom's registered example root


@dataclass(frozen=True)
class PatientSpec:
    """Who the synthetic study belongs to, and how their name is encoded."""

    patient_id: str = "SYN0001"
    patient_name: str = "Synthetic^Patient"
    birth_date: str = "19700101"
    sex: str = "O"
    specific_character_set: str | list[str] = "ISO_IR 192"


@dataclass
class StudySpec:
    """Study-level attributes of a synthetic study."""

    patient: PatientSpec = field(default_factory=PatientSpec)
    study_instance_uid: str = field(default_factory=lambda: generate_uid(UID_ROOT))
    study_date: str = "20260101"
    study_time: str = "120000"
    accession_number: str = "ACC0001"
    study_description: str = "Synthetic study"
    referring_physician_name: str = "Referrer^Synthetic"
    study_id: str = "1"
    institution_name: str = ""
    department: str = ""  # Institutional Department Name: what department-scoped roles match


def _base_dataset(study: StudySpec, sop_class_uid: str, series_uid: str, modality: str) -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = study.patient.specific_character_set
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = generate_uid(UID_ROOT)
    ds.StudyInstanceUID = study.study_instance_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = study.patient.patient_id
    ds.PatientName = study.patient.patient_name
    ds.PatientBirthDate = study.patient.birth_date
    ds.PatientSex = study.patient.sex
    ds.StudyDate = study.study_date
    ds.StudyTime = study.study_time
    ds.AccessionNumber = study.accession_number
    ds.StudyDescription = study.study_description
    ds.ReferringPhysicianName = study.referring_physician_name
    ds.StudyID = study.study_id
    ds.Modality = modality
    ds.Manufacturer = MANUFACTURER
    if study.institution_name:
        ds.InstitutionName = study.institution_name
    if study.department:
        ds.InstitutionalDepartmentName = study.department
    return ds


def _phantom_slice(size: int, index: int) -> np.ndarray:
    """A disc whose radius changes with the slice: enough structure for MPR and rendering."""
    yy, xx = np.mgrid[0:size, 0:size]
    centre = (size - 1) / 2
    radius = size * (0.25 + 0.15 * np.sin(index / 12.0))
    inside = (yy - centre) ** 2 + (xx - centre) ** 2 < radius**2
    image = np.where(inside, 1024 + 40, 0).astype(np.int16)  # water-ish disc in air (raw)
    image[(index * 3) % size, :] = 2000  # a bright line that moves through the stack
    return image


def ct_series(
    study: StudySpec,
    slices: int = 10,
    size: int = 64,
    series_number: int = 1,
    spacing: float = 1.0,
) -> Iterator[Dataset]:
    """Yield a contiguous axial CT series of ``slices`` square ``size`` images."""
    series_uid = generate_uid(UID_ROOT)
    frame_of_reference = generate_uid(UID_ROOT)
    for index in range(slices):
        ds = _base_dataset(study, CTImageStorage, series_uid, "CT")
        ds.SeriesNumber = series_number
        ds.SeriesDescription = "Synthetic axial CT"
        ds.InstanceNumber = index + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.FrameOfReferenceUID = frame_of_reference
        ds.ImagePositionPatient = [0.0, 0.0, index * spacing]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.5, 0.5]
        ds.SliceThickness = spacing
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = size
        ds.Columns = size
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.PixelData = _phantom_slice(size, index).tobytes()
        yield ds


def pet_series(
    study: StudySpec, frame_of_reference: str, slices: int = 50, hot_value: int = 1000
) -> list[Dataset]:
    """A PET series in ``frame_of_reference``: slices 2 mm apart, 32 x 32 pixels of 1 mm, zero
    except a hot square at x, y = 8..15 mm, for fusion onto a CT of the same frame."""
    datasets = list(ct_series(study, slices=slices, size=32, spacing=2.0, series_number=2))
    hot = np.zeros((32, 32), dtype=np.int16)
    hot[8:16, 8:16] = hot_value
    for ds in datasets:
        ds.SOPClassUID = PositronEmissionTomographyImageStorage
        ds.Modality = "PT"
        ds.SeriesDescription = "Synthetic PET"
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PixelSpacing = [1.0, 1.0]
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        del ds.WindowCenter, ds.WindowWidth
        ds.PixelData = hot.tobytes()
    return datasets


def secondary_capture(study: StudySpec, count: int, size: int = 16) -> Iterator[Dataset]:
    """Yield ``count`` small 8-bit secondary-capture instances in one series."""
    series_uid = generate_uid(UID_ROOT)
    for index in range(count):
        ds = _base_dataset(study, SecondaryCaptureImageStorage, series_uid, "OT")
        ds.SeriesNumber = 99
        ds.InstanceNumber = index + 1
        ds.ConversionType = "WSD"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = size
        ds.Columns = size
        ds.BitsAllocated = 8
        ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = bytes((index + i) % 256 for i in range(size * size))
        yield ds


def to_part10(ds: Dataset, transfer_syntax_uid: str = ExplicitVRLittleEndian) -> bytes:
    """Encode ``ds`` as a DICOM Part-10 file (preamble, File Meta, dataset)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax_uid)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_files(datasets: Iterator[Dataset], folder: Path) -> list[Path]:
    """Write each dataset to ``folder`` as ``<SOPInstanceUID>.dcm`` and return the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ds in datasets:
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        path.write_bytes(to_part10(ds))
        paths.append(path)
    return paths
