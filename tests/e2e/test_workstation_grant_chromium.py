"""A hospital workstation asks a patient for access by QR code, in headless Chromium.

Hospital A holds the patient's study; a clinician at hospital B cannot open it. B's workstation
page (/viewer/authorise.html, desktop) requests the patient's authorisation and shows a QR
code; the code's modules are read off the screen and must be exactly the request's URL, which
a second browser (a phone) opens: the patient signs in with a one-time code and approves, the
workstation turns to "Authorised", and the clinician's request for A's study now answers 200.
The sign-in form offers the hospital's single sign-on only when an OpenID provider is
configured (the stub provider of tests/support/oidc_stub.py), and that link signs in.

The pages' own CSP is kept (no bypass): waits use selectors or poll with ``page.evaluate``,
which the CSP does not govern, and a CSP violation on the console fails the test.
Screenshots go to tests/artifacts/workstation/.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import segno
from PIL import Image
from sqlalchemy import update

from cloud.models import GrantRequest
from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.oidc_stub import CLIENT_ID, CLIENT_SECRET, running_oidc_stub
from tests.support.servers import PASSWORD, http_base, running_node, token_for
from viewer_api.web import PAGE_HEADERS

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "workstation"
PATIENT = "500101198802023456"
DESKTOP = {"viewport": {"width": 1280, "height": 800}, "device_scale_factor": 1}
PHONE = {
    "viewport": {"width": 390, "height": 844},
    "is_mobile": True,
    "has_touch": True,
    "device_scale_factor": 2,
}
DATE_TIME = r"\d{4}-\d\d-\d\d \d\d:\d\d"

pytestmark = pytest.mark.needs_chromium


@dataclass
class Site:
    node: Node
    base: str
    at_a: str  # the patient's study, stored by hospital A

    def doctor(self) -> httpx.Client:
        """The clinician at hospital B, over the API."""
        headers = {"Authorization": f"Bearer {token_for(self.node, 'doc.b')}"}
        return httpx.Client(base_url=self.base, timeout=30, headers=headers)

    def patient(self) -> httpx.Client:
        token = self.node.tokens.issue_for(
            f"patient:{PATIENT}", "patient", lifetime_seconds=1800, pid=PATIENT
        )
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.Client(base_url=self.base, timeout=30, headers=headers)

    def workstation_url(self, query: str = f"patient_id={PATIENT}&visit=OP-2025-0042") -> str:
        """The page as B's HIS opens it: for this patient and visit, with the doctor's token."""
        return f"{self.base}/viewer/authorise.html?{query}&token={token_for(self.node, 'doc.b')}"


def _hospitals_and_doctor(node: Node) -> None:
    node.archive.hospitals.add_hospital("HA", "Hospital A 甲医院")
    node.archive.hospitals.add_hospital("HB", "Hospital B 乙医院")
    node.archive.users.create_user("doc.b", PASSWORD, "clinician", hospital_id="HB")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_node(tmp_path_factory.mktemp("workstation") / "node") as node:
        _hospitals_and_doctor(node)
        spec = StudySpec(
            patient=PatientSpec(patient_id=PATIENT, patient_name="Zhang^Wei=张^伟="),
            study_date="20250210",
            study_description="CT chest 胸部",
        )
        hospital_a = node.archive.hospitals.by_id("HA")
        assert hospital_a is not None
        for ds in ct_series(spec, slices=4, size=64):
            node.archive.store(to_part10(ds), source="workstation-test", hospital_pk=hospital_a.pk)
        yield Site(node, http_base(node), spec.study_instance_uid)


def _open_page(browser: Any, options: dict[str, Any]) -> tuple[Any, Any, list[str]]:
    context = browser.new_context(**options)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if "Content Security" in m.text else None)
    page.set_default_timeout(15_000)
    return context, page, problems


@pytest.fixture
def desk(browser: Any) -> Iterator[Any]:
    """B's workstation: a desktop browser of its own, CSP enforced."""
    context, page, problems = _open_page(browser, DESKTOP)
    yield page
    context.close()
    assert not problems, f"errors on the workstation page: {problems}"


@pytest.fixture
def phone(browser: Any) -> Iterator[Any]:
    """The patient's phone: another browser context (no shared state), CSP enforced."""
    context, page, problems = _open_page(browser, PHONE)
    yield page
    context.close()
    assert not problems, f"errors on the phone: {problems}"


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


def outbox_size(node: Node) -> int:
    path = node.settings.data_dir / "outbox" / "codes.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def latest_code(node: Node, after: int) -> str:
    path = node.settings.data_dir / "outbox" / "codes.jsonl"
    deadline = time.monotonic() + 10
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) > after:
            return str(json.loads(lines[-1])["code"])
        assert time.monotonic() < deadline, "no code in the outbox"
        time.sleep(0.05)


def patient_signs_in(page: Any, node: Node) -> None:
    before = outbox_size(node)
    page.fill("#patient-id", PATIENT)
    page.click("#send-code")
    page.wait_for_selector("#sign-in-message.ok")
    page.fill("#code", latest_code(node, before))
    page.click("#verify")


QR_SHOWN = """() => {
  const img = document.querySelector('#waiting:not([hidden]) img#qr');
  return img && img.complete && img.naturalWidth > 0
    && {src: img.src, width: img.getBoundingClientRect().width,
        natural: img.naturalWidth};
}"""

STATE_IS = "(state) => document.body.dataset.state === state"


def modules_on_screen(png: bytes, count: int) -> list[list[int]]:
    """The dark/light modules of a QR symbol of ``count`` modules in a screenshot: the finder
    patterns span the symbol's corners, so the dark pixels' bounding box is the symbol."""
    image = Image.open(io.BytesIO(png)).convert("L")
    width, height = image.size
    pixels = image.load()
    assert pixels is not None
    dark = [(x, y) for y in range(height) for x in range(width) if int(pixels[x, y]) < 128]  # type: ignore[arg-type]
    left, right = min(x for x, _ in dark), max(x for x, _ in dark)
    top, bottom = min(y for _, y in dark), max(y for _, y in dark)
    step_x, step_y = (right - left + 1) / count, (bottom - top + 1) / count
    assert step_x >= 4 and abs(step_x - step_y) < 0.5, "modules too small or not square"

    def module(row: int, column: int) -> int:
        centre = (int(left + (column + 0.5) * step_x), int(top + (row + 0.5) * step_y))
        return int(int(pixels[centre]) < 128)  # type: ignore[arg-type]

    return [[module(r, c) for c in range(count)] for r in range(count)]


def assert_screen_shows_qr_of(page: Any, url: str) -> None:
    """The QR image as the screen shows it carries exactly ``url`` (what a phone would read)."""
    expected = segno.make(url, error="m", micro=False)
    count = int(expected.symbol_size(scale=1, border=0)[0])
    shown = modules_on_screen(page.locator("#qr").screenshot(), count)
    assert shown == [list(row) for row in expected.matrix], f"the QR on screen is not {url}"


def request_page(desk: Any, site: Site) -> None:
    answer = desk.goto(site.workstation_url())
    assert answer is not None and answer.status == 200
    for name, value in PAGE_HEADERS.items():
        assert answer.headers[name.lower()] == value, name
    desk.wait_for_selector("#ask:not([hidden])")
    until(desk, "() => document.querySelector('#who').innerText.includes('doc.b')")


def ask(desk: Any, hours: int) -> dict[str, Any]:
    """Press "Request authorisation"; the request as the API answered it."""
    desk.check(f"input[name=valid_hours][value='{hours}']")
    with desk.expect_response(
        lambda r: r.url.endswith("/api/grant-requests") and r.request.method == "POST"
    ) as answered:
        desk.click("#request")
    assert answered.value.status == 201, answered.value.text()
    asked: dict[str, Any] = answered.value.json()
    until(desk, QR_SHOWN)
    return asked


# --- scenarios -------------------------------------------------------------------------------


def test_the_patient_scans_the_workstation_qr_and_the_doctor_sees_the_study(
    desk: Any, phone: Any, site: Site
) -> None:
    with site.doctor() as doctor:
        refused = doctor.get(f"/viewer-api/studies/{site.at_a}")
        assert refused.status_code == 403, "hospital A's study is not B's without a grant"

        request_page(desk, site)
        assert "token=" not in desk.url, "the token leaves the address bar"
        assert desk.inner_text("#patient-id-shown") == PATIENT
        assert desk.inner_text("#visit") == "OP-2025-0042"
        assert desk.is_checked("input[name=valid_hours][value='24']"), "24 h by default"
        assert not desk.is_visible("#sign-in")
        shot(desk, "01-workstation-request")

        asked = ask(desk, 4)
        assert asked["state"] == "pending" and asked["valid_hours"] == 4
        assert asked["visit"] == "OP-2025-0042"
        shown = until(desk, QR_SHOWN)
        assert shown["src"] == asked["qr_png"]
        assert shown["width"] >= 300, "large enough to scan from a phone"
        assert shown["width"] >= shown["natural"] * 0.99, "never scaled down"
        assert re.search(DATE_TIME, desk.inner_text("#code-expiry"))
        shot(desk, "02-workstation-qr")
        assert_screen_shows_qr_of(desk, asked["code_url"])

        # The phone opens what the code says: the patient's authorisation page.
        phone.goto(asked["code_url"])
        phone.wait_for_selector("#sign-in-purpose:not([hidden])")
        shot(phone, "03-phone-sign-in")
        patient_signs_in(phone, site.node)
        phone.wait_for_selector("#authorise:not([hidden]) .asker")
        assert phone.inner_text("#authorise .asker") == "Hospital B 乙医院"
        assert "4 h" in phone.inner_text("#authorise-body")
        assert desk.evaluate("() => document.body.dataset.state") == "pending"
        shot(phone, "04-phone-request")
        phone.click("#approve")
        phone.wait_for_selector("#authorise-message.ok")
        shot(phone, "05-phone-approved")

        # The workstation polls every 2 s and turns to the success state on its own.
        until(desk, STATE_IS, "approved", timeout=10)
        desk.wait_for_selector("#answer:not([hidden]) #result.ok")
        result = desk.inner_text("#result")
        assert re.search(rf"Authorised until {DATE_TIME}", result) and "已授权" in result
        assert not desk.is_visible("#qr") and not desk.is_visible("#again")
        state = doctor.get(f"/api/grant-requests/{asked['id']}").json()
        granted = datetime.fromisoformat(state["grant_expires_at"])
        assert abs((granted - datetime.now(UTC)).total_seconds() - 4 * 3600) < 120
        shot(desk, "06-workstation-authorised")

        allowed = doctor.get(f"/viewer-api/studies/{site.at_a}")
        assert allowed.status_code == 200, allowed.text
        assert allowed.json()["study_instance_uid"] == site.at_a


def test_declined_and_expired_requests_say_so(desk: Any, site: Site) -> None:
    request_page(desk, site)
    asked = ask(desk, 24)
    code = asked["code_url"].rsplit("/", 1)[1]
    with site.patient() as patient:
        declined = patient.post(f"/api/patient/grant-requests/{code}/decline")
        assert declined.status_code == 200 and declined.json()["state"] == "declined"
    until(desk, STATE_IS, "declined", timeout=10)
    assert "Declined 已拒绝" in desk.inner_text("#result")
    assert desk.is_visible("#again")
    shot(desk, "07-workstation-declined")

    desk.click("#again")
    desk.wait_for_selector("#ask:not([hidden])")
    asked = ask(desk, 72)
    assert asked["valid_hours"] == 72
    with site.node.archive.sessions() as session:
        past = datetime.now(UTC) - timedelta(seconds=1)
        where = GrantRequest.pk == asked["id"]
        session.execute(update(GrantRequest).where(where).values(expires_at=past))
        session.commit()
    until(desk, STATE_IS, "expired", timeout=10)
    result = desk.inner_text("#result")
    assert "Expired 已过期" in result and "request again" in result
    shot(desk, "08-workstation-expired")
    desk.click("#again")
    desk.wait_for_selector("#ask:not([hidden])")


def test_without_a_token_the_page_asks_to_sign_in_with_a_password_only(
    desk: Any, site: Site
) -> None:
    plain = httpx.get(f"{site.base}/viewer/authorise?patient_id={PATIENT}")
    assert plain.status_code == 200
    assert plain.headers["content-security-policy"] == PAGE_HEADERS["Content-Security-Policy"]
    assert httpx.get(f"{site.base}/viewer/static/authorise.html").status_code == 404
    desk.goto(f"{site.base}/viewer/authorise.html?patient_id={PATIENT}")
    desk.wait_for_selector("#sign-in:not([hidden])")
    desk.wait_for_selector("#sso[data-methods=password]", state="attached")  # asked, answered
    assert not desk.is_visible("#sso"), "no hospital sign-in without an OpenID provider"
    shot(desk, "09-sign-in-password-only")
    desk.fill("#sign-in input[name=username]", "doc.b")
    desk.fill("#sign-in input[name=password]", PASSWORD)
    desk.click("#sign-in button[type=submit]")
    desk.wait_for_selector("#sign-in", state="hidden")
    until(desk, "() => document.querySelector('#who').innerText.includes('doc.b')")
    asked = ask(desk, 4)
    assert asked["state"] == "pending"
    desk.click("#cancel")
    desk.wait_for_selector("#ask:not([hidden])")


def test_the_hospital_sign_in_link_appears_with_a_provider_and_signs_in(
    desk: Any, tmp_path: Path
) -> None:
    with (
        running_oidc_stub() as stub,
        running_node(
            tmp_path / "node",
            oidc_issuer=stub.issuer,
            oidc_client_id=CLIENT_ID,
            oidc_client_secret=CLIENT_SECRET,
        ) as node,
    ):
        _hospitals_and_doctor(node)
        base = http_base(node)
        stub.user = {"sub": "idp-doc-b", "preferred_username": "doc.b"}

        desk.goto(f"{base}/viewer/?study=1.2.3")  # the viewer's own sign-in form
        desk.wait_for_selector("#sign-in:not([hidden]) #sso:not([hidden])")
        assert desk.get_attribute("#sso", "data-methods") == "password oidc"
        assert desk.inner_text("#sso") == "Hospital sign-in 医院统一登录"
        assert desk.get_attribute("#sso", "href") == (
            "/api/auth/oidc/login?next=" + quote("/viewer/?study=1.2.3", safe="")
        )
        shot(desk, "10-viewer-sign-in-sso")

        page_path = f"/viewer/authorise.html?patient_id={PATIENT}"
        desk.goto(base + page_path)
        desk.wait_for_selector("#sign-in:not([hidden]) #sso:not([hidden])")
        shot(desk, "11-authorise-sign-in-sso")
        desk.click("#sso")  # → provider → callback → back here with #token=
        desk.wait_for_selector("#sign-in", state="hidden")
        until(desk, "() => document.querySelector('#who').innerText.includes('doc.b')")
        assert desk.url == base + page_path, "back on the page, the token out of the address"
        assert desk.inner_text("#patient-id-shown") == PATIENT
        asked = ask(desk, 24)
        assert asked["state"] == "pending"
        shot(desk, "12-authorise-after-sso")
