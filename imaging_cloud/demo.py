"""Sample data for `make demo`: a synthetic CT study, and the shared real samples if present."""

from __future__ import annotations

import os
from pathlib import Path

from rich.progress import track

from cloud.archive import Archive
from cloud.errors import ArchiveError
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10

REPO = Path(__file__).resolve().parents[1]


def default_samples() -> Path | None:
    env = os.environ.get("IMAGING_CLOUD_SAMPLES")
    candidate = Path(env) if env else REPO.parent / "shared" / "dicom-samples"
    return candidate if candidate.is_dir() else None


def load_demo_data(archive: Archive, samples: Path | None = None) -> list[tuple[str, str]]:
    """Store the demo studies; return (StudyInstanceUID, label) pairs."""
    study = StudySpec(
        patient=PatientSpec(patient_id="DEMO001", patient_name="Zhang^San=张^三="),
        study_description="Synthetic demo CT",
        accession_number="DEMO0001",
    )
    loaded = []
    for ds in track(list(ct_series(study, slices=48, size=256)), description="synthetic CT"):
        archive.store(to_part10(ds), source="demo")
    loaded.append((study.study_instance_uid, "synthetic CT, 48 slices (patient 张三)"))
    folder = samples or default_samples()
    if folder is not None:
        loaded.extend(
            _load_folder(archive, folder / "ct" / "philips_ingenuity_head_phantom_axial_1mm")
        )
    return loaded


def _load_folder(archive: Archive, folder: Path) -> list[tuple[str, str]]:
    studies: dict[str, str] = {}
    files = sorted(folder.glob("*.dcm"))
    for path in track(files, description=f"{folder.name}"):
        try:
            outcome = archive.store(path.read_bytes(), source="demo")
        except ArchiveError:
            continue
        studies[outcome.study_instance_uid] = f"real sample {folder.name}"
    return list(studies.items())
