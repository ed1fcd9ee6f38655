"""The Q/R puller against a real Orthanc: find by date and modality, retrieve by C-GET and C-MOVE.

Orthanc plays the hospital PACS. It knows the gateway as the modality ``GATEWAY`` (our
calling AE title and our C-STORE SCP, the C-MOVE destination), which is what lets it answer
our C-FIND, C-GET and C-MOVE without the ``DicomAlwaysAllow*`` switches.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ImplicitVRLittleEndian, MRImageStorage
from pynetdicom import AE, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
)

from collectors.intake import OUT_OF_RESOURCES, SUCCESS, SinkResult
from collectors.qr_pull import (
    DateWindow,
    QueryRetrieveConfig,
    QueryRetrievePuller,
    puller_from_config,
)
from collectors.storage_scp import StorageSCP
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.orthanc import OrthancServer, free_port, orthanc_available
from tests.support.samples import samples_root


def needs_orthanc(test: Callable[..., None]) -> Callable[..., None]:
    skip = pytest.mark.skipif(not orthanc_available(), reason="Orthanc is not installed")
    return pytest.mark.needs_orthanc(skip(test))  # type: ignore[no-any-return]


GATEWAY_AE = "GATEWAY"
US_SAMPLE = "multiframe/us_sonosite__cine_30frames_jpeg_baseline.dcm"
TODAY = date.today()


# -- what we posted and what arrived ----------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    study_uid: str
    sop_uid: str
    transfer_syntax: str
    pixel_data: bytes


def _instance(part10: bytes) -> Instance:
    ds = pydicom.dcmread(io.BytesIO(part10))
    return Instance(
        str(ds.StudyInstanceUID),
        str(ds.SOPInstanceUID),
        str(ds.file_meta.TransferSyntaxUID),
        bytes(ds.PixelData),
    )


@dataclass
class RecordingSink:
    """An intake sink that keeps what it was handed (and answers ``status``)."""

    status: int = SUCCESS
    received: list[Instance] = field(default_factory=list)
    origins: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, part10: bytes, origin: str) -> SinkResult:
        instance = _instance(part10)
        with self.lock:
            self.origins.add(origin)
            if self.status == SUCCESS:
                self.received.append(instance)
        return SinkResult(self.status, "disk full" if self.status else "")

    def of_study(self, study_uid: str) -> dict[str, Instance]:
        with self.lock:
            return {i.sop_uid: i for i in self.received if i.study_uid == study_uid}

    def lacks(self, study_uid: str, instance_count: int | None) -> bool:
        """A ``wanted`` callback: what the gateway asks ("not all of it here yet")."""
        return instance_count is None or len(self.of_study(study_uid)) < instance_count


@dataclass
class Pacs:
    orthanc: OrthancServer
    scp: StorageSCP
    studies: dict[str, dict[str, Instance]]  # study UID -> SOP instance UID -> as posted
    ct_today: str
    mr_today: str
    us_today: str
    ct_old: str
    move_sink: list[RecordingSink]  # the SCP hands to move_sink[0]; tests swap it


def _post(orthanc: OrthancServer, part10: bytes) -> Instance:
    response = httpx.post(f"{orthanc.base_url}/instances", content=part10, timeout=30.0)
    response.raise_for_status()
    return _instance(part10)


def _synthetic_study(study_date: date, modality: str, count: int) -> list[bytes]:
    spec = StudySpec(
        patient=PatientSpec(patient_id=f"QR-{modality}-{study_date:%m%d}"),
        study_date=f"{study_date:%Y%m%d}",
        accession_number=f"QR{modality}{study_date:%m%d}",
    )
    files = []
    for ds in ct_series(spec, slices=count, size=16):
        if modality == "MR":
            # Implicit VR too, so a C-GET has to serve two transfer syntaxes unchanged.
            ds.SOPClassUID, ds.Modality = MRImageStorage, "MR"
            files.append(to_part10(ds, ImplicitVRLittleEndian))
        else:
            files.append(to_part10(ds))
    return files


def _us_cine_dated(day: date) -> bytes:
    """The JPEG Baseline multi-frame US sample, with its study date set to ``day``."""
    root = samples_root()
    if root is None:
        pytest.skip("shared DICOM samples not found (set IMAGING_CLOUD_SAMPLES)")
    ds = pydicom.dcmread(root / US_SAMPLE)
    ds.StudyDate = f"{day:%Y%m%d}"
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def pacs() -> Iterator[Pacs]:
    move_sink = [RecordingSink()]
    scp = StorageSCP(
        sink=lambda received: move_sink[0](received.part10, received.origin),
        ae_title=GATEWAY_AE,
        port=free_port(),
    )
    scp.start()
    overrides = {"DicomModalities": {GATEWAY_AE: [GATEWAY_AE, "127.0.0.1", scp.port]}}
    try:
        with OrthancServer(config_overrides=overrides) as orthanc:
            studies: dict[str, dict[str, Instance]] = {}
            uids: list[str] = []
            for files in (
                _synthetic_study(TODAY, "CT", 5),
                _synthetic_study(TODAY, "MR", 3),
                [_us_cine_dated(TODAY)],
                _synthetic_study(TODAY - timedelta(days=30), "CT", 2),
            ):
                posted = [_post(orthanc, part10) for part10 in files]
                uids.append(posted[0].study_uid)
                studies[posted[0].study_uid] = {i.sop_uid: i for i in posted}
            ct_today, mr_today, us_today, ct_old = uids
            yield Pacs(orthanc, scp, studies, ct_today, mr_today, us_today, ct_old, move_sink)
    finally:
        scp.stop()


def _puller(
    pacs: Pacs,
    sink: Callable[[bytes, str], SinkResult],
    *,
    method: str = "get",
    wanted: Callable[[str, int | None], bool] | None = None,
    port: int | None = None,
    calling_ae: str = GATEWAY_AE,
    **entry: Any,
) -> QueryRetrievePuller:
    config = {
        "kind": "qr",
        "host": "127.0.0.1",
        "port": port or pacs.orthanc.dicom_port,
        "ae_title": pacs.orthanc.aet,
        "method": method,
        **entry,
    }
    config.setdefault("days", 2)
    config = {key: value for key, value in config.items() if value is not None}
    return puller_from_config(
        config, sink, calling_ae=calling_ae, move_destination=GATEWAY_AE, wanted=wanted
    )


class AskedFor:
    """A ``wanted`` callback that notes what it was asked and declines everything."""

    def __init__(self) -> None:
        self.asked: dict[str, int | None] = {}

    def __call__(self, study_uid: str, instance_count: int | None) -> bool:
        self.asked[study_uid] = instance_count
        return False


class IgnoringPacsPuller(QueryRetrievePuller):
    """Asks without date or modality keys, as if the PACS ignored them: we must filter."""

    def _study_query(self, today: date) -> Dataset:
        query = super()._study_query(today)
        query.StudyDate = ""
        query.ModalitiesInStudy = ""
        return query


# -- query and filters ------------------------------------------------------------------------


@needs_orthanc
@pytest.mark.parametrize("pacs_ignores_keys", [False, True], ids=["pacs-filters", "we-filter"])
def test_date_window_and_modalities_pick_the_right_studies(
    pacs: Pacs, pacs_ignores_keys: bool
) -> None:
    def asked(**entry: Any) -> dict[str, int | None]:
        wanted = AskedFor()
        puller = _puller(pacs, RecordingSink(), wanted=wanted, **entry)
        if pacs_ignores_keys:
            puller = IgnoringPacsPuller(puller.config, RecordingSink(), wanted=wanted)
        report = puller.poll_once()
        assert report.ok, report.errors
        if pacs_ignores_keys:
            assert report.studies_queried == len(pacs.studies)  # so the filtering was ours
        assert report.studies_wanted == 0 and report.retrievals == []
        assert report.studies_matching == len(wanted.asked)
        return wanted.asked

    assert asked(modalities=["CT"]) == {pacs.ct_today: 5}
    assert asked() == {pacs.ct_today: 5, pacs.mr_today: 3, pacs.us_today: 1}
    assert asked(modalities=["MR", "US"]) == {pacs.mr_today: 3, pacs.us_today: 1}
    assert asked(days=1, modalities=["PT"]) == {}
    month_ago = TODAY - timedelta(days=30)
    window = {"date_from": month_ago - timedelta(days=1), "date_to": f"{month_ago:%Y-%m-%d}"}
    assert asked(days=None, **window) == {pacs.ct_old: 2}


@needs_orthanc
def test_study_query_returns_what_retrieval_needs(pacs: Pacs) -> None:
    puller = _puller(pacs, RecordingSink(), modalities=["US"])
    (study,) = puller.find_studies()
    assert study.study_uid == pacs.us_today
    assert study.modalities == ("US",)
    assert study.study_date == f"{TODAY:%Y%m%d}"
    assert study.instance_count == 1
    assert study.sop_classes == ("1.2.840.10008.5.1.4.1.1.3.1",)


# -- retrieval ----------------------------------------------------------------------------------


def _assert_delivered_unchanged(pacs: Pacs, sink: RecordingSink, study_uids: list[str]) -> None:
    for study_uid in study_uids:
        posted = pacs.studies[study_uid]
        received = sink.of_study(study_uid)
        assert sorted(received) == sorted(posted)
        for sop_uid, instance in posted.items():
            assert received[sop_uid].transfer_syntax == instance.transfer_syntax
            assert received[sop_uid].pixel_data == instance.pixel_data
    assert len(sink.received) == sum(len(pacs.studies[uid]) for uid in study_uids)


@needs_orthanc
def test_c_get_delivers_every_instance_unchanged_then_nothing_more(pacs: Pacs) -> None:
    sink = RecordingSink()
    puller = _puller(pacs, sink, method="get", wanted=sink.lacks)
    report = puller.poll_once()

    assert report.ok, report.errors
    today = [pacs.ct_today, pacs.mr_today, pacs.us_today]
    assert (report.studies_matching, report.studies_wanted, report.studies_retrieved) == (3, 3, 3)
    counts = {r.study_uid: (r.status, r.completed, r.failed, r.warning) for r in report.retrievals}
    assert counts == {
        pacs.ct_today: (SUCCESS, 5, 0, 0),
        pacs.mr_today: (SUCCESS, 3, 0, 0),
        pacs.us_today: (SUCCESS, 1, 0, 0),
    }
    _assert_delivered_unchanged(pacs, sink, today)
    assert sink.origins == {f"qr-get:ORTHANC@127.0.0.1:{pacs.orthanc.dicom_port}"}

    again = puller.poll_once()
    assert again.ok, again.errors
    assert (again.studies_matching, again.studies_wanted, again.retrievals) == (3, 0, [])
    assert len(sink.received) == 9


@needs_orthanc
def test_c_move_delivers_every_instance_to_our_scp_then_nothing_more(pacs: Pacs) -> None:
    sink = pacs.move_sink[0] = RecordingSink()
    puller = _puller(pacs, sink, method="move", wanted=sink.lacks)
    report = puller.poll_once()

    assert report.ok, report.errors
    today = [pacs.ct_today, pacs.mr_today, pacs.us_today]
    assert (report.studies_matching, report.studies_wanted, report.studies_retrieved) == (3, 3, 3)
    counts = {r.study_uid: (r.status, r.completed, r.failed) for r in report.retrievals}
    assert counts == {
        pacs.ct_today: (SUCCESS, 5, 0),
        pacs.mr_today: (SUCCESS, 3, 0),
        pacs.us_today: (SUCCESS, 1, 0),
    }
    _assert_delivered_unchanged(pacs, sink, today)
    (origin,) = sink.origins
    assert origin.startswith("dimse:ORTHANC@")  # labelled by the SCP, not by the puller

    again = puller.poll_once()
    assert again.ok, again.errors
    assert (again.studies_wanted, again.retrievals) == (0, [])
    assert len(sink.received) == 9


class NoSopClassesPuller(QueryRetrievePuller):
    """Does not ask for SOPClassesInStudy, as with a PACS that does not support it."""

    def _study_query(self, today: date) -> Dataset:
        query = super()._study_query(today)
        del query.SOPClassesInStudy
        return query


@needs_orthanc
def test_c_get_without_the_study_sop_classes_proposes_common_ones(pacs: Pacs) -> None:
    sink = RecordingSink()
    config = _puller(pacs, sink, modalities=["MR", "US"]).config
    report = NoSopClassesPuller(config, sink).poll_once()

    assert report.ok, report.errors
    assert report.studies_retrieved == 2
    mr_posted, mr_received = pacs.studies[pacs.mr_today], sink.of_study(pacs.mr_today)
    assert sorted(mr_received) == sorted(mr_posted)
    for sop_uid, posted in mr_posted.items():  # Orthanc may pick another little-endian syntax
        assert mr_received[sop_uid].pixel_data == posted.pixel_data
    (us_posted,) = pacs.studies[pacs.us_today].values()
    (us_received,) = sink.of_study(pacs.us_today).values()
    # JPEG Baseline is not proposed this way: Orthanc decompresses it for us.
    assert us_received.sop_uid == us_posted.sop_uid
    assert us_received.transfer_syntax in ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


@needs_orthanc
def test_sink_out_of_resources_fails_the_c_get_sub_operations(pacs: Pacs) -> None:
    sink = RecordingSink(status=OUT_OF_RESOURCES)
    report = _puller(pacs, sink, method="get", modalities=["CT"]).poll_once()

    (retrieval,) = report.retrievals
    assert retrieval.study_uid == pacs.ct_today
    assert (retrieval.completed, retrieval.failed) == (0, 5)
    assert retrieval.status is not None and retrieval.status != SUCCESS
    assert not retrieval.succeeded
    assert report.studies_wanted == 1 and report.studies_retrieved == 0
    (error,) = report.errors
    assert f"0x{retrieval.status:04X}" in error and "5 failed" in error
    assert sink.received == []


# -- failures ---------------------------------------------------------------------------------


@needs_orthanc
def test_unreachable_pacs_is_reported_not_raised(pacs: Pacs) -> None:
    port = free_port()
    report = _puller(pacs, RecordingSink(), port=port).poll_once()
    assert not report.ok
    assert report.studies_queried == 0 and report.retrievals == []
    (error,) = report.errors
    assert f"ORTHANC@127.0.0.1:{port}" in error and "could not associate" in error


@needs_orthanc
def test_calling_ae_unknown_to_the_pacs_is_reported(pacs: Pacs) -> None:
    report = _puller(pacs, RecordingSink(), calling_ae="STRANGER").poll_once()
    assert not report.ok
    assert report.retrievals == []
    (error,) = report.errors
    assert error.startswith("C-FIND failed: the PACS aborted") and "'STRANGER'" in error


@contextmanager
def fake_pacs(answer: Callable[[Any], Iterator[tuple[int, Dataset | None]]]) -> Iterator[int]:
    """A pynetdicom C-FIND SCP answering with ``answer``, for failures Orthanc will not stage."""
    ae = AE(ae_title="FAKEPACS")
    ae.require_called_aet = True  # rejects associations addressed to another AE title
    ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_FIND, answer)])
    assert server is not None  # block=False returns the running server
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()


def _fake_pacs_puller(
    port: int,
    dimse_timeout: float = 30.0,
    wanted: AskedFor | None = None,
    called_ae: str = "FAKEPACS",
) -> QueryRetrievePuller:
    config = QueryRetrieveConfig(
        host="127.0.0.1",
        port=port,
        called_ae=called_ae,
        calling_ae=GATEWAY_AE,
        window=DateWindow(days=1),
        dimse_timeout=dimse_timeout,
    )
    return QueryRetrievePuller(config, RecordingSink(), wanted=wanted)


def test_c_find_failure_status_is_reported_in_hex() -> None:
    def one_match_then_out_of_resources(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        match = Dataset()
        match.QueryRetrieveLevel = "STUDY"
        match.StudyInstanceUID = "1.2.3.4"
        yield 0xFF00, match
        yield 0xA700, None

    with fake_pacs(one_match_then_out_of_resources) as port:
        wanted = AskedFor()
        report = _fake_pacs_puller(port, wanted=wanted).poll_once()
    assert report.errors == ["C-FIND failed: status 0xA700"]
    assert report.studies_queried == 1 and report.studies_matching == 0
    assert wanted.asked == {}  # a partial answer is not acted on


def test_a_pacs_that_never_answers_times_out_with_a_clear_error() -> None:
    release = threading.Event()

    def hang(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        release.wait(10)
        yield 0x0000, None

    with fake_pacs(hang) as port:
        report = _fake_pacs_puller(port, dimse_timeout=1).poll_once()
        release.set()
    assert report.errors == ["C-FIND failed: no response from the PACS within 1 s"]


def test_rejected_association_is_reported_with_the_reason() -> None:
    def never_asked(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        yield 0x0000, None

    with fake_pacs(never_asked) as port:
        report = _fake_pacs_puller(port, called_ae="WRONGAE").poll_once()
    (error,) = report.errors
    assert error.startswith(f"C-FIND failed: association rejected by WRONGAE@127.0.0.1:{port}")
    assert "Called AE title not recognised" in error


def test_run_survives_an_outage_and_stops_when_told() -> None:
    config = QueryRetrieveConfig(
        host="127.0.0.1",
        port=free_port(),
        called_ae="NOBODY",
        calling_ae=GATEWAY_AE,
        window=DateWindow(days=1),
        network_timeout=2,
    )
    polls = []

    class CountingPuller(QueryRetrievePuller):
        def poll_once(self) -> Any:
            report = super().poll_once()
            polls.append(report)
            if len(polls) == 3:
                stop.set()
            return report

    stop = threading.Event()
    worker = threading.Thread(
        target=CountingPuller(config, RecordingSink()).run, args=(stop, 0.01), daemon=True
    )
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive()
    assert len(polls) == 3 and all(not report.ok for report in polls)


# -- configuration ------------------------------------------------------------------------------

GOOD_ENTRY = {
    "kind": "qr",
    "host": "127.0.0.1",
    "port": 4242,
    "ae_title": "ORTHANC",
    "method": "move",
    "days": 2,
    "modalities": ["CT"],
    "interval_seconds": 600,
}


def _from(entry: dict[str, Any], move_destination: str | None = GATEWAY_AE) -> QueryRetrieveConfig:
    return puller_from_config(
        entry, RecordingSink(), calling_ae=GATEWAY_AE, move_destination=move_destination
    ).config


def test_config_entry_is_read() -> None:
    config = _from(GOOD_ENTRY)
    assert (config.host, config.port, config.called_ae, config.calling_ae) == (
        "127.0.0.1",
        4242,
        "ORTHANC",
        GATEWAY_AE,
    )
    assert (config.method, config.move_destination, config.modalities) == (
        "move",
        GATEWAY_AE,
        ("CT",),
    )
    assert config.interval_seconds == 600.0
    assert config.window.dicom_range(date(2024, 3, 1)) == "20240229-20240301"
    explicit = {**GOOD_ENTRY, "date_from": date(2024, 1, 2), "date_to": "20240105"}
    del explicit["days"]
    assert _from(explicit).window.dicom_range(TODAY) == "20240102-20240105"
    assert _from({**explicit, "date_to": None}).window.dicom_range(TODAY) == "20240102-"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"host": None}, "missing host"),
        ({"port": "4242"}, "port must be an integer"),
        ({"port": 70000}, "port must be between"),
        ({"ae_title": "A_VERY_LONG_AE_TITLE"}, "ae_title must be 1 to 16"),
        ({"method": "push"}, 'method must be "get" or "move"'),
        ({"days": 0}, "days must be a whole number"),
        ({"date_from": "2024-01-01"}, "either days or date_from/date_to"),
        ({"days": None}, "needs days"),
        ({"days": None, "date_from": "yesterday"}, "date_from must be a date"),
        ({"days": None, "date_from": "2024-02-01", "date_to": "2024-01-01"}, "starts"),
        ({"modalities": "CT"}, "modalities must be a list"),
        ({"interval_seconds": 0}, "interval_seconds must be positive"),
        ({"kind": "ftp"}, 'kind must be "qr"'),
        ({"pasword": "x"}, "unknown keys ['pasword']"),
    ],
)
def test_bad_config_entries_are_refused_clearly(change: dict[str, Any], message: str) -> None:
    entry = {**GOOD_ENTRY, **change}
    entry = {key: value for key, value in entry.items() if value is not None}
    with pytest.raises(ValueError, match=re.escape(message)):
        _from(entry)


def test_move_needs_a_destination() -> None:
    with pytest.raises(ValueError, match="needs a move destination"):
        _from(GOOD_ENTRY, move_destination=None)
    assert _from({**GOOD_ENTRY, "move_destination": "OTHERSCP"}, None).move_destination == (
        "OTHERSCP"
    )
