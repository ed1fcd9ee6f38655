"""An expert reviews a surgical video in headless Chromium on the /video-review/ page.

The expert opens the page with a token (as an HIS embedding does), the single assigned task
opens, the video plays from its media URL, the page records the viewing (start on play, end
on pause with fetch keepalive), the expert fills in the scoring form (the live total follows),
recommends, comments at the current time, and submits. The API then shows the submission and
a viewing record with a positive duration, the organisation being the expert panel.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imaging_cloud.node import Node
from tests.e2e.conftest import ARTIFACTS
from tests.support.servers import PASSWORD, client, http_base, running_node, token_for
from tests.support.video import make_mp4, video_part10


def until(page: Any, script: str, timeout: float = 20) -> Any:
    """Poll ``script`` (a function; the page's CSP forbids evaluating strings) until truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(script)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for: {script}"
        time.sleep(0.05)


pytestmark = [pytest.mark.needs_chromium, pytest.mark.needs_ffmpeg]
SHOTS = ARTIFACTS.parent / "review"
SCORES = {
    "indication": "12",
    "exposure": "16",
    "technique": "20.5",
    "haemostasis": "15",
    "fluency": "8",
    "video_quality": "9",
}  # 80.5


@pytest.fixture(scope="module")
def review_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, int, str]]:
    folder = tmp_path_factory.mktemp("review-e2e")
    mp4 = make_mp4(folder / "clip.mp4", seconds=2.0, size=(320, 240), colour=None, audio=False)
    with running_node(folder / "node") as node:
        node.archive.hospitals.add_hospital("HA", "重庆医科大学附属第一医院", ae_title="HA_GW")
        hospital = node.archive.hospitals.by_id("HA")
        assert hospital is not None
        node.archive.users.create_user("expert.one", PASSWORD, "video_expert")
        sop = "1.2.826.0.1.3680043.8.498.77.1.1"
        part10 = video_part10(
            mp4,
            study_uid="1.2.826.0.1.3680043.8.498.77",
            sop_uid=sop,
            procedure="腹腔镜胆囊切除术",
            applicant="dr.zhang",
        )
        node.archive.store(part10, source="e2e", hospital_pk=hospital.pk)
        with client(node) as admin:
            created = admin.post(
                "/api/video-reviews/tasks",
                json={
                    "title": "2026 副主任医师 手术视频评审",
                    "applicant": "dr.zhang",
                    "videos": [sop],
                    "reviewers": ["expert.one"],
                },
            )
            assert created.status_code == 201, created.text
        yield node, created.json()["id"], sop


def test_an_expert_watches_scores_and_comments_on_the_page(
    browser: Any, review_node: tuple[Node, int, str]
) -> None:
    node, task_id, sop = review_node
    base = http_base(node)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on(
        "console",
        lambda m: errors.append(m.text) if "Content Security" in m.text else None,
    )
    try:
        page.goto(f"{base}/video-review/?token={token_for(node, 'expert.one')}")
        until(page, "() => window.review && window.review.ready")
        assert "token=" not in page.url  # taken out of the address bar
        assert page.text_content("#task-applicant") == "dr.zhang"
        until(page, "() => document.querySelector('#video-list video').readyState >= 1")
        # play (muted: headless autoplay rules), then pause: one viewing record
        page.evaluate("(() => { const v = document.querySelector('#video-list video');"
                      " v.muted = true; return v.play(); })()")  # fmt: skip
        until(page, "() => document.querySelector('#video-list video').currentTime > 0.8")
        page.evaluate("document.querySelector('#video-list video').pause()")
        until(
            page,
            "() => "
            "window.review.viewings.length === 1"
            " && window.review.viewings[0].durationSeconds !== undefined",
        )
        # the scoring form: a live total, a recommendation, a comment
        for key, points in SCORES.items():
            page.fill(f"#score-{key}", points)
        assert page.text_content("#total") == "80.5"
        page.fill("#score-technique", "30")
        assert "超出" in page.text_content("#verdict")  # technique's maximum is 25
        page.fill("#score-technique", SCORES["technique"])
        page.check("input[name=recommendation][value=pass]")
        page.fill("#score-comment", "解剖显露清楚 操作规范 Clear exposure.")
        page.click("#submit-scores")
        until(page, "() => window.review.submitted !== null")
        assert "已提交" in page.text_content("#score-message")
        # a comment at the video's current time
        page.fill("#comment-text", "此处止血可更充分")
        page.check("#comment-at-time")
        page.click("#post-comment")
        until(page, "() => document.querySelectorAll('#comment-list li').length === 1")
        assert "@ 0:0" in page.text_content("#comment-list li .comment-head")
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / "review_submitted.png"), full_page=True)
        viewing = page.evaluate("window.review.viewings[0]")
    finally:
        page.close()
    assert not errors, errors

    with client(node) as admin:
        task = admin.get(f"/api/video-reviews/tasks/{task_id}").json()
        (reviewer,) = task["reviewers"]
        assert reviewer["reviewer"] == "expert.one" and reviewer["submitted"]
        assert reviewer["total"] == 80.5 and reviewer["recommendation"] == "pass"
        assert reviewer["scores"]["technique"] == 20.5
        (comment,) = task["comments"]
        assert comment["sopInstanceUid"] == sop and comment["atSeconds"] > 0.5
        (record,) = admin.get(f"/api/video-reviews/tasks/{task_id}/viewings").json()
        assert record["viewingId"] == viewing["viewingId"]
        assert record["viewer"] == "expert.one" and record["organisation"] == "expert panel"
        assert record["durationSeconds"] > 0 and record["endedAt"]
    assert Path(SHOTS / "review_submitted.png").stat().st_size > 0
