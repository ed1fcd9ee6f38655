"""The viewer's video mode in headless Chromium: a surgical video study opens as a playing
video with its title page and annotation timeline; segments seek; the form adds a step; the
playback is recorded as a viewing.

The video is a small generated clip (FFmpeg testsrc2, 6 s) wrapped by the product's own
wrapper with a procedure, surgeon and operation times; annotations are created through the
HTTP API the page itself uses.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from imaging_cloud.node import Node
from tests.e2e.conftest import ARTIFACTS
from tests.support.servers import client, http_base, running_node, token_for
from tests.support.video import VIDEO_ENDOSCOPIC, make_mp4, video_part10

pytestmark = [pytest.mark.needs_chromium, pytest.mark.needs_ffmpeg]
SHOTS = ARTIFACTS.parent / "video"
PASSWORD = "correct horse battery"
STUDY = "1.2.826.0.1.3680043.8.498.8101"
PHASES = [
    {"kind": "phase", "start": 0.0, "end": 2.0, "label": "Exposure 显露", "tissue": "fascia"},
    {"kind": "phase", "start": 2.0, "end": 4.5, "label": "Dissection 分离", "instrument": "hook"},
    {"kind": "phase", "start": 4.5, "end": 6.0, "label": "Closure 关闭"},
]
STEP = {"kind": "step", "start": 3.0, "end": 3.0, "label": "Clip artery 夹闭动脉",
        "action": "clip"}  # fmt: skip


@dataclass(frozen=True)
class VideoStudy:
    node: Node
    sop: str
    series: str


def wait_until(page: Any, expression: str, timeout: float = 15.0) -> Any:
    """Poll ``expression`` in the page until truthy. (wait_for_function evaluates its string
    with eval, which the page's CSP forbids; page.evaluate goes through DevTools instead, so
    the page keeps its real CSP while tested.)"""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {expression}")
        page.wait_for_timeout(100)


@pytest.fixture(scope="module")
def video_study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VideoStudy]:
    folder = tmp_path_factory.mktemp("video-viewer")
    mp4 = make_mp4(folder / "clip.mp4", seconds=6.0, size=(320, 240), colour=None, gop=12)
    part10 = video_part10(
        mp4,
        study_uid=STUDY,
        sop_class_uid=VIDEO_ENDOSCOPIC,
        procedure="Laparoscopic cholecystectomy 腹腔镜胆囊切除术",
        surgeon="Dr Li 李医生",
        applicant="Dr Wang 王医生",
        hospital="Chongqing First 重庆第一医院",
        diagnosis="Cholecystitis 胆囊炎",
        operation_start="2026-03-02T09:00:00",
        operation_end="2026-03-02T10:30:00",
    )
    with running_node(folder / "node") as node:
        node.archive.hospitals.add_hospital("HV", "Chongqing First 重庆第一医院")
        hospital = node.archive.hospitals.by_id("HV")
        assert hospital is not None
        node.archive.users.create_user("radiologist.v", PASSWORD, "radiologist", hospital_id="HV")
        node.archive.store(part10, source="e2e", hospital_pk=hospital.pk)
        with client(node) as http:
            found = http.get(f"/dicom-web/studies/{STUDY}/instances").json()[0]
        yield VideoStudy(node, found["00080018"]["Value"][0], found["0020000E"]["Value"][0])


def _open(browser: Any, study: VideoStudy) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if "Content Security" in m.text else None)
    page.script_errors = errors
    token = token_for(study.node)
    page.goto(f"{http_base(study.node)}/viewer/?study={STUDY}&token={token}")
    wait_until(page, "window.viewerVideo && document.getElementById('video').readyState >= 1", 20)
    return page


def test_a_video_study_plays_and_seeks_in_video_mode(browser: Any, video_study: VideoStudy) -> None:
    page = _open(browser, video_study)
    try:
        assert page.evaluate("document.body.classList.contains('video-mode')")
        duration = page.evaluate("document.getElementById('video').duration")
        assert abs(duration - 6.0) < 0.2
        page.click("#video-play")
        wait_until(page, "document.getElementById('video').currentTime > 0.3", 15)
        page.click("#video-play")  # pause
        page.evaluate("window.viewerVideo.seek(2.5)")
        wait_until(
            page,
            "(() => { const v = document.getElementById('video');"
            " return !v.seeking && v.readyState >= 2; })()",
            15,
        )
        at = page.evaluate("document.getElementById('video').currentTime")
        page.click("#video-frame-forward")
        wait_until(page, "!document.getElementById('video').seeking", 15)
        stepped = page.evaluate("document.getElementById('video').currentTime")
        assert page.evaluate("document.getElementById('video').error") is None
        errors = list(page.script_errors)
    finally:
        page.close()
    assert not errors, errors
    assert abs(at - 2.5) < 0.05
    assert stepped > at and stepped - at < 0.1  # one frame at 25 fps


def test_the_timeline_shows_the_annotations_seeks_and_takes_a_new_step(
    browser: Any, video_study: VideoStudy
) -> None:
    sop = video_study.sop
    with client(video_study.node) as http:
        for old in http.get(f"/api/videos/{sop}/annotations").json()["annotations"]:
            http.delete(f"/api/videos/{sop}/annotations/{old['id']}")
        for phase in PHASES:
            created = http.post(f"/api/videos/{sop}/annotations", json=phase)
            assert created.status_code == 201, created.text
    page = _open(browser, video_study)
    try:
        wait_until(
            page, f"document.querySelectorAll('#timeline .segment').length === {len(PHASES)}", 15
        )
        title = page.inner_text("#video-title")
        second = page.locator("#timeline .segment").nth(1)
        second.hover()
        tip = page.inner_text(".timeline-tip")
        second.click()
        wait_until(page, "!document.getElementById('video').seeking", 15)
        after_click = page.evaluate("document.getElementById('video').currentTime")
        current = page.inner_text("#annotation-list .annotation.current")

        page.click("#video-frame-forward")  # add a step through the form, at the current time
        page.evaluate("window.viewerVideo.seek(3.0)")
        wait_until(page, "!document.getElementById('video').seeking", 15)
        form = page.locator("#annotation-form")
        form.locator("select[name=kind]").select_option("step")
        form.locator("button.now").click()
        form.locator("input[name=label]").fill(STEP["label"])
        form.locator("input[name=action]").fill("clip")
        form.locator("button[type=submit]").click()
        wait_until(
            page,
            "document.querySelectorAll('#timeline .step-span, #timeline .step-marker').length"
            " === 1",
            15,
        )
        page.click("#video-play")
        page.wait_for_timeout(600)
        page.click("#video-play")  # pause: the viewing ends
        page.wait_for_timeout(500)
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "viewer_video_timeline.png"), full_page=True)
    finally:
        page.close()
    assert "Laparoscopic cholecystectomy" in title and "Dr Li" in title
    assert "Dissection" in tip and "hook" in tip
    assert abs(after_click - 2.0) <= 0.2
    assert "Dissection" in current
    with client(video_study.node) as http:
        annotations = http.get(f"/api/videos/{sop}/annotations").json()["annotations"]
        steps = [a for a in annotations if a["kind"] == "step"]
        assert len(steps) == 1 and steps[0]["label"] == STEP["label"], annotations
        assert abs(steps[0]["start"] - 3.0) < 0.1 and steps[0]["action"] == "clip"
        viewings = http.get(f"/api/videos/{sop}/viewings")
    assert viewings.status_code == 200, viewings.text
    records = viewings.json()  # a list of viewing records, one per playback
    assert isinstance(records, list) and records, records
    played = [r for r in records if r["viewer"] == "test-admin"]
    assert played and all(r["sopInstanceUid"] == sop for r in records), records
    ended = [r for r in played if r["endedAt"]]
    assert any(r["durationSeconds"] >= 0.3 for r in ended), records  # the 600 ms played
    assert all(r["viewerKind"] == "user" and r["organisation"] for r in played), records


def test_the_form_is_hidden_from_users_who_may_not_annotate(
    browser: Any, video_study: VideoStudy
) -> None:
    page = browser.new_page()
    token = token_for(video_study.node, "radiologist.v")
    try:
        page.goto(f"{http_base(video_study.node)}/viewer/?study={STUDY}&token={token}")
        wait_until(page, "window.viewerVideo && window.viewerVideo.mayAnnotate !== null", 20)
        hidden = page.evaluate("document.getElementById('annotation-form').hidden")
    finally:
        page.close()
    assert hidden


def test_a_phase_with_a_voice_note_file_is_saved_and_plays(
    browser: Any, video_study: VideoStudy, tmp_path: Path
) -> None:
    note = tmp_path / "note.wav"  # one second of a 660 Hz tone, made here
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
         "sine=frequency=660:sample_rate=16000:duration=1", str(note)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    page = _open(browser, video_study)
    try:
        wait_until(page, "!document.getElementById('annotation-form').hidden", 15)
        form = page.locator("#annotation-form")
        form.locator("select[name=kind]").select_option("phase")
        form.locator("input[name=start]").fill("5")
        form.locator("input[name=end]").fill("5.9")
        form.locator("input[name=label]").fill("Voice phase 语音阶段")
        form.locator("input[name=voice]").set_input_files(str(note))
        form.locator("button[type=submit]").click()
        wait_until(page, "document.querySelector('#annotation-list .voice-play')", 15)
        page.click("#annotation-list .voice-play")
        wait_until(page, "document.querySelector('#annotation-list .voice-play.playing')", 10)
        message = page.inner_text(".video-message")
    finally:
        page.close()
    assert "Saved" in message, message
    with client(video_study.node) as http:
        annotations = http.get(f"/api/videos/{video_study.sop}/annotations").json()["annotations"]
        voiced = [a for a in annotations if a["label"] == "Voice phase 语音阶段"]
        assert len(voiced) == 1 and voiced[0]["voiceNoteUrl"], annotations
        audio = http.get(voiced[0]["voiceNoteUrl"])
    assert audio.status_code == 200 and audio.content == note.read_bytes()


def test_an_expired_media_url_is_asked_for_again_keeping_the_position(
    browser: Any, video_study: VideoStudy
) -> None:
    page = _open(browser, video_study)
    try:
        page.evaluate("window.viewerVideo.seek(2.0)")
        wait_until(page, "(() => { const v = document.getElementById('video');"
                         " return !v.seeking && v.readyState >= 2; })()", 15)  # fmt: skip
        # what the browser meets when five minutes have passed: the URL's token is refused
        page.evaluate(
            "(() => { const v = window.viewerVideo;"
            " v.video.src = v.mediaUrl.replace(/media_token=[^&]+/, 'media_token=expired'); })()"
        )
        wait_until(page, "window.viewerVideo.refreshes.length === 1", 15)
        state = wait_until(
            page,
            "(() => { const v = document.getElementById('video');"
            " return !v.seeking && v.readyState >= 2 && !v.src.includes('expired')"
            " && {t: v.currentTime, error: v.error && v.error.code}; })()",
            15,
        )
    finally:
        page.close()
    assert state["error"] is None
    assert abs(state["t"] - 2.0) < 0.1, state


def test_a_patient_watches_without_the_annotations_and_without_an_error(
    browser: Any, video_study: VideoStudy
) -> None:
    """Annotations are professional evaluation: the patient's viewer plays the video with its
    title, and shows no timeline, no annotation list and no error (the API refuses them)."""
    sop = video_study.sop
    with client(video_study.node) as http:
        if not http.get(f"/api/videos/{sop}/annotations").json()["annotations"]:
            assert http.post(f"/api/videos/{sop}/annotations", json=PHASES[0]).status_code == 201
    token = video_study.node.tokens.issue_for("patient:P-VIDEO", "patient", pid="P-VIDEO")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        page.goto(f"{http_base(video_study.node)}/viewer/?study={STUDY}&token={token}")
        wait_until(
            page, "window.viewerVideo && window.viewerVideo.annotationsVisible === false", 20
        )
        wait_until(page, "document.getElementById('video').readyState >= 1", 20)
        title = page.inner_text("#video-title")
        page.evaluate("window.viewerVideo.reloadAnnotations()")  # the API answers 403 here
        page.wait_for_timeout(300)
        state = page.evaluate(
            "(() => { const v = window.viewerVideo; return {"
            " timeline: v.timeline.hidden, legend: v.legend.hidden, side: v.side.hidden,"
            " segments: document.querySelectorAll('#timeline .segment').length,"
            " message: v.message.textContent, visible: v.annotationsVisible,"
            " shownErrors: [...document.querySelectorAll('.error')]"
            ".filter((e) => !e.hidden && e.textContent.trim()).length }; })()"
        )
    finally:
        page.close()
    assert not errors, errors
    assert "Laparoscopic cholecystectomy" in title
    assert state == {"timeline": True, "legend": True, "side": True, "segments": 0,
                     "message": "", "visible": False, "shownErrors": 0}, state  # fmt: skip
