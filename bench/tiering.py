"""Cold tier: how long a 300-slice CT series takes to move to the cold tier and back.

In process, on the embedded default (SQLite, local directories, encryption at rest on), in a
temporary data dir: one 300-slice 512 x 512 16-bit CT series (~158 MB) — the real scanner
slices of ``../shared/dicom-samples/ct/philips_ingenuity_head_phantom_axial_1mm`` repeated
under new UIDs, so compression sees real noise (a synthetic phantom compresses 400x and says
nothing; it is the fallback when the samples are absent) — is stored, read once
hot (every instance through `Archive.read`: the reference), moved to the cold tier
(`Tiering.tier_series`: read, unseal, check, tar, zstd, seal, store, read back and check,
delete hot copies), restored (`Tiering.restore_study`: fetch, check, unseal, unzstd, untar,
check every object against the index, re-seal, store hot), and read again; the restored bytes
must equal the originals. Then the same cold read as a user meets it: a read of a cold study
through `Archive.locate` waits for the restore job. Orthanc has no cold tier, so there is no
Orthanc column here: the cold-read penalty is given against our own hot read.

Usage: ``make bench`` or ``.venv/bin/python bench/tiering.py [--slices N] [--size N]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid
from rich.console import Console
from rich.table import Table

from cloud.archive import Archive
from imaging_cloud.synthetic import StudySpec, ct_series, to_part10

RESULTS = Path(__file__).with_name("results")
REAL_CT = (
    Path(__file__).resolve().parents[2]
    / "shared/dicom-samples/ct/philips_ingenuity_head_phantom_axial_1mm"
)


def _series(slices: int, size: int) -> tuple[str, dict[str, bytes], str]:
    """(study UID, SOP UID -> Part-10 bytes, where the pixels come from)."""
    real = sorted(REAL_CT.glob("*.dcm")) if REAL_CT.is_dir() else []
    if not real:
        spec = StudySpec()
        made = {str(ds.SOPInstanceUID): to_part10(ds) for ds in ct_series(spec, slices, size)}
        return spec.study_instance_uid, made, "synthetic phantom"
    sources = [pydicom.dcmread(path) for path in real]
    study, series = generate_uid(), generate_uid()
    files: dict[str, bytes] = {}
    for index in range(slices):
        ds = sources[index % len(sources)].copy()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = index + 1
        ds.ImagePositionPatient = [0.0, 0.0, float(index)]
        files[str(ds.SOPInstanceUID)] = to_part10(ds)
    return study, files, f"{len(sources)} real CT slices, repeated"


def _read_all(archive: Archive, study: str) -> dict[str, bytes]:
    return {s.sop_instance_uid: archive.read(s) for s in archive.locate(study)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    console = Console()
    with tempfile.TemporaryDirectory(prefix="bench-tiering-") as tmp:
        archive = Archive.open(Path(tmp) / "data", cold_read_wait_seconds=600)
        try:
            study, files, source = _series(args.slices, args.size)
            for data in files.values():
                archive.store(data, source="bench")
            plain = sum(len(d) for d in files.values())
            timings: dict[str, float] = {}

            started = time.perf_counter()
            assert _read_all(archive, study) == files
            timings["hot read"] = time.perf_counter() - started

            later = datetime.now(UTC) + timedelta(hours=1)
            started = time.perf_counter()
            moved = archive.tiering.tier_due(timedelta(0), now=later)
            timings["tier"] = time.perf_counter() - started
            cold = sum(m.cold_bytes for m in moved)

            started = time.perf_counter()
            archive.tiering.restore_study(study)
            timings["restore"] = time.perf_counter() - started
            assert _read_all(archive, study) == files, "restore is not byte-exact"

            archive.tiering.tier_due(timedelta(0), now=datetime.now(UTC) + timedelta(hours=1))
            started = time.perf_counter()
            assert _read_all(archive, study) == files  # waits for the restore job
            timings["cold read (restore job + read)"] = time.perf_counter() - started
        finally:
            archive.close()

    title = f"cold tier: {len(files)}-slice CT series ({source}), {plain / 1e6:.0f} MB"
    table = Table(title=title)
    table.add_column("step")
    table.add_column("seconds", justify="right")
    table.add_column("MB/s", justify="right")
    for name, seconds in timings.items():
        table.add_row(name, f"{seconds:.2f}", f"{plain / 1e6 / seconds:.0f}")
    console.print(table)
    console.print(
        f"bundle {cold / 1e6:.1f} MB ({plain / cold:.2f}x smaller); cold read = "
        f"{timings['cold read (restore job + read)'] / timings['hot read']:.1f}x the hot read"
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"tiering-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps({"plain_bytes": plain, "cold_bytes": cold, "seconds": timings}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
