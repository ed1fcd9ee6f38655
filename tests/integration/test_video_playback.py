"""WADO-RS rendered video: the MP4 out of the DICOM object, HTTP Range, access, thumbnails."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.servers import PASSWORD, client, http_base, running_node
from tests.support.video import make_mp4, video_dataset, video_part10

pytestmark = pytest.mark.needs_ffmpeg


@dataclass
class Stored:
    node: Node
    mp4: bytes
    path: str  # …/instances/{sop}
    study: str
    series: str
    sop: str


def _token(node: Node, username: str) -> dict[str, str]:
    with client(node, None) as http:
        answer = http.post("/api/auth/token", data={"username": username, "password": PASSWORD})
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    folder = tmp_path_factory.mktemp("video")
    mp4_path = make_mp4(folder / "clip.mp4", seconds=2.0, colour=None)
    with running_node(folder / "data") as node:
        archive = node.archive
        archive.hospitals.add_hospital("H1", "Hospital One")
        archive.hospitals.add_hospital("H2", "Hospital Two")
        h1 = archive.hospitals.by_id("H1")
        assert h1 is not None
        data = video_part10(mp4_path, patient_id="P-VID")
        archive.store(data, source="test", hospital_pk=h1.pk)
        for username, role, hospital in (
            ("h1-clinician", "clinician", "H1"),
            ("h2-clinician", "clinician", "H2"),
            ("h1-trainee", "trainee", "H1"),
        ):
            archive.users.create_user(username, PASSWORD, role, hospital_id=hospital)
        yield Stored(node, mp4_path.read_bytes(), *_only_instance(node))


def _only_instance(node: Node) -> tuple[str, str, str, str]:
    with client(node) as http:
        study = http.get("/dicom-web/studies").json()[0]["0020000D"]["Value"][0]
        found = http.get(f"/dicom-web/studies/{study}/instances").json()[0]
    series, sop = found["0020000E"]["Value"][0], found["00080018"]["Value"][0]
    path = f"/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    return path, study, series, sop


def test_whole_video_is_the_mp4(stored: Stored) -> None:
    with client(stored.node) as http:
        answer = http.get(stored.path + "/rendered", headers={"Accept": "video/mp4"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "video/mp4"
    assert answer.headers["accept-ranges"] == "bytes"
    assert answer.content == stored.mp4


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=0-99", 0, 99),
        ("bytes=1000-1999", 1000, 1999),
        ("bytes=-500", -500, -1),
        ("bytes=2000-", 2000, -1),
        ("bytes=100-99999999", 100, -1),  # last beyond the end: clamped
    ],
)
def test_single_ranges(stored: Stored, header: str, first: int, last: int) -> None:
    size = len(stored.mp4)
    first, last = first % size, last % size
    with client(stored.node) as http:
        answer = http.get(stored.path + "/rendered", headers={"Range": header, "Accept": "*/*"})
    assert answer.status_code == 206, answer.text
    assert answer.headers["content-range"] == f"bytes {first}-{last}/{size}"
    assert answer.content == stored.mp4[first : last + 1]
    assert int(answer.headers["content-length"]) == last - first + 1


def test_unsatisfiable_and_ignored_ranges(stored: Stored) -> None:
    size = len(stored.mp4)
    with client(stored.node) as http:
        beyond = http.get(stored.path + "/rendered", headers={"Range": f"bytes={size}-"})
        several = http.get(stored.path + "/rendered", headers={"Range": "bytes=0-9,20-29"})
        etag = several.headers["etag"]
        stale = http.get(
            stored.path + "/rendered", headers={"Range": "bytes=0-9", "If-Range": '"other"'}
        )
        fresh = http.get(
            stored.path + "/rendered", headers={"Range": "bytes=0-9", "If-Range": etag}
        )
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"
    assert several.status_code == 200 and several.content == stored.mp4  # multi-range: whole
    assert stale.status_code == 200 and stale.content == stored.mp4
    assert fresh.status_code == 206 and fresh.content == stored.mp4[:10]


def test_range_requests_reuse_the_extracted_mp4(stored: Stored) -> None:
    with client(stored.node) as http:
        http.get(stored.path + "/rendered", headers={"Range": "bytes=0-9"})
        clips = stored.node.app.state.video_clips
        misses_before = clips.misses
        for start in range(0, 5000, 500):
            answer = http.get(
                stored.path + "/rendered", headers={"Range": f"bytes={start}-{start + 99}"}
            )
            assert answer.content == stored.mp4[start : start + 100]
    assert clips.misses == misses_before


def test_access_is_checked(stored: Stored) -> None:
    url = http_base(stored.node) + stored.path + "/rendered"
    own = httpx.get(url, headers=_token(stored.node, "h1-clinician"))
    other = httpx.get(url, headers=_token(stored.node, "h2-clinician"))
    trainee = httpx.get(url, headers=_token(stored.node, "h1-trainee"))  # no streaming_playback
    nobody = httpx.get(url)
    assert own.status_code == 200 and own.content == stored.mp4
    assert other.status_code == 403 and other.headers["content-type"] == "application/problem+json"
    assert trainee.status_code == 403
    assert nobody.status_code == 401


def test_media_url_is_bound_to_the_instance(stored: Stored) -> None:
    viewer = stored.path.replace("/dicom-web/", "/viewer-api/")
    with client(stored.node, "h1-clinician") as http:
        issued = http.post(viewer + "/media-url").json()
    base = http_base(stored.node)
    played = httpx.get(base + issued["url"], headers={"Range": "bytes=0-99"})
    assert played.status_code == 206 and played.content == stored.mp4[:100]
    token = issued["url"].split("media_token=")[1]
    elsewhere = httpx.get(
        base + stored.path.rsplit("/", 1)[0] + f"/1.2.3.4/rendered?media_token={token}"
    )
    assert elsewhere.status_code == 401
    as_bearer = httpx.get(
        base + stored.path + "/rendered", headers={"Authorization": f"Bearer {token}"}
    )
    assert as_bearer.status_code == 401
    with client(stored.node, "h2-clinician") as http:
        assert http.post(viewer + "/media-url").status_code == 403


def test_thumbnail_is_a_jpeg(stored: Stored) -> None:
    with client(stored.node) as http:
        answer = http.get(stored.path + "/thumbnail")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/jpeg"
    assert answer.content[:3] == b"\xff\xd8\xff"


def test_images_still_render_through_wado(stored: Stored) -> None:
    spec = StudySpec(patient=PatientSpec(patient_id="P-CT", patient_name="Ct^Patient"))
    ds = next(iter(ct_series(spec, slices=1, size=16)))
    stored.node.archive.store(to_part10(ds), source="test")
    path = (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )
    with client(stored.node) as http:
        rendered = http.get(path + "/rendered", headers={"Accept": "image/png"})
        thumbnail = http.get(path + "/thumbnail")
    assert rendered.status_code == 200 and rendered.headers["content-type"] == "image/png"
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"


def test_padding_byte_is_not_served(tmp_path: Path) -> None:
    from pydicom.encaps import encapsulate

    from viewer_api.video_api import mp4_bytes

    mp4 = make_mp4(tmp_path / "odd.mp4", seconds=0.4, size=(64, 48))
    data = mp4.read_bytes()
    if len(data) % 2 == 0:  # make it odd with a trailing free box of 9 bytes
        data += (9).to_bytes(4, "big") + b"free" + b"\x00"
    ds = video_dataset(mp4)
    ds.PixelData = encapsulate([data], has_bot=False)
    assert len(data) % 2 == 1
    assert mp4_bytes(ds) == data
