"""Bad input over HTTP: every refusal is a clear 4xx, never a 500, and never harms stored data."""

from __future__ import annotations

import hashlib
import io
import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pydicom
import pytest

from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.samples import require_samples, samples_root
from tests.support.servers import client, running_node, token_for

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on broken values

PROBLEM_JSON = "application/problem+json"
DICOM_JSON = "application/dicom+json"
ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'
BOUNDARY = "bad-input-boundary"
STOW_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
_ROOT = samples_root()
MALFORMED = (
    sorted(p.name for p in (_ROOT / "malformed").glob("*.dcm")) if _ROOT else ["samples-missing"]
)


@dataclass
class Baseline:
    node: Node
    http: httpx.Client
    study_uid: str
    series_uid: str
    sop_uids: list[str]
    sha256: str
    ct: list[pydicom.Dataset]

    def instance_url(self, index: int = 0) -> str:
        return (
            f"/dicom-web/studies/{self.study_uid}/series/{self.series_uid}"
            f"/instances/{self.sop_uids[index]}"
        )


def _stow_body(*payloads: bytes, boundary: str = BOUNDARY) -> bytes:
    body = b""
    for payload in payloads:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += payload + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


def _study_sha256(http: httpx.Client, study_uid: str) -> str:
    response = http.get(f"/dicom-web/studies/{study_uid}", headers={"Accept": ANY_SYNTAX})
    assert response.status_code == 200
    digest = hashlib.sha256()
    for payload in _payloads(response):
        digest.update(hashlib.sha256(payload).digest())
    return digest.hexdigest()


def _payloads(response: httpx.Response) -> list[bytes]:
    match = re.search(r'boundary="?([^";]+)', response.headers["content-type"])
    assert match
    delimiter = b"\r\n--" + match.group(1).encode()
    chunks = (b"\r\n" + response.content).split(delimiter)[1:-1]
    return [chunk.split(b"\r\n\r\n", 1)[1] for chunk in chunks]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Baseline]:
    """A SQLite node (shared by this module) holding one study every test must leave intact."""
    with running_node(tmp_path_factory.mktemp("bad-input")) as node, client(node) as http:
        study = StudySpec(patient=PatientSpec(patient_id="BASE-1"))
        ct = list(ct_series(study, slices=3, size=16))
        response = http.post(
            "/dicom-web/studies",
            content=_stow_body(*(to_part10(ds) for ds in ct)),
            headers={"Content-Type": STOW_TYPE},
        )
        assert response.status_code == 200
        yield Baseline(
            node,
            http,
            study.study_instance_uid,
            ct[0].SeriesInstanceUID,
            [ds.SOPInstanceUID for ds in ct],
            _study_sha256(http, study.study_instance_uid),
            ct,
        )


@pytest.fixture(autouse=True)
def _stored_study_survives(baseline: Baseline) -> Iterator[None]:
    yield
    assert _study_sha256(baseline.http, baseline.study_uid) == baseline.sha256
    assert baseline.http.get("/healthz").status_code == 200


def _assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    body = response.json()
    assert body["status"] == status
    assert body["detail"]
    return body


def _stow(baseline: Baseline, body: bytes, content_type: str = STOW_TYPE) -> httpx.Response:
    return baseline.http.post(
        "/dicom-web/studies", content=body, headers={"Content-Type": content_type}
    )


def _assert_refused(response: httpx.Response, reason: int = 0xC000) -> None:
    assert response.status_code == 409, response.text
    assert response.headers["content-type"].startswith(DICOM_JSON)
    body = response.json()
    assert "00081199" not in body
    [failure] = body["00081198"]["Value"]
    assert failure["00081197"]["Value"] == [reason]


# --- STOW-RS of objects that are not (good) DICOM ---------------------------------------------


@pytest.mark.parametrize("name", MALFORMED)
def test_stow_of_malformed_file_is_refused_or_kept_intact(baseline: Baseline, name: str) -> None:
    data = (require_samples() / "malformed" / name).read_bytes()
    response = _stow(baseline, _stow_body(data))
    assert response.status_code in (200, 409), response.text
    assert response.headers["content-type"].startswith(DICOM_JSON)
    body = response.json()
    if response.status_code == 409:
        [failure] = body["00081198"]["Value"]
        assert failure["00081197"]["Value"][0] >= 0xA000
        return
    # Accepted: it must come back exactly as sent.
    [item] = body["00081199"]["Value"]
    url = item["00081190"]["Value"][0]
    retrieved = baseline.http.get(url, headers={"Accept": ANY_SYNTAX})
    assert retrieved.status_code == 200
    assert _payloads(retrieved) == [data]


def test_stow_of_truncated_part10_is_refused(baseline: Baseline) -> None:
    [ds] = ct_series(StudySpec(), slices=1, size=64)
    data = to_part10(ds)
    _assert_refused(_stow(baseline, _stow_body(data[: len(data) // 2])))


def test_stow_of_truncated_real_file_is_refused(baseline: Baseline) -> None:
    path = sorted((require_samples() / "ct/philips_ingenuity_head_phantom_axial_1mm").iterdir())[0]
    data = path.read_bytes()
    _assert_refused(_stow(baseline, _stow_body(data[: len(data) // 2])))
    uid = pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
    assert baseline.http.get("/dicom-web/studies", params={"StudyInstanceUID": uid}).json() == []


def test_stow_without_dicm_prefix_is_refused(baseline: Baseline) -> None:
    [ds] = ct_series(StudySpec(), slices=1, size=8)
    data = bytearray(to_part10(ds))
    data[128:132] = b"DICN"
    _assert_refused(_stow(baseline, _stow_body(bytes(data))))


def test_stow_without_sop_instance_uid_is_refused(baseline: Baseline) -> None:
    [ds] = ct_series(StudySpec(), slices=1, size=8)
    data = to_part10(ds)
    reread = pydicom.dcmread(io.BytesIO(data))
    del reread.SOPInstanceUID
    out = io.BytesIO()
    reread.save_as(out, enforce_file_format=False)
    _assert_refused(_stow(baseline, _stow_body(out.getvalue())))


def test_stow_of_a_stored_uid_with_other_content_is_a_conflict(baseline: Baseline) -> None:
    impostor = baseline.ct[0].copy()
    impostor.PatientName = "Someone^Else"
    _assert_refused(_stow(baseline, _stow_body(to_part10(impostor))), reason=0xC409)


def test_stow_of_garbage_multipart_body_is_400(baseline: Baseline) -> None:
    _assert_problem(_stow(baseline, b"\x00\xffnot multipart at all\r\n" * 10), 400)
    # Starts like a multipart body but never closes.
    _assert_problem(_stow(baseline, f"--{BOUNDARY}\r\nContent-Type: x\r\n\r\nabc".encode()), 400)


def test_stow_with_wrong_content_type_is_415(baseline: Baseline) -> None:
    [ds] = ct_series(StudySpec(), slices=1, size=8)
    _assert_problem(_stow(baseline, to_part10(ds), "application/dicom"), 415)
    _assert_problem(_stow(baseline, b"{}", "application/json"), 415)
    body = _stow_body(b"{}")
    _assert_problem(
        _stow(baseline, body, f'multipart/related; type="application/json"; boundary={BOUNDARY}'),
        415,
    )


def test_stow_without_boundary_is_400(baseline: Baseline) -> None:
    [ds] = ct_series(StudySpec(), slices=1, size=8)
    body = _stow_body(to_part10(ds))
    _assert_problem(_stow(baseline, body, 'multipart/related; type="application/dicom"'), 400)


def test_stow_claiming_an_oversized_body_is_413(baseline: Baseline) -> None:
    port = baseline.node.settings.http_port
    request = (
        (
            "POST /dicom-web/studies HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token_for(baseline.node)}\r\n"
            f"Content-Type: {STOW_TYPE}\r\n"
            "Content-Length: 1000000000000\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        + b"--"
        + BOUNDARY.encode()
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)  # and nothing more: the server must answer from the header
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert PROBLEM_JSON.encode() in head.lower()
    assert b"detail" in body


def test_stow_to_an_invalid_study_uid_is_400(baseline: Baseline) -> None:
    [ds] = ct_series(StudySpec(), slices=1, size=8)
    response = baseline.http.post(
        "/dicom-web/studies/1.2.abc",
        content=_stow_body(to_part10(ds)),
        headers={"Content-Type": STOW_TYPE},
    )
    _assert_problem(response, 400)


# --- QIDO-RS parameters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "-1"},
        {"limit": "abc"},
        {"offset": "-5"},
        {"StudyDate": "2024"},
        {"StudyDate": "20240101-2024"},
        {"StudyTime": "25xx"},
        {"NoSuchAttribute": "1"},
        {"includefield": "NoSuchAttribute"},
        {"StudyInstanceUID": "1.2.abc,1.3"},
        {"StudyInstanceUID": "1..2"},
        {"SeriesNumber": "one"},
    ],
    ids=lambda p: "&".join(f"{k}={v}" for k, v in p.items()),
)
def test_bad_qido_parameters_are_400(baseline: Baseline, params: dict[str, str]) -> None:
    path = "/dicom-web/series" if "SeriesNumber" in params else "/dicom-web/studies"
    _assert_problem(baseline.http.get(path, params=params), 400)


# --- WADO-RS -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/metadata", "/series/1.2.3/instances"])
def test_unknown_study_is_404(baseline: Baseline, suffix: str) -> None:
    response = baseline.http.get(f"/dicom-web/studies/1.2.826.0.1.999{suffix}")
    if suffix.endswith("instances"):  # a search: an unknown study just matches nothing
        assert response.status_code == 200 and response.json() == []
        return
    _assert_problem(response, 404)


def test_unknown_instance_is_404(baseline: Baseline) -> None:
    url = f"/dicom-web/studies/{baseline.study_uid}/series/{baseline.series_uid}/instances/1.2.3"
    _assert_problem(baseline.http.get(url), 404)


@pytest.mark.parametrize("frames", ["0", "a", "1,", "-1", "1,,2", "1;2"])
def test_malformed_frame_list_is_400(baseline: Baseline, frames: str) -> None:
    _assert_problem(baseline.http.get(f"{baseline.instance_url()}/frames/{frames}"), 400)


def test_frame_past_the_end_is_404(baseline: Baseline) -> None:
    _assert_problem(baseline.http.get(f"{baseline.instance_url()}/frames/2"), 404)
    _assert_problem(baseline.http.get(f"{baseline.instance_url()}/frames/1,9999999"), 404)


@pytest.mark.parametrize("window", ["abc", "40", "40,400,gamma", "40,-5", "nan,400"])
def test_rendered_with_a_bad_window_is_400(baseline: Baseline, window: str) -> None:
    response = baseline.http.get(f"{baseline.instance_url()}/rendered", params={"window": window})
    _assert_problem(response, 400)


@pytest.mark.parametrize("viewport", ["0,0", "abc", "99999,10"])
def test_rendered_with_a_bad_viewport_is_400(baseline: Baseline, viewport: str) -> None:
    response = baseline.http.get(
        f"{baseline.instance_url()}/rendered", params={"viewport": viewport}
    )
    _assert_problem(response, 400)


def test_rendered_as_gif_is_406(baseline: Baseline) -> None:
    response = baseline.http.get(
        f"{baseline.instance_url()}/rendered", headers={"Accept": "image/gif"}
    )
    _assert_problem(response, 406)


def test_instance_in_an_unavailable_media_type_is_406(baseline: Baseline) -> None:
    response = baseline.http.get(baseline.instance_url(), headers={"Accept": "application/pdf"})
    _assert_problem(response, 406)


def test_bad_accept_quality_is_400(baseline: Baseline) -> None:
    response = baseline.http.get(
        baseline.instance_url(), headers={"Accept": "multipart/related; q=abc"}
    )
    _assert_problem(response, 400)


@pytest.mark.parametrize(
    "path",
    [
        "/dicom-web/studies/..%2F..%2Fetc/series",
        "/dicom-web/studies/..%2F..%2Fetc%2Fpasswd",
        "/dicom-web/studies/%00/metadata",
        "/dicom-web/studies/1.2.3/series/..%2F..%2F/instances/x/frames/1",
        "/dicom-web/studies/1.2.3/series/4.5/instances/6.7/bulkdata/..%2Fblobs",
        "/dicom-web/studies/" + "9" * 5000,
        "/dicom-web/%2e%2e/%2e%2e/etc/passwd",
    ],
)
def test_path_tricks_are_4xx(baseline: Baseline, path: str) -> None:
    response = baseline.http.get(path)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert response.headers["content-type"].startswith(PROBLEM_JSON)
    assert b"root:" not in response.content
