"""The viewer HTTP API (/viewer-api, docs/viewer-contract.md) over real HTTP against a node."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from PIL import Image

from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.servers import client, running_node

PROBLEM = "application/problem+json"
PNG = {"Accept": "image/png"}


@dataclass
class Stored:
    node: Node
    study: StudySpec
    ct: list[pydicom.Dataset]  # 60 slices, 64 x 64, 1 mm apart, 0.5 mm pixels
    small: list[pydicom.Dataset]  # 10 slices: no MPR

    @property
    def series_path(self) -> str:
        return (
            f"/viewer-api/studies/{self.study.study_instance_uid}"
            f"/series/{self.ct[0].SeriesInstanceUID}"
        )

    @property
    def small_path(self) -> str:
        return (
            f"/viewer-api/studies/{self.study.study_instance_uid}"
            f"/series/{self.small[0].SeriesInstanceUID}"
        )

    def frame_path(self, ds: pydicom.Dataset, frame: int = 1) -> str:
        return (
            f"/viewer-api/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
            f"/instances/{ds.SOPInstanceUID}/frames/{frame}/rendered"
        )


def _store(node: Node, datasets: list[pydicom.Dataset]) -> None:
    for ds in datasets:
        node.archive.store(to_part10(ds), source="test")


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stored]:
    """One node with one study (a 60-slice CT and a 10-slice CT) for the whole module."""
    study = StudySpec(
        patient=PatientSpec(patient_id="VIEW-1", patient_name="Viewer^Test"),
        accession_number="ACC-VIEW",
        study_description="Viewer test",
    )
    ct = list(ct_series(study, slices=60, size=64, series_number=2))
    small = list(ct_series(study, slices=10, size=32, series_number=3))
    with running_node(tmp_path_factory.mktemp("viewer") / "node") as node:
        _store(node, ct[::-1] + small)  # arrival order must not matter
        yield Stored(node, study, ct, small)


@pytest.fixture
def http(stored: Stored) -> Iterator[httpx.Client]:
    with client(stored.node) as opened:
        yield opened


def _image(response: httpx.Response) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(response.content)))


def _hu(ds: pydicom.Dataset) -> np.ndarray:
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def _window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM linear VOI (PS3.3 C.11.2.1.2.1) onto 0..255, written out independently."""
    c, w = center - 0.5, width - 1.0
    out = ((values - c) / w + 0.5) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _assert_problem(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, detail


# --- study browser ---------------------------------------------------------------------------


def test_study_lookup_by_accession_lists_the_study(stored: Stored, http: httpx.Client) -> None:
    response = http.get("/viewer-api/studies", params={"AccessionNumber": "ACC-VIEW"})
    assert response.status_code == 200
    assert response.json() == [
        {
            "study_instance_uid": stored.study.study_instance_uid,
            "accession_number": "ACC-VIEW",
            "patient_name": "Viewer^Test",
            "patient_id": "VIEW-1",
            "study_date": stored.study.study_date,
            "study_description": "Viewer test",
            "modalities": ["CT"],
        }
    ]
    by_patient = http.get("/viewer-api/studies", params={"PatientID": "VIEW-1"}).json()
    by_uid = http.get(
        "/viewer-api/studies", params={"StudyInstanceUID": stored.study.study_instance_uid}
    ).json()
    assert by_patient == by_uid == response.json()
    assert http.get("/viewer-api/studies", params={"AccessionNumber": "ACC-VIE"}).json() == []


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({}, ["AccessionNumber"]),
        ({"PatientName": "Viewer*"}, ["PatientName"]),
        ({"AccessionNumber": "ACC*"}, ["wildcards"]),
    ],
)
def test_study_lookup_refusals(
    http: httpx.Client, params: dict[str, str], words: list[str]
) -> None:
    _assert_problem(http.get("/viewer-api/studies", params=params), 400, *words)


def test_study_detail_lists_series_instances_in_order_and_mpr_availability(
    stored: Stored, http: httpx.Client
) -> None:
    body = http.get(f"/viewer-api/studies/{stored.study.study_instance_uid}").json()
    assert body["accession_number"] == "ACC-VIEW"
    assert body["modalities"] == ["CT"]
    big, small = body["series"]
    assert big["series_instance_uid"] == stored.ct[0].SeriesInstanceUID
    assert (big["modality"], big["series_number"]) == ("CT", 2)
    assert big["series_description"] == "Synthetic axial CT"
    assert [i["sop_instance_uid"] for i in big["instances"]] == [
        ds.SOPInstanceUID for ds in stored.ct
    ]
    assert big["instances"][0] == {
        "sop_instance_uid": stored.ct[0].SOPInstanceUID,
        "number_of_frames": 1,
        "instance_number": 1,
    }
    assert big["mpr"] == {"offered": True, "reason": None}
    assert small["mpr"]["offered"] is False
    assert "at least 50 images" in small["mpr"]["reason"]


def test_unknown_study_is_a_404_problem(http: httpx.Client) -> None:
    _assert_problem(http.get("/viewer-api/studies/1.2.3.999"), 404, "1.2.3.999")


# --- volume and MPR ----------------------------------------------------------------------------


def test_volume_information(stored: Stored, http: httpx.Client) -> None:
    response = http.get(stored.series_path + "/volume")
    assert response.status_code == 200
    body = response.json()
    assert (body["offered"], body["reason"]) == (True, None)
    assert (body["modality"], body["images"]) == ("CT", 60)
    assert body["spacing_mm"] == [1.0, 0.5, 0.5]
    assert body["default_window"] == [40.0, 400.0]
    planes = body["planes"]
    assert planes["axial"] == {
        "position_range_mm": [0.0, 59.0],
        "default_position_mm": 29.5,
        "rows": 64,
        "columns": 64,
        "pixel_spacing_mm": 0.5,
    }
    # 59 mm head-foot at 0.5 mm square pixels: 119 rows
    assert (planes["coronal"]["rows"], planes["coronal"]["columns"]) == (119, 64)
    assert (planes["sagittal"]["rows"], planes["sagittal"]["columns"]) == (119, 64)
    assert planes["sagittal"]["position_range_mm"] == [0.0, 31.5]


@pytest.mark.parametrize(
    ("plane", "size", "normal"),
    [
        ("axial", (64, 64), [0.0, 0.0, 1.0]),
        ("coronal", (64, 119), [0.0, 1.0, 0.0]),
        ("sagittal", (64, 119), [1.0, 0.0, 0.0]),
    ],
)
def test_mpr_planes_are_png_with_square_pixels_and_their_geometry(
    stored: Stored, http: httpx.Client, plane: str, size: tuple[int, int], normal: list[float]
) -> None:
    response = http.get(stored.series_path + "/mpr", params={"plane": plane}, headers=PNG)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.headers["cache-control"] == "private, max-age=3600"
    assert response.headers["x-window"] == "40,400"
    image = Image.open(io.BytesIO(response.content))
    assert image.size == size  # (width, height)
    geometry = json.loads(response.headers["x-mpr-geometry"])
    assert (geometry["columns"], geometry["rows"]) == size
    assert geometry["pixel_spacing_mm"] == 0.5
    assert geometry["normal"] == normal
    assert (geometry["plane"], geometry["mode"]) == (plane, "thin")
    assert geometry["frame_of_reference_uid"] == stored.ct[0].FrameOfReferenceUID
    low, high = geometry["position_range_mm"]
    assert geometry["position_mm"] == (low + high) / 2  # no position: the middle
    sibling = http.get(stored.series_path + "/mpr/geometry", params={"plane": plane})
    assert sibling.json() == geometry


def test_axial_thin_plane_is_the_stored_slice_windowed(stored: Stored, http: httpx.Client) -> None:
    response = http.get(
        stored.series_path + "/mpr", params={"plane": "axial", "position": 12}, headers=PNG
    )
    expected = _window(_hu(stored.ct[12]), 40, 400)
    assert np.array_equal(_image(response), expected)


def test_axial_mip_is_the_maximum_of_the_slab_slices(stored: Stored, http: httpx.Client) -> None:
    params = {"plane": "axial", "position": 30, "mode": "mip", "thickness": 10}
    mip = http.get(stored.series_path + "/mpr", params=params, headers=PNG)
    assert mip.status_code == 200, mip.text
    thin = http.get(
        stored.series_path + "/mpr", params={"plane": "axial", "position": 30}, headers=PNG
    )
    geometry = json.loads(mip.headers["x-mpr-geometry"])
    assert (geometry["mode"], geometry["thickness_mm"]) == ("mip", 10.0)
    # slices at z = 25..35 mm have their centre in [30 - 5, 30 + 5]; max before windowing
    slab = np.stack([_hu(ds) for ds in stored.ct[25:36]])
    expected = _window(slab.max(axis=0), 40, 400)
    assert np.array_equal(_image(mip), expected)
    assert not np.array_equal(_image(mip), _image(thin))


def test_mpr_minip_and_avgip_and_window_options(stored: Stored, http: httpx.Client) -> None:
    base = {"plane": "coronal", "position": 10, "thickness": 6}
    images = {
        mode: _image(
            http.get(stored.series_path + "/mpr", params={**base, "mode": mode}, headers=PNG)
        )
        for mode in ("mip", "minip", "avgip")
    }
    assert np.all(images["minip"] <= images["avgip"])
    assert np.all(images["avgip"] <= images["mip"])
    lung = http.get(stored.series_path + "/mpr", params={**base, "mode": "avgip", "preset": "lung"})
    assert lung.headers["x-window"] == "-600,1500"
    assert lung.headers["content-type"] == "image/jpeg"  # the default
    inverted = http.get(
        stored.series_path + "/mpr",
        params={**base, "mode": "avgip", "invert": "true"},
        headers=PNG,
    )
    assert np.array_equal(_image(inverted), 255 - images["avgip"])


def test_mpr_size_scales_the_image_and_its_geometry(stored: Stored, http: httpx.Client) -> None:
    params = {"plane": "coronal", "size": "128,128"}
    response = http.get(stored.series_path + "/mpr", params=params, headers=PNG)
    geometry = json.loads(response.headers["x-mpr-geometry"])
    image = Image.open(io.BytesIO(response.content))
    assert image.size == (geometry["columns"], geometry["rows"]) == (69, 128)
    # the scaled image still spans the same patient extent (pixel edges)
    assert geometry["pixel_spacing_mm"] == pytest.approx(0.5 * 64 / 69)
    assert http.get(stored.series_path + "/mpr/geometry", params=params).json() == geometry


def test_mpr_etag_and_not_modified(stored: Stored, http: httpx.Client) -> None:
    params = {"plane": "sagittal", "position": "15"}
    first = http.get(stored.series_path + "/mpr", params=params, headers=PNG)
    etag = first.headers["etag"]
    assert etag.startswith('"') and etag.endswith('"')
    again = http.get(
        stored.series_path + "/mpr", params=params, headers={**PNG, "If-None-Match": etag}
    )
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    assert again.headers["cache-control"] == "private, max-age=3600"
    as_jpeg = http.get(stored.series_path + "/mpr", params=params)
    other_mode = http.get(
        stored.series_path + "/mpr", params={**params, "mode": "mip", "thickness": 4}, headers=PNG
    )
    assert len({etag, as_jpeg.headers["etag"], other_mode.headers["etag"]}) == 3
    stale = http.get(
        stored.series_path + "/mpr", params=params, headers={**PNG, "If-None-Match": '"other"'}
    )
    assert stale.status_code == 200


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"plane": "foo"}, ["plane", "'foo'"]),
        ({}, ["plane", "missing"]),
        ({"plane": "axial", "mode": "median"}, ["mode", "'median'"]),
        ({"plane": "axial", "thickness": "-1"}, ["thickness", ">= 0"]),
        ({"plane": "axial", "mode": "mip"}, ["thickness"]),
        ({"plane": "axial", "mode": "mip", "thickness": "0"}, ["thickness", "> 0"]),
        ({"plane": "axial", "mode": "avgip", "thickness": "501"}, ["at most 500"]),
        ({"plane": "axial", "position": "900"}, ["outside the volume", "0.00 to 59.00"]),
        ({"plane": "axial", "position": "abc"}, ["position"]),
        ({"plane": "axial", "window": "40"}, ["window"]),
        ({"plane": "axial", "preset": "nope"}, ["lung"]),
        ({"plane": "axial", "size": "0,10"}, ["size"]),
    ],
)
def test_mpr_bad_queries_are_400_problems(
    stored: Stored, http: httpx.Client, params: dict[str, str], words: list[str]
) -> None:
    _assert_problem(http.get(stored.series_path + "/mpr", params=params), 400, *words)


def test_a_series_without_mpr_answers_422_with_the_reason(
    stored: Stored, http: httpx.Client
) -> None:
    volume = http.get(stored.small_path + "/volume")
    _assert_problem(volume, 422, "at least 50 images", "has 10")
    assert volume.json()["reason"] == volume.json()["detail"]
    image = http.get(stored.small_path + "/mpr", params={"plane": "axial"})
    _assert_problem(image, 422, "at least 50 images")


def test_an_unknown_series_is_404(stored: Stored, http: httpx.Client) -> None:
    path = f"/viewer-api/studies/{stored.study.study_instance_uid}/series/1.2.3.4"
    _assert_problem(http.get(path + "/mpr", params={"plane": "axial"}), 404)
    _assert_problem(http.get(path + "/volume"), 404)


def test_a_new_instance_makes_a_new_volume(tmp_path: Path) -> None:
    """The cache key covers the instances: a late slice is seen at once."""
    study = StudySpec(accession_number="ACC-LATE")
    slices = list(ct_series(study, slices=51, size=16))
    with running_node(tmp_path / "node") as node, client(node) as http:
        _store(node, slices[:50])
        path = (
            f"/viewer-api/studies/{study.study_instance_uid}/series/{slices[0].SeriesInstanceUID}"
        )
        before = http.get(path + "/volume").json()
        etag = http.get(path + "/mpr", params={"plane": "coronal"}).headers["etag"]
        _store(node, slices[50:])
        after = http.get(path + "/volume").json()
        assert (before["images"], after["images"]) == (50, 51)
        assert after["planes"]["axial"]["position_range_mm"] == [0.0, 50.0]
        changed = http.get(
            path + "/mpr", params={"plane": "coronal"}, headers={"If-None-Match": etag}
        )
        assert changed.status_code == 200
        assert changed.headers["etag"] != etag


# --- measurements ------------------------------------------------------------------------------


def test_measure_length_and_angle(stored: Stored, http: httpx.Client) -> None:
    url = stored.series_path + "/measure"
    length = http.post(url, json={"kind": "length", "points": [[0, 0, 0], [3, 4, 12]]})
    assert length.json() == {"length_mm": pytest.approx(13.0)}
    angle = http.post(url, json={"kind": "angle", "points": [[5, 0, 0], [0, 0, 0], [1, 1, 0]]})
    assert angle.json() == {"angle_deg": pytest.approx(45.0)}


def test_measure_region_and_point_on_the_volume(stored: Stored, http: httpx.Client) -> None:
    url = stored.series_path + "/measure"
    # slice z = 40: the water disc (40 HU) has a radius of ~7 mm round (15.75, 15.75)
    region = http.post(
        url,
        json={"kind": "region", "centre": [15.75, 15.75, 40], "radius_mm": 3, "normal": [0, 0, 1]},
    ).json()
    # the disc is sampled at 0.5 mm: grid points (i, j) * 0.5 with i^2 + j^2 <= 6^2
    count = sum(1 for i in range(-6, 7) for j in range(-6, 7) if i * i + j * j <= 36)
    assert region == {
        "mean": 40.0,
        "std": 0.0,
        "min": 40.0,
        "max": 40.0,
        "area_mm2": pytest.approx(count * 0.25),
        "count": count,
        "unit": "HU",
    }
    inside = http.post(url, json={"kind": "point", "point": [15.75, 15.75, 40]}).json()
    assert inside == {"value": 40.0, "unit": "HU"}
    air = http.post(url, json={"kind": "point", "point": [0.5, 0.5, 40]}).json()
    assert air == {"value": -1024.0, "unit": "HU"}


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"kind": "volume"}, 400, ["kind"]),
        ({"kind": "length", "points": [[0, 0, 0]]}, 400, ["points"]),
        ({"kind": "length", "points": [[0, 0, 0], [1, 1]]}, 400, ["points"]),
        ({"kind": "angle", "points": [[1, 0, 0], [0, 0, 0], [0, 0, 0]]}, 400, ["vertex"]),
        ({"kind": "region", "centre": [0, 0, 0], "radius_mm": 0}, 400, ["radius_mm"]),
        (
            {"kind": "region", "centre": [0, 0, 0], "radius_mm": 2, "normal": [0, 0, 0]},
            400,
            ["zero"],
        ),
        ({"kind": "region", "centre": [900, 0, 0], "radius_mm": 2}, 400, ["outside"]),
    ],
)
def test_measure_bad_requests(
    stored: Stored, http: httpx.Client, body: dict[str, object], status: int, words: list[str]
) -> None:
    _assert_problem(http.post(stored.series_path + "/measure", json=body), status, *words)


def test_measure_on_a_series_without_volume_is_422(stored: Stored, http: httpx.Client) -> None:
    body = {"kind": "point", "point": [0, 0, 0]}
    _assert_problem(http.post(stored.small_path + "/measure", json=body), 422, "50 images")
    length = {"kind": "length", "points": [[0, 0, 0], [0, 0, 2]]}
    assert http.post(stored.small_path + "/measure", json=length).json() == {"length_mm": 2.0}


# --- rendered frames ---------------------------------------------------------------------------


def test_rendered_frame_png_is_lossless_after_voi_and_jpeg_is_default(
    stored: Stored, http: httpx.Client
) -> None:
    ds = stored.ct[7]
    png = http.get(stored.frame_path(ds), headers=PNG)
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    assert png.headers["x-window"] == "40,400"  # the image's own window
    assert png.headers["cache-control"] == "private, max-age=3600"
    assert np.array_equal(_image(png), _window(_hu(ds), 40, 400))
    jpeg = http.get(stored.frame_path(ds))
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert jpeg.content[:2] == b"\xff\xd8"
    assert _image(jpeg).shape == (64, 64)
    assert np.abs(_image(jpeg).astype(int) - _image(png)).mean() < 3
    assert jpeg.headers["etag"] != png.headers["etag"]


def test_rendered_frame_parameters(stored: Stored, http: httpx.Client) -> None:
    ds, path = stored.ct[7], stored.frame_path(stored.ct[7])
    lung = http.get(path, params={"preset": "lung"}, headers=PNG)
    assert lung.headers["x-window"] == "-600,1500"
    assert np.array_equal(_image(lung), _window(_hu(ds), -600, 1500))
    explicit = http.get(path, params={"window": "100,200"}, headers=PNG)
    assert explicit.headers["x-window"] == "100,200"
    plain = _image(http.get(path, headers=PNG))
    inverted = http.get(path, params={"invert": "true"}, headers=PNG)
    assert np.array_equal(_image(inverted), 255 - plain)
    region = http.get(path, params={"region": "0,0,0.5,0.25"}, headers=PNG)
    assert np.array_equal(_image(region), plain[:16, :32])
    sized = http.get(path, params={"size": "32,20"}, headers=PNG)
    assert _image(sized).shape == (20, 20)  # aspect kept inside the box
    low = http.get(path, params={"quality": 10})
    assert len(low.content) < len(http.get(path, params={"quality": 95}).content)
    etag = lung.headers["etag"]
    cached = http.get(path, params={"preset": "lung"}, headers={**PNG, "If-None-Match": etag})
    assert (cached.status_code, cached.content) == (304, b"")


@pytest.mark.parametrize(
    ("frame", "params", "headers", "status"),
    [
        (2, {}, {}, 404),
        (0, {}, {}, 400),
        (1, {"window": "40,400", "preset": "lung"}, {}, 400),
        (1, {"region": "0.5,0,0.4,1"}, {}, 400),
        (1, {"quality": "0"}, {}, 400),
        (1, {}, {"Accept": "image/gif"}, 406),
    ],
)
def test_rendered_frame_refusals(
    stored: Stored,
    http: httpx.Client,
    frame: int,
    params: dict[str, str],
    headers: dict[str, str],
    status: int,
) -> None:
    response = http.get(stored.frame_path(stored.ct[0], frame), params=params, headers=headers)
    _assert_problem(response, status)


def test_browser_and_volume_on_each_index_database(node: Node) -> None:
    """The index queries behind the viewer, on SQLite and (when configured) PostgreSQL."""
    study = StudySpec(accession_number="ACC-DB", study_date="20250101")
    slices = list(ct_series(study, slices=50, size=16))
    _store(node, slices)
    with client(node) as http:
        found = http.get("/viewer-api/studies", params={"AccessionNumber": "ACC-DB"}).json()
        assert [s["study_instance_uid"] for s in found] == [study.study_instance_uid]
        detail = http.get(f"/viewer-api/studies/{study.study_instance_uid}").json()
        (series,) = detail["series"]
        assert [i["instance_number"] for i in series["instances"]] == list(range(1, 51))
        assert series["mpr"] == {"offered": True, "reason": None}
        path = (
            f"/viewer-api/studies/{study.study_instance_uid}/series/{series['series_instance_uid']}"
        )
        assert http.get(path + "/volume").json()["images"] == 50
