"""Annotating a surgical video over HTTP against a real node: phases and steps are created,
listed in time order, changed and deleted, bad ones refused with a precise reason; a voice note
goes in and comes back byte for byte; the title page is corrected; the annotations export as a
JSON file and as a DICOM Comprehensive SR stored in the video's study (found by QIDO, TCOORD
offsets equal to the annotation times) without touching the study's diagnostic report; and
every write is audited."""

from __future__ import annotations

import io
import json
import struct
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import func, select

from cloud.models import AuditEvent, Report, SurgicalVideo, VideoAnnotation
from cloud.video_sr import COMPREHENSIVE_SR, time_ranges
from imaging_cloud.node import Node
from tests.support.servers import PASSWORD, client
from tests.support.video import make_mp4, video_part10

pytestmark = pytest.mark.needs_ffmpeg

PROBLEM = "application/problem+json"
CHOLE = "腹腔镜胆囊切除术"


@dataclass
class Video:
    node: Node
    sop: str
    study: str
    series: str

    def url(self, tail: str = "") -> str:
        return f"/api/videos/{self.sop}{tail}"

    def audit(self, action: str) -> list[tuple[AuditEvent, dict[str, Any]]]:
        """The audit entries of ``action``, oldest first, each with its detail decoded."""
        with self.node.archive.sessions() as session:
            rows = session.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
            )
            return [(row, json.loads(row.detail or "{}")) for row in rows]


@pytest.fixture(scope="module")
def mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mp4(tmp_path_factory.mktemp("video") / "clip.mp4", seconds=2.0, audio=False)


@pytest.fixture
def video(sqlite_node: Node, mp4: Path) -> Iterator[Video]:
    archive = sqlite_node.archive
    archive.hospitals.add_hospital("HA", "重庆医科大学附属第一医院", ae_title="HA_GW")
    archive.hospitals.add_hospital("HB", "重庆市第五人民医院", ae_title="HB_GW")
    ha = archive.hospitals.by_id("HA")
    assert ha is not None
    archive.users.create_user("doc.a", PASSWORD, "clinician", hospital_id="HA")
    archive.users.create_user("doc.b", PASSWORD, "clinician", hospital_id="HB")
    archive.users.create_user("trainee.a", PASSWORD, "trainee", hospital_id="HA")
    data = video_part10(
        mp4,
        patient_id="OR-0001",
        procedure=CHOLE,
        diagnosis="胆囊结石",
        surgeon="Li^Ming",
        applicant="李明",
        hospital="重庆医科大学附属第一医院",
        operation_start="2025-03-04T08:00:00",
        operation_end="2025-03-04T09:30:00",
    )
    archive.store(data, source="test", hospital_pk=ha.pk)
    with archive.sessions() as session:
        row = session.scalars(select(SurgicalVideo)).one()
        found = Video(
            sqlite_node, row.sop_instance_uid, row.study_instance_uid, row.series_instance_uid
        )
    yield found


def phase(**changes: Any) -> dict[str, Any]:
    body = {
        "kind": "phase",
        "start": 0.0,
        "end": 1.5,
        "label": "分离胆囊三角",
        "tissue": "胆囊三角",
        "instrument": "电钩",
        "action": "分离",
        "compliance": "符合规范",
        "note": "视野清晰",
    }
    return body | changes


def is_problem(response: Any, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    assert words.lower() in response.json()["detail"].lower(), response.json()


def wav_bytes(seconds: float = 0.2) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(
            b"".join(struct.pack("<h", (i * 50) % 3000) for i in range(int(8000 * seconds)))
        )
    return buffer.getvalue()


def test_annotations_are_created_listed_changed_and_deleted(video: Video) -> None:
    with client(video.node, "doc.a") as http:
        made = http.post(video.url("/annotations"), json=phase())
        assert made.status_code == 201, made.text
        first = made.json()
        assert made.headers["location"] == video.url(f"/annotations/{first['id']}")
        assert first | {"id": 0, "createdAt": "", "updatedAt": ""} == phase() | {
            "id": 0,
            "voiceNoteUrl": None,
            "author": "doc.a",
            "createdAt": "",
            "updatedAt": "",
        }
        step = http.post(
            video.url("/annotations"),
            json={"kind": "step", "start": 0.25, "end": 0.75, "label": "夹闭胆囊管"},
        ).json()
        late = http.post(
            video.url("/annotations"), json=phase(start=1.5, end=2.0, label="取出")
        ).json()
        listed = http.get(video.url("/annotations")).json()["annotations"]
        assert [a["id"] for a in listed] == [first["id"], step["id"], late["id"]]
        assert listed[1]["tissue"] == "" and listed[1]["kind"] == "step"

        changed = http.put(
            video.url(f"/annotations/{step['id']}"),
            json={"kind": "step", "start": 1.75, "end": 2.5, "label": "夹闭胆囊动脉"},
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["label"] == "夹闭胆囊动脉"
        assert changed.json()["updatedAt"] >= changed.json()["createdAt"]
        listed = http.get(video.url("/annotations")).json()["annotations"]
        assert [a["id"] for a in listed] == [first["id"], late["id"], step["id"]]

        detail = http.get(video.url()).json()
        assert detail["video"]["annotationCount"] == 3
        assert [a["id"] for a in detail["annotations"]] == [a["id"] for a in listed]
        assert detail["titlePage"] == {
            "procedure": CHOLE,
            "applicant": "李明",
            "hospital": "重庆医科大学附属第一医院",
            "surgeon": "Li^Ming",
            "diagnosis": "胆囊结石",
            "operationDate": "20250304",
            "operationMinutes": 90.0,
        }

        assert http.delete(video.url(f"/annotations/{late['id']}")).status_code == 204
        listed = http.get(video.url("/annotations")).json()["annotations"]
        assert [a["id"] for a in listed] == [first["id"], step["id"]]
        is_problem(http.delete(video.url(f"/annotations/{late['id']}")), 404, "no annotation")
    assert [d["annotation"] for _, d in video.audit("video_annotation_create")] == [
        first["id"],
        step["id"],
        late["id"],
    ]
    ((update, _),) = video.audit("video_annotation_update")
    ((delete, _),) = video.audit("video_annotation_delete")
    assert update.actor == delete.actor == "doc.a"
    assert update.study_instance_uid == video.study and update.patient_id == "OR-0001"


def test_bad_annotations_are_refused_with_the_reason(video: Video) -> None:
    with client(video.node, "doc.a") as http:
        post = http.post
        url = video.url("/annotations")
        is_problem(post(url, json=phase(kind="chapter")), 422, "kind must be 'phase' or 'step'")
        is_problem(post(url, json=phase(start=-1)), 422, "start must be 0 or more")
        is_problem(post(url, json=phase(start=1.0, end=1.0)), 422, "must be after start")
        is_problem(post(url, json=phase(end=9.0)), 422, "beyond the end of the video")
        is_problem(post(url, json=phase(label="  ")), 422, "label must not be empty")
        is_problem(post(url, json=phase(label="x" * 129)), 422, "label is 129 characters")
        is_problem(post(url, json=phase(tissue="a\x00b")), 422, "tissue contains control")
        is_problem(post(url, json=phase(colour="red")), 400, "colour")
        is_problem(post(url, json={"kind": "phase", "start": 0, "end": 1}), 400, "label")
        is_problem(post(url, json=phase(start="soon")), 400, "start")
        # within the 1 s allowance past the recorded duration (2 s): accepted
        assert post(url, json=phase(end=2.9)).status_code == 201
        is_problem(post("/api/videos/1.2.3.4/annotations", json=phase()), 404, "1.2.3.4")
        is_problem(http.put(video.url("/annotations/99999"), json=phase()), 404, "no annotation")
    with client(video.node, "doc.b") as http:  # another hospital's clinician
        is_problem(http.post(url, json=phase()), 403, "another hospital")
        assert http.get(video.url("/annotations")).status_code == 403
    with client(video.node, "trainee.a") as http:  # neither plays nor annotates
        is_problem(http.get(video.url()), 403, "streaming_playback")
        is_problem(http.post(url, json=phase()), 403, "annotate_video")
    with client(video.node, None) as http:
        assert http.get(video.url("/annotations")).status_code == 401
    denied = [e for e, _ in video.audit("access") if e.outcome == "denied"]
    assert {e.actor for e in denied} >= {"doc.b", "trainee.a"}


def test_a_voice_note_goes_in_and_comes_back(video: Video) -> None:
    audio = wav_bytes()
    with client(video.node, "doc.a") as http:
        made = http.post(video.url("/annotations"), json=phase()).json()
        note_url = video.url(f"/annotations/{made['id']}/voice-note")
        put = http.put(note_url, content=audio, headers={"Content-Type": "audio/wav"})
        assert put.status_code == 200, put.text
        assert put.json()["voiceNoteUrl"] == note_url
        back = http.get(note_url)
        assert back.status_code == 200
        assert back.content == audio
        assert back.headers["content-type"] == "audio/wav"
        # MediaRecorder's type with codecs is taken; the note is replaced.
        webm = b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 4
        put = http.put(note_url, content=webm, headers={"Content-Type": "audio/webm;codecs=opus"})
        assert put.status_code == 200, put.text
        back = http.get(note_url)
        assert back.content == webm and back.headers["content-type"] == "audio/webm"
        is_problem(
            http.put(note_url, content=b"hello", headers={"Content-Type": "text/plain"}),
            415,
            "audio/webm",
        )
        too_big = b"\0" * (10 * 1024 * 1024 + 1)
        is_problem(
            http.put(note_url, content=too_big, headers={"Content-Type": "audio/ogg"}),
            413,
            "at most 10485760 bytes",
        )
        is_problem(
            http.put(note_url, content=b"", headers={"Content-Type": "audio/ogg"}), 422, "empty"
        )
        other = http.post(video.url("/annotations"), json=phase(label="无录音")).json()
        is_problem(
            http.get(video.url(f"/annotations/{other['id']}/voice-note")), 404, "no voice note"
        )
        blobs = video.node.archive.blobs
        with video.node.archive.sessions() as session:
            key = session.scalar(
                select(VideoAnnotation.voice_note_key).where(VideoAnnotation.pk == made["id"])
            )
        assert key is not None and key.startswith("voice-notes/") and blobs.exists(key)
        assert blobs.get(key) == webm
        assert http.delete(video.url(f"/annotations/{made['id']}")).status_code == 204
        assert not blobs.exists(key)
    assert [d["bytes"] for _, d in video.audit("video_voice_note")] == [len(audio), len(webm)]


def test_the_title_page_is_corrected(video: Video) -> None:
    with client(video.node, "doc.a") as http:
        changed = http.patch(
            video.url("/title-page"),
            json={"procedure": "腹腔镜胆囊切除术 中转开腹", "diagnosis": "急性胆囊炎"},
        )
        assert changed.status_code == 200, changed.text
        page = changed.json()["titlePage"]
        assert page["procedure"] == "腹腔镜胆囊切除术 中转开腹"
        assert page["diagnosis"] == "急性胆囊炎"
        assert page["applicant"] == "李明"  # left as it was
        assert changed.json()["video"]["procedure"] == page["procedure"]
        is_problem(
            http.patch(video.url("/title-page"), json={"procedure": "x" * 129}), 422, "procedure"
        )
        is_problem(
            http.patch(video.url("/title-page"), json={"surgeon": "Someone"}), 400, "surgeon"
        )
    with client(video.node, "doc.b") as http:
        assert http.patch(video.url("/title-page"), json={"notes": "x"}).status_code == 403
    ((_, detail),) = video.audit("video_title_page")
    assert detail["fields"] == ["diagnosis", "procedure"]


def test_annotations_export_as_json(video: Video) -> None:
    with client(video.node, "doc.a") as http:
        http.post(video.url("/annotations"), json=phase())
        exported = http.get(video.url("/annotations.json"))
    assert exported.status_code == 200, exported.text
    assert exported.headers["content-disposition"].startswith("attachment;")
    document = exported.json()
    assert document["titlePage"]["procedure"] == CHOLE
    assert document["video"]["sopInstanceUid"] == video.sop
    assert document["video"]["studyInstanceUid"] == video.study
    assert document["video"]["durationSeconds"] == pytest.approx(2.0, abs=0.1)
    assert [a["label"] for a in document["annotations"]] == ["分离胆囊三角"]
    assert document["exportedBy"] == "doc.a" and document["exportedAt"]
    assert document["patient"]["patientId"] == "OR-0001"
    ((_, detail),) = video.audit("video_annotation_export")
    assert detail["format"] == "json" and detail["video"] == video.sop


def test_annotations_export_as_a_stored_sr_that_leaves_the_report_alone(video: Video) -> None:
    archive = video.node.archive
    hospital = archive.hospitals.by_id("HA")
    assert hospital is not None
    archive.reports.ingest_json(
        hospital.pk,
        {
            "study_instance_uid": video.study,
            "patient_id": "OR-0001",
            "exam_name": "腹腔镜胆囊切除术",
            "findings": "术中见胆囊结石。",
            "impression": "胆囊结石。行腹腔镜胆囊切除术。",
            "status": "final",
        },
    )
    with client(video.node, "doc.a") as http:
        report_before = http.get(f"/api/studies/{video.study}/report").json()
        marks = [
            phase(),
            {
                "kind": "step",
                "start": 0.25,
                "end": 0.75,
                "label": "夹闭胆囊管",
                "instrument": "Hem-o-lok",
            },
        ]
        for body in marks:
            assert http.post(video.url("/annotations"), json=body).status_code == 201
        made = http.post(video.url("/annotations/sr"))
        assert made.status_code == 201, made.text
        uids = made.json()
        assert uids["studyInstanceUid"] == video.study
        assert uids["seriesInstanceUid"] != video.series
        found = http.get(f"/dicom-web/studies/{video.study}/series", params={"Modality": "SR"})
        assert found.status_code == 200, found.text
        series = [s["0020000E"]["Value"][0] for s in found.json()]
        assert series == [uids["seriesInstanceUid"]]
        instances = http.get(
            f"/dicom-web/studies/{video.study}/series/{uids['seriesInstanceUid']}/instances"
        ).json()
        assert [i["00080018"]["Value"][0] for i in instances] == [uids["sopInstanceUid"]]
        assert instances[0]["00080016"]["Value"][0] == COMPREHENSIVE_SR
        report_after = http.get(f"/api/studies/{video.study}/report").json()
    assert report_after == report_before  # the annotation SR is not the study's report
    with archive.sessions() as session:
        versions = session.scalar(
            select(func.count(Report.pk)).where(Report.study_instance_uid == video.study)
        )
        videos = session.scalar(select(func.count(SurgicalVideo.pk)))
    assert versions == 1 and videos == 1
    (stored,) = archive.locate(video.study, uids["seriesInstanceUid"], uids["sopInstanceUid"])
    ds = dcmread(io.BytesIO(archive.read(stored)))
    assert ds.Modality == "SR" and ds.PatientID == "OR-0001"
    assert time_ranges(ds) == [
        ("Surgical phase", 0.0, 1.5, video.sop),
        ("Key step", 0.25, 0.75, video.sop),
    ]
    ((_, detail),) = video.audit("video_annotation_sr")
    assert detail["sr"] == uids["sopInstanceUid"] and detail["annotations"] == 2
    with client(video.node, "doc.b") as http:
        assert http.post(video.url("/annotations/sr")).status_code == 403
