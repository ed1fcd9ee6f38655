"""De-identified export for teaching and research: a ZIP of studies, as DICOM or as images.

DICOM entries go through the PS3.15 Basic Profile (`cloud.deidentify`) with one UID remapper
per export and a per-project key, so the same study exported twice for one project keeps its
new UIDs and pseudonym, and two projects cannot be linked. Image entries are rendered JPEGs
with the requester's identity burned in (`mpr.watermark`), for slides and handouts.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Literal

from pydicom import dcmwrite

from cloud.archive import Archive
from cloud.deidentify import (
    DeidentifyProfile,
    UidRemapper,
    deidentify,
    export_key,
    load_profile,
    pseudonym_for,
)
from mpr import PixelDecodeError, render_frame

ExportFormat = Literal["dicom", "jpeg"]


@dataclass
class ExportSummary:
    project: str
    studies: int = 0
    instances: int = 0
    skipped: list[str] = field(default_factory=list)  # instances that could not be rendered
    pseudonyms: set[str] = field(default_factory=set)


def export_studies(
    archive: Archive,
    study_uids: Sequence[str],
    output: IO[bytes],
    *,
    project: str,
    data_dir: Path,
    requester: str,
    fmt: ExportFormat = "dicom",
    profile: DeidentifyProfile | None = None,
    progress: Callable[[int], None] | None = None,
) -> ExportSummary:
    """Write the studies, de-identified, as a ZIP to ``output``."""
    chosen = profile or load_profile()
    key = export_key(data_dir, project)
    remapper = UidRemapper(key)
    summary = ExportSummary(project)
    mark = (
        f"{requester} · {project} · {datetime.now(UTC):%Y-%m-%d} · 仅供教学科研 teaching/research"
    )
    with zipfile.ZipFile(output, "w", zipfile.ZIP_DEFLATED) as archive_zip:
        for uid in study_uids:
            summary.studies += 1
            for stored in archive.locate(uid):
                ds = archive.read_dataset(stored)
                pseudonym = pseudonym_for(str(ds.get("PatientID", "")), key)
                summary.pseudonyms.add(pseudonym)
                clean = deidentify(ds, chosen, remapper, patient_pseudonym=pseudonym)
                folder = f"{pseudonym}/{clean.StudyInstanceUID}/{clean.SeriesInstanceUID}"
                if fmt == "dicom":
                    buffer = io.BytesIO()
                    dcmwrite(buffer, clean, enforce_file_format=True)
                    archive_zip.writestr(f"{folder}/{clean.SOPInstanceUID}.dcm", buffer.getvalue())
                else:
                    try:
                        image = render_frame(clean, 0, watermark=mark)
                    except (PixelDecodeError, ValueError):
                        summary.skipped.append(str(clean.SOPInstanceUID))
                        continue
                    archive_zip.writestr(f"{folder}/{clean.SOPInstanceUID}.jpg", image)
                summary.instances += 1
                if progress is not None:
                    progress(1)
        archive_zip.writestr("export.json", _manifest(summary, chosen, requester, fmt))
    return summary


def _manifest(summary: ExportSummary, profile: DeidentifyProfile, requester: str, fmt: str) -> str:
    return json.dumps(
        {
            "project": summary.project,
            "requested_by": requester,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "format": fmt,
            "profile": ["Basic Application Confidentiality Profile", *profile.options()],
            "studies": summary.studies,
            "instances": summary.instances,
            "patients": len(summary.pseudonyms),
            "not_rendered": summary.skipped,
        },
        ensure_ascii=False,
        indent=2,
    )
