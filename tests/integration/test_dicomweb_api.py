"""DICOMweb over real HTTP against a running node, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
from email import message_from_bytes

import httpx
import pydicom
import pytest
from PIL import Image

from collectors.multipart import stream_parts
from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.samples import require_samples
from tests.support.servers import client

DICOM_ALL = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def stow(
    http: httpx.Client, files: list[bytes], path: str = "/dicom-web/studies"
) -> httpx.Response:
    body = b"".join(stream_parts((("application/dicom", f) for f in files), "xyz"))
    content_type = 'multipart/related; type="application/dicom"; boundary=xyz'
    return http.post(path, content=body, headers={"Content-Type": content_type})


def parts_of(response: httpx.Response) -> list[bytes]:
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    message = message_from_bytes(head + response.content)
    return [part.get_payload(decode=True) for part in message.get_payload()]


def instance_path(ds: pydicom.Dataset) -> str:
    return (
        f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        f"/instances/{ds.SOPInstanceUID}"
    )


def value(item: dict, tag: str) -> object:
    return item[tag]["Value"][0]


def test_stow_then_qido_then_wado_round_trip(node: Node, ct_files: list[bytes]) -> None:
    with client(node) as http:
        stored = stow(http, ct_files)
        assert stored.status_code == 200
        assert stored.headers["content-type"].startswith("application/dicom+json")
        assert len(stored.json()["00081199"]["Value"]) == len(ct_files)

        studies = http.get("/dicom-web/studies", params={"PatientID": "PID-1"}).json()
        assert len(studies) == 1
        study_uid = value(studies[0], "0020000D")
        assert value(studies[0], "00201208") == len(ct_files)

        series = http.get(f"/dicom-web/studies/{study_uid}/series").json()
        series_uid = value(series[0], "0020000E")
        retrieved = http.get(
            f"/dicom-web/studies/{study_uid}/series/{series_uid}", headers={"Accept": DICOM_ALL}
        )
        assert retrieved.status_code == 200
        assert sorted(parts_of(retrieved)) == sorted(ct_files)  # byte-identical originals


def test_stow_to_a_study_refuses_instances_of_another_study(
    sqlite_node: Node, ct_files: list[bytes]
) -> None:
    with client(sqlite_node) as http:
        response = stow(http, ct_files[:1], "/dicom-web/studies/1.2.3.4")
        assert response.status_code == 409
        failed = response.json()["00081198"]["Value"][0]
        assert value(failed, "00081197") == 0xA900
        assert http.get("/dicom-web/studies").json() == []


def test_resending_is_harmless_and_a_changed_object_is_a_conflict(
    sqlite_node: Node, study: StudySpec
) -> None:
    ds = next(ct_series(study, slices=1, size=16))
    original = to_part10(ds)
    with client(sqlite_node) as http:
        assert stow(http, [original]).status_code == 200
        assert stow(http, [original]).status_code == 200
        ds.PatientSex = "F"
        conflict = stow(http, [to_part10(ds)])
        assert conflict.status_code == 409
        assert value(conflict.json()["00081198"]["Value"][0], "00081197") == 0xC409
        url = f"/dicom-web/studies/{ds.StudyInstanceUID}"
        assert parts_of(http.get(url, headers={"Accept": DICOM_ALL})) == [original]


def test_patient_name_matching_is_per_group_and_case_insensitive(
    sqlite_node: Node, ct_files: list[bytes]
) -> None:
    with client(sqlite_node) as http:
        stow(http, ct_files)
        for query in ("wang*", "WANG^XIAODONG", "王*", "*小東", "Wang^XiaoDong=王^小東="):
            found = http.get("/dicom-web/studies", params={"PatientName": query}).json()
            assert len(found) == 1, query
        assert http.get("/dicom-web/studies", params={"PatientName": "li*"}).json() == []
        name = value(found[0], "00100010")
        assert name == {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小東"}


def test_paging_uid_lists_includefield_and_unsupported_keys(sqlite_node: Node) -> None:
    uids = []
    with client(sqlite_node) as http:
        for index in range(3):
            spec = StudySpec(patient=PatientSpec(patient_id=f"P{index}"))
            uids.append(spec.study_instance_uid)
            stow(http, [to_part10(ds) for ds in ct_series(spec, slices=1, size=8)])
        page = http.get("/dicom-web/studies", params={"limit": 2, "offset": 1}).json()
        assert len(page) == 2
        listed = http.get("/dicom-web/studies", params={"StudyInstanceUID": ",".join(uids[:2])})
        assert {value(s, "0020000D") for s in listed.json()} == set(uids[:2])
        with_field = http.get(
            "/dicom-web/studies", params={"includefield": "Manufacturer", "limit": 1}
        ).json()
        assert value(with_field[0], "00080070") == "IMAGING-CLOUD SYNTHETIC"
        ignored = http.get("/dicom-web/studies", params={"SOPClassUID": "1.2"})
        assert ignored.status_code == 200 and "SOPClassUID" in ignored.headers["warning"]


def test_metadata_points_at_bulk_data_that_serves_the_pixels(
    sqlite_node: Node, ct_files: list[bytes]
) -> None:
    with client(sqlite_node) as http:
        stow(http, ct_files[:1])
        ds = pydicom.dcmread(io.BytesIO(ct_files[0]))
        base = f"/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
        metadata = http.get(f"{base}/metadata").json()
        assert metadata[0]["00100010"]["Value"][0]["Ideographic"] == "王^小東"
        uri = metadata[0]["7FE00010"]["BulkDataURI"]
        bulk = http.get(uri.replace(f"http://127.0.0.1:{sqlite_node.settings.http_port}", ""))
        assert parts_of(bulk) == [ds.PixelData]


def test_rendered_window_changes_the_image(sqlite_node: Node, ct_files: list[bytes]) -> None:
    with client(sqlite_node) as http:
        stow(http, ct_files[:1])
        ds = pydicom.dcmread(io.BytesIO(ct_files[0]))
        url = f"{instance_path(ds)}/rendered"
        narrow = http.get(url, params={"window": "40,80"}, headers={"Accept": "image/png"})
        wide = http.get(url, params={"window": "1000,4000"}, headers={"Accept": "image/png"})
        assert narrow.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(narrow.content)).size == (32, 32)
        assert narrow.content != wide.content
        thumb = http.get(url.replace("rendered", "thumbnail"))
        assert thumb.headers["content-type"] == "image/jpeg"


def test_compressed_instance_is_transcoded_by_default_and_passed_through_on_request(
    sqlite_node: Node,
) -> None:
    path = require_samples() / "transfer_syntaxes" / "mr_siemens_trio__jpegls_lossless_dcmtk.dcm"
    original = path.read_bytes()
    ds = pydicom.dcmread(path)
    with client(sqlite_node) as http:
        assert stow(http, [original]).status_code == 200
        base = instance_path(ds)
        default = pydicom.dcmread(io.BytesIO(parts_of(http.get(base))[0]))
        assert default.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert (default.pixel_array == ds.pixel_array).all()  # lossless: same pixels
        as_stored = parts_of(http.get(base, headers={"Accept": DICOM_ALL}))[0]
        assert as_stored == original
        frame = http.get(
            f"{base}/frames/1", headers={"Accept": 'multipart/related; type="image/jls"'}
        )
        assert frame.status_code == 200 and "image/jls" in frame.headers["content-type"]
        raw = parts_of(http.get(f"{base}/frames/1"))[0]
        assert raw == ds.pixel_array.astype("<u2").tobytes()


def test_healthz_reports_both_sides(sqlite_node: Node) -> None:
    with client(sqlite_node) as http:
        response = http.get("/healthz")
        assert response.status_code == 200
        assert response.json()["checks"] == {"index": True, "dicom": True}
        sqlite_node.scp.stop()
        assert http.get("/healthz").status_code == 503


@pytest.mark.parametrize("accept", ["image/gif", 'multipart/related; type="image/jp2"'])
def test_unsatisfiable_accept_is_406(sqlite_node: Node, ct_files: list[bytes], accept: str) -> None:
    with client(sqlite_node) as http:
        stow(http, ct_files[:1])
        ds = pydicom.dcmread(io.BytesIO(ct_files[0]))
        base = instance_path(ds)
        target = f"{base}/rendered" if accept.startswith("image") else f"{base}/frames/1"
        response = http.get(target, headers={"Accept": accept})
        assert response.status_code == 406
        assert response.headers["content-type"] == "application/problem+json"
