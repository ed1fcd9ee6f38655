"""Expert review of surgical videos over HTTP against a real node, with real users.

A platform admin sets up a review of an applicant's videos for two experts; each scores
blind, they comment at moments of a video, watch (viewing records with durations and the
organisation they watch from), and the per-applicant statistics add up what they submitted.
Closing the task makes scores final and takes the videos out of the experts' reach. Hospital
admins review their own hospital's videos only; an applicant never reviews their own task.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.audit_query import AuditFilter
from imaging_cloud.node import Node
from tests.support.servers import PASSWORD, client
from tests.support.video import make_mp4, video_part10

pytestmark = pytest.mark.needs_ffmpeg

APPLICANT = "dr.zhang"
SCORES_ONE = {
    "indication": 12,
    "exposure": 16,
    "technique": 20,
    "haemostasis": 15,
    "fluency": 8,
    "video_quality": 9,
}  # 80
SCORES_TWO = {
    "indication": 9,
    "exposure": 10,
    "technique": 14,
    "haemostasis": 11,
    "fluency": 6,
    "video_quality": 5.5,
}  # 55.5


@dataclass
class Video:
    study: str
    series: str
    sop: str

    @property
    def media_url(self) -> str:
        return (
            f"/viewer-api/studies/{self.study}/series/{self.series}/instances/{self.sop}/media-url"
        )


@dataclass
class Region:
    node: Node
    ha: list[Video]  # applicant's videos at hospital A
    hb: Video  # a video of hospital B

    def as_user(self, username: str) -> httpx.Client:
        return client(self.node, username)


def _store(node: Node, mp4: Path, hospital: str, n: int, **sidecar: str) -> Video:
    found = node.archive.hospitals.by_id(hospital)
    assert found is not None
    study = f"1.2.826.0.1.3680043.8.498.{90 + n}"
    part10 = video_part10(
        mp4, patient_id=f"P-{hospital}-{n}", study_uid=study, sop_uid=f"{study}.1.1", **sidecar
    )
    node.archive.store(part10, source="test", hospital_pk=found.pk)
    row = node.archive.videos.by_uid(f"{study}.1.1")
    assert row is not None, "the stored video was not catalogued"
    return Video(row.study_instance_uid, row.series_instance_uid, row.sop_instance_uid)


@pytest.fixture
def region(node: Node, tmp_path: Path) -> Region:
    mp4 = make_mp4(tmp_path / "clip.mp4", seconds=1.0, size=(160, 120), audio=False)
    hospitals = node.archive.hospitals
    hospitals.add_hospital("HA", "重庆医科大学附属第一医院", ae_title="HA_GW")
    hospitals.add_hospital("HB", "重庆市第五人民医院", ae_title="HB_GW")
    users = node.archive.users
    users.create_user("admin.a", PASSWORD, "hospital_admin", hospital_id="HA")
    users.create_user("expert.one", PASSWORD, "video_expert")
    users.create_user("expert.two", PASSWORD, "video_expert", hospital_id="HB")
    users.create_user("expert.three", PASSWORD, "video_expert")
    users.create_user("dr.wang", PASSWORD, "video_expert")  # an expert who also applies
    users.create_user("doc.a", PASSWORD, "clinician", hospital_id="HA")
    common = {"procedure": "腹腔镜胆囊切除术", "surgeon": "Zhang^San", "applicant": APPLICANT}
    ha = [_store(node, mp4, "HA", n, **common) for n in (1, 2)]
    hb = _store(node, mp4, "HB", 3, procedure="阑尾切除术", surgeon="Li^Si", applicant="dr.li")
    return Region(node, ha, hb)


def is_problem(response: httpx.Response, status: int, words: str = "") -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert words.lower() in response.json()["detail"].lower(), response.json()


def _task_body(region: Region, **more: Any) -> dict[str, Any]:
    return {
        "title": "2026 副主任医师 手术视频评审",
        "applicant": APPLICANT,
        "videos": [v.sop for v in region.ha],
        "reviewers": ["expert.one", "expert.two"],
        "dueAt": "2026-12-31T16:00:00Z",
        **more,
    }


def _watch(http: httpx.Client, video: Video, task_id: int | None) -> tuple[str, float]:
    body = {"taskId": task_id} if task_id is not None else {}
    started = http.post(f"/api/videos/{video.sop}/viewings", json=body)
    assert started.status_code == 201, started.text
    viewing = started.json()["viewingId"]
    assert len(viewing) >= 16 and viewing.replace("-", "").replace("_", "").isalnum()
    time.sleep(0.3)
    ended = http.post(f"/api/videos/{video.sop}/viewings/{viewing}/end")
    assert ended.status_code == 200, ended.text
    seconds = ended.json()["durationSeconds"]
    assert seconds >= 0.3
    return viewing, seconds


def test_the_whole_review_of_an_applicants_videos(region: Region) -> None:
    v1, v2 = region.ha
    with region.as_user("test-admin") as admin:
        created = admin.post("/api/video-reviews/tasks", json=_task_body(region))
        assert created.status_code == 201, created.text
        task = created.json()
        task_id = task["id"]
        assert task["status"] == "open" and task["applicant"] == APPLICANT
        assert task["hospitalId"] == "HA"  # the videos' hospital
        form = task["form"]
        assert sum(c["max"] for c in form["criteria"]) == 100 and form["passMark"] == 60
        assert {c["key"] for c in form["criteria"]} == set(SCORES_ONE)
        assert any("手术指征" in c["label"] for c in form["criteria"])
        assert [r["reviewer"] for r in task["reviewers"]] == ["expert.one", "expert.two"]
        assert not any(r["submitted"] for r in task["reviewers"])

    with region.as_user("expert.one") as one, region.as_user("expert.two") as two:
        mine = one.get("/api/video-reviews/tasks").json()["tasks"]
        assert [(t["id"], t["mySubmitted"]) for t in mine] == [(task_id, False)]
        seen = one.get(f"/api/video-reviews/tasks/{task_id}").json()
        assert "reviewers" not in seen and seen["myAssignment"]["submitted"] is False
        assert [v["sopInstanceUid"] for v in seen["videos"]] == [v1.sop, v2.sop]
        first = seen["videos"][0]
        assert first["renderedPath"] == f"/studies/{v1.study}/series/{v1.series}/instances/{v1.sop}"
        assert first["procedure"] == "腹腔镜胆囊切除术" and first["durationSeconds"]
        assert "patientId" not in first and "P-HA-1" not in str(seen)  # anonymised

        # the expert plays the video through the media URL, as the page does
        media = one.post(v1.media_url)
        assert media.status_code == 200, media.text
        playable = media.json()["url"]
        assert one.get(playable, headers={"Range": "bytes=0-99"}).status_code == 206

        # scoring: every criterion, within its maximum
        bad = dict(SCORES_ONE)
        del bad["fluency"]
        url = f"/api/video-reviews/tasks/{task_id}/scores"
        answer = one.put(url, json={"scores": bad, "recommendation": "pass", "comment": ""})
        is_problem(answer, 422, "fluency")
        over = SCORES_ONE | {"technique": 26}
        answer = one.put(url, json={"scores": over, "recommendation": "pass", "comment": ""})
        is_problem(answer, 422, "technique")
        answer = one.put(url, json={"scores": SCORES_ONE | {"extra": 1}, "recommendation": "pass"})
        is_problem(answer, 422, "extra")
        first_try = SCORES_ONE | {"technique": 10}
        answer = one.put(url, json={"scores": first_try, "recommendation": "fail", "comment": "x"})
        assert answer.status_code == 200 and answer.json()["total"] == 70
        earlier = answer.json()["submittedAt"]
        time.sleep(0.05)
        answer = one.put(
            url, json={"scores": SCORES_ONE, "recommendation": "pass", "comment": "操作规范 good"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["total"] == 80 and answer.json()["submittedAt"] > earlier
        answer = two.put(
            url, json={"scores": SCORES_TWO, "recommendation": "fail", "comment": "止血欠佳"}
        )
        assert answer.json()["total"] == 55.5

        # blind: the second expert sees their own scores, never the first's
        blind = two.get(f"/api/video-reviews/tasks/{task_id}").json()
        assert blind["myAssignment"]["scores"] == SCORES_TWO
        assert "reviewers" not in blind and "操作规范 good" not in str(blind)
        assert one.get("/api/video-reviews/tasks").json()["tasks"][0]["mySubmitted"] is True

        # comments, one at a moment of a video; everyone on the task sees them
        comments = f"/api/video-reviews/tasks/{task_id}/comments"
        said = one.post(comments, json={"text": "此处解剖显露清楚", "sopInstanceUid": v1.sop,
                                        "atSeconds": 0.5})  # fmt: skip
        assert said.status_code == 201, said.text
        assert said.json()["atSeconds"] == 0.5 and said.json()["sopInstanceUid"] == v1.sop
        is_problem(one.post(comments, json={"text": " "}), 422)
        is_problem(one.post(comments, json={"text": "x", "sopInstanceUid": region.hb.sop}), 422)
        listed = two.get(comments).json()
        assert [(c["author"], c["text"]) for c in listed] == [("expert.one", "此处解剖显露清楚")]
        assert two.get(f"/api/video-reviews/tasks/{task_id}").json()["comments"] == listed

        # viewing records: experts watch within the task; the organisation they watch from
        is_problem(one.post(f"/api/videos/{v1.sop}/viewings", json={}), 422, "taskId")
        viewing, seconds_one = _watch(one, v1, task_id)
        again = one.post(f"/api/videos/{v1.sop}/viewings/{viewing}/end").json()
        assert again["durationSeconds"] == seconds_one  # a second end keeps the first
        is_problem(two.post(f"/api/videos/{v1.sop}/viewings/{viewing}/end"), 403)
        _, seconds_two = _watch(two, v2, task_id)

    with region.as_user("test-admin") as admin:
        records = admin.get(f"/api/videos/{v1.sop}/viewings").json()
        assert [(r["viewer"], r["organisation"], r["taskId"]) for r in records] == [
            ("expert.one", "expert panel", task_id)
        ]
        assert records[0]["durationSeconds"] == seconds_one and records[0]["endedAt"]
        in_task = admin.get(f"/api/video-reviews/tasks/{task_id}/viewings").json()
        assert {(r["viewer"], r["organisation"]) for r in in_task} == {
            ("expert.one", "expert panel"),
            ("expert.two", "HB 重庆市第五人民医院"),
        }
        starts = region.node.archive.audit.search(AuditFilter(action="video_viewing"))
        assert {e["actor"] for e in starts} >= {"expert.one", "expert.two"}

        # statistics per applicant, checked against what was submitted
        manager = admin.get(f"/api/video-reviews/tasks/{task_id}").json()
        assert all(r["submitted"] for r in manager["reviewers"])
        figures = admin.get("/api/video-reviews/statistics").json()["applicants"]
        assert [f["applicant"] for f in figures] == [APPLICANT]
        zhang = figures[0]
        assert zhang["tasks"] == 1 and zhang["reviewsSubmitted"] == 2
        assert zhang["reviewsPending"] == 0
        assert zhang["meanTotal"] == pytest.approx((80 + 55.5) / 2, abs=0.01)
        assert (zhang["minTotal"], zhang["maxTotal"]) == (55.5, 80)
        assert (zhang["passRecommendations"], zhang["failRecommendations"]) == (1, 1)
        means = {c["key"]: c["mean"] for c in zhang["criteria"]}
        assert means == {
            key: pytest.approx((SCORES_ONE[key] + SCORES_TWO[key]) / 2) for key in SCORES_ONE
        }
        assert zhang["viewingSeconds"] == pytest.approx(seconds_one + seconds_two, abs=0.01)
        only = admin.get("/api/video-reviews/statistics", params={"applicant": "nobody"})
        assert only.json() == {"applicants": []}

        exported = admin.get("/api/video-reviews/statistics", params={"format": "csv"})
        assert exported.status_code == 200
        assert exported.headers["content-type"].startswith("text/csv")
        assert exported.content.startswith("\ufeff".encode())
        rows = list(csv.reader(io.StringIO(exported.content.decode("utf-8-sig"))))
        header, line = rows[0], dict(zip(rows[0], rows[1], strict=True))
        assert len(rows) == 2 and header[0] == "applicant"
        for key, value in zhang.items():
            if key == "criteria":
                continue
            assert line[key] == ("" if value is None else str(value)), key
        for key, mean in means.items():
            assert float(line[f"criterion:{key}"]) == pytest.approx(mean)

        # closing: scores become final, the experts lose the videos
        closed = admin.post(f"/api/video-reviews/tasks/{task_id}/close")
        assert closed.status_code == 200 and closed.json()["status"] == "closed"

    with region.as_user("expert.one") as one:
        answer = one.put(
            f"/api/video-reviews/tasks/{task_id}/scores",
            json={"scores": SCORES_ONE, "recommendation": "fail", "comment": ""},
        )
        is_problem(answer, 409, "closed")
        assert one.post(v1.media_url).status_code == 403
        rendered = f"/dicom-web{first['renderedPath']}/rendered"
        assert one.get(rendered).status_code == 403
        assert one.get(playable).status_code == 403  # the earlier media URL stops working too
        is_problem(one.post(f"/api/videos/{v1.sop}/viewings", json={"taskId": task_id}), 403)
        # the closed task is still listed, with the expert's own submission
        assert one.get(f"/api/video-reviews/tasks/{task_id}").json()["status"] == "closed"


def test_who_may_review_what(region: Region) -> None:
    v1 = region.ha[0]
    with region.as_user("test-admin") as admin:
        task_id = admin.post("/api/video-reviews/tasks", json=_task_body(region)).json()["id"]
        # an applicant never reviews their own task
        own = _task_body(region, applicant="dr.wang", reviewers=["expert.one", "dr.wang"])
        is_problem(admin.post("/api/video-reviews/tasks", json=own), 422, "applicant")
        # reviewers are active users holding video_review; videos are catalogued ones
        clinician = _task_body(region, reviewers=["doc.a"])
        is_problem(admin.post("/api/video-reviews/tasks", json=clinician), 422, "video_review")
        ghost = _task_body(region, reviewers=["nobody.here"])
        is_problem(admin.post("/api/video-reviews/tasks", json=ghost), 422, "not an active")
        unknown = _task_body(region, videos=["1.2.3.4.5"])
        is_problem(admin.post("/api/video-reviews/tasks", json=unknown), 422, "catalogue")
        form = {"criteria": [{"key": "overall", "label": "总体 Overall", "max": 10}],
                "passMark": 11}  # fmt: skip
        is_problem(admin.post("/api/video-reviews/tasks", json=_task_body(region, form=form)), 422)

    with region.as_user("expert.three") as stranger:
        # an expert not assigned: neither the task nor its videos
        is_problem(stranger.get(f"/api/video-reviews/tasks/{task_id}"), 404)
        assert stranger.get("/api/video-reviews/tasks").json() == {"tasks": []}
        assert stranger.post(v1.media_url).status_code == 403
        path = f"/dicom-web/studies/{v1.study}/series/{v1.series}/instances/{v1.sop}/rendered"
        assert stranger.get(path).status_code == 403
        scores = {"scores": SCORES_ONE, "recommendation": "pass"}
        is_problem(stranger.put(f"/api/video-reviews/tasks/{task_id}/scores", json=scores), 404)
        body = {"taskId": task_id}
        is_problem(stranger.post(f"/api/videos/{v1.sop}/viewings", json=body), 403)
        assert stranger.post(f"/api/video-reviews/tasks/{task_id}/comments",
                             json={"text": "hi"}).status_code == 404  # fmt: skip
        assert stranger.get("/api/video-reviews/statistics").status_code == 403

    with region.as_user("admin.a") as hospital_admin:
        # another hospital's video cannot go into a hospital admin's task
        theirs = _task_body(region, videos=[region.hb.sop])
        is_problem(hospital_admin.post("/api/video-reviews/tasks", json=theirs), 403)
        refused = AuditFilter(actor="admin.a", action="video_review_task", outcome="denied")
        assert region.node.archive.audit.search(refused)  # attempts beyond one's scope are kept
        form = {"criteria": [{"key": "overall", "label": "总体 Overall", "max": 10}],
                "passMark": 6}  # fmt: skip
        ours = _task_body(region, videos=[v1.sop], reviewers=["expert.three"], form=form)
        created = hospital_admin.post("/api/video-reviews/tasks", json=ours)
        assert created.status_code == 201, created.text
        assert created.json()["form"]["criteria"][0]["max"] == 10
        # the hospital's own and the platform admin's task on its videos are its tasks
        listed = {t["id"] for t in hospital_admin.get("/api/video-reviews/tasks").json()["tasks"]}
        assert listed == {task_id, created.json()["id"]}
        is_problem(
            hospital_admin.get("/api/video-reviews/statistics", params={"hospitalId": "HB"}), 403
        )
        # a clinician of the hospital watches its video: the organisation is the hospital
        with region.as_user("doc.a") as doctor:
            _watch(doctor, v1, None)
        records = hospital_admin.get(f"/api/videos/{v1.sop}/viewings")
        assert records.status_code == 200, records.text
        assert records.json()[-1]["viewer"] == "doc.a"
        assert records.json()[-1]["organisation"] == "HA 重庆医科大学附属第一医院"
        assert hospital_admin.get(f"/api/videos/{region.hb.sop}/viewings").status_code == 403

    with region.as_user("expert.three") as now_assigned:
        # the new task reaches this expert, with its own form
        scores = {"scores": {"overall": 7}, "recommendation": "pass", "comment": "ok"}
        answer = now_assigned.put(
            f"/api/video-reviews/tasks/{created.json()['id']}/scores", json=scores
        )
        assert answer.status_code == 200 and answer.json()["total"] == 7
        # but a clinician holds no review permission
    with region.as_user("doc.a") as clinician_http:
        assert clinician_http.get("/api/video-reviews/tasks").status_code == 403


# --- review findings: who reads what, and what a forged or late request gets ------------------


def test_an_auditor_reads_viewings_without_patient_identity(region: Region) -> None:
    v1 = region.ha[0]
    node = region.node
    node.archive.users.create_user("auditor.x", PASSWORD, "auditor")
    node.archive.users.create_user("regulator.x", PASSWORD, "regulator")
    patient = node.tokens.issue_for("patient:P-HA-1", "patient", pid="P-HA-1")
    with client(node, None) as own:
        own.headers["Authorization"] = f"Bearer {patient}"
        _watch(own, v1, None)  # the patient watches their own operation
    with region.as_user("auditor.x") as auditor:
        records = auditor.get(f"/api/videos/{v1.sop}/viewings")
        assert records.status_code == 200, records.text
        assert [(r["viewer"], r["viewerKind"]) for r in records.json()] == [
            ("patient:(redacted)", "patient")
        ]
        assert "P-HA-1" not in records.text
    with region.as_user("test-admin") as admin:  # PHI holders see who it was
        shown = admin.get(f"/api/videos/{v1.sop}/viewings").json()
        assert [r["viewer"] for r in shown] == ["patient:P-HA-1"]
    with region.as_user("regulator.x") as regulator:  # region scope without the permissions
        is_problem(regulator.get(f"/api/videos/{v1.sop}/viewings"), 403)


def _grant(node: Node, patient_id: str, hospital_id: str) -> None:
    from datetime import UTC, datetime, timedelta

    from cloud.models import PatientGrant

    hospital = node.archive.hospitals.by_id(hospital_id)
    assert hospital is not None
    now = datetime.now(UTC)
    with node.archive.sessions() as session:
        session.add(
            PatientGrant(patient_id=patient_id, hospital_pk=hospital.pk, method="qr",
                         granted_at=now, expires_at=now + timedelta(hours=2))
        )  # fmt: skip
        session.commit()


def test_a_patients_grant_is_no_consent_to_an_external_panel(region: Region) -> None:
    hb = region.hb
    _grant(region.node, "P-HB-3", "HA")  # HB's patient lets HA see their study, for care
    with region.as_user("admin.a") as hospital_admin:
        assert hospital_admin.get(f"/dicom-web/studies/{hb.study}/metadata").status_code == 200
        body = _task_body(region, videos=[hb.sop], reviewers=["expert.three"])
        is_problem(hospital_admin.post("/api/video-reviews/tasks", json=body), 403, "hospital")
    with region.as_user("expert.three") as expert:
        assert expert.get("/api/video-reviews/tasks").json() == {"tasks": []}
        assert expert.post(hb.media_url).status_code == 403


def test_a_task_id_on_a_viewing_is_accepted_only_from_those_who_see_the_task(
    region: Region,
) -> None:
    v1 = region.ha[0]
    with region.as_user("test-admin") as admin:
        task_id = admin.post("/api/video-reviews/tasks", json=_task_body(region)).json()["id"]
    patient = region.node.tokens.issue_for("patient:P-HA-1", "patient", pid="P-HA-1")
    with region.as_user("doc.a") as clinician, client(region.node, None) as own:
        own.headers["Authorization"] = f"Bearer {patient}"
        for http in (clinician, own):
            forged = http.post(f"/api/videos/{v1.sop}/viewings", json={"taskId": task_id})
            absent = http.post(f"/api/videos/{v1.sop}/viewings", json={"taskId": 999999})
            is_problem(forged, 404, "no such review task")
            is_problem(absent, 404, "no such review task")
            assert forged.json()["detail"] == absent.json()["detail"]
        _watch(clinician, v1, None)  # without a task, watching is as before
    with region.as_user("test-admin") as admin:
        assert all(r["taskId"] is None for r in admin.get(f"/api/videos/{v1.sop}/viewings").json())
        assert admin.get(f"/api/video-reviews/tasks/{task_id}/viewings").json() == []
        _watch(admin, v1, task_id)  # the task's manager may watch within it
    with region.as_user("expert.one") as expert:
        _watch(expert, v1, task_id)


def test_the_statistics_csv_runs_no_formula(region: Region) -> None:
    body = _task_body(region, applicant='=HYPERLINK("http://x","y")')
    with region.as_user("test-admin") as admin:
        assert admin.post("/api/video-reviews/tasks", json=body).status_code == 201
        exported = admin.get("/api/video-reviews/statistics", params={"format": "csv"})
        rows = list(csv.reader(io.StringIO(exported.content.decode("utf-8-sig"))))
        assert rows[1][0] == '\'=HYPERLINK("http://x","y")'


def test_patient_ids_shown_with_a_task_are_audited(region: Region) -> None:
    v1, v2 = region.ha
    with region.as_user("test-admin") as admin:
        task_id = admin.post("/api/video-reviews/tasks", json=_task_body(region)).json()["id"]
        before = region.node.archive.audit.search(AuditFilter(actor="test-admin", action="view"))
        shown = admin.get(f"/api/video-reviews/tasks/{task_id}")
        assert {v["patientId"] for v in shown.json()["videos"]} == {"P-HA-1", "P-HA-2"}
    after = region.node.archive.audit.search(AuditFilter(actor="test-admin", action="view"))
    new = [e for e in after if e["seq"] not in {b["seq"] for b in before}]
    assert {(e["study_instance_uid"], e["patient_id"]) for e in new} == {
        (v1.study, "P-HA-1"),
        (v2.study, "P-HA-2"),
    }
    assert all(e["detail"]["task"] == task_id for e in new)
    with region.as_user("expert.one") as expert:  # experts see no patient ID: nothing to audit
        assert "patientId" not in str(expert.get(f"/api/video-reviews/tasks/{task_id}").json())


def test_a_close_during_a_score_submission_wins(region: Region) -> None:
    """The task is closed by another connection after the expert's request read it open but
    before it wrote: the score must not land after the close."""
    from sqlalchemy import event, update

    from cloud.models import ReviewAssignment, ReviewComment, ReviewTask

    with region.as_user("test-admin") as admin:
        task_id = admin.post("/api/video-reviews/tasks", json=_task_body(region)).json()["id"]
    archive = region.node.archive
    armed = {"on": True}

    def close_meanwhile(session: Any, _context: Any, _instances: Any) -> None:
        touched = [*session.dirty, *session.new]
        if armed["on"] and any(isinstance(o, ReviewAssignment | ReviewComment) for o in touched):
            armed["on"] = False
            with archive.engine.begin() as connection:
                connection.execute(
                    update(ReviewTask).where(ReviewTask.pk == task_id).values(status="closed")
                )

    event.listen(archive.sessions, "before_flush", close_meanwhile)
    try:
        with region.as_user("expert.one") as expert:
            url = f"/api/video-reviews/tasks/{task_id}/scores"
            body = {"scores": SCORES_ONE, "recommendation": "pass", "comment": "late"}
            is_problem(expert.put(url, json=body), 409, "closed")
            armed["on"] = True
            with archive.engine.begin() as connection:
                connection.execute(
                    update(ReviewTask).where(ReviewTask.pk == task_id).values(status="open")
                )
            said = expert.post(f"/api/video-reviews/tasks/{task_id}/comments", json={"text": "x"})
            is_problem(said, 409, "closed")
    finally:
        event.remove(archive.sessions, "before_flush", close_meanwhile)
    with region.as_user("test-admin") as admin:
        task = admin.get(f"/api/video-reviews/tasks/{task_id}").json()
        assert task["status"] == "closed"
        assert not any(r["submitted"] for r in task["reviewers"]) and task["comments"] == []
