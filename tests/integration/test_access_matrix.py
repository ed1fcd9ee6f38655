"""Role x action x scope, over HTTP: each principal is allowed exactly what the matrix says.

The expectations are written out by hand here (not derived from config/roles.toml), so a change
to the roles file that widens or narrows access fails this test until the table is updated on
purpose. Scopes: a study of the user's own department, of another department of the same
hospital, of another hospital, and of another hospital whose patient authorised hospital H1.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pydicom
import pytest
from sqlalchemy import select

from cloud.models import Department, PatientGrant, ShareLink, ShareLinkStudy, SurgicalVideo
from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.servers import PASSWORD, client, http_base, running_node, token_for

PROBLEM = "application/problem+json"
STUDIES = ("own_dept", "other_dept", "other_hospital", "granted")


@dataclass
class StoredStudy:
    uid: str
    series: str
    sop: str
    patient_id: str


@dataclass
class World:
    node: Node
    studies: dict[str, StoredStudy]
    tokens: dict[str, str]

    def http(self, principal: str) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.tokens[principal]}"}
        return httpx.Client(base_url=http_base(self.node), headers=headers, timeout=30)


def _store(node: Node, key: str, hospital: str, department: str, patient: str) -> StoredStudy:
    spec = StudySpec(
        patient=PatientSpec(patient_id=patient, patient_name=f"Patient^{key}"),
        accession_number=f"ACC-{key}"[:16],
        department=department,
    )
    found = node.archive.hospitals.by_id(hospital)
    assert found is not None
    datasets = list(ct_series(spec, slices=2, size=16))
    for ds in datasets:
        node.archive.store(to_part10(ds), source="matrix", hospital_pk=found.pk)
    first = datasets[0]
    return StoredStudy(
        spec.study_instance_uid, str(first.SeriesInstanceUID), str(first.SOPInstanceUID), patient
    )


USERS = {  # username: (role, hospital, department)
    "clinician": ("clinician", "H1", "Radiology"),
    "radiologist": ("radiologist", "H1", "Radiology"),
    "department_head": ("department_head", "H1", "Radiology"),
    "hospital_admin": ("hospital_admin", "H1", ""),
    "trainee": ("trainee", "H1", "Radiology"),
    "regulator": ("regulator", None, ""),
    "auditor": ("auditor", None, ""),
    "platform_admin": ("platform_admin", None, ""),
    "video_expert": ("video_expert", None, ""),  # no review task assigned: reaches nothing
}


@pytest.fixture(
    scope="module",
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.needs_postgres)],
)
def world(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[World]:
    from tests.conftest import POSTGRES_ENV, _postgres_schema_url

    urls: Iterator[str] = iter([""])
    if request.param == "postgresql":
        import os

        base = os.environ.get(POSTGRES_ENV)
        if not base:
            pytest.skip(f"{POSTGRES_ENV} not set")
        urls = _postgres_schema_url(base)
    database_url = next(urls)
    with running_node(tmp_path_factory.mktemp("matrix"), database_url) as node:
        archive = node.archive
        archive.hospitals.add_hospital("H1", "Hospital One")
        archive.hospitals.add_hospital("H2", "Hospital Two")
        studies = {
            "own_dept": _store(node, "own", "H1", "Radiology", "P-OWN"),
            "other_dept": _store(node, "dept", "H1", "Cardiology", "P-DEPT"),
            "other_hospital": _store(node, "other", "H2", "Radiology", "P-OTHER"),
            "granted": _store(node, "granted", "H2", "Radiology", "P-GRANTED"),
        }
        now = datetime.now(UTC)
        with archive.sessions() as session:
            h1 = archive.hospitals.by_id("H1")
            assert h1 is not None
            session.add(
                PatientGrant(patient_id="P-GRANTED", hospital_pk=h1.pk, method="qr",
                             granted_at=now, expires_at=now + timedelta(hours=2))
            )  # fmt: skip
            link = ShareLink(token_sha256="0" * 64, created_by_kind="patient",
                             created_by="patient:P-OWN", patient_id="P-OWN", created_at=now,
                             expires_at=now + timedelta(hours=1))  # fmt: skip
            session.add(link)
            session.flush()
            session.add(ShareLinkStudy(share_link_pk=link.pk,
                                       study_instance_uid=studies["own_dept"].uid))  # fmt: skip
            link_pk = link.pk
            session.commit()
        with archive.sessions() as session:
            session.add(Department(hospital_pk=h1.pk, code="Radiology", name="放射科"))
            session.commit()
        tokens = {}
        for username, (role, hospital, department) in USERS.items():
            archive.users.create_user(username, PASSWORD, role, hospital_id=hospital,
                                      department=department)  # fmt: skip
            with client(node, None) as http:
                answer = http.post("/api/auth/token", data={"username": username,
                                                            "password": PASSWORD})  # fmt: skip
                tokens[username] = answer.json()["access_token"]
        tokens["patient"] = node.tokens.issue_for("patient:P-OWN", "patient", pid="P-OWN")
        tokens["share_link"] = node.tokens.issue_for(f"share-link:{link_pk}", "share_link",
                                                     link=link_pk)  # fmt: skip
        yield World(node, studies, tokens)
        for _ in urls:  # drop the PostgreSQL schema
            pass


# --- the matrix, by hand ------------------------------------------------------------------

HOSPITAL_SCOPE = {"own_dept", "other_dept", "granted"}
SCOPE = {  # which of the four studies each principal reaches
    "clinician": HOSPITAL_SCOPE,
    "radiologist": HOSPITAL_SCOPE,
    "department_head": {"own_dept", "granted"},
    "hospital_admin": HOSPITAL_SCOPE,
    "trainee": HOSPITAL_SCOPE,
    "regulator": set(),
    "auditor": set(),
    "platform_admin": set(STUDIES),
    "video_expert": set(),
    "patient": {"own_dept"},
    "share_link": {"own_dept"},
}
ALLOWED = {  # actions each principal may take (on studies in scope)
    "clinician": {"search", "view_details", "live_view", "view_video_annotations"},
    "radiologist": {"search", "view_details", "live_view", "download", "edit_details", "upload",
                    "export", "view_video_annotations"},
    "department_head": {"search", "view_details", "live_view", "download", "edit_details",
                        "view_logs", "export", "view_video_annotations"},
    "hospital_admin": {"search", "view_details", "live_view", "view_logs", "view_statistics",
                       "manage_hospitals"},
    "trainee": {"search", "view_details", "live_view", "view_video_annotations"},
    "regulator": {"view_statistics"},
    "auditor": {"view_logs"},
    "platform_admin": {"search", "view_details", "live_view", "download", "edit_details",
                       "upload", "export", "view_logs", "view_statistics", "manage_hospitals",
                       "delete", "view_video_annotations"},
    # patients and share links play their videos but do not read the professional evaluation
    "patient": {"search", "view_details", "live_view", "download"},
    "share_link": {"search", "view_details", "live_view"},
    "video_expert": {"search", "view_details", "live_view", "view_video_annotations"},
}  # fmt: skip
PRINCIPALS = sorted(SCOPE)


def _study_paths(s: StoredStudy) -> dict[str, tuple[str, str, dict[str, str]]]:
    instance = f"/dicom-web/studies/{s.uid}/series/{s.series}/instances/{s.sop}"
    viewer = f"/viewer-api/studies/{s.uid}/series/{s.series}/instances/{s.sop}"
    return {
        "view_details": ("GET", f"/dicom-web/studies/{s.uid}/metadata", {}),
        "live_view": ("GET", f"{viewer}/frames/1/rendered", {}),
        "download": ("GET", instance, {}),
        "edit_details": ("PATCH", f"/api/studies/{s.uid}", {"study_description": "Edited"}),
    }


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("action", ["view_details", "live_view", "download", "edit_details"])
@pytest.mark.parametrize("where", STUDIES)
def test_study_actions(world: World, principal: str, action: str, where: str) -> None:
    method, path, body = _study_paths(world.studies[where])[action]
    with world.http(principal) as http:
        response = http.request(method, path, json=body or None)
    allowed = action in ALLOWED[principal] and where in SCOPE[principal]
    if allowed:
        assert response.status_code == 200, response.text
        # a patient's or a share link's phone keeps nothing; staff browsers may cache images
        no_store = response.headers.get("cache-control") == "no-store"
        assert no_store == (principal in ("patient", "share_link")), response.headers
    else:
        assert response.status_code == 403, response.text
        assert response.headers["content-type"] == PROBLEM
        assert response.json()["detail"]


@pytest.mark.parametrize("principal", PRINCIPALS)
def test_search_returns_exactly_the_studies_in_scope(world: World, principal: str) -> None:
    with world.http(principal) as http:
        response = http.get("/dicom-web/studies")
    if "search" not in ALLOWED[principal]:
        assert response.status_code == 403
        return
    assert response.status_code == 200, response.text
    found = {item["0020000D"]["Value"][0] for item in response.json()}
    assert found == {world.studies[key].uid for key in SCOPE[principal]}


@pytest.mark.parametrize("principal", PRINCIPALS)
def test_roles_without_phi_see_anonymised_studies(world: World, principal: str) -> None:
    if "search" not in ALLOWED[principal]:
        return
    with world.http(principal) as http:
        results = http.get("/dicom-web/studies").json()
        metadata = http.get(f"/dicom-web/studies/{world.studies['own_dept'].uid}/metadata")
        by_name = http.get("/dicom-web/studies", params={"PatientName": "Patient*"})
    identified = principal not in ("trainee", "video_expert")  # roles with phi = false
    assert all(("00100010" in r) == identified for r in results), results
    if metadata.status_code == 200:
        assert all(("00100020" in m) == identified for m in metadata.json())
        assert all(("00080050" in m) == identified for m in metadata.json())
    assert by_name.status_code == (200 if identified else 403)


def _stow(http: httpx.Client) -> httpx.Response:
    spec = StudySpec(patient=PatientSpec(patient_id="P-UP"))
    part = to_part10(next(ct_series(spec, slices=1, size=8)))
    boundary = "matrixboundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + part
        + f"\r\n--{boundary}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return http.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})


def _export(http: httpx.Client, world: World) -> httpx.Response:
    uid = world.studies["own_dept"].uid
    return http.post("/api/exports", json={"study_uids": [uid], "project": "matrix"})


def _audit(http: httpx.Client, world: World) -> httpx.Response:
    return http.get("/api/audit/events", params={"limit": 5})


NON_STUDY: dict[str, Callable[[httpx.Client, World], httpx.Response]] = {
    "upload": lambda http, _: _stow(http),
    "view_statistics": lambda http, _: http.get("/api/hospitals"),
    "manage_hospitals": lambda http, world: http.post(
        "/api/hospitals/H1/send-backs", json={"study_instance_uid": world.studies["own_dept"].uid}
    ),
    "export": _export,
    "view_logs": _audit,
}


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("action", sorted(NON_STUDY))
def test_other_actions(world: World, principal: str, action: str) -> None:
    if action == "view_logs" and not _audit_api_present(world):
        pytest.skip("the audit API is not mounted")
    with world.http(principal) as http:
        response = NON_STUDY[action](http, world)
    if action in ALLOWED[principal]:
        assert response.status_code < 300, response.text
    else:
        assert response.status_code == 403, response.text
        assert response.headers["content-type"] == PROBLEM


def _audit_api_present(world: World) -> bool:
    with world.http("platform_admin") as http:
        return http.get("/api/audit/events").status_code != 404


def test_delete_is_for_platform_admins_and_takes_the_study_away(world: World) -> None:
    spec = StudySpec(patient=PatientSpec(patient_id="P-DEL"))
    datasets = list(ct_series(spec, slices=2, size=8))
    h1 = world.node.archive.hospitals.by_id("H1")
    assert h1 is not None
    for ds in datasets:
        world.node.archive.store(to_part10(ds), source="matrix", hospital_pk=h1.pk)
    uid = spec.study_instance_uid
    for principal in PRINCIPALS:
        if principal == "platform_admin":
            continue
        with world.http(principal) as http:
            assert http.delete(f"/api/studies/{uid}").status_code == 403, principal
    with world.http("platform_admin") as http:
        deleted = http.delete(f"/api/studies/{uid}")
        assert deleted.status_code == 200 and deleted.json()["instances_deleted"] == 2
        assert http.get(f"/dicom-web/studies/{uid}/metadata").status_code == 404
    for ds in datasets:  # and it can arrive again afterwards
        world.node.archive.store(to_part10(ds), source="matrix", hospital_pk=h1.pk)
    with world.http("platform_admin") as http:
        assert http.get(f"/dicom-web/studies/{uid}/metadata").status_code == 200


def test_export_is_de_identified_with_consistent_uids(world: World) -> None:
    study = world.studies["own_dept"]
    with world.http("radiologist") as http:
        first = http.post("/api/exports", json={"study_uids": [study.uid], "project": "t1"})
        again = http.post("/api/exports", json={"study_uids": [study.uid], "project": "t1"})
        other = http.post("/api/exports", json={"study_uids": [study.uid], "project": "t2"})
        images = http.post(
            "/api/exports", json={"study_uids": [study.uid], "project": "t1", "format": "jpeg"}
        )
    assert first.headers["content-type"] == "application/zip"

    def datasets(response: httpx.Response) -> list[pydicom.Dataset]:
        with zipfile.ZipFile(io.BytesIO(response.content)) as zipped:
            names = [n for n in zipped.namelist() if n.endswith(".dcm")]
            return [pydicom.dcmread(io.BytesIO(zipped.read(n))) for n in names]

    exported = datasets(first)
    assert len(exported) == 2
    for ds in exported:
        assert ds.PatientIdentityRemoved == "YES"
        assert "P-OWN" not in str(ds.PatientID) and "Patient" not in str(ds.PatientName)
        assert ds.StudyInstanceUID != study.uid
        assert "AccessionNumber" not in ds or ds.AccessionNumber in ("", None)
    assert {d.StudyInstanceUID for d in exported} == {d.StudyInstanceUID for d in datasets(again)}
    assert {d.StudyInstanceUID for d in exported}.isdisjoint(
        {d.StudyInstanceUID for d in datasets(other)}
    )
    with zipfile.ZipFile(io.BytesIO(images.content)) as zipped:
        assert sum(n.endswith(".jpg") for n in zipped.namelist()) == 2


@pytest.fixture
def reported(world: World) -> World:
    """Every study of the world with a final report (sent by a platform operator: any study;
    a re-send of the same report changes nothing)."""
    for study in world.studies.values():
        world.node.archive.reports.ingest_json(
            None,
            {
                "study_instance_uid": study.uid,
                "patient_id": study.patient_id,
                "findings": "双肺纹理清晰。",
                "impression": "胸部CT平扫未见明显异常。",
                "status": "final",
            },
        )
    return world


@pytest.mark.parametrize("principal", PRINCIPALS)
@pytest.mark.parametrize("where", STUDIES)
def test_a_report_is_read_and_cited_exactly_where_the_study_is_viewable(
    reported: World, principal: str, where: str
) -> None:
    uid = reported.studies[where].uid
    with reported.http(principal) as http:
        read = http.get(f"/api/studies/{uid}/report")
        cited = http.post(f"/api/studies/{uid}/report/cite", json={"field": "impression"})
    if "view_details" in ALLOWED[principal] and where in SCOPE[principal]:
        assert read.status_code == 200, read.text
        assert cited.status_code == 201, cited.text
    else:
        for refused in (read, cited):
            assert refused.status_code == 403, refused.text
            assert refused.headers["content-type"] == PROBLEM


@pytest.mark.parametrize("principal", PRINCIPALS)
def test_regional_statistics_are_for_those_who_view_statistics(
    world: World, principal: str
) -> None:
    with world.http(principal) as http:
        response = http.get("/api/statistics/summary")
    if "view_statistics" in ALLOWED[principal]:
        assert response.status_code == 200, response.text
        assert all(s.patient_id not in response.text for s in world.studies.values())
    else:
        assert response.status_code == 403, response.text


# --- surgical video annotations (view_video_annotations) ----------------------------------


@pytest.mark.needs_ffmpeg
def test_video_annotations_are_read_exactly_where_the_matrix_says(
    node: Node, tmp_path: Path
) -> None:
    """A surgical video in the own-department study and one at another hospital, each with an
    annotation: its list and its JSON export are read by those who hold
    ``view_video_annotations`` on the study, never by the patient or a share link."""
    from tests.support.video import make_mp4, video_part10

    archive = node.archive
    archive.hospitals.add_hospital("H1", "Hospital One")
    archive.hospitals.add_hospital("H2", "Hospital Two")
    mp4 = make_mp4(tmp_path / "clip.mp4", seconds=1.0, audio=False)
    sops = {}
    for where, hospital_id, patient in (("own_dept", "H1", "P-OWN"),
                                        ("other_hospital", "H2", "P-OTHER")):  # fmt: skip
        found = archive.hospitals.by_id(hospital_id)
        assert found is not None
        archive.store(video_part10(mp4, patient_id=patient, department="Radiology",
                                   procedure="腹腔镜胆囊切除术"),
                      source="matrix", hospital_pk=found.pk)  # fmt: skip
        with archive.sessions() as session:
            video = session.scalars(
                select(SurgicalVideo).order_by(SurgicalVideo.pk.desc()).limit(1)
            ).one()
            sops[where] = (video.sop_instance_uid, video.study_instance_uid)
    h1 = archive.hospitals.by_id("H1")
    assert h1 is not None
    with archive.sessions() as session:
        session.add(Department(hospital_pk=h1.pk, code="Radiology", name="放射科"))
        session.commit()
    tokens = {}
    for username, (role, hospital, department) in USERS.items():
        archive.users.create_user(username, PASSWORD, role, hospital_id=hospital,
                                  department=department)  # fmt: skip
        tokens[username] = token_for(node, username)
    now = datetime.now(UTC)
    with archive.sessions() as session:
        link = ShareLink(token_sha256="2" * 64, created_by_kind="patient",
                         created_by="patient:P-OWN", patient_id="P-OWN", created_at=now,
                         expires_at=now + timedelta(hours=1))  # fmt: skip
        session.add(link)
        session.flush()
        session.add(ShareLinkStudy(share_link_pk=link.pk, study_instance_uid=sops["own_dept"][1]))
        link_pk = link.pk
        session.commit()
    tokens["patient"] = node.tokens.issue_for("patient:P-OWN", "patient", pid="P-OWN")
    tokens["share_link"] = node.tokens.issue_for(f"share-link:{link_pk}", "share_link",
                                                 link=link_pk)  # fmt: skip
    with client(node) as http:
        for sop, _ in sops.values():
            made = http.post(
                f"/api/videos/{sop}/annotations",
                json={"kind": "phase", "start": 0, "end": 0.5, "label": "显露"},
            )
            assert made.status_code == 201, made.text
    for principal in PRINCIPALS:
        headers = {"Authorization": f"Bearer {tokens[principal]}"}
        with httpx.Client(base_url=http_base(node), headers=headers, timeout=30) as http:
            for where, (sop, _) in sops.items():
                listed = http.get(f"/api/videos/{sop}/annotations")
                exported = http.get(f"/api/videos/{sop}/annotations.json")
                allowed = "view_video_annotations" in ALLOWED[principal] and where in SCOPE[
                    principal]  # fmt: skip
                for response in (listed, exported):
                    if allowed:
                        assert response.status_code == 200, (principal, where, response.text)
                    else:
                        assert response.status_code == 403, (principal, where, response.text)
                        assert response.headers["content-type"] == PROBLEM
                if allowed:
                    assert [a["label"] for a in listed.json()["annotations"]] == ["显露"]
