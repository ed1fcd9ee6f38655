"""An expert's reach is the videos of their open review tasks, not the studies those videos
belong to.

A surgical study holds more than the applicant's video: a CT, another surgeon's video, a
theatre panorama with the staff's faces. An expert assigned a task holding video V of study S
plays V (media URL, MP4, thumbnail) and nothing else of S: not the other video W, not the CT,
not the study-level metadata or retrieve that would hand out every object of S. Closing the
task ends the reach to V too. Refusals are audited like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cloud.audit_query import AuditFilter
from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.servers import PASSWORD, client
from tests.support.video import make_mp4, video_part10

pytestmark = pytest.mark.needs_ffmpeg

STUDY = "1.2.826.0.1.3680043.8.498.7701"
PATIENT = "P-SCOPE-1"
EXPERT = "expert.scope"


@dataclass
class Obj:
    series: str
    sop: str

    @property
    def path(self) -> str:
        return f"/studies/{STUDY}/series/{self.series}/instances/{self.sop}"

    @property
    def media_url(self) -> str:
        return f"/viewer-api{self.path}/media-url"

    @property
    def rendered(self) -> str:
        return f"/dicom-web{self.path}/rendered"


@dataclass
class Theatre:
    node: Node
    v: Obj  # the applicant's video, in the task
    w: Obj  # another surgeon's video of the same study
    ct: Obj  # a CT of the same study
    task_id: int


@pytest.fixture
def theatre(node: Node, tmp_path: Path) -> Theatre:
    archive = node.archive
    archive.hospitals.add_hospital("HS", "Scope Hospital", ae_title="HS_GW")
    hospital = archive.hospitals.by_id("HS")
    assert hospital is not None
    archive.users.create_user(EXPERT, PASSWORD, "video_expert")
    mp4 = make_mp4(tmp_path / "clip.mp4", seconds=1.0, size=(160, 120), audio=False)
    for n, surgeon in ((1, "Zhang^San"), (2, "Li^Si")):
        part10 = video_part10(mp4, patient_id=PATIENT, study_uid=STUDY,
                              series_uid=f"{STUDY}.{n}", sop_uid=f"{STUDY}.{n}.1",
                              procedure="腹腔镜胆囊切除术", surgeon=surgeon,
                              applicant="dr.zhang")  # fmt: skip
        archive.store(part10, source="test", hospital_pk=hospital.pk)
    spec = StudySpec(patient=PatientSpec(patient_id=PATIENT), study_instance_uid=STUDY)
    slices = list(ct_series(spec, slices=2, size=16))
    for ds in slices:
        archive.store(to_part10(ds), source="test", hospital_pk=hospital.pk)
    v = Obj(f"{STUDY}.1", f"{STUDY}.1.1")
    w = Obj(f"{STUDY}.2", f"{STUDY}.2.1")
    ct = Obj(str(slices[0].SeriesInstanceUID), str(slices[0].SOPInstanceUID))
    body = {"title": "评审", "applicant": "dr.zhang", "videos": [v.sop], "reviewers": [EXPERT]}
    with client(node) as admin:
        created = admin.post("/api/video-reviews/tasks", json=body)
        assert created.status_code == 201, created.text
    return Theatre(node, v, w, ct, created.json()["id"])


def _refused(response: httpx.Response) -> None:
    assert response.status_code == 403, (response.request.url, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")


def test_an_expert_reaches_the_task_videos_and_nothing_else_of_the_study(
    theatre: Theatre,
) -> None:
    v, w, ct = theatre.v, theatre.w, theatre.ct
    with client(theatre.node, EXPERT) as expert:
        # the review page's path: the task, a media URL, the MP4 and its thumbnail
        task = expert.get(f"/api/video-reviews/tasks/{theatre.task_id}")
        assert task.status_code == 200 and [x["sopInstanceUid"] for x in task.json()["videos"]]
        media = expert.post(v.media_url)
        assert media.status_code == 200, media.text
        played = expert.get(media.json()["url"], headers={"Range": "bytes=0-99"})
        assert played.status_code == 206 and played.headers["content-type"] == "video/mp4"
        assert expert.get(media.json()["thumbnail"]).status_code == 200
        assert expert.get(v.rendered, headers={"Accept": "video/mp4"}).status_code == 200

        # the other video of the same study
        _refused(expert.post(w.media_url))
        _refused(expert.get(w.rendered, headers={"Accept": "video/mp4"}))
        # the CT of the same study: pixels, metadata, renders
        _refused(expert.get(f"/dicom-web{ct.path}/frames/1"))
        _refused(expert.get(f"/dicom-web{ct.path}/metadata"))
        _refused(expert.get(f"/dicom-web/studies/{STUDY}/series/{ct.series}/metadata"))
        _refused(expert.get(f"/dicom-web{ct.path}/rendered"))
        # study-level routes hand out every object of the study
        _refused(expert.get(f"/dicom-web/studies/{STUDY}/metadata"))
        _refused(expert.get(f"/dicom-web/studies/{STUDY}"))
        _refused(expert.get(f"/viewer-api/studies/{STUDY}"))

    denied = theatre.node.archive.audit.search(
        AuditFilter(actor=EXPERT, action="access", outcome="denied")
    )
    paths = {event["detail"].get("path") for event in denied}
    assert f"/dicom-web/studies/{STUDY}/metadata" in paths
    assert f"/dicom-web{ct.path}/frames/1" in paths

    with client(theatre.node) as admin:
        # the platform admin still reaches the whole study
        assert admin.get(f"/dicom-web/studies/{STUDY}/metadata").status_code == 200
        assert admin.post(w.media_url).status_code == 200
        closed = admin.post(f"/api/video-reviews/tasks/{theatre.task_id}/close")
        assert closed.status_code == 200, closed.text

    with client(theatre.node, EXPERT) as expert:
        _refused(expert.post(v.media_url))
        _refused(expert.get(v.rendered, headers={"Accept": "video/mp4"}))
