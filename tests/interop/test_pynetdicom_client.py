"""A pynetdicom SCU against the node's SCP: echo, store, idempotence and refusals."""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from imaging_cloud.node import Node
from imaging_cloud.synthetic import UID_ROOT, PatientSpec, StudySpec, ct_series, to_part10
from tests.support.servers import client

SUCCESS = 0x0000
CONFLICT = 0xC409
SOP_CLASS_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000


@contextmanager
def associate(node: Node) -> Iterator[Association]:
    ae = AE(ae_title="PYNETDICOMSCU")
    ae.add_requested_context(Verification)
    for sop_class in (CTImageStorage, SecondaryCaptureImageStorage):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="IMAGINGCLOUD")
    assert assoc.is_established, "association was not accepted"
    try:
        yield assoc
    finally:
        assoc.release()
        ae.shutdown()


def _prepared(ds: Dataset) -> Dataset:
    """``ds`` with the File Meta pynetdicom needs to pick the presentation context."""
    to_part10(ds)
    return ds


def _series(patient_id: str, slices: int = 3) -> list[Dataset]:
    study = StudySpec(patient=PatientSpec(patient_id=patient_id))
    return [_prepared(ds) for ds in ct_series(study, slices=slices, size=16)]


def _instance_count(node: Node, study_uid: str) -> int:
    with client(node) as http:
        response = http.get(f"/dicom-web/studies/{study_uid}/instances")
    if response.status_code == 404:
        return 0
    assert response.status_code == 200
    return len(response.json())


def _wado_sha256(node: Node, ds: Dataset) -> str:
    url = (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    with client(node) as http:
        response = http.get(url, headers={"Accept": accept})
    assert response.status_code == 200
    boundary = re.search(r'boundary="?([^";]+)', response.headers["content-type"])
    assert boundary
    delimiter = b"\r\n--" + boundary.group(1).encode()
    [payload] = [
        part.split(b"\r\n\r\n", 1)[1]
        for part in (b"\r\n" + response.content).split(delimiter)[1:-1]
    ]
    return hashlib.sha256(payload).hexdigest()


def _echo_ok(node: Node) -> bool:
    with associate(node) as assoc:
        status = assoc.send_c_echo()
    return bool(status) and status.Status == SUCCESS


def test_echo_and_store_a_series(sqlite_node: Node) -> None:
    series = _series("PYN-1", slices=4)
    with associate(sqlite_node) as assoc:
        assert assoc.send_c_echo().Status == SUCCESS
        statuses = [assoc.send_c_store(ds).Status for ds in series]
    assert statuses == [SUCCESS] * 4
    assert _instance_count(sqlite_node, series[0].StudyInstanceUID) == 4


def test_resending_the_same_dataset_is_idempotent(sqlite_node: Node) -> None:
    series = _series("PYN-2")
    with associate(sqlite_node) as assoc:
        for ds in series:
            assert assoc.send_c_store(ds).Status == SUCCESS
    before = _wado_sha256(sqlite_node, series[0])

    with associate(sqlite_node) as assoc:
        assert assoc.send_c_store(series[0]).Status == SUCCESS

    assert _instance_count(sqlite_node, series[0].StudyInstanceUID) == 3
    assert _wado_sha256(sqlite_node, series[0]) == before


def test_different_content_under_a_stored_uid_is_refused(sqlite_node: Node) -> None:
    [original] = _series("PYN-3", slices=1)
    with associate(sqlite_node) as assoc:
        assert assoc.send_c_store(original).Status == SUCCESS
    before = _wado_sha256(sqlite_node, original)

    impostor = copy.deepcopy(original)
    impostor.PatientName = "Someone^Else"
    with associate(sqlite_node) as assoc:
        status = assoc.send_c_store(impostor)

    assert status.Status == CONFLICT
    assert "already stored" in str(status.get("ErrorComment", ""))
    assert _wado_sha256(sqlite_node, original) == before
    assert _instance_count(sqlite_node, original.StudyInstanceUID) == 1
    assert _echo_ok(sqlite_node)


def test_dataset_not_of_the_context_sop_class_is_refused(
    sqlite_node: Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    [ds] = _series("PYN-4", slices=1)
    ds.SOPClassUID = SecondaryCaptureImageStorage
    part10 = to_part10(ds)
    # File Meta says CT (same UID length), the dataset says Secondary Capture. Sent from
    # the file, pynetdicom takes the context's SOP class from File Meta and sends the
    # dataset bytes as they are.
    sc, ct = SecondaryCaptureImageStorage.encode(), CTImageStorage.encode()
    assert len(sc) == len(ct) and part10.index(sc) < 256
    path = tmp_path / "mismatch.dcm"
    path.write_bytes(part10.replace(sc, ct, 1))
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)

    with associate(sqlite_node) as assoc:
        status = assoc.send_c_store(path)

    assert status.Status == SOP_CLASS_MISMATCH
    assert _instance_count(sqlite_node, ds.StudyInstanceUID) == 0
    assert _echo_ok(sqlite_node)


def test_dataset_without_study_uid_is_refused(sqlite_node: Node) -> None:
    [ds] = _series("PYN-5", slices=1)
    study_uid = ds.StudyInstanceUID
    del ds.StudyInstanceUID
    ds.SOPInstanceUID = generate_uid(UID_ROOT)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID

    with associate(sqlite_node) as assoc:
        status = assoc.send_c_store(ds)

    assert status.Status == CANNOT_UNDERSTAND
    assert "StudyInstanceUID" in str(status.get("ErrorComment", ""))
    assert _instance_count(sqlite_node, study_uid) == 0
    assert _echo_ok(sqlite_node)


def test_conflict_error_comment_says_why(sqlite_node: Node) -> None:
    [original] = _series("PYN-6", slices=1)
    impostor = copy.deepcopy(original)
    impostor.PatientName = "Someone^Else"
    with associate(sqlite_node) as assoc:
        assert assoc.send_c_store(original).Status == SUCCESS
        comment = str(assoc.send_c_store(impostor).get("ErrorComment", ""))
    assert "already stored" in comment or "different" in comment
