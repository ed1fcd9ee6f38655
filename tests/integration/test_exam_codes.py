"""Exam-code normalisation over HTTP: the regional code table seeded from config/, hospitals'
local codes mapped onto it, the unmapped-codes report, and the dictionaries.

Two hospitals send studies the way real PACSs do: a local code in the Procedure Code Sequence,
a code only in the Requested Procedure Code Sequence, no code at all (only a Chinese Study
Description), or the regional code itself. The periodic pass (`ExamCodes.normalise_new`) turns
them into regional terms; administrators map what is left and the studies follow.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from cloud.code_tables import ExamCodeSpec, SeedData, TableSeed, load_seed
from cloud.exam_codes import ExamCodes
from cloud.models import AuditEvent, Study
from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.servers import PASSWORD, client

PROBLEM = "application/problem+json"
FULL_WIDTH_CHEST = "\uff23\uff28\uff25\uff33\uff34"  # as an IME types it


def _code_item(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "99LOCAL"
    item.CodeMeaning = meaning
    return item


def store_study(
    node: Node,
    hospital_id: str,
    *,
    description: str = "",
    procedure_code: tuple[str, str] | None = None,
    requested_code: tuple[str, str] | None = None,
    body_part: str = "",
    modality: str = "CT",
    patient_id: str = "500101199001011234",
) -> int:
    """Store a two-image study the way a hospital's gateway would; its index key."""
    hospital = node.archive.hospitals.by_id(hospital_id)
    assert hospital is not None
    spec = StudySpec(
        patient=PatientSpec(patient_id=patient_id, patient_name="Zhao^Lei=赵^磊="),
        study_description=description,
    )
    for ds in ct_series(spec, slices=2, size=16):
        ds.Modality = modality
        if procedure_code:
            ds.ProcedureCodeSequence = [_code_item(*procedure_code)]
        if requested_code:
            ds.RequestedProcedureCodeSequence = [_code_item(*requested_code)]
        if body_part:
            ds.BodyPartExamined = body_part
        node.archive.store(to_part10(ds), source="test", hospital_pk=hospital.pk)
    with node.archive.sessions() as session:
        pk = session.scalar(
            select(Study.pk).where(Study.study_instance_uid == spec.study_instance_uid)
        )
    assert pk is not None
    return int(pk)


@dataclass
class World:
    node: Node
    codes: ExamCodes
    studies: dict[str, int]

    def http(self, username: str) -> httpx.Client:
        return client(self.node, username)


@pytest.fixture
def world(node: Node) -> Iterator[World]:
    node.archive.hospitals.add_hospital("H1", "重庆市第一人民医院 Chongqing First People's")
    node.archive.hospitals.add_hospital("H2", "渝北区人民医院 Yubei District People's")
    users = node.archive.users
    users.create_user("admin.h1", PASSWORD, "hospital_admin", hospital_id="H1")
    users.create_user("doc.h1", PASSWORD, "clinician", hospital_id="H1")
    users.create_user("reg", PASSWORD, "regulator")
    studies = {
        "h1_coded": store_study(
            node, "H1", description="胸部CT平扫", procedure_code=("H1-CT-001", "胸部平扫"),
            body_part="THORAX",
        ),
        "h1_requested": store_study(
            node, "H1", requested_code=("H1-MR-9", "头颅MR平扫"), modality="MR", body_part="HEAD"
        ),
        "h1_description_only": store_study(node, "H1", description="腹部彩超", modality="US"),
        "h1_regional": store_study(
            node, "H1", procedure_code=("CT-HEAD-PLAIN", "CT head"), body_part="HEAD"
        ),
        "h2_coded": store_study(
            node, "H2", procedure_code=("H2-0001", "CT CHEST"), body_part="CHEST"
        ),
    }  # fmt: skip
    yield World(node, ExamCodes.of(node.archive), studies)


def _problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body: dict[str, object] = response.json()
    assert body["status"] == status and body["detail"]
    return body


# --- the seeded table and dictionaries -----------------------------------------------------


def test_the_regional_table_and_dictionaries_are_seeded_from_config(world: World) -> None:
    with world.http("doc.h1") as http:
        codes = http.get("/api/exam-codes").json()["codes"]
        body_parts = http.get("/api/dictionaries/body_part").json()["entries"]
        devices = http.get("/api/dictionaries/device_type").json()["entries"]
        listing = http.get("/api/dictionaries").json()["dictionaries"]
        lookups = {
            text: http.get("/api/dictionaries/body_part/lookup", params={"text": text}).json()
            for text in ("胸部", "Thorax", "c-spine", FULL_WIDTH_CHEST, "elbowish")
        }
    by_code = {c["code"]: c for c in codes}
    assert len(codes) == len(load_seed().codes) >= 40
    assert {c["modality"] for c in codes} >= {"CT", "MR", "DX", "CR", "US", "MG", "NM", "PT"}
    assert all(" / " in c["name"] for c in codes)  # Chinese / English
    assert by_code["DR-CHEST-PA"]["recognitionDays"] == 30
    assert by_code["US-ABD"]["recognitionDays"] == 7
    assert by_code["PET-CT-FDG"]["recognitionDays"] == 0
    # plain and low-dose chest CT are the same exam for recognition; enhanced CT is not
    assert by_code["CT-CHEST-PLAIN"]["examClass"] == by_code["CT-CHEST-LD"]["examClass"]
    assert by_code["CT-CHEST-CE"]["examClass"] != by_code["CT-CHEST-PLAIN"]["examClass"]
    parts, modalities = {e["code"] for e in body_parts}, {e["code"] for e in devices}
    assert all(c["bodyPart"] in parts | {""} and c["modality"] in modalities for c in codes)
    chest = next(e for e in body_parts if e["code"] == "CHEST")
    assert {"THORAX", "胸部"} <= set(chest["synonyms"])
    assert {d["name"]: d["entries"] for d in listing} == {
        "device_type": len(devices),
        "body_part": len(body_parts),
    }
    found = {text: answer["code"] for text, answer in lookups.items()}
    assert found == {"胸部": "CHEST", "Thorax": "CHEST", "c-spine": "CSPINE",
                     FULL_WIDTH_CHEST: "CHEST", "elbowish": None}  # fmt: skip


def test_admin_edits_win_over_the_seed_file(world: World) -> None:
    new_code = {
        "name": "胸部CT平扫(儿童) / CT chest, paediatric",
        "modality": "CT",
        "body_part": "CHEST",
        "exam_class": "CT-CHEST",
        "recognition_days": 45,
    }
    with world.http("test-admin") as http:
        created = http.put("/api/exam-codes/CT-CHEST-PED", json=new_code)
        changed = http.put(
            "/api/exam-codes/US-ABD",
            json={"name": "腹部超声 / Ultrasound, abdomen", "modality": "US",
                  "body_part": "ABDOMEN", "exam_class": "US-ABDOMEN", "recognition_days": 14},
        )  # fmt: skip
        retired = http.delete("/api/exam-codes/CT-NECK-PLAIN")
        active = {c["code"] for c in http.get("/api/exam-codes").json()["codes"]}
        everything = http.get("/api/exam-codes", params={"include_inactive": "true"}).json()
    assert created.status_code == 201, created.text
    assert created.json()["recognitionDays"] == 45
    assert changed.status_code == 200 and changed.json()["recognitionDays"] == 14
    assert retired.status_code == 200 and retired.json()["active"] is False
    assert "CT-CHEST-PED" in active and "CT-NECK-PLAIN" not in active
    assert "CT-NECK-PLAIN" in {c["code"] for c in everything["codes"]}

    # A later start (a new process) seeds again from a file that has grown by one code: the
    # new code arrives, the edits and the retirement stay.
    seed = load_seed()
    grown = SeedData(
        (*seed.codes,
         ExamCodeSpec("MR-ELBOW", "肘关节MR / MR elbow", "MR", "ELBOW", "MR-ELBOW", 90)),
        seed.entries,
        seed.recognition,
    )  # fmt: skip
    restarted = ExamCodes(
        world.node.archive.sessions, seed=TableSeed(world.node.archive.sessions, grown)
    )
    assert restarted.code("MR-ELBOW").recognition_days == 90
    assert restarted.code("US-ABD").recognition_days == 14
    assert restarted.code("CT-NECK-PLAIN").active is False
    assert restarted.find("CT-NECK-PLAIN", active_only=True) is None

    with world.node.archive.sessions() as session:
        edits = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "code_table").order_by(AuditEvent.seq)
        ).all()
    changes = [
        (e.actor, json.loads(e.detail)["key"], json.loads(e.detail)["change"]) for e in edits
    ]
    assert changes == [
        ("test-admin", "CT-CHEST-PED", "create"),
        ("test-admin", "US-ABD", "update"),
        ("test-admin", "CT-NECK-PLAIN", "retire"),
    ]


# --- normalisation, unmapped codes, mappings -----------------------------------------------


def test_studies_are_normalised_and_unmapped_local_codes_reported(world: World) -> None:
    assert world.codes.normalise_new() == len(world.studies)
    assert world.codes.normalise_new() == 0  # each study once
    exams = {key: world.codes.study_exam(pk) for key, pk in world.studies.items()}
    regional = exams["h1_regional"]
    assert regional is not None
    assert (regional.regional_code, regional.exam_class, regional.body_part) == (
        "CT-HEAD-PLAIN", "CT-HEAD", "HEAD",
    )  # fmt: skip
    coded = exams["h1_coded"]
    assert coded is not None and coded.regional_code == "" and coded.body_part == "CHEST"

    with world.http("test-admin") as http:
        everyone = http.get("/api/exam-codes/unmapped").json()
        only_h2 = http.get("/api/exam-codes/unmapped", params={"hospital_id": "H2"}).json()
    with world.http("admin.h1") as http:
        own = http.get("/api/exam-codes/unmapped").json()
        other = http.get("/api/exam-codes/unmapped", params={"hospital_id": "H2"})
    with world.http("doc.h1") as http:
        clinician = http.get("/api/exam-codes/unmapped")

    listed = {(m["hospitalId"], m["localCode"]): m for m in everyone["unmapped"]}
    assert set(listed) == {
        ("H1", "H1-CT-001"),
        ("H1", "H1-MR-9"),  # from the Requested Procedure Code Sequence
        ("H1", "desc:腹部彩超"),  # no code at all: the description stands in
        ("H2", "H2-0001"),
    }  # the regional code CT-HEAD-PLAIN needs no mapping
    assert listed[("H1", "H1-CT-001")]["localName"] == "胸部平扫"
    assert all(m["seenCount"] == 1 and m["regionalCode"] is None for m in listed.values())
    assert everyone["total"] == 4
    assert [m["localCode"] for m in only_h2["unmapped"]] == ["H2-0001"]
    assert {m["hospitalId"] for m in own["unmapped"]} == {"H1"} and own["total"] == 3
    _problem(other, 403)
    _problem(clinician, 403)


def test_mapping_a_local_code_updates_its_studies(world: World) -> None:
    world.codes.normalise_new()
    coded, description_only = world.studies["h1_coded"], world.studies["h1_description_only"]
    with world.http("admin.h1") as http:
        mapped = http.put(
            "/api/exam-code-mappings/H1/H1-CT-001", json={"regional_code": "CT-CHEST-PLAIN"}
        )
        by_description = http.put(
            f"/api/exam-code-mappings/H1/{quote('desc:腹部彩超')}",
            json={"regional_code": "US-ABD", "local_name": "腹部彩超"},
        )
        listing = http.get("/api/exam-code-mappings", params={"state": "mapped"}).json()
        left = http.get("/api/exam-codes/unmapped").json()
        not_theirs = http.put(
            "/api/exam-code-mappings/H2/H2-0001", json={"regional_code": "CT-CHEST-PLAIN"}
        )
        no_such_code = http.put(
            "/api/exam-code-mappings/H1/H1-MR-9", json={"regional_code": "MR-NOPE"}
        )
    assert mapped.status_code == 200, mapped.text
    assert mapped.json()["regionalCode"] == "CT-CHEST-PLAIN"
    assert mapped.json()["updatedBy"] == "admin.h1" and mapped.json()["seenCount"] == 1
    assert by_description.status_code == 200, by_description.text
    exam = world.codes.study_exam(coded)
    assert exam is not None and (exam.regional_code, exam.exam_class) == (
        "CT-CHEST-PLAIN",
        "CT-CHEST",
    )
    ultrasound = world.codes.study_exam(description_only)
    assert ultrasound is not None and ultrasound.exam_class == "US-ABDOMEN"
    assert ultrasound.body_part == "ABDOMEN"  # the code's body part; the images named none
    assert {m["localCode"] for m in listing["mappings"]} == {"H1-CT-001", "desc:腹部彩超"}
    assert [m["localCode"] for m in left["unmapped"]] == ["H1-MR-9"]
    _problem(not_theirs, 403)
    _problem(no_such_code, 400)

    # a new study with the mapped code is normalised straight to the regional code
    later = store_study(world.node, "H1", procedure_code=("H1-CT-001", "胸部平扫"))
    assert world.codes.normalise_new() == 1
    normalised = world.codes.study_exam(later)
    assert normalised is not None and normalised.regional_code == "CT-CHEST-PLAIN"
    assert world.codes.mapping(_pk(world, "H1"), "H1-CT-001").seen_count == 2

    with world.http("test-admin") as http:
        taken_back = http.delete("/api/exam-code-mappings/H1/H1-CT-001")
        again = http.get("/api/exam-codes/unmapped", params={"hospital_id": "H1"}).json()
        unknown_hospital = http.put(
            "/api/exam-code-mappings/H9/X1", json={"regional_code": "CT-CHEST-PLAIN"}
        )
        unknown_mapping = http.delete("/api/exam-code-mappings/H1/NEVER-SEEN")
    assert taken_back.status_code == 200 and taken_back.json()["regionalCode"] is None
    assert "H1-CT-001" in {m["localCode"] for m in again["unmapped"]}
    unmapped_again = world.codes.study_exam(coded)
    assert unmapped_again is not None and unmapped_again.exam_class == ""
    _problem(unknown_hospital, 404)
    _problem(unknown_mapping, 404)


def _pk(world: World, hospital_id: str) -> int:
    found = world.node.archive.hospitals.by_id(hospital_id)
    assert found is not None
    return found.pk


def test_retiring_or_reclassing_a_code_follows_into_its_studies(world: World) -> None:
    world.codes.normalise_new()
    head = world.studies["h1_regional"]
    with world.http("test-admin") as http:
        reclassed = http.put(
            "/api/exam-codes/CT-HEAD-PLAIN",
            json={"name": "头颅CT平扫 / CT head, plain", "modality": "CT", "body_part": "HEAD",
                  "exam_class": "CT-HEAD-ANY", "recognition_days": 30},
        )  # fmt: skip
        exam = world.codes.study_exam(head)
        assert reclassed.status_code == 200 and exam is not None
        assert exam.exam_class == "CT-HEAD-ANY"
        assert http.delete("/api/exam-codes/CT-HEAD-PLAIN").status_code == 200
    retired = world.codes.study_exam(head)
    assert retired is not None and retired.exam_class == ""  # no longer recognised


# --- dictionaries ----------------------------------------------------------------------------


def test_dictionary_edits_change_normalisation(world: World) -> None:
    with world.http("test-admin") as http:
        edited = http.put(
            "/api/dictionaries/body_part/CHEST",
            json={"name": "胸部 / Chest", "synonyms": ["THORAX", "胸部", "胸片", "肺部"]},
        )
        created = http.put(
            "/api/dictionaries/body_part/ORBIT", json={"name": "眼眶 / Orbit", "synonyms": ["眼眶"]}
        )
        clash = http.put(
            "/api/dictionaries/body_part/LUNGFIELD", json={"name": "肺野", "synonyms": ["胸片"]}
        )
        retired = http.delete("/api/dictionaries/body_part/FOOT")
        found = {
            text: http.get("/api/dictionaries/body_part/lookup", params={"text": text}).json()[
                "code"
            ]
            for text in ("胸片", "肺部", "眼眶", "足", "肺")
        }
        entry = http.get("/api/dictionaries/body_part/ORBIT").json()
    assert edited.status_code == 200, edited.text
    assert created.status_code == 201, created.text
    _problem(clash, 409)
    assert retired.status_code == 200 and retired.json()["active"] is False
    # "肺" was dropped from CHEST's synonyms by the edit; the foot is retired
    assert found == {"胸片": "CHEST", "肺部": "CHEST", "眼眶": "ORBIT", "足": None, "肺": None}
    assert entry["synonyms"] == ["眼眶"]
    assert world.codes.normalise_body_part("Lung") == ""  # replaced synonyms are gone
    assert world.codes.normalise_body_part("thorax") == "CHEST"


# --- refusals ------------------------------------------------------------------------------


def test_bad_edits_are_refused_precisely(world: World) -> None:
    good = {"name": "x / y", "modality": "CT", "body_part": "CHEST", "exam_class": "CT-CHEST",
            "recognition_days": 30}  # fmt: skip
    with world.http("test-admin") as http:
        lower_case = http.put("/api/exam-codes/ct-chest-x", json=good)
        unknown_modality = http.put("/api/exam-codes/CT-X", json={**good, "modality": "ZZ"})
        unknown_part = http.put("/api/exam-codes/CT-X", json={**good, "body_part": "TAIL"})
        negative = http.put("/api/exam-codes/CT-X", json={**good, "recognition_days": -1})
        extra = http.put("/api/exam-codes/CT-X", json={**good, "colour": "red"})
        missing = http.put("/api/exam-codes/CT-X", json={"name": "x"})
        control = http.put("/api/exam-codes/CT-X", json={**good, "name": "a\x00b"})
        not_found = http.get("/api/exam-codes/NO-SUCH-CODE")
        no_dictionary = http.get("/api/dictionaries/colours")
        no_entry = http.get("/api/dictionaries/body_part/TAIL")
        no_retire = http.delete("/api/exam-codes/NO-SUCH-CODE")
        bad_state = http.get("/api/exam-code-mappings", params={"state": "maybe"})
    with world.http("doc.h1") as http:
        clinician_edit = http.put("/api/exam-codes/CT-X", json=good)
        clinician_dictionary = http.delete("/api/dictionaries/body_part/CHEST")
    with world.http("admin.h1") as http:
        hospital_admin_edit = http.put("/api/exam-codes/CT-X", json=good)
    with world.http("reg") as http:
        regulator_reads = http.get("/api/exam-codes")  # staff may read the table
    for response in (lower_case, unknown_modality, unknown_part, negative, extra, missing,
                     control, bad_state):  # fmt: skip
        _problem(response, 400)
    for response in (not_found, no_dictionary, no_entry, no_retire):
        _problem(response, 404)
    for response in (clinician_edit, clinician_dictionary, hospital_admin_edit):
        _problem(response, 403)
    assert regulator_reads.status_code == 200
    assert "CT-X" not in {c.code for c in world.codes.codes(include_inactive=True)}
