"""A series that grows is never served from a stale volume or a stale ETag."""

from __future__ import annotations

import json

from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.servers import client


def test_a_new_instance_changes_the_etag_and_the_volume(sqlite_node: Node) -> None:
    study = StudySpec(patient=PatientSpec(patient_id="GROW-1", patient_name="Wu^Shi"))
    slices = list(ct_series(study, slices=56, size=32))
    for ds in slices[:55]:
        sqlite_node.archive.store(to_part10(ds), source="test")
    path = (
        f"/viewer-api/studies/{study.study_instance_uid}/series/{slices[0].SeriesInstanceUID}/mpr"
    )
    query = {"plane": "coronal"}
    with client(sqlite_node) as http:
        first = http.get(path, params=query, headers={"Accept": "image/png"})
        assert first.status_code == 200
        etag = first.headers["ETag"]
        again = http.get(path, params=query, headers={"Accept": "image/png", "If-None-Match": etag})
        assert again.status_code == 304
        sqlite_node.archive.store(to_part10(slices[55]), source="test")  # the series grows
        grown = http.get(path, params=query, headers={"Accept": "image/png", "If-None-Match": etag})
    assert grown.status_code == 200 and grown.headers["ETag"] != etag
    before = json.loads(first.headers["X-MPR-Geometry"])["position_range_mm"]
    after = json.loads(grown.headers["X-MPR-Geometry"])
    assert after["rows"] > json.loads(first.headers["X-MPR-Geometry"])["rows"]
    assert after["position_range_mm"] == before  # coronal positions are y: unchanged
