"""DIMSE Q/R scope, asked with pynetdicom: a hospital finds and retrieves only its own studies.

Two hospitals hold studies of the same patient (and a third study belongs to none), so only
the calling AE title's hospital separates what each may see. Statuses, Error Comments and
C-CANCEL are checked here, where a pynetdicom SCU shows them plainly. One node per module
(and database): the tests only read the archive, and the receiver is emptied between them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from cloud.archive import Archive
from collectors.qr_scp import RetrieveItem, RetrieveLevel
from collectors.storage_scp import StorageSCP
from imaging_cloud.dimse_qr import ArchiveQueryRetrieve
from imaging_cloud.node import Node, archive_sink
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.conftest import POSTGRES_ENV, _postgres_schema_url
from tests.support.servers import free_port, running_node

PATIENT = PatientSpec(patient_id="QR-SHARED", patient_name="Wang^XiaoDong=王^小東=")
MODELS = (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
SUCCESS, PENDING, CANCELLED = 0x0000, 0xFF00, 0xFE00
UNABLE_TO_PROCESS, MOVE_DESTINATION_UNKNOWN, IDENTIFIER_MISMATCH = 0xC000, 0xA801, 0xA900


@dataclass
class Receiver:
    """The hospitals' DICOM receiver (their gateways' C-STORE SCP), on one port for both.

    It answers to any called AE title and records it: a C-MOVE to H2GW would arrive here
    called "H2GW", so one receiver tells the two hospitals' deliveries apart.
    """

    port: int = field(default_factory=free_port)
    received: list[tuple[str, Dataset]] = field(default_factory=list)

    def uids(self, called_ae: str) -> set[str]:
        return {str(ds.SOPInstanceUID) for called, ds in self.received if called == called_ae}

    def _store(self, event: Any) -> int:
        called = str(event.assoc.requestor.primitive.called_ae_title).strip()
        self.received.append((called, event.dataset))
        return SUCCESS

    @contextmanager
    def serving(self) -> Iterator[None]:
        ae = AE(ae_title="RECEIVER")
        ae.add_supported_context(CTImageStorage, ExplicitVRLittleEndian)
        handlers = [(evt.EVT_C_STORE, self._store)]
        server = ae.start_server(("127.0.0.1", self.port), block=False, evt_handlers=handlers)
        try:
            yield
        finally:
            server.shutdown()


@dataclass
class Scope:
    node: Node
    receiver: Receiver
    study_h1: StudySpec
    study_h2: StudySpec
    sop_uids_h1: set[str]


def _store_study(
    archive: Archive, study: StudySpec, slices: int, hospital_pk: int | None
) -> set[str]:
    uids = set()
    for ds in ct_series(study, slices=slices, size=16):
        archive.store(to_part10(ds), source="test", hospital_pk=hospital_pk)
        uids.add(str(ds.SOPInstanceUID))
    return uids


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.needs_postgres)]
)
def shared_scope(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scope]:
    """Like the ``database_url`` fixture, on SQLite and PostgreSQL, but once per module."""
    if request.param == "sqlite":
        yield from _scope(tmp_path_factory, "")
        return
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"{POSTGRES_ENV} not set")
    for url in _postgres_schema_url(base):
        yield from _scope(tmp_path_factory, url)


def _scope(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[Scope]:
    receiver = Receiver()
    with running_node(tmp_path_factory.mktemp("qr-node"), database_url) as node:
        hospitals = node.archive.hospitals
        for hospital_id in ("H1", "H2"):
            hospitals.add_hospital(
                hospital_id,
                f"Hospital {hospital_id}",
                ae_title=f"{hospital_id}GW",
                dicom_host="127.0.0.1",
                dicom_port=receiver.port,
            )
        ref1, ref2 = hospitals.by_ae_title("H1GW"), hospitals.by_ae_title("H2GW")
        assert ref1 and ref2
        study_h1 = StudySpec(patient=PATIENT, accession_number="ACC-H1")
        study_h2 = StudySpec(patient=PATIENT, accession_number="ACC-H2")
        uids = _store_study(node.archive, study_h1, 3, ref1.pk)
        _store_study(node.archive, study_h2, 2, ref2.pk)
        unowned = StudySpec(patient=PATIENT, accession_number="ACC-NONE")
        _store_study(node.archive, unowned, 1, None)  # no hospital's: nobody sees it by DIMSE
        with receiver.serving():
            yield Scope(node, receiver, study_h1, study_h2, uids)


@pytest.fixture
def scope(shared_scope: Scope) -> Scope:
    shared_scope.receiver.received.clear()
    return shared_scope


@contextmanager
def _associate(
    port: int, calling: str, *, get_storage: list[Dataset] | None = None
) -> Iterator[Association]:
    """An association from ``calling``; with ``get_storage``, ready to receive C-GET objects."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(Verification)
    for model in MODELS:
        ae.add_requested_context(model)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    kwargs: dict[str, Any] = {}
    if get_storage is not None:
        received = get_storage

        def store(event: Any) -> int:
            received.append(event.dataset)
            return SUCCESS

        kwargs = {
            "ext_neg": [build_role(CTImageStorage, scu_role=True, scp_role=True)],
            "evt_handlers": [(evt.EVT_C_STORE, store)],
        }
    assoc = ae.associate("127.0.0.1", port, ae_title="IMAGINGCLOUD", **kwargs)
    assert assoc.is_established
    try:
        yield assoc
    finally:
        assoc.release()
        ae.shutdown()


def _query(level: str, **keys: str) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


def _find(
    node: Node,
    calling: str,
    identifier: Dataset,
    model: str = StudyRootQueryRetrieveInformationModelFind,
) -> tuple[list[Dataset], Dataset]:
    """The pending identifiers and the final status of one C-FIND."""
    with _associate(node.scp.port, calling) as assoc:
        responses = list(assoc.send_c_find(identifier, model))
    pending = [ds for status, ds in responses if status.Status == PENDING]
    return pending, responses[-1][0]


def _final(responses: Iterator[tuple[Dataset, Dataset | None]]) -> Dataset:
    return [status for status, _ in responses][-1]


def test_find_sees_only_the_calling_hospitals_studies(scope: Scope) -> None:
    query = _query("STUDY", PatientID=PATIENT.patient_id, StudyInstanceUID="", AccessionNumber="")
    found: dict[str, set[str]] = {}
    for calling in ("H1GW", "H2GW"):
        pending, final = _find(scope.node, calling, query)
        assert final.Status == SUCCESS
        found[calling] = {str(ds.StudyInstanceUID) for ds in pending}
    assert found == {
        "H1GW": {scope.study_h1.study_instance_uid},
        "H2GW": {scope.study_h2.study_instance_uid},
    }


def test_patient_level_counts_only_own_studies(scope: Scope) -> None:
    query = _query("PATIENT", PatientID="", PatientName="", NumberOfPatientRelatedStudies="")
    pending, final = _find(scope.node, "H1GW", query, PatientRootQueryRetrieveInformationModelFind)
    assert final.Status == SUCCESS
    [patient] = pending
    assert patient.PatientID == PATIENT.patient_id
    assert patient.NumberOfPatientRelatedStudies == 1
    assert patient.SpecificCharacterSet == "ISO_IR 192"
    assert patient.PatientName.ideographic == "王^小東"


@pytest.mark.parametrize("calling, expected", [("H1GW", 3), ("H2GW", 0)])
def test_image_level_inside_another_hospitals_study_is_empty(
    scope: Scope, calling: str, expected: int
) -> None:
    query = _query("IMAGE", StudyInstanceUID=scope.study_h1.study_instance_uid, SOPInstanceUID="")
    pending, final = _find(scope.node, calling, query)
    assert final.Status == SUCCESS
    assert len(pending) == expected


def test_unknown_keys_come_back_empty_and_lower_level_keys_are_refused(scope: Scope) -> None:
    query = _query("STUDY", StudyInstanceUID=scope.study_h1.study_instance_uid)
    query.InstitutionName = ""
    query.NumberOfStudyRelatedInstances = ""
    query.ModalitiesInStudy = ""
    query.RetrieveAETitle = ""
    [study], _ = _find(scope.node, "H1GW", query)
    assert "InstitutionName" in study and study.InstitutionName == ""
    assert study.RetrieveAETitle == "IMAGINGCLOUD"
    assert study.NumberOfStudyRelatedInstances == 3
    assert study.ModalitiesInStudy == "CT"

    query.SOPInstanceUID = sorted(scope.sop_uids_h1)[0]
    pending, final = _find(scope.node, "H1GW", query)
    assert not pending
    assert final.Status == IDENTIFIER_MISMATCH
    assert "SOPInstanceUID" in final.ErrorComment


def test_utf8_query_matches_the_ideographic_name(scope: Scope) -> None:
    query = _query("STUDY", PatientName="王*", StudyInstanceUID="")
    query.SpecificCharacterSet = "ISO_IR 192"
    pending, _ = _find(scope.node, "H2GW", query)
    assert [ds.StudyInstanceUID for ds in pending] == [scope.study_h2.study_instance_uid]
    assert pending[0].SpecificCharacterSet == "ISO_IR 192"


def test_get_of_another_hospitals_study_sends_nothing(scope: Scope) -> None:
    query = _query("STUDY", StudyInstanceUID=scope.study_h1.study_instance_uid)
    received: list[Dataset] = []
    with _associate(scope.node.scp.port, "H2GW", get_storage=received) as assoc:
        final = _final(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
    assert final.Status == SUCCESS
    assert final.NumberOfCompletedSuboperations == 0
    assert not received


def test_get_of_own_study_sends_every_instance(scope: Scope) -> None:
    query = _query("STUDY", StudyInstanceUID=scope.study_h1.study_instance_uid)
    received: list[Dataset] = []
    with _associate(scope.node.scp.port, "H1GW", get_storage=received) as assoc:
        final = _final(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet))
    assert final.Status == SUCCESS
    assert {str(ds.SOPInstanceUID) for ds in received} == scope.sop_uids_h1


def test_move_goes_only_to_the_callers_own_ae(scope: Scope) -> None:
    query = _query("STUDY", StudyInstanceUID=scope.study_h1.study_instance_uid)
    model = StudyRootQueryRetrieveInformationModelMove
    with _associate(scope.node.scp.port, "H1GW") as assoc:
        refused = _final(assoc.send_c_move(query, "H2GW", model))
        moved = _final(assoc.send_c_move(query, "H1GW", model))
    assert refused.Status == MOVE_DESTINATION_UNKNOWN
    assert "H2GW" in refused.ErrorComment
    assert moved.Status == SUCCESS
    assert moved.NumberOfCompletedSuboperations == 3
    assert not scope.receiver.uids("H2GW")
    assert scope.receiver.uids("H1GW") == scope.sop_uids_h1


def test_move_of_another_hospitals_study_to_own_ae_sends_nothing(scope: Scope) -> None:
    query = _query("STUDY", StudyInstanceUID=scope.study_h1.study_instance_uid)
    with _associate(scope.node.scp.port, "H2GW") as assoc:
        final = _final(assoc.send_c_move(query, "H2GW", StudyRootQueryRetrieveInformationModelMove))
    assert final.Status == SUCCESS
    assert final.NumberOfCompletedSuboperations == 0
    assert not scope.receiver.received


def test_unregistered_calling_ae_is_refused_query_retrieve_but_not_echo_or_store(
    scope: Scope,
) -> None:
    query = _query("STUDY", StudyInstanceUID=scope.study_h1.study_instance_uid)
    received: list[Dataset] = []
    [ds] = ct_series(StudySpec(patient=PATIENT), slices=1, size=16)
    to_part10(ds)
    with _associate(scope.node.scp.port, "STRANGER", get_storage=received) as assoc:
        statuses = [
            _final(assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind)),
            _final(assoc.send_c_get(query, StudyRootQueryRetrieveInformationModelGet)),
            _final(assoc.send_c_move(query, "H1GW", StudyRootQueryRetrieveInformationModelMove)),
        ]
        echo = assoc.send_c_echo()
        store = assoc.send_c_store(ds)
    for status in statuses:
        assert status.Status == UNABLE_TO_PROCESS
        assert status.ErrorComment == "calling AE title STRANGER is not registered to a hospital"
    assert not received and not scope.receiver.received
    assert echo.Status == SUCCESS and store.Status == SUCCESS


class _GatedProvider:
    """The node's provider, holding back all but the first result until ``gate`` opens."""

    def __init__(self, archive: Archive) -> None:
        self.inner = ArchiveQueryRetrieve(archive)
        self.gate = threading.Event()

    def find(self, level: RetrieveLevel, identifier: Dataset, calling_ae: str) -> Iterator[Dataset]:
        for index, match in enumerate(self.inner.find(level, identifier, calling_ae)):
            if index:
                self.gate.wait(10)
            yield match

    def retrieve(
        self, level: RetrieveLevel, identifier: Dataset, calling_ae: str
    ) -> list[RetrieveItem]:
        items = self.inner.retrieve(level, identifier, calling_ae)
        return items[:1] + [replace(item, load=self._gated(item)) for item in items[1:]]

    def move_destination(self, move_ae: str, calling_ae: str) -> tuple[str, int] | None:
        return self.inner.move_destination(move_ae, calling_ae)

    def _gated(self, item: RetrieveItem) -> Any:
        def load() -> bytes:
            self.gate.wait(10)
            return item.load()

        return load


@contextmanager
def _gated_scp(node: Node) -> Iterator[tuple[StorageSCP, _GatedProvider]]:
    provider = _GatedProvider(node.archive)
    scp = StorageSCP(archive_sink(node.archive), port=free_port(), qr_provider=provider)
    scp.start()
    try:
        yield scp, provider
    finally:
        scp.stop()


def _cancel_after_first_pending(
    assoc: Association,
    responses: Iterator[tuple[Dataset, Dataset | None]],
    model: str,
    gate: threading.Event,
) -> list[int]:
    statuses = []
    for status, _ in responses:
        statuses.append(int(status.Status))
        if len(statuses) == 1:
            [context] = [c for c in assoc.accepted_contexts if c.abstract_syntax == model]
            assoc.send_c_cancel(1, context.context_id)
            time.sleep(0.3)  # let the SCP read the C-CANCEL before it goes on
            gate.set()
    return statuses


def test_c_cancel_stops_a_find(scope: Scope) -> None:
    query = _query("IMAGE", StudyInstanceUID=scope.study_h1.study_instance_uid, SOPInstanceUID="")
    model = StudyRootQueryRetrieveInformationModelFind
    with _gated_scp(scope.node) as (scp, provider), _associate(scp.port, "H1GW") as assoc:
        statuses = _cancel_after_first_pending(
            assoc, assoc.send_c_find(query, model, msg_id=1), model, provider.gate
        )
    assert statuses[0] == PENDING
    assert statuses[-1] == CANCELLED
    assert len(statuses) < 4  # at most one more pending got out before the cancel was seen


def test_c_cancel_stops_a_get(scope: Scope) -> None:
    query = _query("STUDY", StudyInstanceUID=scope.study_h1.study_instance_uid)
    model = StudyRootQueryRetrieveInformationModelGet
    received: list[Dataset] = []
    with (
        _gated_scp(scope.node) as (scp, provider),
        _associate(scp.port, "H1GW", get_storage=received) as assoc,
    ):
        statuses = _cancel_after_first_pending(
            assoc, assoc.send_c_get(query, model, msg_id=1), model, provider.gate
        )
    assert statuses[-1] == CANCELLED
    assert 1 <= len(received) < 3


def test_study_stored_by_a_hospitals_ae_is_that_hospitals(scope: Scope) -> None:
    study = StudySpec(patient=PATIENT, accession_number="ACC-DIRECT")
    [ds] = ct_series(study, slices=1, size=16)
    to_part10(ds)  # gives the dataset its File Meta (transfer syntax) for C-STORE
    with _associate(scope.node.scp.port, "H2GW") as assoc:
        assert assoc.send_c_store(ds).Status == SUCCESS
    query = _query("STUDY", StudyInstanceUID=study.study_instance_uid)
    found_by_h2, _ = _find(scope.node, "H2GW", query)
    found_by_h1, _ = _find(scope.node, "H1GW", query)
    assert [m.StudyInstanceUID for m in found_by_h2] == [study.study_instance_uid]
    assert found_by_h1 == []
