"""DCMTK's echoscu and storescu against the node's SCP, checked through DICOMweb."""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pydicom
import pytest

from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, write_files
from tests.support.samples import require_samples, samples_root
from tests.support.servers import client, running_node

pytestmark = [
    pytest.mark.needs_dcmtk,
    pytest.mark.skipif(
        shutil.which("storescu") is None or shutil.which("echoscu") is None,
        reason="DCMTK command-line tools (storescu, echoscu) are not installed",
    ),
]

CALLED_AE = "IMAGINGCLOUD"
ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'
CT_SERIES = "ct/philips_ingenuity_head_phantom_axial_1mm"
_ROOT = samples_root()
TS_FILES = (
    sorted(p.name for p in (_ROOT / "transfer_syntaxes").glob("*.dcm"))
    if _ROOT
    else ["samples-missing"]
)

# One presentation context: the file's SOP class with only the file's own transfer syntax.
_ONE_CONTEXT_CONFIG = """\
[[TransferSyntaxes]]
[OwnSyntax]
TransferSyntax1 = {syntax}

[[PresentationContexts]]
[OwnContext]
PresentationContext1 = {sop_class}\\OwnSyntax

[[Profiles]]
[Own]
PresentationContexts = OwnContext
"""


def _run(
    tool: str, node: Node, *args: str, files: tuple[Path, ...] = ()
) -> subprocess.CompletedProcess[str]:
    command = [tool, "-aet", "DCMTKTEST", "-aec", CALLED_AE, *args]
    command += ["127.0.0.1", str(node.scp.port), *(str(f) for f in files)]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TCP_NODELAY": "1"},
        check=False,
    )


def _storescu(node: Node, *args: str, files: list[Path]) -> subprocess.CompletedProcess[str]:
    return _run("storescu", node, *args, files=tuple(files))


def _multipart_parts(response: httpx.Response) -> list[tuple[str, bytes]]:
    """(part content type, payload) of a multipart/related response, parsed independently."""
    match = re.search(r'boundary="?([^";]+)"?', response.headers["content-type"])
    assert match, response.headers["content-type"]
    delimiter = b"--" + match.group(1).encode()
    parts = []
    for chunk in response.content.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, payload = chunk.partition(b"\r\n\r\n")
        assert payload.endswith(b"\r\n")
        content_type = ""
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type":
                content_type = value.strip()
        parts.append((content_type, payload[:-2]))
    return parts


def _after_file_meta(part10: bytes) -> bytes:
    """The bytes of a Part-10 file after its group 0002 (always Explicit VR Little Endian)."""
    assert part10[128:132] == b"DICM"
    position = 132
    while struct.unpack_from("<H", part10, position)[0] == 0x0002:
        vr = part10[position + 4 : position + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            position += 12 + struct.unpack_from("<I", part10, position + 8)[0]
        else:
            position += 8 + struct.unpack_from("<H", part10, position + 6)[0]
    return part10[position:]


def _read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def test_echoscu_is_answered(node: Node) -> None:
    result = _run("echoscu", node)
    assert result.returncode == 0, result.stderr


def test_storescu_synthetic_series_is_searchable(node: Node, tmp_path: Path) -> None:
    study = StudySpec(patient=PatientSpec(patient_id="DCMTK-1"))
    files = write_files(ct_series(study, slices=6, size=32), tmp_path / "series")
    sent = {_read(f.read_bytes()).SOPInstanceUID for f in files}

    result = _storescu(node, files=files)
    assert result.returncode == 0, result.stderr

    with client(node) as http:
        response = http.get(f"/dicom-web/studies/{study.study_instance_uid}/instances")
    assert response.status_code == 200
    found = [item["00080018"]["Value"][0] for item in response.json()]
    assert sorted(found) == sorted(sent)


@pytest.mark.parametrize(
    "count",
    [20, pytest.param(None, marks=pytest.mark.slow, id="whole-series")],
    ids=lambda c: "first-20" if c else "whole-series",
)
def test_storescu_real_ct_is_retrieved_unchanged(sqlite_node: Node, count: int | None) -> None:
    root = require_samples()
    files = sorted((root / CT_SERIES).glob("*.dcm"))[:count]
    assert len(files) == (count or 140)
    originals = {_read(f.read_bytes()).SOPInstanceUID: f.read_bytes() for f in files}
    first = _read(files[0].read_bytes())

    result = _storescu(sqlite_node, files=files)
    assert result.returncode == 0, result.stderr

    url = f"/dicom-web/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
    with client(sqlite_node) as http:
        response = http.get(url, headers={"Accept": ANY_SYNTAX})
    assert response.status_code == 200
    parts = _multipart_parts(response)
    assert len(parts) == len(files)
    for content_type, payload in parts:
        assert content_type.startswith("application/dicom")
        received = _read(payload)
        original = originals.pop(received.SOPInstanceUID)
        expected = _read(original)
        assert received == expected
        assert received.PixelData == expected.PixelData
        assert _after_file_meta(payload) == _after_file_meta(original)
    assert not originals


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One SQLite node for all transfer syntax files (their SOP Instance UIDs differ)."""
    with running_node(tmp_path_factory.mktemp("ts-node")) as started:
        yield started


@pytest.mark.parametrize("name", TS_FILES)
def test_storescu_own_transfer_syntax_is_kept(shared_node: Node, tmp_path: Path, name: str) -> None:
    path = require_samples() / "transfer_syntaxes" / name
    original = _read(path.read_bytes())
    syntax = str(original.file_meta.TransferSyntaxUID)
    config = tmp_path / "storescu.cfg"
    config.write_text(_ONE_CONTEXT_CONFIG.format(syntax=syntax, sop_class=original.SOPClassUID))

    result = _storescu(shared_node, "-xf", str(config), "Own", files=[path])
    assert result.returncode == 0, result.stderr

    url = (
        f"/dicom-web/studies/{original.StudyInstanceUID}/series/"
        f"{original.SeriesInstanceUID}/instances/{original.SOPInstanceUID}"
    )
    with client(shared_node) as http:
        response = http.get(url, headers={"Accept": ANY_SYNTAX})
    assert response.status_code == 200
    [(content_type, payload)] = _multipart_parts(response)
    assert f"transfer-syntax={syntax}" in content_type
    received = _read(payload)
    assert received.file_meta.TransferSyntaxUID == syntax
    # storescu itself may re-encode what it sends (drop trailing padding, re-deflate,
    # change sequence lengths, fix OW to OB on encapsulated Pixel Data), so compare
    # decoded values rather than bytes.
    for ds in (received, original):
        if 0xFFFCFFFC in ds:
            del ds[0xFFFCFFFC]
    assert [e.tag for e in received] == [e.tag for e in original]
    for element in original:
        assert received[element.tag].value == element.value, element.tag
