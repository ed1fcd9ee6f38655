"""Reports over HTTP against a real node, on SQLite and PostgreSQL: a hospital sends them as
JSON or as DICOM SR (C-STORE, STOW-RS), versions supersede each other, readers see the fields
the Chongqing spec lists (anonymised without PHI, final only for patients and share links),
copying cites with a traceable ID, every read is audited, and bad input is refused precisely.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import func, select

from cloud.models import AuditEvent, Report, ReportCitation
from cloud.report_sr import COMPREHENSIVE_SR
from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.servers import PASSWORD, http_base, token_for
from tests.support.sr_reports import (
    CHINESE_HEADINGS,
    LOCAL_PARAGRAPH,
    SrReport,
    text_sr,
    text_sr_bytes,
)

PATIENT = "500101198005151234"
PROBLEM = "application/problem+json"
CITATION = re.compile(r"^CIT-[A-Z2-7]{12}$")
FINDINGS = "右肺上叶尖段见磨玻璃结节。大小约8mm x 6mm。边界清楚。\n纵隔未见肿大淋巴结。"
IMPRESSION = "右肺上叶磨玻璃结节。建议3个月后复查。"


@dataclass
class Region:
    node: Node
    credentials: dict[str, str]  # hospital id -> gateway credential
    chest: StudySpec  # the patient's CT at hospital A
    head: StudySpec  # the patient's CT at hospital B

    def as_user(self, username: str) -> httpx.Client:
        return bearer(self.node, token_for(self.node, username))

    def gateway(self, hospital: str) -> httpx.Client:
        return bearer(self.node, self.credentials[hospital])

    def patient(self) -> httpx.Client:
        token = self.node.tokens.issue_for(
            f"patient:{PATIENT}", "patient", lifetime_seconds=1800, pid=PATIENT
        )
        return bearer(self.node, token)

    def audit(self, action: str) -> list[AuditEvent]:
        with self.node.archive.sessions() as session:
            return list(
                session.scalars(
                    select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
                )
            )


def bearer(node: Node, token: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=http_base(node), headers=headers, timeout=30)


def store_study(node: Node, hospital: str | None, spec: StudySpec) -> None:
    found = node.archive.hospitals.by_id(hospital) if hospital else None
    for ds in ct_series(spec, slices=2, size=16):
        node.archive.store(to_part10(ds), source="test", hospital_pk=found.pk if found else None)


def patient_study(description: str, date: str, accession: str) -> StudySpec:
    patient = PatientSpec(
        patient_id=PATIENT, patient_name="Li^Na=李^娜=", birth_date="19800515", sex="F"
    )
    return StudySpec(
        patient=patient,
        study_date=date,
        accession_number=accession,
        study_description=description,
    )


@pytest.fixture
def region(node: Node) -> Iterator[Region]:
    hospitals = node.archive.hospitals
    credentials = {
        "HA": hospitals.add_hospital("HA", "重庆医科大学附属第一医院", ae_title="HA_GW"),
        "HB": hospitals.add_hospital("HB", "重庆市第五人民医院", ae_title="HB_GW"),
    }
    users = node.archive.users
    users.create_user("rad.a", PASSWORD, "radiologist", hospital_id="HA")
    users.create_user("doc.a", PASSWORD, "clinician", hospital_id="HA")
    users.create_user("doc.b", PASSWORD, "clinician", hospital_id="HB")
    users.create_user("trainee.a", PASSWORD, "trainee", hospital_id="HA")
    users.create_user("admin.a", PASSWORD, "hospital_admin", hospital_id="HA")
    users.create_user("auditor", PASSWORD, "auditor")
    chest = patient_study("CT 胸部平扫 Chest", "20250310", "CT2503100017")
    head = patient_study("CT 头颅平扫 Head", "20241102", "B20241102009")
    store_study(node, "HA", chest)
    store_study(node, "HB", head)
    yield Region(node, credentials, chest, head)


def report_json(study: StudySpec, **changes: Any) -> dict[str, Any]:
    document = {
        "study_instance_uid": study.study_instance_uid,
        "patient_id": PATIENT,
        "accession_number": study.accession_number,
        "body_part": "胸部 CHEST",
        "exam_name": "胸部CT平扫",
        "local_exam_code": "CT-CHEST-01",
        "request_date": "2025-03-09",
        "exam_date": "20250310",
        "report_date": "2025-03-10",
        "report_time": "16:42",
        "findings": FINDINGS,
        "impression": IMPRESSION,
        "reporting_physician": "王芳",
        "reviewing_physician": "张伟",
        "status": "draft",
    }
    return document | changes


def is_problem(response: httpx.Response, status: int, words: str = "") -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM), response.headers
    assert words.lower() in response.json()["detail"].lower(), response.json()


# --- JSON ingest, versions, display ----------------------------------------------------------


def test_a_hospitals_report_is_shown_with_the_chongqing_fields_and_versions(
    region: Region,
) -> None:
    uid = region.chest.study_instance_uid
    with region.gateway("HA") as gateway, region.as_user("doc.a") as doctor:
        sent = gateway.post("/api/reports", json=report_json(region.chest))
        assert sent.status_code == 201, sent.text
        assert sent.json()["version"] == 1 and sent.json()["created"] is True
        assert sent.headers["location"] == f"/api/studies/{uid}/report"

        shown = doctor.get(f"/api/studies/{uid}/report")
        assert shown.status_code == 200, shown.text
        report = shown.json()
        assert report["hospital"] == {"id": "HA", "name": "重庆医科大学附属第一医院"}
        assert report["patient"] == {
            "name": "李娜",
            "id": PATIENT,
            "sex": "F",
            "age": "044Y",  # born 1980-05-15, examined 2025-03-10
            "birthDate": "19800515",
        }
        assert report["examNumber"] == "CT2503100017"
        assert report["examType"] == "CT"  # from the study's series: the report did not say
        assert (report["bodyPart"], report["examName"]) == ("胸部 CHEST", "胸部CT平扫")
        assert (report["requestDate"], report["examDate"]) == ("20250309", "20250310")
        assert (report["reportDate"], report["reportTime"]) == ("20250310", "164200")
        assert (report["findings"], report["impression"]) == (FINDINGS, IMPRESSION)
        assert report["reportingPhysician"] == "王芳"
        assert report["reviewingPhysician"] == "张伟"
        assert (report["status"], report["version"], report["anonymised"]) == ("draft", 1, False)

        # The same report again (a gateway's retry): nothing changes.
        again = gateway.post("/api/reports", json=report_json(region.chest))
        assert again.status_code == 200 and again.json()["created"] is False

        corrected = report_json(
            region.chest, status="final", impression=IMPRESSION + " 余未见异常。"
        )
        final = gateway.post("/api/reports", json=corrected)
        assert final.status_code == 201 and final.json()["version"] == 2

        # A late duplicate of version 1 does not revert the correction.
        late = gateway.post("/api/reports", json=report_json(region.chest))
        assert late.status_code == 200
        assert (late.json()["version"], late.json()["current"]) == (1, False)

        now = doctor.get(f"/api/studies/{uid}/report").json()
        assert (now["version"], now["status"]) == (2, "final")
        assert now["impression"].endswith("余未见异常。")
        history = doctor.get(f"/api/studies/{uid}/report/history").json()["versions"]
        assert [(v["version"], v["current"], v["status"]) for v in history] == [
            (2, True, "final"),
            (1, False, "draft"),
        ]

    with region.node.archive.sessions() as session:
        rows = session.scalars(select(Report).where(Report.study_instance_uid == uid)).all()
        assert sorted((r.version, r.current) for r in rows) == [(1, False), (2, True)]
    views = [e for e in region.audit("report_view") if e.actor == "doc.a"]
    assert len(views) == 3 and all(e.study_instance_uid == uid for e in views)
    assert all(e.patient_id == PATIENT and e.hospital_id == "HA" for e in views)


def test_patients_and_share_links_see_final_reports_only(region: Region) -> None:
    uid = region.chest.study_instance_uid
    with region.gateway("HA") as gateway, region.patient() as patient:
        gateway.post("/api/reports", json=report_json(region.chest)).raise_for_status()
        is_problem(patient.get(f"/api/studies/{uid}/report"), 404, "not final")
        with region.as_user("doc.a") as doctor:  # staff see the draft
            assert doctor.get(f"/api/studies/{uid}/report").json()["status"] == "draft"

        gateway.post(
            "/api/reports", json=report_json(region.chest, status="final")
        ).raise_for_status()
        shown = patient.get(f"/api/studies/{uid}/report")
        assert shown.status_code == 200 and shown.json()["status"] == "final"
        assert shown.headers["cache-control"] == "no-store"
        assert shown.json()["patient"]["name"] == "李娜"

        # A later draft (the report reopened) leaves the patient with the last final version.
        reopened = report_json(region.chest, status="draft", findings=FINDINGS + " 修订中")
        gateway.post("/api/reports", json=reopened).raise_for_status()
        assert patient.get(f"/api/studies/{uid}/report").json()["version"] == 2
        versions = patient.get(f"/api/studies/{uid}/report/history").json()["versions"]
        assert [v["version"] for v in versions] == [2]

        link = patient.post("/api/share-links", json={"study_uids": [uid], "expires_in": 3600})
        assert link.status_code == 201, link.text
        token = link.json()["url"].rsplit("/", 1)[1]
    with bearer(region.node, None) as anonymous:
        opened = anonymous.post(f"/api/share/{token}/open", json={})
        assert opened.status_code == 200, opened.text
    with bearer(region.node, opened.json()["access_token"]) as shared:
        seen = shared.get(f"/api/studies/{uid}/report")
        assert (seen.json()["version"], seen.json()["patient"]["name"]) == (2, "李娜")
        cited = shared.post(f"/api/studies/{uid}/report/cite", json={"field": "impression"})
        assert cited.status_code == 201, cited.text
        assert CITATION.match(cited.json()["citationId"])
        # The link cites as itself, and may trace its own citation.
        traced = shared.get(f"/api/citations/{cited.json()['citationId']}").json()
        assert traced["citedBy"]["kind"] == "share_link"
        assert traced["citedBy"]["actor"].startswith("share-link:")
        assert traced["text"] == IMPRESSION


def test_a_report_may_come_before_its_images_but_only_from_the_owner(region: Region) -> None:
    later = patient_study("CT 腹部 Abdomen", "20250402", "CT2504020003")
    uid = later.study_instance_uid
    with region.gateway("HA") as a, region.gateway("HB") as b:
        first = a.post("/api/reports", json=report_json(later, status="final"))
        assert first.status_code == 201, first.text
        is_problem(b.post("/api/reports", json=report_json(later, impression="x")), 403)
    store_study(region.node, "HA", later)
    with region.as_user("doc.a") as doctor:
        shown = doctor.get(f"/api/studies/{uid}/report").json()
        assert shown["examName"] == "胸部CT平扫" and shown["patient"]["age"] == "044Y"
    with region.as_user("rad.a") as radiologist:  # upload permission at the owning hospital
        sent = radiologist.post("/api/reports", json=report_json(later, impression="修正"))
        assert sent.status_code == 201 and sent.json()["version"] == 2
    uploads = region.audit("report_upload")
    assert [(e.actor, e.study_instance_uid) for e in uploads] == [("rad.a", uid)]


def test_bad_reports_and_requests_are_refused_precisely(region: Region) -> None:
    chest, head = region.chest, region.head
    uid = chest.study_instance_uid
    with region.gateway("HA") as gateway:
        cases = [
            ({"findings": "x"}, "study_instance_uid"),
            (report_json(chest, study_instance_uid="1.2.abc"), "not a valid uid"),
            (report_json(chest, exam_date="2025-13-01"), "exam_date"),
            (report_json(chest, report_time="25:00"), "report_time"),
            (report_json(chest, status="done"), "status"),
            (report_json(chest, ward="7"), "ward"),
            (report_json(chest, findings="", impression=""), "findings or an impression"),
            (report_json(chest, exam_name="CT\n胸部"), "exam_name"),
            (report_json(chest, findings=12), "findings"),
            (report_json(chest, exam_type="X" * 17), "exam_type"),
            (report_json(chest, impression="结论\x00"), "control"),
        ]
        for document, words in cases:
            is_problem(gateway.post("/api/reports", json=document), 400, words)
        is_problem(gateway.post("/api/reports", content=b"{not json"), 400)
        # Another hospital's study; another patient than the study's.
        is_problem(gateway.post("/api/reports", json=report_json(head)), 403, "another hospital")
        is_problem(
            gateway.post("/api/reports", json=report_json(chest, patient_id="X1")),
            409,
            "another patient",
        )
    with bearer(region.node, None) as nobody:
        is_problem(nobody.post("/api/reports", json=report_json(chest)), 401)
    with bearer(region.node, "icg_" + "0" * 43) as forged:
        is_problem(forged.post("/api/reports", json=report_json(chest)), 401, "unknown")
    with region.as_user("doc.a") as clinician:  # no upload permission
        is_problem(clinician.post("/api/reports", json=report_json(chest)), 403, "upload")
        is_problem(clinician.get(f"/api/studies/{uid}/report"), 404, "no report")
        is_problem(clinician.get(f"/api/studies/{uid}/report/history"), 404, "no report")
        is_problem(clinician.get("/api/studies/1.2.3.4/report"), 404, "not in the archive")
        is_problem(clinician.post(f"/api/studies/{uid}/report/cite", json={"field": "x"}), 400)
        is_problem(clinician.get("/api/citations/CIT-AAAAAAAAAAAA"), 404, "no citation")
        is_problem(clinician.get("/api/citations/12345"), 400, "not a citation id")
    with region.as_user("doc.b") as outsider:  # no grant from the patient
        is_problem(outsider.get(f"/api/studies/{uid}/report"), 403)
    assert region.node.archive.reports.sr_failures == 0


# --- DICOM SR ----------------------------------------------------------------------------------


def c_store(node: Node, calling: str, part10: bytes, sop_class: str) -> int:
    import io

    from pydicom import dcmread

    ae = AE(ae_title=calling)
    ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="IMAGINGCLOUD")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(dcmread(io.BytesIO(part10)))
    finally:
        assoc.release()
        ae.shutdown()
    return int(status.Status)


def stow(client: httpx.Client, part10: bytes) -> httpx.Response:
    boundary = "srboundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part10
        + f"\r\n--{boundary}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return client.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})


def test_an_sr_sent_by_c_store_or_stow_becomes_the_report(region: Region) -> None:
    chest, head = region.chest, region.head
    sr = text_sr(chest)
    assert c_store(region.node, "HA_GW", to_part10(sr), str(sr.SOPClassUID)) == 0x0000
    with region.as_user("doc.a") as doctor:
        report = doctor.get(f"/api/studies/{chest.study_instance_uid}/report").json()
    assert (report["source"], report["status"], report["version"]) == ("sr", "final", 1)
    assert report["findings"] == "右肺上叶见结节影。大小约8mm。"
    assert report["impression"] == "右肺上叶小结节。建议随访。"
    assert (report["reportingPhysician"], report["reviewingPhysician"]) == ("王芳", "张伟")
    assert (report["reportDate"], report["reportTime"]) == ("20250311", "093000")
    assert report["examNumber"] == chest.accession_number
    assert report["hospital"]["id"] == "HA"

    # A Comprehensive SR from hospital B's gateway, sections named only in Chinese, unverified.
    draft = SrReport(findings=["脑实质未见异常密度影。", "脑室系统无扩大。"],
                     impression=["颅脑CT平扫未见异常。"], verifier="")  # fmt: skip
    data = text_sr_bytes(head, draft, sop_class=COMPREHENSIVE_SR, headings=CHINESE_HEADINGS,
                         paragraph=LOCAL_PARAGRAPH)  # fmt: skip
    with region.gateway("HB") as gateway:
        assert stow(gateway, data).status_code == 200
    with region.as_user("doc.b") as doctor_b:
        report = doctor_b.get(f"/api/studies/{head.study_instance_uid}/report").json()
    assert report["findings"] == "脑实质未见异常密度影。\n脑室系统无扩大。"
    assert (report["status"], report["reviewingPhysician"]) == ("draft", "")
    assert region.node.archive.reports.sr_failures == 0


def test_a_bad_sr_is_archived_but_gives_no_report(region: Region) -> None:
    chest = region.chest
    empty = text_sr(chest, SrReport(findings=[], impression=[]))
    assert c_store(region.node, "HA_GW", to_part10(empty), str(empty.SOPClassUID)) == 0x0000
    # Hospital B's gateway sends an SR into hospital A's study: the object is kept as usual,
    # its report is not taken.
    foreign = text_sr(chest)
    assert c_store(region.node, "HB_GW", to_part10(foreign), str(foreign.SOPClassUID)) == 0
    assert region.node.archive.reports.sr_failures == 2
    located = region.node.archive.locate(chest.study_instance_uid)
    assert {s.sop_instance_uid for s in located} >= {
        str(empty.SOPInstanceUID),
        str(foreign.SOPInstanceUID),
    }
    with region.as_user("doc.a") as doctor:
        is_problem(doctor.get(f"/api/studies/{chest.study_instance_uid}/report"), 404)


# --- citations, anonymised display, audit ------------------------------------------------------


def test_citations_are_traceable_to_who_copied_which_version(region: Region) -> None:
    uid = region.chest.study_instance_uid
    with region.gateway("HA") as gateway:
        gateway.post(
            "/api/reports", json=report_json(region.chest, status="final")
        ).raise_for_status()
    with region.as_user("doc.a") as doctor:
        cited = doctor.post(f"/api/studies/{uid}/report/cite", json={"field": "findings"})
        assert cited.status_code == 201, cited.text
        body = cited.json()
        citation_id = body["citationId"]
        assert CITATION.match(citation_id) and body["text"] == FINDINGS
        assert body["quote"].startswith(FINDINGS) and citation_id in body["quote"]
        again = doctor.post(f"/api/studies/{uid}/report/cite", json={"field": "findings"})
        assert again.json()["citationId"] != citation_id  # every copy is its own citation
        own = doctor.get(f"/api/citations/{citation_id}").json()
        assert own["text"] == FINDINGS and own["citedBy"] == {
            "actor": "doc.a",
            "kind": "user",
            "hospitalId": "HA",
        }

    # The report is corrected; the citation still names the version and text it copied.
    corrected = report_json(region.chest, status="final", findings="更正 " + FINDINGS)
    with region.gateway("HA") as gateway:
        gateway.post("/api/reports", json=corrected).raise_for_status()

    with region.as_user("auditor") as auditor:  # view_logs, regional, no PHI
        traced = auditor.get(f"/api/citations/{citation_id}")
        assert traced.status_code == 200, traced.text
        found = traced.json()
        assert "text" not in found
        assert found["textSha256"] == hashlib.sha256(FINDINGS.encode()).hexdigest()
        assert (found["reportVersion"], found["field"], found["studyInstanceUid"]) == (
            1,
            "findings",
            uid,
        )
        listed = auditor.get(f"/api/studies/{uid}/report/citations").json()
        assert [c["citationId"] for c in listed][:1] == [citation_id] and len(listed) == 2
    with region.as_user("admin.a") as admin:  # view_logs and view_details at hospital A
        assert admin.get(f"/api/citations/{citation_id}").json()["text"] == FINDINGS
    with region.as_user("doc.b") as other, region.as_user("trainee.a") as trainee:
        is_problem(other.get(f"/api/citations/{citation_id}"), 403, "view_logs")
        is_problem(trainee.get(f"/api/citations/{citation_id}"), 403)
        is_problem(trainee.get(f"/api/studies/{uid}/report/citations"), 403)

    with region.node.archive.sessions() as session:
        row = session.scalar(
            select(ReportCitation).where(ReportCitation.citation_id == citation_id)
        )
        assert row is not None and (row.actor, row.field) == ("doc.a", "findings")
    cites = region.audit("report_cite")
    assert json.loads(cites[0].detail) == {
        "citation": citation_id,
        "field": "findings",
        "version": 1,
    }
    reads = region.audit("citation_read")
    assert {(e.actor, e.outcome) for e in reads} >= {
        ("doc.a", "allowed"),
        ("auditor", "allowed"),
        ("doc.b", "denied"),
    }


def test_a_role_without_phi_sees_the_report_anonymised(region: Region) -> None:
    uid = region.chest.study_instance_uid
    with region.gateway("HA") as gateway:
        gateway.post(
            "/api/reports", json=report_json(region.chest, status="final")
        ).raise_for_status()
    with region.as_user("trainee.a") as trainee:
        shown = trainee.get(f"/api/studies/{uid}/report")
        assert shown.status_code == 200, shown.text
        report = shown.json()
        history = trainee.get(f"/api/studies/{uid}/report/history").json()["versions"]
    assert report["anonymised"] is True
    assert report["patient"] == {"sex": "F", "age": "044Y"}
    for hidden in ("patientId", "examNumber", "reportingPhysician", "reviewingPhysician"):
        assert hidden not in report and hidden not in history[0]
    assert PATIENT not in shown.text and "李娜" not in shown.text and "王芳" not in shown.text
    assert report["findings"] == FINDINGS
    entries = [e for e in region.audit("report_view") if e.actor == "trainee.a"]
    assert len(entries) == 2 and entries[0].role == "trainee"


def test_the_printable_page_is_served_under_the_pages_csp(region: Region) -> None:
    with bearer(region.node, None) as browser:
        page = browser.get(f"/report/{region.chest.study_instance_uid}")
        script = browser.get("/patient/static/report-print.js")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "report-print.js" in page.text and "<script>" not in page.text
    assert script.status_code == 200 and "reportCard" in script.text


def test_deleting_a_study_deletes_its_reports_and_citations(region: Region) -> None:
    uid = region.chest.study_instance_uid
    with region.gateway("HA") as gateway:
        gateway.post(
            "/api/reports", json=report_json(region.chest, status="final")
        ).raise_for_status()
    with region.as_user("doc.a") as doctor:
        doctor.post(f"/api/studies/{uid}/report/cite", json={"field": "impression"})

    region.node.archive.delete_study(uid)

    with region.node.archive.sessions() as session:
        left = session.scalar(
            select(func.count()).select_from(Report).where(Report.study_instance_uid == uid)
        )
        cited = session.scalar(
            select(func.count())
            .select_from(ReportCitation)
            .where(ReportCitation.study_instance_uid == uid)
        )
    assert (left, cited) == (0, 0), "report text is patient data: it goes with the study"
