"""The patient's pages on a phone (390 x 844, touch) in headless Chromium against a real node.

The page's own CSP is kept (no bypass): every wait polls with ``page.evaluate``, which the CSP
does not govern, and a CSP violation reported on the console fails the test. Screenshots go to
tests/artifacts/patient/.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from cloud.models import ShareLink
from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.servers import PASSWORD, http_base, running_node, token_for

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "patient"
PATIENT = "500101199001011234"
LINK_PASSWORD = "plum-blossom-88"
PHONE = {
    "viewport": {"width": 390, "height": 844},
    "is_mobile": True,
    "has_touch": True,
    "device_scale_factor": 2,
}

SHARED: dict[str, str] = {}

pytestmark = pytest.mark.needs_chromium


@dataclass
class Site:
    node: Node
    base: str
    studies: list[str]  # newest first
    at_a: str

    def patient_api(self) -> httpx.Client:
        token = self.node.tokens.issue_for(
            f"patient:{PATIENT}", "patient", lifetime_seconds=1800, pid=PATIENT
        )
        return httpx.Client(
            base_url=self.base, timeout=30, headers={"Authorization": f"Bearer {token}"}
        )

    def doctor_api(self) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token_for(self.node, 'doc.b')}"}
        return httpx.Client(base_url=self.base, timeout=30, headers=headers)


def _store(node: Node, hospital: str, date: str, what: str, slices: int) -> str:
    spec = StudySpec(
        patient=PatientSpec(patient_id=PATIENT, patient_name="Li^Na=李^娜="),
        study_date=date,
        study_description=what,
    )
    found = node.archive.hospitals.by_id(hospital)
    assert found is not None
    for ds in ct_series(spec, slices=slices, size=96):
        node.archive.store(to_part10(ds), source="phone-test", hospital_pk=found.pk)
    return spec.study_instance_uid


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_node(tmp_path_factory.mktemp("patient") / "node") as node:
        node.archive.hospitals.add_hospital("HA", "Hospital A 甲医院")
        node.archive.hospitals.add_hospital("HB", "Hospital B 乙医院")
        node.archive.users.create_user("doc.b", PASSWORD, "clinician", hospital_id="HB")
        newest = _store(node, "HB", "20250301", "CT abdomen 腹部", 12)
        middle = _store(node, "HA", "20250110", "CT chest 胸部", 6)
        oldest = _store(node, "HA", "20230505", "CT head 头部", 4)
        yield Site(node, http_base(node), [newest, middle, oldest], middle)


@pytest.fixture
def phone(browser: Any) -> Iterator[Any]:
    """A fresh phone: its own context (no shared state), CSP enforced."""
    context = browser.new_context(**PHONE)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if "Content Security" in m.text else None)
    page.set_default_timeout(15_000)
    yield page
    context.close()
    assert not problems, f"errors on the page: {problems}"


# --- helpers ---------------------------------------------------------------------------------


def until(page: Any, script: str, arg: Any = None, timeout: float = 15) -> Any:
    """Poll ``script`` (a JS function) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(script, arg)
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for: {script}"
        time.sleep(0.05)


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def latest_code(node: Node, after: int) -> str:
    path = node.settings.data_dir / "outbox" / "codes.jsonl"
    deadline = time.monotonic() + 10
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) > after:
            return str(json.loads(lines[-1])["code"])
        assert time.monotonic() < deadline, "no code in the outbox"
        time.sleep(0.05)


def outbox_size(node: Node) -> int:
    path = node.settings.data_dir / "outbox" / "codes.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def sign_in(page: Any, site: Site) -> None:
    before = outbox_size(site.node)
    page.fill("#patient-id", PATIENT)
    page.click("#send-code")
    page.wait_for_selector("#sign-in-message.ok")
    page.fill("#code", latest_code(site.node, before))
    page.click("#verify")


BLOB_IMAGES_LOADED = """(selector) => {
  const images = [...document.querySelectorAll(selector)];
  return images.length > 0 && images.every((i) => i.src.startsWith('blob:') && i.complete
    && i.naturalWidth > 0) && images.length;
}"""

NOTHING_STORED = """async () => ({
  local: localStorage.length,
  session: sessionStorage.length,
  cookie: document.cookie,
  indexedDB: (await indexedDB.databases()).length,
})"""


def assert_nothing_stored(page: Any) -> None:
    assert page.evaluate(NOTHING_STORED) == {"local": 0, "session": 0, "cookie": "", "indexedDB": 0}


def swipe(page: Any, selector: str, dy: float) -> None:
    """A one-finger vertical swipe on ``selector`` (touch events, as a phone sends them)."""
    page.evaluate(
        """([selector, dy]) => {
          const target = document.querySelector(selector);
          const box = target.getBoundingClientRect();
          const x = box.left + box.width / 2, y = box.top + box.height / 2;
          const touch = (cy) => new Touch({identifier: 1, target, clientX: x, clientY: cy});
          const fire = (type, cy) => target.dispatchEvent(new TouchEvent(type, {
            bubbles: true, cancelable: true,
            touches: type === 'touchend' ? [] : [touch(cy)], changedTouches: [touch(cy)]}));
          fire('touchstart', y); fire('touchmove', y + dy / 2); fire('touchmove', y + dy);
          fire('touchend', y + dy);
        }""",
        [selector, dy],
    )


# --- scenarios -------------------------------------------------------------------------------


def test_patient_signs_in_views_an_exam_and_shares_it(phone: Any, site: Site) -> None:
    page = phone
    page.goto(f"{site.base}/patient/")
    shot(page, "01-sign-in")
    sign_in(page, site)
    page.wait_for_selector("#exams:not([hidden]) .exam")
    until(page, BLOB_IMAGES_LOADED, "#exam-list img.thumb")
    order = page.evaluate("[...document.querySelectorAll('.exam')].map((e) => e.dataset.study)")
    assert order == site.studies, "exams newest first"
    assert "Hospital B 乙医院" in page.inner_text(".exam >> nth=0")
    shot(page, "02-exams")

    page.click(".exam >> nth=0 >> .exam-open")
    until(page, BLOB_IMAGES_LOADED, "#study .stage img.frame")
    assert "Report: not yet available" in page.inner_text("#study .report")
    first = page.get_attribute("#study img.frame", "data-src")
    counter = page.inner_text("#study .counter")
    assert counter == "7 / 12"
    swipe(page, "#study .stage", -24 * 3)
    until(page, "(c) => document.querySelector('#study .counter').innerText === c", "4 / 12")
    until(page, "(s) => document.querySelector('#study img.frame').dataset.src !== s", first)
    until(page, BLOB_IMAGES_LOADED, "#study .stage img.frame")
    shot(page, "03-study")

    page.click("#study-share")
    page.wait_for_selector("#share:not([hidden])")
    checked = page.evaluate(
        "[...document.querySelectorAll('#share-studies input:checked')].map((c) => c.value)"
    )
    assert checked == [site.studies[0]]
    page.check("input[name=expires][value='1800']")
    page.fill("#share-password", LINK_PASSWORD)
    page.click("#share-create")
    page.wait_for_selector("#share-result:not([hidden])")
    until(page, BLOB_IMAGES_LOADED.replace("i.src.startsWith('blob:') && ", ""), "#share-qr")
    url = page.input_value("#share-url")
    assert url.startswith(f"{site.base}/s/")
    assert "password" in page.inner_text("#share-expiry")
    shot(page, "04-share-link")

    page.click("#tabs button[data-view=grants]")
    page.wait_for_selector("#grants:not([hidden]) #grant-hospital option", state="attached")
    shot(page, "05-authorisations")
    assert_nothing_stored(page)
    SHARED["url"] = url  # opened on another phone in the next scenario


def test_the_shared_link_asks_for_the_password_then_shows_images(phone: Any, site: Site) -> None:
    url = SHARED.get("url")
    if url is None:  # run alone: make the link through the API
        with site.patient_api() as patient:
            url = patient.post(
                "/api/share-links",
                json={
                    "study_uids": [site.studies[0]],
                    "expires_in": 1800,
                    "password": LINK_PASSWORD,
                },
            ).json()["url"]
    phone.goto(url)
    phone.wait_for_selector("#password:not([hidden])")
    shot(phone, "06-share-password")
    phone.fill("#link-password", "wrong-password")
    phone.click("#open-link")
    phone.wait_for_selector("#password-message.error")
    assert "Wrong password" in phone.inner_text("#password-message")
    shot(phone, "07-share-wrong-password")
    phone.fill("#link-password", LINK_PASSWORD)
    phone.click("#open-link")
    until(phone, BLOB_IMAGES_LOADED, "#shared .stage img.frame")
    assert "Report: not yet available" in phone.inner_text("#shared .report")
    shot(phone, "08-share-images")
    assert_nothing_stored(phone)


def test_an_expired_link_says_so_plainly(phone: Any, site: Site) -> None:
    with site.patient_api() as patient:
        link = patient.post(
            "/api/share-links", json={"study_uids": [site.at_a], "expires_in": 300}
        ).json()
    with site.node.archive.sessions() as session:
        past = datetime.now(UTC) - timedelta(seconds=1)
        session.execute(update(ShareLink).where(ShareLink.pk == link["id"]).values(expires_at=past))
        session.commit()
    phone.goto(link["url"])
    phone.wait_for_selector("#gone:not([hidden])")
    assert "no longer works" in phone.inner_text("#gone-title")
    assert "expired" in phone.inner_text("#gone-detail")
    shot(phone, "09-share-expired")
    phone.goto(f"{site.base}/s/not-a-real-token")
    phone.wait_for_selector("#gone:not([hidden])")
    assert "does not exist" in phone.inner_text("#gone-title")


def test_the_qr_authorisation_page_approves_a_grant(phone: Any, site: Site) -> None:
    with site.doctor_api() as doctor:
        before = doctor.get(f"/viewer-api/studies/{site.at_a}")
        assert before.status_code == 403
        asked = doctor.post(
            "/api/grant-requests", json={"patient_id": PATIENT, "valid_hours": 4}
        ).json()
        phone.goto(asked["code_url"])
        phone.wait_for_selector("#sign-in-purpose:not([hidden])")
        shot(phone, "10-authorise-sign-in")
        sign_in(phone, site)
        phone.wait_for_selector("#authorise:not([hidden]) .asker")
        assert phone.inner_text("#authorise .asker") == "Hospital B 乙医院"
        assert "4 h" in phone.inner_text("#authorise-body")
        shot(phone, "11-authorise-request")
        phone.click("#approve")
        phone.wait_for_selector("#authorise-message.ok")
        assert "Authorised" in phone.inner_text("#authorise-message")
        shot(phone, "12-authorise-approved")
        assert doctor.get(f"/api/grant-requests/{asked['id']}").json()["state"] == "approved"
        assert doctor.get(f"/viewer-api/studies/{site.at_a}").status_code == 200
        phone.click("#authorise-done")
        phone.click("#tabs button[data-view=grants]")
        phone.wait_for_selector("#grant-list li.grant button.danger")
        phone.click("#grant-list li.grant button.danger")
        phone.wait_for_selector("#grant-list li.grant.muted")
        assert doctor.get(f"/viewer-api/studies/{site.at_a}").status_code == 403
    assert_nothing_stored(phone)


def test_the_report_qr_leads_the_patient_to_that_exam(phone: Any, site: Site) -> None:
    with site.patient_api() as patient:
        ref = next(
            s["ref"]
            for s in patient.get("/api/patient/studies").json()
            if s["study_instance_uid"] == site.at_a
        )
    phone.goto(f"{site.base}/r/{ref}")
    shot(phone, "13-report-landing")
    phone.click("#patient")
    phone.wait_for_selector("#sign-in-purpose:not([hidden])")
    sign_in(phone, site)
    until(phone, BLOB_IMAGES_LOADED, "#study .stage img.frame")
    assert "CT chest" in phone.inner_text("#study")
    assert site.at_a in (phone.get_attribute("#study img.frame", "data-src") or "")
