"""DCMTK's findscu, getscu and movescu against the node, each hospital confined to its studies.

H1 and H2 hold studies of the same patient; each hospital's gateway is a DCMTK ``storescp``
listening as its registered AE. Objects received by getscu and storescp are written
bit-preserving, so the data set after File Meta is compared with the archive's bytes.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from cloud.models import AuditEvent
from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.servers import free_port, running_node

pytestmark = [
    pytest.mark.needs_dcmtk,
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in ("findscu", "getscu", "movescu", "storescp")),
        reason="DCMTK command-line tools (findscu, getscu, movescu, storescp) are not installed",
    ),
]

CALLED_AE = "IMAGINGCLOUD"
PATIENT = PatientSpec(patient_id="DCMTK-QR", patient_name="Wang^XiaoDong=王^小東=")


@dataclass
class Gateway:
    """A hospital's receiver: DCMTK storescp as the hospital's registered AE."""

    ae_title: str
    port: int
    folder: Path

    def received(self) -> dict[str, bytes]:
        return _files_by_sop_uid(self.folder)


@dataclass
class Setup:
    node: Node
    h1: Gateway
    h2: Gateway
    study_h1: StudySpec
    study_h2: StudySpec
    stored: dict[str, bytes]  # H1's study: SOP Instance UID -> Part-10 bytes as stored
    series_h1: list[str]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    root = tmp_path_factory.mktemp("dcmtk-qr")
    with running_node(root / "node") as node:
        gateways = [_gateway(ae, root) for ae in ("H1GW", "H2GW")]
        refs = []
        for gateway in gateways:
            hospital_id = gateway.ae_title[:2]
            node.archive.hospitals.add_hospital(
                hospital_id,
                f"Hospital {hospital_id}",
                ae_title=gateway.ae_title,
                dicom_host="127.0.0.1",
                dicom_port=gateway.port,
            )
            ref = node.archive.hospitals.by_ae_title(gateway.ae_title)
            assert ref is not None
            refs.append(ref.pk)
        study_h1 = StudySpec(patient=PATIENT, accession_number="ACC-H1")
        study_h2 = StudySpec(patient=PATIENT, accession_number="ACC-H2")
        stored: dict[str, bytes] = {}
        series: list[str] = []
        for number, slices in ((1, 3), (2, 2)):
            for ds in ct_series(study_h1, slices=slices, size=16, series_number=number):
                stored[ds.SOPInstanceUID] = to_part10(ds)
                node.archive.store(stored[ds.SOPInstanceUID], source="test", hospital_pk=refs[0])
            series.append(ds.SeriesInstanceUID)
        for ds in ct_series(study_h2, slices=2, size=16):
            node.archive.store(to_part10(ds), source="test", hospital_pk=refs[1])
        processes = [_start_storescp(gateway) for gateway in gateways]
        try:
            yield Setup(node, *gateways, study_h1, study_h2, stored, series)
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=10)


def _gateway(ae_title: str, root: Path) -> Gateway:
    folder = root / ae_title
    folder.mkdir()
    return Gateway(ae_title, free_port(), folder)


def _start_storescp(gateway: Gateway) -> subprocess.Popen[bytes]:
    command = ["storescp", "-aet", gateway.ae_title, "+B", "-od", str(gateway.folder)]
    process = subprocess.Popen([*command, str(gateway.port)], stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", gateway.port), timeout=1).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"storescp did not listen on {gateway.port}")


def _run(tool: str, node: Node, calling: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [tool, "-v", "-aet", calling, "-aec", CALLED_AE, *args]
    command += ["127.0.0.1", str(node.scp.port)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def _find(node: Node, calling: str, model: str, folder: Path, *keys: str) -> list[pydicom.Dataset]:
    """The response identifiers findscu extracted, in order."""
    folder.mkdir(exist_ok=True)
    key_args = [arg for key in keys for arg in ("-k", key)]
    result = _run("findscu", node, calling, model, "-X", "-od", str(folder), *key_args)
    assert result.returncode == 0, result.stderr
    assert "Received Final Find Response (Success)" in result.stderr, result.stderr
    return [pydicom.dcmread(path) for path in sorted(folder.glob("rsp*.dcm"))]


def _files_by_sop_uid(folder: Path) -> dict[str, bytes]:
    """SOP Instance UID -> file bytes of every DICOM file in ``folder``."""
    files = {}
    for path in folder.iterdir():
        sop_uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        files[str(sop_uid)] = path.read_bytes()
    return files


def _after_file_meta(part10: bytes) -> bytes:
    """The data set of a Part-10 file: what follows the File Meta group length says."""
    assert part10[128:132] == b"DICM" and part10[132:136] == b"\x02\x00\x00\x00"
    (group_length,) = struct.unpack_from("<I", part10, 140)
    return part10[144 + group_length :]


def _assert_identical(received: dict[str, bytes], stored: dict[str, bytes]) -> None:
    assert sorted(received) == sorted(stored)
    for sop_uid, data in received.items():
        assert _after_file_meta(data) == _after_file_meta(stored[sop_uid]), sop_uid


def test_findscu_study_root_sees_only_the_callers_study(setup: Setup, tmp_path: Path) -> None:
    keys = ("QueryRetrieveLevel=STUDY", f"PatientID={PATIENT.patient_id}", "StudyInstanceUID")
    h1 = _find(setup.node, "H1GW", "-S", tmp_path / "h1", *keys)
    h2 = _find(setup.node, "H2GW", "-S", tmp_path / "h2", *keys)
    assert [ds.StudyInstanceUID for ds in h1] == [setup.study_h1.study_instance_uid]
    assert [ds.StudyInstanceUID for ds in h2] == [setup.study_h2.study_instance_uid]


def test_findscu_patient_root_at_every_level(setup: Setup, tmp_path: Path) -> None:
    def find(level: str, *keys: str) -> list[pydicom.Dataset]:
        query = (f"QueryRetrieveLevel={level}", f"PatientID={PATIENT.patient_id}", *keys)
        return _find(setup.node, "H1GW", "-P", tmp_path / level, *query)

    study = f"StudyInstanceUID={setup.study_h1.study_instance_uid}"

    [found] = find("PATIENT", "PatientName", "NumberOfPatientRelatedStudies")
    assert found.SpecificCharacterSet == "ISO_IR 192"
    assert found.PatientName.ideographic == "王^小東"
    assert found.NumberOfPatientRelatedStudies == 1  # H2's study of the patient is not counted

    studies = find("STUDY", "StudyInstanceUID", "AccessionNumber")
    assert [(ds.StudyInstanceUID, ds.AccessionNumber) for ds in studies] == [
        (setup.study_h1.study_instance_uid, "ACC-H1")
    ]

    series = find("SERIES", study, "SeriesInstanceUID", "Modality")
    assert [ds.SeriesInstanceUID for ds in series] == setup.series_h1
    assert {ds.Modality for ds in series} == {"CT"}

    first_series = f"SeriesInstanceUID={setup.series_h1[0]}"
    images = find("IMAGE", study, first_series, "SOPInstanceUID", "InstanceNumber")
    assert [ds.InstanceNumber for ds in images] == [1, 2, 3]
    assert {ds.SOPInstanceUID for ds in images} < set(setup.stored)


def test_getscu_retrieves_every_instance_unchanged(setup: Setup, tmp_path: Path) -> None:
    study = f"StudyInstanceUID={setup.study_h1.study_instance_uid}"
    args = ("-S", "+B", "-od", str(tmp_path), "-k", "QueryRetrieveLevel=STUDY", "-k", study)
    result = _run("getscu", setup.node, "H1GW", *args)
    assert result.returncode == 0, result.stderr
    assert "Number of Completed Suboperations : 5" in result.stderr, result.stderr
    _assert_identical(_files_by_sop_uid(tmp_path), setup.stored)
    # the read is in the audit log, with the gateway as the actor
    with setup.node.archive.sessions() as session:
        entries = session.scalars(
            select(AuditEvent).where(
                AuditEvent.action == "download",
                AuditEvent.study_instance_uid == setup.study_h1.study_instance_uid,
            )
        ).all()
    assert {(e.actor_kind, e.actor, e.hospital_id) for e in entries} == {
        ("gateway", "H1GW@H1", "H1")
    }  # and never another hospital's gateway


def test_getscu_of_another_hospitals_study_gets_nothing(setup: Setup, tmp_path: Path) -> None:
    study = f"StudyInstanceUID={setup.study_h1.study_instance_uid}"
    args = ("-S", "-od", str(tmp_path), "-k", "QueryRetrieveLevel=STUDY", "-k", study)
    result = _run("getscu", setup.node, "H2GW", *args)
    assert result.returncode == 0, result.stderr
    assert "Number of Completed Suboperations : 0" in result.stderr, result.stderr
    assert not list(tmp_path.iterdir())


def test_movescu_delivers_to_the_callers_own_gateway(setup: Setup) -> None:
    study = f"StudyInstanceUID={setup.study_h1.study_instance_uid}"
    args = ("-S", "-aem", "H1GW", "-k", "QueryRetrieveLevel=STUDY", "-k", study)
    result = _run("movescu", setup.node, "H1GW", *args)
    assert result.returncode == 0, result.stderr
    assert "Received Final Move Response (Success)" in result.stderr, result.stderr
    _assert_identical(setup.h1.received(), setup.stored)
    assert not setup.h2.received()


def test_movescu_to_another_hospitals_gateway_is_refused(setup: Setup) -> None:
    before = setup.h1.received()
    study = f"StudyInstanceUID={setup.study_h1.study_instance_uid}"
    args = ("-S", "-aem", "H2GW", "-k", "QueryRetrieveLevel=STUDY", "-k", study)
    result = _run("movescu", setup.node, "H1GW", *args)
    assert result.returncode != 0
    assert "Final Move Response (Refused: MoveDestinationUnknown)" in result.stderr, result.stderr
    time.sleep(0.2)  # anything wrongly sent would have arrived by now
    assert not setup.h2.received()
    assert setup.h1.received() == before


def test_unregistered_calling_ae_is_refused_but_echo_still_works(
    setup: Setup, tmp_path: Path
) -> None:
    study = f"StudyInstanceUID={setup.study_h1.study_instance_uid}"
    keys = ("-k", "QueryRetrieveLevel=STUDY", "-k", study)
    find = _run("findscu", setup.node, "STRANGER", "-S", *keys)
    get = _run("getscu", setup.node, "STRANGER", "-S", "-od", str(tmp_path), *keys)
    move = _run("movescu", setup.node, "STRANGER", "-S", "-aem", "H1GW", *keys)
    echo = _run("echoscu", setup.node, "STRANGER")
    assert "Final Find Response (Failed: UnableToProcess)" in find.stderr, find.stderr
    assert "C-GET Response (Failed: UnableToProcess)" in get.stderr, get.stderr
    assert "Final Move Response (Failed: UnableToProcess)" in move.stderr, move.stderr
    assert not list(tmp_path.iterdir())
    assert echo.returncode == 0, echo.stderr
