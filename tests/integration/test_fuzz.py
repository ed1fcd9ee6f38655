"""Property tests: broken input is refused with the archive's own errors, never a crash."""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydicom.uid import DeflatedExplicitVRLittleEndian

from cloud.dataset import parse_part10
from cloud.errors import ArchiveError
from collectors.multipart import MultipartError, split_multipart
from imaging_cloud.node import Node
from imaging_cloud.synthetic import (
    PatientSpec,
    StudySpec,
    ct_series,
    secondary_capture,
    to_part10,
)
from tests.support.samples import samples_root
from tests.support.servers import client, running_node

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on broken values

PREFIX = b"\0" * 128 + b"DICM"
BOUNDARY = "fuzz-boundary"
ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _seed_files() -> list[bytes]:
    """Small valid objects in several encodings: synthetic, and real ones when present."""
    [ct] = ct_series(StudySpec(), slices=1, size=8)
    [sc] = secondary_capture(StudySpec(), count=1, size=8)
    seeds = [to_part10(ct), to_part10(sc, "1.2.840.10008.1.2")]
    root = samples_root()
    if root is not None:
        for name in (
            "transfer_syntaxes/sc__deflated_explicit_vr_little_endian.dcm",
            "transfer_syntaxes/sc_rgb_synthetic__jpeg_baseline.dcm",
            "malformed/fo-dicom__Issue1097_FailToOpenDeflatedFileWithSQ.dcm",
            "malformed/fo-dicom__GH487.dcm",
        ):
            path = root / name
            if path.is_file():
                seeds.append(path.read_bytes())
    return seeds


SEEDS = _seed_files()


def _after_meta(part10: bytes) -> int:
    """Offset of the first byte after the File Meta group (Explicit VR Little Endian)."""
    position = 132
    while struct.unpack_from("<H", part10, position)[0] == 0x0002:
        if part10[position + 4 : position + 6] in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
            position += 12 + struct.unpack_from("<I", part10, position + 8)[0]
        else:
            position += 8 + struct.unpack_from("<H", part10, position + 6)[0]
    return position


def _damaged_deflate() -> bytes:
    """A deflated object whose deflate stream starts with an invalid block type."""
    [ds] = ct_series(StudySpec(), slices=1, size=8)
    data = bytearray(to_part10(ds, DeflatedExplicitVRLittleEndian))
    data[_after_meta(data)] = 0xFF  # BTYPE 11: zlib.error "invalid block type"
    return bytes(data)


def _with_changed_vr(tag: bytes, old: bytes, new: bytes) -> bytes:
    [ds] = ct_series(StudySpec(), slices=1, size=8)
    data = to_part10(ds)
    assert data.count(tag + old) == 1
    return data.replace(tag + old, tag + new)


def _nested_sequences(depth: int = 5000) -> bytes:
    """Sequences of undefined length nested ``depth`` deep (100 kB at 5000)."""
    meta = b"\x02\x00\x10\x00UI\x14\x00" + b"1.2.840.10008.1.2.1\x00"
    group_length = b"\x02\x00\x00\x00UL\x04\x00" + struct.pack("<I", len(meta))
    level = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    return PREFIX + group_length + meta + level * depth


# Damaged objects that make parse_part10 raise something other than an ArchiveError
# (found by the property tests below; now refused as InvalidDatasetError).
CRASHERS = {
    "deflate-stream": _damaged_deflate(),  # zlib.error from dcmread
    "length-vs-vr": _with_changed_vr(b"\x20\x00\x13\x00", b"IS", b"UL"),  # BytesLengthException
    "unknown-vr": _with_changed_vr(b"\x10\x00\x20\x00", b"LO", b"QQ"),  # NotImplementedError
    "nested-sequences": _nested_sequences(),  # RecursionError
}


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes] = SEEDS) -> bytes:
    """A seed file with a few bytes changed, a slice inserted or removed, or cut short."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        position = draw(st.integers(132, len(data) - 1))  # keep the prefix: go deeper
        data[position] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        start = draw(st.integers(132, len(data)))
        end = draw(st.integers(start, min(len(data), start + 64)))
        data[start:end] = draw(st.binary(max_size=16))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


def _parse_refuses_cleanly(data: bytes) -> None:
    try:
        parse_part10(data)
    except ArchiveError:
        pass


# --- (a) the Part-10 reader ----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=2000), st.binary(max_size=2000).map(PREFIX.__add__)))
@example(CRASHERS["nested-sequences"])
def test_parse_part10_of_random_bytes_raises_only_archive_errors(data: bytes) -> None:
    _parse_refuses_cleanly(data)


@pytest.mark.parametrize("name", sorted(CRASHERS))
def test_parse_part10_of_known_crashers_raises_archive_error(name: str) -> None:
    with pytest.raises(ArchiveError):
        parse_part10(CRASHERS[name])


@settings(max_examples=200, deadline=None)
@given(mutated())
@example(CRASHERS["deflate-stream"])
def test_parse_part10_of_damaged_files_raises_only_archive_errors(data: bytes) -> None:
    _parse_refuses_cleanly(data)


# --- (b) the multipart splitter ------------------------------------------------------------------


def _multipart_like() -> st.SearchStrategy[bytes]:
    pieces = st.sampled_from(
        [
            b"--" + BOUNDARY.encode(),
            b"--" + BOUNDARY.encode() + b"--",
            b"\r\n",
            b"\r\n\r\n",
            b"Content-Type: application/dicom",
            b"X-No-Colon",
            b":",
            b"--",
            b"\xff\x00",
        ]
    )
    return st.lists(st.one_of(pieces, st.binary(max_size=20)), max_size=30).map(b"".join)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.binary(max_size=500), _multipart_like()),
    # Starlette hands header values over as latin-1 text, so a boundary never holds more.
    st.one_of(st.just(BOUNDARY), st.text(st.characters(max_codepoint=255), max_size=210)),
)
def test_split_multipart_raises_only_multipart_errors(body: bytes, boundary: str) -> None:
    try:
        parts = split_multipart(body, boundary)
    except MultipartError as problem:
        assert problem.detail
        return
    for part in parts:
        assert part.content in body


# --- (c) STOW-RS of damaged objects against a running node ---------------------------------------


def _stow(http: httpx.Client, payload: bytes) -> httpx.Response:
    body = (
        f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + payload
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
    # A fresh connection each time, so one request's fate cannot leak into the next.
    headers = {"Content-Type": content_type, "Connection": "close"}
    return http.post("/dicom-web/studies", content=body, headers=headers)


def _retrieve(http: httpx.Client, url: str) -> list[bytes]:
    """The application/dicom payloads of a WADO-RS response."""
    response = http.get(url, headers={"Accept": ANY_SYNTAX})
    assert response.status_code == 200
    boundary = re.search(r'boundary="?([^";]+)', response.headers["content-type"])
    assert boundary
    delimiter = b"\r\n--" + boundary.group(1).encode()
    chunks = (b"\r\n" + response.content).split(delimiter)[1:-1]
    return [chunk.split(b"\r\n\r\n", 1)[1] for chunk in chunks]


@dataclass
class Stored:
    """A node and what it held before the fuzzing: retrieve URL -> sha256 of the payloads."""

    node: Node
    http: httpx.Client
    digests: dict[str, list[str]]

    def current(self, url: str) -> list[str]:
        return [hashlib.sha256(p).hexdigest() for p in _retrieve(self.http, url)]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    """One SQLite node for the module, holding a synthetic study and every accepted seed.

    Mutated seeds keep their SOP Instance UID more often than not, so they collide with
    what is stored: the case where a careless archive would overwrite.
    """
    with running_node(tmp_path_factory.mktemp("fuzz-node")) as node, client(node) as http:
        study = StudySpec(patient=PatientSpec(patient_id="FUZZ-1"))
        for ds in ct_series(study, slices=2, size=8):
            assert _stow(http, to_part10(ds)).status_code == 200
        urls = [f"/dicom-web/studies/{study.study_instance_uid}"]
        for seed in SEEDS:
            response = _stow(http, seed)
            assert response.status_code in (200, 409)
            if response.status_code == 200:
                urls.append(response.json()["00081199"]["Value"][0]["00081190"]["Value"][0])
        state = Stored(node, http, {})
        state.digests = {url: state.current(url) for url in urls}
        yield state


def _stow_and_check(stored: Stored, payload: bytes) -> None:
    response = _stow(stored.http, payload)
    assert response.status_code in (200, 409), response.text
    if response.status_code == 200:
        [item] = response.json()["00081199"]["Value"]
        assert _retrieve(stored.http, item["00081190"]["Value"][0]) == [payload]
    for url, digests in stored.digests.items():
        assert stored.current(url) == digests, url
    assert stored.http.get("/healthz").status_code == 200


FUZZ_SETTINGS = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ_SETTINGS
@given(payload=mutated())
@example(payload=CRASHERS["length-vs-vr"])
def test_stow_of_damaged_objects_is_refused_cleanly(stored: Stored, payload: bytes) -> None:
    _stow_and_check(stored, payload)
