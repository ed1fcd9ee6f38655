"""HTTP collectors against real peers: DICOMweb pull from Orthanc, push from real HTTP clients.

The pull runs against Orthanc with its DICOMweb plugin (QIDO-RS, WADO-RS); the push receiver
runs under uvicorn on a loopback port and is fed by dicomweb-client's STOW-RS and by httpx.
"""

from __future__ import annotations

import http.server
import io
import random
import struct
import threading
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from requests.exceptions import HTTPError

from collectors.dicomweb_pull import (
    DicomwebError,
    DicomwebPuller,
    puller_from_config,
)
from collectors.http_push import create_push_app
from collectors.intake import CANNOT_UNDERSTAND, OUT_OF_RESOURCES, SUCCESS, SinkResult
from collectors.multipart import (
    MultipartError,
    MultipartStreamReader,
    iter_multipart,
    split_multipart,
    stream_parts,
)
from imaging_cloud.synthetic import StudySpec, ct_series, secondary_capture, to_part10
from tests.support.asgi_server import serving
from tests.support.orthanc import OrthancServer, free_port, orthanc_available
from tests.support.samples import samples_root

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on odd values

TODAY = date.today()
MR_SAMPLES = "mr/siemens_prisma_t1_fl2d_sag"
US_SAMPLE = "multiframe/us_sonosite__cine_30frames_jpeg_baseline.dcm"


# -- helpers ----------------------------------------------------------------------------


@dataclass
class RecordingSink:
    """A sink that keeps what it is given and answers with ``status`` (or parses, if None)."""

    status: int | None = SUCCESS
    quarantine: bool = False
    received: list[tuple[bytes, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, data: bytes, origin: str) -> SinkResult:
        with self.lock:
            self.received.append((data, origin))
        if self.status is None:  # behave like the real spool: refuse what is not DICOM
            return _validate(data)
        return SinkResult(self.status, "test sink", quarantined=self.quarantine)

    @property
    def sop_uids(self) -> list[str]:
        return sorted(_sop_uid(data) for data, _ in self.received)


def _validate(data: bytes) -> SinkResult:
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        if not ds.SOPInstanceUID or not ds.SOPClassUID:
            raise ValueError("no SOP UIDs")
    except Exception as exc:
        return SinkResult(CANNOT_UNDERSTAND, str(exc)[:60], quarantined=True)
    return SinkResult(SUCCESS)


class DiscardingSink:
    """Counts bytes and forgets them, so memory use is the puller's alone."""

    def __init__(self) -> None:
        self.count = 0
        self.largest = 0

    def __call__(self, data: bytes, origin: str) -> SinkResult:
        self.count += 1
        self.largest = max(self.largest, len(data))
        return SinkResult(SUCCESS)


def _sop_uid(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def _dataset_bytes(part10: bytes) -> bytes:
    """The encoded dataset after the File Meta group (a sender may rewrite the meta)."""
    assert part10[128:132] == b"DICM"
    position = 132
    while struct.unpack_from("<H", part10, position)[0] == 0x0002:  # File Meta: explicit VR LE
        vr = part10[position + 4 : position + 6]
        if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT", b"UC", b"UR"):
            position += 12 + struct.unpack_from("<I", part10, position + 8)[0]
        else:
            position += 8 + struct.unpack_from("<H", part10, position + 6)[0]
    return part10[position:]


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _redated(path: Path, study_date: date) -> bytes:
    """A real sample with its StudyDate moved, so the QIDO date window finds it."""
    ds = pydicom.dcmread(path)
    ds.StudyDate = f"{study_date:%Y%m%d}"
    return _part10(ds)


def _ct_study(study_date: date, slices: int, size: int = 16) -> tuple[str, list[bytes]]:
    spec = StudySpec(study_date=f"{study_date:%Y%m%d}")
    return spec.study_instance_uid, [to_part10(ds) for ds in ct_series(spec, slices, size)]


def _mr_study(study_date: date) -> tuple[str, list[bytes]]:
    """Six real Siemens MR slices, or a synthetic MR series where the samples are missing."""
    root = samples_root()
    if root is not None and (root / MR_SAMPLES).is_dir():
        files = [_redated(p, study_date) for p in sorted((root / MR_SAMPLES).glob("*.dcm"))[:6]]
        return str(pydicom.dcmread(io.BytesIO(files[0])).StudyInstanceUID), files
    spec = StudySpec(study_date=f"{study_date:%Y%m%d}")
    datasets = list(ct_series(spec, slices=4, size=16))
    for ds in datasets:
        ds.Modality = "MR"
    return spec.study_instance_uid, [to_part10(ds) for ds in datasets]


def _upload(orthanc: OrthancServer, files: list[bytes]) -> None:
    with httpx.Client(timeout=60) as http:
        for data in files:
            response = http.post(f"{orthanc.base_url}/instances", content=data)
            assert response.status_code == 200, response.text


@dataclass
class Hospital:
    """An Orthanc holding today's CT, MR (and US, from the samples) and an old CT."""

    orthanc: OrthancServer
    studies: dict[str, tuple[str, list[bytes]]]

    @property
    def url(self) -> str:
        return self.orthanc.dicomweb_url

    def uid(self, name: str) -> str:
        return self.studies[name][0]

    def files(self, *names: str) -> list[bytes]:
        return [data for name in names for data in self.studies[name][1]]

    def sop_uids(self, *names: str) -> list[str]:
        return sorted(_sop_uid(data) for data in self.files(*names))

    def today_names(self) -> list[str]:
        return [name for name in self.studies if name.endswith("_today")]


@pytest.fixture(scope="module")
def hospital() -> Iterator[Hospital]:
    if not orthanc_available():
        pytest.skip("Orthanc + DICOMweb plugin not installed")
    studies = {
        "ct_today": _ct_study(TODAY, slices=5),
        "mr_today": _mr_study(TODAY),
        "ct_old": _ct_study(TODAY - timedelta(days=30), slices=2),
        "ct_big": _ct_study(TODAY - timedelta(days=60), slices=40, size=256),
    }
    root = samples_root()
    if root is not None and (root / US_SAMPLE).is_file():
        us = _redated(root / US_SAMPLE, TODAY)  # JPEG Baseline: must come back as it is
        studies["us_today"] = (str(pydicom.dcmread(io.BytesIO(us)).StudyInstanceUID), [us])
    with OrthancServer() as orthanc:
        _upload(orthanc, [data for _, files in studies.values() for data in files])
        yield Hospital(orthanc, studies)


# -- DICOMweb pull ----------------------------------------------------------------------


@pytest.mark.needs_orthanc
def test_poll_fetches_every_instance_of_the_window_unchanged(hospital: Hospital) -> None:
    sink = RecordingSink()
    with DicomwebPuller(hospital.url, sink, days=3) as puller:
        report = puller.poll()

    today = hospital.today_names()
    assert report.errors == []
    assert report.studies_seen == report.studies_wanted == report.studies_retrieved == len(today)
    assert report.instances_stored == report.instances_taken == len(hospital.files(*today))
    assert report.instances_failed == report.instances_quarantined == 0
    assert sink.sop_uids == hospital.sop_uids(*today)  # nothing from the old studies

    sent = {_sop_uid(data): data for data in hospital.files(*today)}
    for data, origin in sink.received:
        original = sent[_sop_uid(data)]
        assert _dataset_bytes(data) == _dataset_bytes(original)  # same encoding, same syntax
        got, expected = (pydicom.dcmread(io.BytesIO(d)) for d in (data, original))
        assert got.file_meta.TransferSyntaxUID == expected.file_meta.TransferSyntaxUID
        assert got.PixelData == expected.PixelData
        study = str(got.StudyInstanceUID)
        assert origin == f"dicomweb:{hospital.url}/studies/{study}"


@pytest.mark.needs_orthanc
def test_wanted_false_skips_a_study_and_is_told_the_instance_count(hospital: Hospital) -> None:
    asked: dict[str, int | None] = {}

    def wanted(study_uid: str, instance_count: int | None) -> bool:
        asked[study_uid] = instance_count
        return study_uid != hospital.uid("ct_today")  # the cloud "already has" the CT

    sink = RecordingSink()
    with DicomwebPuller(hospital.url, sink, days=1, wanted=wanted) as puller:
        report = puller.poll()

    today = hospital.today_names()
    assert asked == {hospital.uid(name): len(hospital.studies[name][1]) for name in today}
    assert report.studies_seen == len(today)
    assert report.studies_wanted == len(today) - 1
    others = [name for name in today if name != "ct_today"]
    assert sink.sop_uids == hospital.sop_uids(*others)


@pytest.mark.needs_orthanc
def test_modality_filter_queries_each_modality_once(hospital: Hospital) -> None:
    sink = RecordingSink()
    with DicomwebPuller(hospital.url, sink, days=2, modalities=["mr"]) as puller:
        report = puller.poll()
    assert report.studies_seen == 1
    assert sink.sop_uids == hospital.sop_uids("mr_today")

    sink = RecordingSink()
    with DicomwebPuller(hospital.url, sink, days=2, modalities=["CT", "MR", "CT"]) as puller:
        report = puller.poll()
    assert report.studies_seen == 2  # a study matched by two queries is fetched once
    assert sink.sop_uids == hospital.sop_uids("ct_today", "mr_today")


@pytest.mark.needs_orthanc
def test_out_of_resources_is_reported_failed_and_ends_the_poll(hospital: Hospital) -> None:
    sink = RecordingSink(status=OUT_OF_RESOURCES)
    with DicomwebPuller(hospital.url, sink, days=1) as puller:
        report = puller.poll()
    # The first object is not taken: fetching more would only fill a full disk again.
    assert len(sink.received) == 1
    assert report.instances_failed == 1
    assert report.instances_taken == 0
    assert not report.ok
    assert len(report.errors) == 1 and "0xA700" in report.errors[0]
    assert report.studies_wanted == 1 and report.studies_retrieved == 0


@pytest.mark.needs_orthanc
def test_quarantined_objects_are_taken_and_the_poll_goes_on(hospital: Hospital) -> None:
    sink = RecordingSink(status=CANNOT_UNDERSTAND, quarantine=True)
    with DicomwebPuller(hospital.url, sink, days=1, modalities=["CT", "MR"]) as puller:
        report = puller.poll()
    assert report.instances_quarantined == len(hospital.files("ct_today", "mr_today"))
    assert report.instances_taken == report.instances_quarantined
    assert report.instances_stored == report.instances_failed == 0
    assert report.errors == []


@pytest.mark.needs_orthanc
def test_run_polls_every_interval_until_stopped(hospital: Hospital) -> None:
    polls: list[str] = []
    stop = threading.Event()

    def wanted(study_uid: str, instance_count: int | None) -> bool:
        polls.append(study_uid)
        if polls.count(study_uid) == 2:
            stop.set()  # the second poll found it again: enough
        return False

    with DicomwebPuller(hospital.url, RecordingSink(), modalities=["CT"], wanted=wanted) as puller:
        # As the gateway starts it: run(stop_event, interval).
        thread = threading.Thread(target=puller.run, args=(stop, 0.05), daemon=True)
        thread.start()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert polls == [hospital.uid("ct_today")] * 2


@pytest.mark.needs_orthanc
def test_pages_through_qido_results(hospital: Hospital) -> None:
    sink = RecordingSink()
    with DicomwebPuller(hospital.url, sink, days=90, page_size=1) as puller:
        found = puller.find_studies()
    assert sorted(study.study_instance_uid for study in found) == sorted(
        uid for uid, _ in hospital.studies.values()
    )


@pytest.mark.needs_orthanc
def test_a_big_study_is_streamed_not_held_in_memory(hospital: Hospital) -> None:
    files = hospital.files("ct_big")
    total, largest = sum(map(len, files)), max(map(len, files))
    assert total > 30 * largest
    sink = DiscardingSink()
    puller = DicomwebPuller(hospital.url, sink, days=1, today=lambda: TODAY - timedelta(days=60))
    with puller:
        tracemalloc.start()
        try:
            report = puller.poll()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert report.ok and report.instances_stored == sink.count == len(files)
    assert sink.largest == largest
    # One instance in the buffer, its copy handed to the sink, and read chunks: far from all.
    assert peak < 4 * largest + 1024 * 1024 < total / 3, f"peak {peak} of {total} bytes"


@pytest.mark.needs_orthanc
def test_http_errors_are_clear(hospital: Hospital) -> None:
    sink = RecordingSink()
    with DicomwebPuller(hospital.url, sink) as puller:
        with pytest.raises(DicomwebError) as missing:
            puller.retrieve_study("1.2.3.4.5")
    assert missing.value.status == 404
    assert "1.2.3.4.5" in str(missing.value) and "HTTP 404" in str(missing.value)

    with DicomwebPuller(f"{hospital.orthanc.base_url}/no-such-root", sink) as puller:
        report = puller.poll()
    assert report.studies_seen == 0
    assert len(report.errors) == 1 and "HTTP 404" in report.errors[0]
    assert "Unknown resource" in report.errors[0]  # Orthanc's own words

    with DicomwebPuller(f"http://127.0.0.1:{free_port()}/dicom-web", sink, timeout=5) as puller:
        with pytest.raises(DicomwebError) as unreachable:
            puller.find_studies()
    assert unreachable.value.status is None and "Connect" in str(unreachable.value)
    assert sink.received == []


class _ProtectedOrthanc(OrthancServer):
    """Orthanc with HTTP basic authentication; the readiness probe must log in too."""

    USER = ("gateway", "s3cret-pw")

    def __init__(self) -> None:
        user, password = self.USER
        protected = {"AuthenticationEnabled": True, "RegisteredUsers": {user: password}}
        super().__init__(config_overrides=protected)

    def _http_up(self, client: httpx.Client) -> bool:
        try:
            return client.get(f"{self.base_url}/system", auth=self.USER).status_code == 200
        except httpx.TransportError:
            return False


@pytest.mark.needs_orthanc
def test_basic_authentication_against_a_protected_orthanc() -> None:
    if not orthanc_available():
        pytest.skip("Orthanc + DICOMweb plugin not installed")
    study_uid, files = _ct_study(TODAY, slices=2)
    with _ProtectedOrthanc() as orthanc:
        with httpx.Client(auth=("gateway", "s3cret-pw"), timeout=30) as http:
            for data in files:
                assert http.post(f"{orthanc.base_url}/instances", content=data).status_code == 200

        sink = RecordingSink()
        with DicomwebPuller(
            orthanc.dicomweb_url, sink, username="gateway", password="guess"
        ) as puller:
            report = puller.poll()
        assert sink.received == [] and "HTTP 401" in report.errors[0]

        with DicomwebPuller(
            orthanc.dicomweb_url, sink, username="gateway", password="s3cret-pw"
        ) as puller:
            report = puller.poll()
        assert report.ok and report.studies_retrieved == 1
        assert sink.sop_uids == sorted(map(_sop_uid, files))
        assert {origin for _, origin in sink.received} == {
            f"dicomweb:{orthanc.dicomweb_url}/studies/{study_uid}"
        }


@pytest.mark.needs_orthanc
def test_puller_from_config_entry(hospital: Hospital) -> None:
    entry = {
        "kind": "dicomweb",
        "url": hospital.url + "/",
        "days": 3,
        "modalities": ["MR"],
        "interval_seconds": 300,
        "verify": True,
    }
    sink = RecordingSink()
    with puller_from_config(entry, sink, wanted=lambda uid, count: True) as puller:
        assert puller.interval_seconds == 300
        assert puller.date_range() == f"{TODAY - timedelta(days=2):%Y%m%d}-{TODAY:%Y%m%d}"
        report = puller.poll()
    assert report.ok and sink.sop_uids == hospital.sop_uids("mr_today")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"kind": "ftp", "url": "http://h/dw"}, "kind"),
        ({"url": "ftp://h/dw"}, "url"),
        ({"url": "http://h/dw", "days": 0}, "days"),
        ({"url": "http://h/dw", "days": True}, "days"),
        ({"url": "http://h/dw", "modalities": "CT"}, "modalities"),
        ({"url": "http://h/dw", "intervall_seconds": 5}, "intervall_seconds"),
        ({"url": "http://h/dw", "token": "t", "username": "u", "password": "p"}, "either"),
        ({"url": "http://h/dw", "username": "u"}, "both"),
    ],
)
def test_puller_from_config_refuses_bad_entries(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        puller_from_config(entry, RecordingSink())


class _RecordingHandler(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []  # noqa: RUF012 - shared with the test, on purpose

    def do_GET(self) -> None:
        self.seen.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        self.send_response(204)  # QIDO-RS: no matches
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_bearer_token_and_query_reach_the_server() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RecordingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        fixed_day = date(2026, 3, 2)
        with DicomwebPuller(
            url,
            RecordingSink(),
            token="tok-123",
            days=3,
            modalities=["CT"],
            today=lambda: fixed_day,
        ) as puller:
            report = puller.poll()
    finally:
        server.shutdown()
        server.server_close()
    assert report.ok and report.studies_seen == 0
    (request,) = _RecordingHandler.seen
    assert request["authorization"] == "Bearer tok-123"
    assert request["accept"] == "application/dicom+json"
    assert request["path"].startswith("/dicom-web/studies?StudyDate=20260228-20260302")
    assert "ModalitiesInStudy=CT" in request["path"]


# -- the incremental multipart reader ---------------------------------------------------


def _multipart_body(payloads: list[bytes], boundary: str = "b0undary") -> bytes:
    parts = [("application/dicom", payload) for payload in payloads]
    return b"preamble to ignore\r\n" + b"".join(stream_parts(parts, boundary)) + b"epilogue"


@pytest.mark.parametrize("seed", range(5))
def test_stream_reader_agrees_with_split_multipart_at_any_chunking(seed: int) -> None:
    rng = random.Random(seed)
    payloads = [rng.randbytes(rng.randint(0, 3000)) for _ in range(rng.randint(1, 6))]
    payloads.append(b"\r\n--b0undar\r\nX--b0undary")  # near-delimiters inside a payload
    body = _multipart_body(payloads)
    chunks, position = [], 0
    while position < len(body):
        size = rng.choice([1, 2, 3, 17, 100, 4096])
        chunks.append(body[position : position + size])
        position += size
    streamed = list(iter_multipart(chunks, "b0undary"))
    assert [p.content for p in streamed] == payloads
    assert [p.content for p in split_multipart(body, "b0undary")] == payloads
    assert all(p.content_type == "application/dicom" for p in streamed)


def test_stream_reader_takes_parts_without_headers_and_padding() -> None:
    body = b"--xyz  \r\n\r\nfirst\r\n--xyz\r\nContent-Type: a/b\r\n\r\nsecond\r\n--xyz--"
    parts = list(iter_multipart([body], "xyz"))
    assert [(p.headers, p.content) for p in parts] == [
        ({}, b"first"),
        ({"content-type": "a/b"}, b"second"),
    ]


@pytest.mark.parametrize(
    "body",
    [
        b"--xyz\r\nContent-Type: a/b\r\n\r\ncut short",  # no closing delimiter
        b"--xyz\r\n\r\ncomplete\r\n--xyz\r\n\r\ncut",  # the last part cut short
        b"no boundary anywhere",
        b"--xyz garbage\r\n\r\nbody\r\n--xyz--",  # text after the boundary
        b"--xyz\r\nno colon here\r\n\r\nbody\r\n--xyz--",
    ],
)
def test_stream_reader_refuses_malformed_bodies(body: bytes) -> None:
    reader = MultipartStreamReader("xyz")
    with pytest.raises(MultipartError):
        for _ in reader.feed(body):
            pass
        reader.close()


def test_stream_reader_never_yields_a_truncated_part() -> None:
    body = _multipart_body([b"A" * 100, b"B" * 100])
    cut = body[: body.index(b"B" * 100) + 50]
    parts: list[bytes] = []
    with pytest.raises(MultipartError):
        parts.extend(p.content for p in iter_multipart([cut], "b0undary"))
    assert parts == [b"A" * 100]


def test_stream_reader_refuses_a_part_over_the_limit() -> None:
    with pytest.raises(MultipartError, match="exceeds"):
        list(iter_multipart([_multipart_body([b"x" * 5000])], "b0undary", max_part_bytes=4096))


# -- HTTP push receiver -----------------------------------------------------------------

CREDENTIAL = "push-credential-0123456789"
AUTH = {"Authorization": f"Bearer {CREDENTIAL}"}
LIMIT = 256 * 1024
BOUNDARY = "push-test-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


@dataclass
class Receiver:
    url: str
    sink: RecordingSink
    http: httpx.Client


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    sink = RecordingSink(status=None)  # validates like the real spool
    app = create_push_app(sink, credential=CREDENTIAL, max_body_bytes=LIMIT)
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        yield Receiver(url, sink, http)


def _small_ct(count: int = 3) -> list[Dataset]:
    return list(ct_series(StudySpec(study_date=f"{TODAY:%Y%m%d}"), slices=count, size=16))


def _seq(answer: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    return list(answer.get(tag, {}).get("Value", []))


def _uid_of(item: dict[str, Any]) -> str:
    return str(item["00081155"]["Value"][0])


def _reason(item: dict[str, Any]) -> int:
    return int(item["00081197"]["Value"][0])


def _assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert {"type", "title", "detail"} <= problem.keys()
    return problem


def test_dicomweb_client_stores_through_stow(receiver: Receiver) -> None:
    built = _small_ct(2)  # made in memory: dicomweb-client sends them without a preamble
    originals = {str(ds.SOPInstanceUID): to_part10(ds) for ds in built}  # adds File Meta
    read = [pydicom.dcmread(io.BytesIO(to_part10(ds))) for ds in _small_ct(2)]  # as from files
    originals |= {str(ds.SOPInstanceUID): _part10(ds) for ds in read}
    web = DICOMwebClient(url=receiver.url, headers=AUTH)
    answer = web.store_instances([*built, *read])

    referenced = answer.ReferencedSOPSequence
    assert sorted(str(item.ReferencedSOPInstanceUID) for item in referenced) == sorted(originals)
    assert "FailedSOPSequence" not in answer
    assert receiver.sink.sop_uids == sorted(originals)
    for data, origin in receiver.sink.received:
        assert origin == "http-push:127.0.0.1/studies"
        original = originals[_sop_uid(data)]
        assert _dataset_bytes(data) == _dataset_bytes(original)


def test_single_instance_body_arrives_byte_identical(receiver: Receiver) -> None:
    (ds,) = _small_ct(1)
    data = to_part10(ds)
    response = receiver.http.post(
        "/instances", content=data, headers={**AUTH, "Content-Type": "application/dicom"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/dicom+json")
    (item,) = _seq(response.json(), "00081199")
    assert _uid_of(item) == str(ds.SOPInstanceUID)
    assert item["00081150"]["Value"] == [str(ds.SOPClassUID)]
    assert receiver.sink.received == [(data, "http-push:127.0.0.1/instances")]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {CREDENTIAL}"}],
    ids=["missing", "wrong", "not-bearer"],
)
def test_a_wrong_or_missing_token_is_refused(receiver: Receiver, headers: dict[str, str]) -> None:
    (ds,) = _small_ct(1)
    for path, content_type in (("/instances", "application/dicom"), ("/studies", STOW_TYPE)):
        response = receiver.http.post(
            path, content=to_part10(ds), headers={**headers, "Content-Type": content_type}
        )
        _assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert receiver.sink.received == []


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/studies", "application/dicom"),
        ("/studies", "application/json"),
        ("/studies", 'multipart/related; type="application/dicom+json"; boundary=x'),
        ("/instances", STOW_TYPE),
        ("/instances", "text/plain"),
    ],
)
def test_a_wrong_media_type_is_refused(receiver: Receiver, path: str, content_type: str) -> None:
    response = receiver.http.post(
        path, content=b"whatever", headers={**AUTH, "Content-Type": content_type}
    )
    _assert_problem(response, 415)
    assert receiver.sink.received == []


def test_an_oversized_body_is_refused(receiver: Receiver) -> None:
    too_big = b"\0" * (LIMIT + 1)
    declared = receiver.http.post(
        "/instances", content=too_big, headers={**AUTH, "Content-Type": "application/dicom"}
    )
    _assert_problem(declared, 413)

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted while reading
        for _ in range(LIMIT // 4096 + 2):
            yield b"\0" * 4096

    streamed = receiver.http.post(
        "/studies", content=chunked(), headers={**AUTH, "Content-Type": STOW_TYPE}
    )
    _assert_problem(streamed, 413)
    assert receiver.sink.received == []


@pytest.mark.parametrize(
    "body",
    [
        b"this is not multipart at all",
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\nno closing boundary".encode(),
        f"--{BOUNDARY}--\r\n".encode(),  # well-formed, but no parts
    ],
    ids=["no-boundary", "unterminated", "empty"],
)
def test_garbage_multipart_is_refused(receiver: Receiver, body: bytes) -> None:
    response = receiver.http.post(
        "/studies", content=body, headers={**AUTH, "Content-Type": STOW_TYPE}
    )
    _assert_problem(response, 400)
    assert receiver.sink.received == []


def test_a_malformed_part_fails_while_the_good_one_is_stored(receiver: Receiver) -> None:
    (ds,) = _small_ct(1)
    good = to_part10(ds)
    malformed = b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"broken"
    body = b"".join(
        stream_parts([("application/dicom", good), ("application/dicom", malformed)], BOUNDARY)
    )
    response = receiver.http.post(
        "/studies", content=body, headers={**AUTH, "Content-Type": STOW_TYPE}
    )
    assert response.status_code == 202, response.text
    answer = response.json()
    (stored,) = _seq(answer, "00081199")
    (failed,) = _seq(answer, "00081198")
    assert _uid_of(stored) == str(ds.SOPInstanceUID)
    assert _reason(failed) == CANNOT_UNDERSTAND  # the sink's own status
    assert [data for data, _ in receiver.sink.received] == [good, malformed]


def test_a_non_dicom_part_is_refused_without_the_sink(receiver: Receiver) -> None:
    body = b"".join(stream_parts([("application/json", b"{}")], BOUNDARY))
    response = receiver.http.post(
        "/studies", content=body, headers={**AUTH, "Content-Type": STOW_TYPE}
    )
    assert response.status_code == 409, response.text
    (failed,) = _seq(response.json(), "00081198")
    assert _reason(failed) == CANNOT_UNDERSTAND
    assert receiver.sink.received == []


def test_out_of_resources_answers_409_with_the_sinks_status() -> None:
    sink = RecordingSink(status=OUT_OF_RESOURCES)
    datasets = list(secondary_capture(StudySpec(), count=2))
    body = b"".join(stream_parts([("application/dicom", to_part10(ds)) for ds in datasets], "b"))
    app = create_push_app(sink, credential=None, max_body_bytes=LIMIT)
    with serving(app) as url:  # no credential configured: no Authorization needed
        response = httpx.post(
            f"{url}/studies",
            content=body,
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'},
        )
    assert response.status_code == 409, response.text
    failed = _seq(response.json(), "00081198")
    assert sorted(map(_uid_of, failed)) == sorted(str(ds.SOPInstanceUID) for ds in datasets)
    assert {_reason(item) for item in failed} == {OUT_OF_RESOURCES}
    assert len(sink.received) == 2


def test_unknown_routes_answer_problem_json(receiver: Receiver) -> None:
    _assert_problem(receiver.http.get("/nothing-here", headers=AUTH), 404)
    _assert_problem(receiver.http.get("/studies", headers=AUTH), 405)


def test_create_push_app_refuses_bad_settings() -> None:
    with pytest.raises(ValueError):
        create_push_app(RecordingSink(), credential="", max_body_bytes=LIMIT)
    with pytest.raises(ValueError):
        create_push_app(RecordingSink(), credential=None, max_body_bytes=0)


def test_dicomweb_client_sees_a_refusal_as_an_http_error(receiver: Receiver) -> None:
    (ds,) = _small_ct(1)
    to_part10(ds)  # dicomweb-client encodes with the File Meta's transfer syntax
    web = DICOMwebClient(url=receiver.url, headers={"Authorization": "Bearer nope"})
    with pytest.raises(HTTPError) as refused:
        web.store_instances([ds])
    assert refused.value.response is not None
    assert refused.value.response.status_code == 401
