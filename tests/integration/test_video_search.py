"""Searching surgical videos and the studies around them, over HTTP against a real node, on
SQLite and PostgreSQL: every filter narrows as a user expects (Chinese text included), a
hospital's clinicians see their hospital's recordings only, an anonymised expert sees no patient
identity, chart numbers equal what the test counts itself, and each search is audited once."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import func, select

from cloud.models import AuditEvent, ReviewAssignment, ReviewTask, ReviewTaskVideo, SurgicalVideo
from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.servers import PASSWORD, client
from tests.support.video import VIDEO_ENDOSCOPIC, make_mp4, video_part10

pytestmark = pytest.mark.needs_ffmpeg

CHOLE = "腹腔镜胆囊切除术"
PROBLEM = "application/problem+json"


@dataclass(frozen=True)
class Recording:
    """One test video: what goes into its sidecar, and what a search should find by."""

    key: str
    hospital: str
    patient_id: str
    procedure: str
    diagnosis: str
    surgeon: str
    applicant: str
    start: str
    end: str
    camera_role: str = "field"
    video_class: str = "field"

    @property
    def minutes(self) -> float:
        begun, ended = datetime.fromisoformat(self.start), datetime.fromisoformat(self.end)
        return (ended - begun).total_seconds() / 60


RECORDINGS = (
    Recording("chole-li", "HA", "P-1", CHOLE, "胆囊结石", "Li^Ming", "李明",
              "2025-03-04T08:00:00", "2025-03-04T09:30:00"),
    Recording("appendix", "HA", "P-2", "Laparoscopic Appendectomy", "Acute appendicitis",
              "Wang^Fang", "王芳", "2025-04-10T10:00:00", "2025-04-10T10:45:00",
              camera_role="endoscope"),
    Recording("chole-wang", "HA", "P-3", CHOLE, "慢性胆囊炎", "Wang^Fang", "王芳",
              "2025-04-20T13:00:00", "2025-04-20T15:10:00", video_class="safety"),
    Recording("other-hospital", "HB", "P-4", CHOLE, "胆囊结石", "Zhao^Lei", "赵磊",
              "2025-03-15T09:00:00", "2025-03-15T10:00:00"),
)  # fmt: skip
AT_HA = [r for r in RECORDINGS if r.hospital == "HA"]


@dataclass
class Region:
    node: Node
    sop: dict[str, str]  # recording key -> SOP Instance UID
    study: dict[str, str]  # recording key -> Study Instance UID
    ct_study: str  # a CT at HA with a report naming 胆囊结石

    def key_of(self, sop: str) -> str:
        return next(k for k, v in self.sop.items() if v == sop)

    def found(self, username: str, **params: str | int | float) -> set[str]:
        with client(self.node, username) as http:
            answer = http.get("/api/videos", params=params)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["total"] == len(body["videos"])
        return {self.key_of(v["sopInstanceUid"]) for v in body["videos"]}

    def searches(self) -> int:
        with self.node.archive.sessions() as session:
            return (
                session.scalar(
                    select(func.count(AuditEvent.seq)).where(AuditEvent.action == "search")
                )
                or 0
            )


@pytest.fixture(scope="module")
def mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mp4(tmp_path_factory.mktemp("video") / "clip.mp4", seconds=1.0, audio=False)


@pytest.fixture
def region(node: Node, mp4: Path) -> Iterator[Region]:
    archive = node.archive
    archive.hospitals.add_hospital("HA", "重庆医科大学附属第一医院", ae_title="HA_GW")
    archive.hospitals.add_hospital("HB", "重庆市第五人民医院", ae_title="HB_GW")
    hospital_pk = {}
    for hospital_id in ("HA", "HB"):
        found = archive.hospitals.by_id(hospital_id)
        assert found is not None
        hospital_pk[hospital_id] = found.pk
    archive.users.create_user("doc.a", PASSWORD, "clinician", hospital_id="HA")
    archive.users.create_user("doc.b", PASSWORD, "clinician", hospital_id="HB")
    archive.users.create_user("expert", PASSWORD, "video_expert")
    sops, studies = {}, {}
    for r in RECORDINGS:
        data = video_part10(
            mp4,
            patient_id=r.patient_id,
            sop_class_uid=VIDEO_ENDOSCOPIC if r.camera_role == "endoscope" else
            "1.2.840.10008.5.1.4.1.1.77.1.4.1",
            procedure=r.procedure,
            diagnosis=r.diagnosis,
            surgeon=r.surgeon,
            applicant=r.applicant,
            start=r.start,
            operation_start=r.start,
            operation_end=r.end,
            video_class=r.video_class,
            camera_role=r.camera_role,
        )  # fmt: skip
        archive.store(data, source="test", hospital_pk=hospital_pk[r.hospital])
        with archive.sessions() as session:
            row = session.scalars(
                select(SurgicalVideo).order_by(SurgicalVideo.pk.desc()).limit(1)
            ).one()
            sops[r.key], studies[r.key] = row.sop_instance_uid, row.study_instance_uid
    ct = StudySpec(
        patient=PatientSpec(patient_id="P-1", patient_name="Chen^Jing=陈^静=", sex="F"),
        study_date="20250301",
        accession_number="CT0301",
        study_description="CT 上腹部增强 Abdomen",
    )
    for ds in ct_series(ct, slices=1, size=16):
        archive.store(to_part10(ds), source="test", hospital_pk=hospital_pk["HA"])
    archive.reports.ingest_json(
        hospital_pk["HA"],
        {
            "study_instance_uid": ct.study_instance_uid,
            "patient_id": "P-1",
            "exam_name": "上腹部CT增强",
            "findings": "胆囊内见多发高密度影。",
            "impression": "胆囊结石。",
            "status": "final",
        },
    )
    yield Region(node, sops, studies, ct.study_instance_uid)


def test_each_filter_narrows_the_videos(region: Region) -> None:
    found = region.found
    assert found("doc.a") == {"chole-li", "appendix", "chole-wang"}
    assert found("doc.a", procedure="胆囊") == {"chole-li", "chole-wang"}
    assert found("doc.a", procedure="laparoscopic APPENDECTOMY") == {"appendix"}
    assert found("doc.a", diagnosis="胆囊结石") == {"chole-li"}
    assert found("doc.a", surgeon="wang") == {"appendix", "chole-wang"}
    assert found("doc.a", applicant="李明") == {"chole-li"}
    assert found("doc.a", dateFrom="2025-04-01", dateTo="20250415") == {"appendix"}
    assert found("doc.a", dateFrom="20250401") == {"appendix", "chole-wang"}
    assert found("doc.a", dateTo="2025-03-31") == {"chole-li"}
    assert found("doc.a", minMinutes=60, maxMinutes=120) == {"chole-li"}
    assert found("doc.a", minMinutes=100) == {"chole-wang"}
    assert found("doc.a", maxMinutes=45) == {"appendix"}
    assert found("doc.a", q=CHOLE) == {"chole-li", "chole-wang"}
    assert found("doc.a", q="wang 胆囊") == {"chole-wang"}  # every word must match
    assert found("doc.a", cameraRole="endoscope") == {"appendix"}
    assert found("doc.a", videoClass="safety_video") == {"chole-wang"}
    assert found("test-admin", hospitalId="HB") == {"other-hospital"}
    assert found("test-admin", q=CHOLE, hospitalId="HA") == {"chole-li", "chole-wang"}
    # Free text reaches annotations and the title page's notes too.
    with client(region.node, "doc.a") as http:
        sop = region.sop["appendix"]
        made = http.post(
            f"/api/videos/{sop}/annotations",
            json={"kind": "step", "start": 0, "end": 0.5, "label": "阑尾根部结扎",
                  "note": "Hem-o-lok clip"},
        )  # fmt: skip
        assert made.status_code == 201, made.text
        notes = {"notes": "教学病例 teaching case"}
        patched = http.patch(f"/api/videos/{region.sop['chole-li']}/title-page", json=notes)
        assert patched.status_code == 200, patched.text
    assert found("doc.a", q="阑尾根部") == {"appendix"}
    assert found("doc.a", q="HEM-O-LOK") == {"appendix"}
    assert found("doc.a", q="教学") == {"chole-li"}
    # Paging: total counts all matches, the page holds `limit`.
    with client(region.node, "doc.a") as http:
        page = http.get("/api/videos", params={"limit": 2, "offset": 0}).json()
        rest = http.get("/api/videos", params={"limit": 2, "offset": 2}).json()
    assert page["total"] == rest["total"] == 3
    assert len(page["videos"]) == 2 and len(rest["videos"]) == 1
    # Latest operations first.
    assert [region.key_of(v["sopInstanceUid"]) for v in page["videos"]] == [
        "chole-wang",
        "appendix",
    ]


def test_a_summary_says_what_the_video_is_and_how_to_play_it(region: Region) -> None:
    with client(region.node, "doc.a") as http:
        body = http.get("/api/videos", params={"applicant": "李明"}).json()
    (video,) = body["videos"]
    sop, study = region.sop["chole-li"], region.study["chole-li"]
    assert video["studyInstanceUid"] == study
    assert video["procedure"] == CHOLE
    assert video["diagnosis"] == "胆囊结石"
    assert video["surgeon"] == "Li^Ming"
    assert video["hospital"] == "HA"
    assert video["cameraRole"] == "field"
    assert video["videoClass"] == "surgical_field_video"
    assert video["operationDate"] == "20250304"
    assert video["operationMinutes"] == 90.0
    assert video["width"] == 320 and video["height"] == 240
    assert video["definition"] == "SD"
    assert video["durationSeconds"] == pytest.approx(1.0, abs=0.1)
    assert video["annotationCount"] == 0
    assert video["viewerUrl"] == f"/viewer/?study={study}"
    series = video["seriesInstanceUid"]
    assert video["renderedPath"] == f"/studies/{study}/series/{series}/instances/{sop}"
    assert video["patientId"] == "P-1"
    # The path plays through the media-url route of the viewer API.
    with client(region.node, "doc.a") as http:
        media = http.post(f"/viewer-api{video['renderedPath']}/media-url")
        assert media.status_code == 200, media.text
        played = http.get(media.json()["url"], headers={"Range": "bytes=0-99"})
        assert played.status_code == 206


def test_scope_and_anonymisation(region: Region) -> None:
    assert region.found("doc.b") == {"other-hospital"}
    with client(region.node, "doc.b") as http:
        refused = http.get(f"/api/videos/{region.sop['chole-li']}")
        assert refused.status_code == 403
        assert refused.headers["content-type"].startswith(PROBLEM)
        studies = http.get("/api/surgical-search", params={"q": "胆囊"}).json()["studies"]
    assert {s["studyInstanceUid"] for s in studies["items"]} == {region.study["other-hospital"]}
    # An expert of a review panel reaches only the videos of their open task, anonymised.
    with region.node.archive.sessions() as session:
        task = ReviewTask(
            title="年度评审", applicant="李明", form="{}", status="open", created_by="test-admin",
            created_at=datetime.now(UTC),
        )  # fmt: skip
        session.add(task)
        session.flush()
        video_pk = session.scalar(
            select(SurgicalVideo.pk).where(SurgicalVideo.sop_instance_uid == region.sop["chole-li"])
        )
        assert video_pk is not None
        session.add(ReviewTaskVideo(task_pk=task.pk, video_pk=video_pk))
        session.add(
            ReviewAssignment(task_pk=task.pk, reviewer="expert", assigned_at=datetime.now(UTC))
        )
        session.commit()
    with client(region.node, "expert") as http:
        listed = http.get("/api/videos").json()
        (video,) = listed["videos"]
        assert video["sopInstanceUid"] == region.sop["chole-li"]
        assert "patientId" not in video and "patientName" not in video
        detail = http.get(f"/api/videos/{region.sop['chole-li']}")
        assert detail.status_code == 200, detail.text
        assert "patientId" not in detail.json()["video"]
        exported = http.get(f"/api/videos/{region.sop['chole-li']}/annotations.json").json()
        assert "patient" not in exported
        assert http.get(f"/api/videos/{region.sop['appendix']}").status_code == 403
        both = http.get("/api/surgical-search").json()
        assert all("patientId" not in s for s in both["studies"]["items"])
        assert {s["studyInstanceUid"] for s in both["studies"]["items"]} == {
            region.study["chole-li"]
        }
        # The expert may watch, not annotate.
        sop = region.sop["chole-li"]
        body = {"kind": "phase", "start": 0, "end": 0.5, "label": "x"}
        assert http.post(f"/api/videos/{sop}/annotations", json=body).status_code == 403
    with client(region.node, "doc.a") as http:
        shown = http.get("/api/videos", params={"applicant": "李明"}).json()["videos"][0]
    assert shown["patientName"] == "Video P-1"


def test_studies_are_matched_on_what_applies_to_them(region: Region) -> None:
    def studies(**params: str | int) -> dict[str, dict[str, object]]:
        with client(region.node, "doc.a") as http:
            answer = http.get("/api/surgical-search", params=params)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["videos"]["total"] == len(body["videos"]["items"])
        return {s["studyInstanceUid"]: s for s in body["studies"]["items"]}

    ct = region.ct_study
    by_diagnosis = studies(diagnosis="胆囊结石")
    assert set(by_diagnosis) == {ct}  # the report's impression
    assert by_diagnosis[ct]["reportImpression"] == "胆囊结石。"
    assert by_diagnosis[ct]["modalities"] == ["CT"]
    assert by_diagnosis[ct]["hospital"] == "重庆医科大学附属第一医院"
    assert by_diagnosis[ct]["patientId"] == "P-1"
    assert by_diagnosis[ct]["viewerUrl"] == f"/viewer/?study={ct}"
    # procedure: Study Description (the videos' studies) and the report's exam name
    assert set(studies(procedure="胆囊切除")) == {
        region.study["chole-li"],
        region.study["chole-wang"],
    }
    assert set(studies(procedure="上腹部CT")) == {ct}
    # q: description and report text
    assert set(studies(q="胆囊")) == {ct, region.study["chole-li"], region.study["chole-wang"]}
    assert set(studies(q="高密度影")) == {ct}
    # dates: the study date
    assert set(studies(dateFrom="2025-03-01", dateTo="2025-03-01")) == {ct}
    # video-only criteria keep the studies of the matched videos
    assert set(studies(surgeon="wang")) == {region.study["appendix"], region.study["chole-wang"]}
    assert set(studies(minMinutes=100)) == {region.study["chole-wang"]}
    with client(region.node, "doc.a") as http:
        both = http.get("/api/surgical-search", params={"surgeon": "wang"}).json()
    assert both["videos"]["total"] == 2 and both["studies"]["total"] == 2


def test_chart_numbers_equal_the_recordings(region: Region) -> None:
    with client(region.node, "doc.a") as http:
        charts = http.get("/api/surgical-search/charts").json()
        chole = http.get("/api/surgical-search/charts", params={"procedure": "胆囊"}).json()
    assert charts["total"] == len(AT_HA)
    procedures: dict[str, list[float]] = {}
    surgeons: dict[str, list[float]] = {}
    for r in AT_HA:
        procedures.setdefault(r.procedure, []).append(r.minutes)
        surgeons.setdefault(r.surgeon, []).append(r.minutes)
    assert {p["procedure"]: (p["count"], p["meanMinutes"]) for p in charts["byProcedure"]} == {
        name: (len(m), round(statistics.mean(m), 1)) for name, m in procedures.items()
    }
    assert {s["surgeon"]: (s["count"], s["meanMinutes"]) for s in charts["bySurgeon"]} == {
        name: (len(m), round(statistics.mean(m), 1)) for name, m in surgeons.items()
    }
    months = Counter(r.start[:7] for r in AT_HA)
    assert charts["byMonth"] == [{"month": m, "count": months[m]} for m in sorted(months)]
    bins = Counter(int(r.minutes // 30) for r in AT_HA)
    assert charts["durationHistogram"] == [
        {"fromMinutes": b * 30, "toMinutes": b * 30 + 30, "count": bins[b]}
        for b in range(max(bins) + 1)
    ]
    assert chole["total"] == 2
    assert chole["byProcedure"] == [{"procedure": CHOLE, "count": 2, "meanMinutes": 110.0}]
    assert "patientId" not in str(charts) and "P-1" not in str(charts)


def test_each_search_is_audited_once_and_bad_filters_are_refused(region: Region) -> None:
    before = region.searches()
    with client(region.node, "doc.a") as http:
        assert http.get("/api/videos", params={"q": "胆囊"}).status_code == 200
        assert http.get("/api/surgical-search").status_code == 200
        assert http.get("/api/surgical-search/charts").status_code == 200
        for params, words in (
            ({"dateFrom": "2025/03/01"}, "dateFrom"),
            ({"dateFrom": "20250401", "dateTo": "20250301"}, "before"),
            ({"minMinutes": 90, "maxMinutes": 30}, "maxMinutes"),
            ({"limit": 0}, "limit"),
            ({"limit": 501}, "limit"),
            ({"minMinutes": "long"}, "minMinutes"),
        ):
            refused = http.get("/api/videos", params=params)
            assert refused.status_code == 400, (params, refused.text)
            assert refused.headers["content-type"].startswith(PROBLEM)
            assert words.lower() in refused.json()["detail"].lower(), refused.json()
    assert region.searches() == before + 3
    with client(region.node, None) as anonymous:
        assert anonymous.get("/api/videos").status_code == 401
    region.node.archive.users.create_user("trainee", PASSWORD, "trainee", hospital_id="HA")
    with client(region.node, "trainee") as http:  # no streaming_playback
        refused = http.get("/api/videos")
        assert refused.status_code == 403
        assert "streaming_playback" in refused.json()["detail"]


def _assign(region: Region, reviewer: str, key: str, status: str = "open") -> None:
    """A review task holding recording ``key``, assigned to ``reviewer``."""
    with region.node.archive.sessions() as session:
        task = ReviewTask(title="评审", applicant="李明", form="{}", status=status,
                          created_by="test-admin", created_at=datetime.now(UTC))  # fmt: skip
        session.add(task)
        session.flush()
        video_pk = session.scalar(
            select(SurgicalVideo.pk).where(SurgicalVideo.sop_instance_uid == region.sop[key])
        )
        assert video_pk is not None
        session.add(ReviewTaskVideo(task_pk=task.pk, video_pk=video_pk))
        session.add(ReviewAssignment(task_pk=task.pk, reviewer=reviewer,
                                     assigned_at=datetime.now(UTC)))  # fmt: skip
        session.commit()


def test_an_expert_reaches_only_the_task_videos_not_the_rest_of_their_studies(
    region: Region, mp4: Path
) -> None:
    # A second recording of chole-li's operation (the theatre panorama, staff faces and all),
    # in the same study, and a task holding only the endoscope view.
    panorama = video_part10(
        mp4, patient_id="P-1", study_uid=region.study["chole-li"], procedure=CHOLE,
        surgeon="Li^Ming", applicant="李明", operation_start="2025-03-04T08:00:00",
        operation_end="2025-03-04T09:30:00", camera_role="panorama",
    )  # fmt: skip
    hospital = region.node.archive.hospitals.by_id("HA")
    assert hospital is not None
    region.node.archive.store(panorama, source="test", hospital_pk=hospital.pk)
    with region.node.archive.sessions() as session:
        sop = session.scalar(select(SurgicalVideo.sop_instance_uid).where(
            SurgicalVideo.camera_role == "panorama"))  # fmt: skip
    assert sop is not None
    region.sop["panorama"] = sop
    assert region.found("doc.a", cameraRole="panorama") == {"panorama"}
    region.node.archive.users.create_user("expert.2", PASSWORD, "video_expert")
    _assign(region, "expert.2", "chole-li")
    _assign(region, "expert.2", "appendix", status="closed")  # closed: reaches nothing
    assert region.found("expert.2") == {"chole-li"}
    assert region.found("expert.2", q=CHOLE) == {"chole-li"}
    with client(region.node, "expert.2") as http:
        both = http.get("/api/surgical-search").json()
        charts = http.get("/api/surgical-search/charts").json()
        own = http.get(f"/api/videos/{region.sop['chole-li']}")
        other = http.get(f"/api/videos/{sop}")
        other_notes = http.get(f"/api/videos/{sop}/annotations")
        other_export = http.get(f"/api/videos/{sop}/annotations.json")
        closed = http.get(f"/api/videos/{region.sop['appendix']}")
    assert [v["sopInstanceUid"] for v in both["videos"]["items"]] == [region.sop["chole-li"]]
    assert both["videos"]["total"] == 1 and charts["total"] == 1
    assert own.status_code == 200, own.text
    for refused in (other, other_notes, other_export, closed):
        assert refused.status_code == 403, refused.text
        assert refused.headers["content-type"].startswith(PROBLEM)


def test_without_view_video_annotations_a_search_neither_counts_nor_matches_annotations(
    region: Region,
) -> None:
    sop = region.sop["appendix"]
    with client(region.node, "doc.a") as http:
        made = http.post(f"/api/videos/{sop}/annotations", json={
            "kind": "step", "start": 0, "end": 0.5, "label": "阑尾根部结扎",
            "compliance": "不符合规范"})  # fmt: skip
        assert made.status_code == 201, made.text
        patched = http.patch(f"/api/videos/{sop}/title-page", json={"notes": "术者失误 教学"})
        assert patched.status_code == 200, patched.text
    assert region.found("doc.a", q="阑尾根部") == {"appendix"}
    assert region.found("doc.a", q="术者失误") == {"appendix"}
    token = region.node.tokens.issue_for("patient:P-2", "patient", pid="P-2")
    headers = {"Authorization": f"Bearer {token}"}
    with client(region.node, None) as http:
        mine = http.get("/api/videos", headers=headers).json()
        by_note = http.get("/api/videos", params={"q": "阑尾根部"}, headers=headers).json()
        by_notes = http.get("/api/videos", params={"q": "术者失误"}, headers=headers).json()
        both = http.get("/api/surgical-search", params={"q": "阑尾根部"}, headers=headers).json()
        by_procedure = http.get("/api/videos", params={"q": "Appendectomy"}, headers=headers).json()
    assert [v["sopInstanceUid"] for v in mine["videos"]] == [sop]
    assert "annotationCount" not in mine["videos"][0]
    assert by_note["total"] == by_notes["total"] == 0 and both["videos"]["total"] == 0
    assert by_procedure["total"] == 1
    with client(region.node, "doc.a") as http:
        (shown,) = http.get("/api/videos", params={"q": "阑尾根部"}).json()["videos"]
    assert shown["annotationCount"] == 1
