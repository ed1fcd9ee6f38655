"""Sample data for `make demo`: a synthetic CT study, and the shared real samples if present."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE
from rich.progress import track

from cloud.archive import Archive
from cloud.errors import ArchiveError
from gateway.config import GatewayConfig
from gateway.service import Gateway
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10

REPO = Path(__file__).resolve().parents[1]


def default_samples() -> Path | None:
    env = os.environ.get("IMAGING_CLOUD_SAMPLES")
    candidate = Path(env) if env else REPO.parent / "shared" / "dicom-samples"
    return candidate if candidate.is_dir() else None


DEMO_HOSPITAL = "DEMO-H1"
OTHER_HOSPITAL = "DEMO-H2"
DEMO_PASSWORD = "demo-password"  # demo accounts only; printed by `make demo`
DEMO_ACCOUNTS = (
    ("demo.admin", "platform_admin", None),
    ("demo.radiologist", "radiologist", DEMO_HOSPITAL),
    ("demo.clinician", "clinician", DEMO_HOSPITAL),
    ("demo.trainee", "trainee", DEMO_HOSPITAL),  # sees studies anonymised
    ("demo.doctor.h2", "clinician", OTHER_HOSPITAL),  # needs the patient's grant for H1 studies
    ("demo.regulator", "regulator", None),
    ("demo.auditor", "auditor", None),
)


def create_demo_accounts(archive: Archive) -> list[tuple[str, str, str]]:
    """The demo hospitals' second member and the demo users (username, role, hospital)."""
    if archive.hospitals.by_id(OTHER_HOSPITAL) is None:
        archive.hospitals.add_hospital(OTHER_HOSPITAL, "Demo District Hospital")
    created = []
    for username, role, hospital in DEMO_ACCOUNTS:
        if archive.users.by_username(username) is None:
            archive.users.create_user(username, DEMO_PASSWORD, role, hospital_id=hospital)
        created.append((username, role, hospital or "(region)"))
    return created


def start_demo_gateway(archive: Archive, cloud_url: str, spool_dir: Path, port: int) -> Gateway:
    """A gateway for the demo hospital, in this process, forwarding to ``cloud_url``."""
    if archive.hospitals.by_id(DEMO_HOSPITAL) is None:
        credential = archive.hospitals.add_hospital(
            DEMO_HOSPITAL, "Demo People's Hospital", ae_title="DEMOGW"
        )
    else:  # a rerun on the same data dir: the old credential was never stored, issue a new one
        credential = archive.hospitals.rotate_credential(DEMO_HOSPITAL)
    config = GatewayConfig(
        cloud_url=cloud_url,
        credential=credential,
        spool_dir=spool_dir,
        hospital_id=DEMO_HOSPITAL,
        ae_title="DEMOGW",
        dicom_port=port,
        heartbeat_seconds=10,
        reconcile_settle_seconds=5,
    )
    gateway = Gateway(config)
    gateway.start()
    return gateway


def push_through_gateway(gateway: Gateway, objects: list[bytes]) -> None:
    """C-STORE the objects to the gateway as a modality would, then wait until forwarded."""
    ae = AE(ae_title="DEMOMODALITY")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", gateway.scp.port, ae_title=gateway.config.ae_title)
    if not assoc.is_established:
        raise RuntimeError("the demo gateway refused the association")
    try:
        for data in track(objects, description="C-STORE to the gateway"):
            status = assoc.send_c_store(dcmread(io.BytesIO(data)))
            if getattr(status, "Status", None) != 0:
                raise RuntimeError(f"gateway answered C-STORE with {status}")
    finally:
        assoc.release()
    deadline = time.monotonic() + 120
    while gateway.spool.status().queued and time.monotonic() < deadline:
        time.sleep(0.2)


def load_demo_data(
    archive: Archive, samples: Path | None = None, gateway: Gateway | None = None
) -> list[tuple[str, str]]:
    """Store the demo studies (the synthetic one through ``gateway`` when given)."""
    study = StudySpec(
        patient=PatientSpec(patient_id="DEMO001", patient_name="Zhang^San=张^三="),
        study_description="Synthetic demo CT",
        accession_number="DEMO0001",
        institution_name="Demo People's Hospital",
        department="Radiology",
    )
    loaded = []
    objects = [to_part10(ds) for ds in ct_series(study, slices=64, size=256)]
    if gateway is not None:
        push_through_gateway(gateway, objects)
        label = f"synthetic CT, 64 slices (patient 张三, {DEMO_HOSPITAL}), through the demo gateway"
    else:
        for data in track(objects, description="synthetic CT"):
            archive.store(data, source="demo")
        label = "synthetic CT, 64 slices (patient 张三)"
    loaded.append((study.study_instance_uid, label))
    folder = samples or default_samples()
    if folder is not None:
        other = archive.hospitals.by_id(OTHER_HOSPITAL)
        phantom = folder / "ct" / "philips_ingenuity_head_phantom_axial_1mm"
        loaded.extend(_load_folder(archive, phantom, other.pk if other else None))
    return loaded


def _load_folder(archive: Archive, folder: Path, hospital_pk: int | None) -> list[tuple[str, str]]:
    studies: dict[str, str] = {}
    files = sorted(folder.glob("*.dcm"))
    for path in track(files, description=f"{folder.name}"):
        try:
            outcome = archive.store(path.read_bytes(), source="demo", hospital_pk=hospital_pk)
        except ArchiveError:
            continue
        studies[outcome.study_instance_uid] = f"real sample {folder.name} ({OTHER_HOSPITAL})"
    return list(studies.items())
