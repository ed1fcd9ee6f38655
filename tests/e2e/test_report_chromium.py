"""Reports in headless Chromium against a real node: the share-link page on a phone shows the
report's fields and its copy buttons cite (the citation ID is shown, copied with the text and
recorded); a draft-only exam says the report is not out yet; the printable page renders on A4.

The pages' CSP is kept: a CSP violation on the console fails the test. Screenshots (and the
printed PDF) go to tests/artifacts/report/.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from cloud.models import ReportCitation
from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.servers import PASSWORD, http_base, running_node, token_for

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "report"
PATIENT = "500101198005151234"
CITATION = re.compile(r"CIT-[A-Z2-7]{12}")
PHONE = {
    "viewport": {"width": 390, "height": 844},
    "is_mobile": True,
    "has_touch": True,
    "device_scale_factor": 2,
}
A4_AT_96_DPI = {"viewport": {"width": 794, "height": 1123}}
FINDINGS = "右肺上叶尖段见磨玻璃结节影。大小约8mm x 6mm。\n纵隔未见肿大淋巴结。"
IMPRESSION = "右肺上叶磨玻璃结节。建议3个月后复查。"

pytestmark = pytest.mark.needs_chromium


@dataclass
class Site:
    node: Node
    base: str
    reported: str  # a study with a final report
    pending: str  # a study whose report is still a draft

    def patient_api(self) -> httpx.Client:
        token = self.node.tokens.issue_for(
            f"patient:{PATIENT}", "patient", lifetime_seconds=1800, pid=PATIENT
        )
        return httpx.Client(
            base_url=self.base, timeout=30, headers={"Authorization": f"Bearer {token}"}
        )


def _store(node: Node, spec: StudySpec) -> str:
    hospital = node.archive.hospitals.by_id("HA")
    assert hospital is not None
    for ds in ct_series(spec, slices=6, size=96):
        node.archive.store(to_part10(ds), source="report-test", hospital_pk=hospital.pk)
    return spec.study_instance_uid


def _report(uid: str, status: str, accession: str) -> dict[str, str]:
    return {
        "study_instance_uid": uid,
        "patient_id": PATIENT,
        "accession_number": accession,
        "body_part": "胸部",
        "exam_name": "胸部CT平扫",
        "request_date": "2025-03-09",
        "exam_date": "2025-03-10",
        "report_date": "2025-03-10",
        "report_time": "16:42",
        "findings": FINDINGS,
        "impression": IMPRESSION,
        "reporting_physician": "王芳",
        "reviewing_physician": "张伟",
        "status": status,
    }


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with running_node(tmp_path_factory.mktemp("report") / "node") as node:
        credential = node.archive.hospitals.add_hospital("HA", "重庆医科大学附属第一医院")
        node.archive.users.create_user("doc.a", PASSWORD, "clinician", hospital_id="HA")
        patient = PatientSpec(
            patient_id=PATIENT, patient_name="Li^Na=李^娜=", birth_date="19800515", sex="F"
        )
        chest = StudySpec(
            patient=patient,
            study_date="20250310",
            accession_number="CT2503100017",
            study_description="CT 胸部平扫",
        )
        head = StudySpec(
            patient=patient,
            study_date="20250201",
            accession_number="CT2502010003",
            study_description="CT 头颅平扫",
        )
        reported, pending = _store(node, chest), _store(node, head)
        base = http_base(node)
        gateway = {"Authorization": f"Bearer {credential}"}
        with httpx.Client(base_url=base, headers=gateway, timeout=30) as http:
            for uid, status, accession in (
                (reported, "final", chest.accession_number),
                (pending, "draft", head.accession_number),
            ):
                http.post("/api/reports", json=_report(uid, status, accession)).raise_for_status()
        yield Site(node, base, reported, pending)


def _context(browser: Any, options: dict[str, Any]) -> Iterator[Any]:
    context = browser.new_context(**options)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(str(exc)))
    page.on("console", lambda m: problems.append(m.text) if "Content Security" in m.text else None)
    page.set_default_timeout(15_000)
    yield page
    context.close()
    assert not problems, f"errors on the page: {problems}"


@pytest.fixture
def phone(browser: Any, site: Site) -> Iterator[Any]:
    options = PHONE | {"permissions": ["clipboard-read", "clipboard-write"]}
    yield from _context(browser, options)


@pytest.fixture
def desktop(browser: Any) -> Iterator[Any]:
    yield from _context(browser, A4_AT_96_DPI)


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


def field(page: Any, name: str) -> str:
    return str(page.inner_text(f'[data-field="{name}"] .report-value'))


def test_the_share_page_shows_the_report_and_copying_cites_it(phone: Any, site: Site) -> None:
    with site.patient_api() as api:
        link = api.post(
            "/api/share-links",
            json={"study_uids": [site.reported, site.pending], "expires_in": 3600},
        )
        assert link.status_code == 201, link.text
    phone.goto(link.json()["url"])
    phone.wait_for_selector("#shared .report-card")
    assert phone.get_attribute("#shared .report-card", "data-status") == "final"
    assert "重庆医科大学附属第一医院" in phone.inner_text(".report-head h3")
    assert field(phone, "patient-name") == "李娜"
    assert field(phone, "sex") == "女 F"
    assert field(phone, "age") == "44岁 44 y"
    assert field(phone, "exam-number") == "CT2503100017"
    assert field(phone, "exam-type") == "CT"
    assert field(phone, "body-part") == "胸部"
    assert field(phone, "exam-name") == "胸部CT平扫"
    assert field(phone, "request-date") == "2025-03-09"
    assert field(phone, "exam-date") == "2025-03-10"
    assert field(phone, "report-date") == "2025-03-10 16:42"
    assert field(phone, "reporting-physician") == "王芳"
    assert field(phone, "reviewing-physician") == "张伟"
    assert phone.inner_text('[data-part="findings"] .report-text') == FINDINGS
    assert phone.inner_text('[data-part="impression"] .report-text') == IMPRESSION
    # Phone first: the card fits the screen's width.
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390
    shot(phone, "01-share-report")

    phone.click('button[data-copy="impression"]')
    phone.wait_for_selector(".citation[data-citation]")
    citation_id = phone.get_attribute(".citation", "data-citation")
    assert CITATION.fullmatch(citation_id or "")
    assert citation_id in phone.inner_text(".citation")
    copied = phone.evaluate("navigator.clipboard.readText()")
    assert copied.startswith(IMPRESSION) and citation_id in copied
    phone.locator(".citation").scroll_into_view_if_needed()
    shot(phone, "02-share-report-cited")

    with site.node.archive.sessions() as session:
        row = session.scalar(
            select(ReportCitation).where(ReportCitation.citation_id == citation_id)
        )
    assert row is not None and row.field == "impression"
    assert (row.actor_kind, row.actor.startswith("share-link:")) == ("share_link", True)

    # The other exam's report is still a draft: the link's viewer is told it is not out yet.
    phone.click("#shared-tabs .chip:nth-child(2)")
    until(phone, "() => document.querySelector('#shared .report-missing')")
    assert "not yet available" in phone.inner_text("#shared .report")
    shot(phone, "03-share-report-pending")


def test_the_printable_report_renders_on_a4(desktop: Any, site: Site) -> None:
    token = token_for(site.node, "doc.a")
    desktop.goto(f"{site.base}/report/{site.reported}#token={token}")
    until(desktop, "() => document.body.dataset.ready")
    assert desktop.evaluate("document.body.dataset.ready") == "true"
    assert "token" not in desktop.url  # not left in the address bar
    assert field(desktop, "patient-name") == "李娜"
    assert field(desktop, "reviewing-physician") == "张伟"
    assert desktop.inner_text('[data-part="findings"] .report-text') == FINDINGS
    until(desktop, "() => document.querySelector('#report-qr-image').naturalWidth > 0")
    shot(desktop, "04-print-page")

    desktop.emulate_media(media="print")
    rendered = desktop.evaluate(
        """() => ['#print', 'button[data-copy="findings"]', '.report-grid'].map(
             (s) => document.querySelector(s).getClientRects().length > 0)"""
    )
    assert rendered == [False, False, True]  # on paper: the report, not the buttons
    shot(desktop, "05-print-media")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pdf = ARTIFACTS / "report.pdf"
    desktop.pdf(path=str(pdf), format="A4", print_background=True)
    assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 5_000


def test_the_printable_page_without_a_token_asks_for_a_sign_in(desktop: Any, site: Site) -> None:
    desktop.goto(f"{site.base}/report/{site.reported}")
    desktop.wait_for_selector("#report-body .message.error")
    assert "Sign in" in desktop.inner_text("#report-body")


def test_the_viewer_opens_the_report_in_a_tab_that_keeps_the_sign_in(
    desktop: Any, site: Site
) -> None:
    token = token_for(site.node, "doc.a")
    desktop.goto(f"{site.base}/viewer/?study={site.reported}&token={token}")
    desktop.wait_for_selector("#open-report")
    with desktop.expect_popup() as opened:
        desktop.click("#open-report")
    report = opened.value
    until(report, "() => document.body.dataset.ready")
    assert report.evaluate("document.body.dataset.ready") == "true"
    assert field(report, "exam-number") == "CT2503100017"
    shot(report, "06-report-from-viewer")
