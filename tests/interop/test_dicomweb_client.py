"""The dicomweb-client library (as viewers and scripts use it) against the node's DICOMweb API."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom.dataset import Dataset

from imaging_cloud.node import Node
from imaging_cloud.synthetic import (
    PatientSpec,
    StudySpec,
    ct_series,
    secondary_capture,
    to_part10,
)
from tests.support.servers import auth_headers, client, http_base, running_node


def _value(item: dict[str, Any], tag: str) -> Any:
    return item[tag]["Value"][0]


def _uids(results: list[dict[str, Any]], tag: str) -> list[str]:
    return sorted(_value(item, tag) for item in results)


@dataclass
class Stored:
    web: DICOMwebClient
    ct: list[Dataset]
    sc: list[Dataset]


@pytest.fixture
def stored(sqlite_node: Node) -> Stored:
    """A CT study and a secondary-capture study, stored through dicomweb-client's STOW."""
    ct_study = StudySpec(
        patient=PatientSpec(patient_id="DW-1", patient_name="Doe^Jane"),
        study_date="20240105",
        accession_number="DWA1",
    )
    sc_study = StudySpec(
        patient=PatientSpec(patient_id="DW-2", patient_name="Roe^Richard"),
        study_date="20240620",
        accession_number="DWA2",
    )
    ct = list(ct_series(ct_study, slices=3, size=32))
    sc = list(secondary_capture(sc_study, count=2, size=16))
    for ds in (*ct, *sc):
        to_part10(ds)  # adds the File Meta dicomweb-client encodes with
        ds.preamble = b"\0" * 128  # see test_store_of_datasets_built_in_memory
    web = DICOMwebClient(
        url=f"{http_base(sqlite_node)}/dicom-web", headers=auth_headers(sqlite_node)
    )
    response = web.store_instances(datasets=ct + sc)
    assert "FailedSOPSequence" not in response
    assert len(response.ReferencedSOPSequence) == 5
    return Stored(web, ct, sc)


def test_store_of_datasets_built_in_memory(sqlite_node: Node) -> None:
    study = StudySpec(patient=PatientSpec(patient_id="DW-MEM"))
    datasets = list(ct_series(study, slices=2, size=16))
    for ds in datasets:
        to_part10(ds)
        assert getattr(ds, "preamble", None) is None  # made in memory, not read from a file
    web = DICOMwebClient(
        url=f"{http_base(sqlite_node)}/dicom-web", headers=auth_headers(sqlite_node)
    )
    response = web.store_instances(datasets=datasets)
    assert len(response.ReferencedSOPSequence) == 2


def test_search_for_studies_by_matching_keys(stored: Stored) -> None:
    web, ct_uid, sc_uid = stored.web, stored.ct[0].StudyInstanceUID, stored.sc[0].StudyInstanceUID

    def found(**filters: str) -> list[str]:
        return _uids(web.search_for_studies(search_filters=filters), "0020000D")

    assert found() == sorted([ct_uid, sc_uid])
    assert found(PatientID="DW-1") == [ct_uid]
    assert found(PatientName="Roe*") == [sc_uid]
    assert found(PatientName="*Jan?") == [ct_uid]
    assert found(StudyDate="20240101-20240131") == [ct_uid]
    assert found(StudyDate="20240601-") == [sc_uid]
    assert found(ModalitiesInStudy="OT") == [sc_uid]
    assert found(ModalitiesInStudy="CT", PatientID="DW-2") == []

    [study] = web.search_for_studies(search_filters={"AccessionNumber": "DWA1"})
    assert _value(study, "00100010") == {"Alphabetic": "Doe^Jane"}
    assert _value(study, "00201208") == 3  # NumberOfStudyRelatedInstances
    assert study["00080061"]["Value"] == ["CT"]


def test_search_for_series_and_instances(stored: Stored) -> None:
    web, ct = stored.web, stored.ct
    series = web.search_for_series(search_filters={"Modality": "CT"})
    assert _uids(series, "0020000E") == [ct[0].SeriesInstanceUID]
    assert _value(series[0], "00201209") == 3  # NumberOfSeriesRelatedInstances

    instances = web.search_for_instances(
        study_instance_uid=ct[0].StudyInstanceUID, series_instance_uid=ct[0].SeriesInstanceUID
    )
    assert _uids(instances, "00080018") == sorted(ds.SOPInstanceUID for ds in ct)
    [second] = web.search_for_instances(
        study_instance_uid=ct[0].StudyInstanceUID, search_filters={"InstanceNumber": "2"}
    )
    assert _value(second, "00080018") == ct[1].SOPInstanceUID
    assert _value(second, "00280010") == 32  # Rows


def test_retrieve_series_returns_what_was_stored(stored: Stored) -> None:
    ct = stored.ct
    retrieved = stored.web.retrieve_series(ct[0].StudyInstanceUID, ct[0].SeriesInstanceUID)
    by_uid = {ds.SOPInstanceUID: ds for ds in retrieved}
    assert sorted(by_uid) == sorted(ds.SOPInstanceUID for ds in ct)
    for original in ct:
        assert by_uid[original.SOPInstanceUID] == original
        assert by_uid[original.SOPInstanceUID].PixelData == original.PixelData


def test_series_metadata_points_to_pixel_data(stored: Stored) -> None:
    ct = stored.ct
    metadata = stored.web.retrieve_series_metadata(ct[0].StudyInstanceUID, ct[0].SeriesInstanceUID)
    assert len(metadata) == 3
    for item in metadata:
        pixel_data = item["7FE00010"]
        assert "Value" not in pixel_data and "InlineBinary" not in pixel_data
        uri = pixel_data["BulkDataURI"]
        assert uri.startswith("http://127.0.0.1")
        assert f"/dicom-web/studies/{ct[0].StudyInstanceUID}/series/" in uri
        assert f"/instances/{_value(item, '00080018')}/bulkdata/" in uri
        assert _value(item, "00100020") == "DW-1"


def test_rendered_instance_is_a_jpeg_of_the_image_size(stored: Stored) -> None:
    ds = stored.ct[1]
    image_bytes = stored.web.retrieve_instance_rendered(
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, media_types=("image/jpeg",)
    )
    image = Image.open(io.BytesIO(image_bytes))
    assert image.format == "JPEG"
    assert image.size == (32, 32)


def test_frames_are_the_stored_pixels(stored: Stored) -> None:
    for ds in (stored.ct[0], stored.sc[1]):
        [frame] = stored.web.retrieve_instance_frames(
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, frame_numbers=[1]
        )
        assert frame == ds.PixelData


# --- Character sets --------------------------------------------------------------------------

# A GB2312 name through ISO 2022 (PS3.5 Annex K): ESC $ ) A before each run of Chinese.
# pydicom 3.0.2 encodes this character set without the escape sequences, so the value is
# built by hand and put in place of a placeholder of the same length.
ISO2022_RAW = b"Zhao^Wu=\x1b$)A\xd5\xd4^\x1b$)A\xce\xe5="  # Zhao^Wu=赵^五=
ISO2022_PLACEHOLDER = b"Zhao^Wu=PLACEHOLDER012"


@dataclass(frozen=True)
class Charset:
    name: str
    charset: str | list[str]
    patient_name: str  # as it must come back, in Unicode
    queries: tuple[str, ...]  # PatientName matching keys that must find it
    alphabetic: str | None
    ideographic: str | None


CHARSETS = [
    Charset(
        "utf8",
        "ISO_IR 192",
        "Wang^XiaoDong=王^小東=",
        ("王^小東", "王*", "*小東", "Wang^XiaoDong"),
        "Wang^XiaoDong",
        "王^小東",
    ),
    Charset("gb18030", "GB18030", "张^三", ("张^三", "张*", "*三"), "张^三", None),
    Charset("gbk", "GBK", "李^四", ("李^四", "李*", "?^四"), "李^四", None),
    Charset(
        "iso2022-ir58",
        ["", "ISO 2022 IR 58"],
        "Zhao^Wu=赵^五=",
        ("赵^五", "赵*", "*五", "Zhao*"),
        "Zhao^Wu",
        "赵^五",
    ),
]


def _part10_for(charset: Charset, study: StudySpec) -> bytes:
    [ds] = ct_series(study, slices=1, size=8)
    if charset.name != "iso2022-ir58":
        return to_part10(ds)
    ds.PatientName = ISO2022_PLACEHOLDER.decode()
    data = to_part10(ds)
    assert data.count(ISO2022_PLACEHOLDER) == 1 and len(ISO2022_RAW) == len(ISO2022_PLACEHOLDER)
    return data.replace(ISO2022_PLACEHOLDER, ISO2022_RAW)


def _stow(http: httpx.Client, part10: bytes) -> httpx.Response:
    boundary = "charset-test-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part10
        + f"\r\n--{boundary}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return http.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})


@pytest.fixture(scope="module")
def charset_studies(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, dict]]:
    """One node holding one study per character set, each stored via STOW."""
    with running_node(tmp_path_factory.mktemp("charsets")) as node, client(node) as http:
        studies = {}
        for index, charset in enumerate(CHARSETS):
            study = StudySpec(
                patient=PatientSpec(
                    patient_id=f"CS-{index}",
                    patient_name=charset.patient_name,
                    specific_character_set=charset.charset,
                )
            )
            data = _part10_for(charset, study)
            stored = pydicom.dcmread(io.BytesIO(data))
            assert stored.SpecificCharacterSet == charset.charset
            response = _stow(http, data)
            assert response.status_code == 200, response.text
            studies[charset.name] = study.study_instance_uid
        yield node, studies


def _check_charset(charset: Charset, node: Node, studies: dict[str, str]) -> None:
    with client(node) as http:
        for query in charset.queries:
            response = http.get("/dicom-web/studies", params={"PatientName": query})
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("application/dicom+json")
            text = response.content.decode("utf-8")  # raises unless the body is UTF-8
            found = [_value(item, "0020000D") for item in response.json()]
            assert found == [studies[charset.name]], f"PatientName={query}: {text}"
            [name] = response.json()[0]["00100010"]["Value"]
            expected = {}
            if charset.alphabetic:
                expected["Alphabetic"] = charset.alphabetic
            if charset.ideographic:
                expected["Ideographic"] = charset.ideographic
            assert name == expected


@pytest.mark.parametrize(
    "charset", [c for c in CHARSETS if c.name != "iso2022-ir58"], ids=lambda c: c.name
)
def test_names_in_each_character_set_are_found_and_returned_in_unicode(
    charset_studies: tuple[Node, dict], charset: Charset
) -> None:
    _check_charset(charset, *charset_studies)


def test_iso2022_gb2312_name_is_found_and_returned_in_unicode(
    charset_studies: tuple[Node, dict],
) -> None:
    _check_charset(CHARSETS[-1], *charset_studies)


def test_dicomweb_client_finds_chinese_names(charset_studies: tuple[Node, dict]) -> None:
    node, studies = charset_studies
    web = DICOMwebClient(url=f"{http_base(node)}/dicom-web", headers=auth_headers(node))
    found = web.search_for_studies(search_filters={"PatientName": "张*"})
    assert studies["gb18030"] in _uids(found, "0020000D")
    [study] = web.search_for_studies(search_filters={"PatientID": "CS-0"})
    assert _value(study, "00100010") == {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小東"}
