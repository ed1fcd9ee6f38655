"""PET/CT fusion over HTTP: a PET hot spot lands on the CT pixels at the same millimetres."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image
from pydicom.uid import generate_uid

from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, pet_series, to_part10
from tests.support.servers import client, running_node

PNG = {"Accept": "image/png"}


@dataclass
class Fusion:
    base_url: str
    http_client: object
    ct_series: str
    pet_series: str
    other_frame_pet: str


@pytest.fixture(scope="module")
def fusion(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fusion]:
    study = StudySpec(patient=PatientSpec(patient_id="FUS-1", patient_name="Zhou^Jiu"))
    ct = list(ct_series(study, slices=60, size=64))
    pet = pet_series(study, str(ct[0].FrameOfReferenceUID))
    elsewhere = pet_series(study, generate_uid())
    series_uid = generate_uid()
    for ds in elsewhere:
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
    with running_node(tmp_path_factory.mktemp("fusion")) as node:
        for ds in [*ct, *pet, *elsewhere]:
            node.archive.store(to_part10(ds), source="test")
        with client(node) as http:
            base = (
                f"/viewer-api/studies/{study.study_instance_uid}/series/{ct[0].SeriesInstanceUID}"
            )
            yield Fusion(base, http, ct[0].SeriesInstanceUID, pet[0].SeriesInstanceUID, series_uid)


def _rgb(fusion: Fusion, **query: object) -> np.ndarray:
    response = fusion.http_client.get(  # type: ignore[attr-defined]
        f"{fusion.base_url}/fusion", params=query, headers=PNG
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert "X-MPR-Geometry" in response.headers
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


def test_pet_hot_spot_is_drawn_at_the_same_millimetres_on_the_ct(fusion: Fusion) -> None:
    image = _rgb(
        fusion, overlay=fusion.pet_series, plane="axial", position=30,
        overlay_window="500,1000", opacity=1.0,
    )  # fmt: skip
    assert image.shape == (64, 64, 3)  # the CT grid: 0.5 mm pixels
    # x, y = 8..15 mm is CT pixels 16..31 (0.5 mm); the middle of it is hot (white in "hot")
    assert image[23, 23].min() > 200
    # far from the hot square the PET is 0: black at full opacity
    assert image[50, 50].max() < 30
    assert image[5, 23].max() < 30  # y = 2.5 mm: above the square


def test_opacity_zero_is_the_ct_alone(fusion: Fusion) -> None:
    fused = _rgb(fusion, overlay=fusion.pet_series, plane="axial", position=30, opacity=0.0)
    ct = fusion.http_client.get(  # type: ignore[attr-defined]
        f"{fusion.base_url}/mpr", params={"plane": "axial", "position": 30}, headers=PNG
    )
    gray = np.asarray(Image.open(io.BytesIO(ct.content)).convert("L"))
    assert np.array_equal(fused[..., 0], gray) and np.array_equal(fused[..., 2], gray)


@pytest.mark.parametrize(
    ("query", "status", "words"),
    [
        ({"plane": "axial"}, 400, "overlay"),
        ({"plane": "axial", "colour_map": "jet"}, 400, "colour_map"),
        ({"plane": "axial", "opacity": 2}, 400, "opacity"),
        ({"plane": "nowhere"}, 400, "plane"),
    ],
)
def test_bad_fusion_requests_are_refused(
    fusion: Fusion, query: dict[str, object], status: int, words: str
) -> None:
    if "colour_map" in query or "opacity" in query or query["plane"] == "nowhere":
        query = {**query, "overlay": fusion.pet_series}
    response = fusion.http_client.get(  # type: ignore[attr-defined]
        f"{fusion.base_url}/fusion", params=query, headers=PNG
    )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert words in response.json()["detail"]


def test_overlay_in_another_frame_of_reference_is_refused(fusion: Fusion) -> None:
    response = fusion.http_client.get(  # type: ignore[attr-defined]
        f"{fusion.base_url}/fusion",
        params={"overlay": fusion.other_frame_pet, "plane": "axial"},
        headers=PNG,
    )
    assert response.status_code == 422
    assert "frame of reference" in response.json()["detail"].lower()
