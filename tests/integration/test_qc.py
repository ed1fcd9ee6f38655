"""QC sampling plans and reviews over HTTP with a real node, on SQLite and PostgreSQL.

Two hospitals hold studies of a month (H1: 20 CT and 5 MR, H2: 10 CT). A hospital admin
makes a sampling plan, draws it (reproducibly, of the right size), radiologists grade the
sampled studies from their queue, and the plan reports pass rates; who may do what, and
what bad input gets, is checked on the way.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from pydicom.uid import MRImageStorage
from sqlalchemy import delete, func, select

from cloud.models import AuditEvent, QcReview, Series, Study
from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.servers import ADMIN, PASSWORD, http_base, running_node

PROBLEM = "application/problem+json"
USERS = {  # username: (role, hospital)
    "admin_h1": ("hospital_admin", "H1"),
    "rad_h1": ("radiologist", "H1"),
    "rad_h1b": ("radiologist", "H1"),
    "rad_h2": ("radiologist", "H2"),
    "clinician_h1": ("clinician", "H1"),
    "regulator": ("regulator", None),
}


@dataclass
class World:
    node: Node
    patients: dict[str, str] = field(default_factory=dict)  # Study Instance UID -> Patient ID
    counter: int = 0

    def http(self, username: str) -> httpx.Client:
        user = self.node.archive.users.by_username(username)
        assert user is not None
        headers = {"Authorization": f"Bearer {self.node.tokens.issue(user)}"}
        return httpx.Client(base_url=http_base(self.node), headers=headers, timeout=30)

    def store(self, hospital: str, modality: str, day: int) -> str:
        self.counter += 1
        n = self.counter
        spec = StudySpec(
            patient=PatientSpec(patient_id=f"QC-{n:03d}", patient_name=f"Chen^Q{n}=陈^{n}"),
            study_date=f"202501{day:02d}",
            accession_number=f"ACC-{n:05d}",
        )
        ds = next(ct_series(spec, slices=1, size=8))
        if modality == "MR":
            ds.SOPClassUID, ds.Modality = MRImageStorage, "MR"
        found = self.node.archive.hospitals.by_id(hospital)
        assert found is not None
        self.node.archive.store(to_part10(ds), source="test", hospital_pk=found.pk)
        self.patients[spec.study_instance_uid] = spec.patient.patient_id
        return spec.study_instance_uid


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
        base = os.environ.get(POSTGRES_ENV)
        if not base:
            pytest.skip(f"{POSTGRES_ENV} not set")
        urls = _postgres_schema_url(base)
    with running_node(tmp_path_factory.mktemp("qc"), next(urls)) as node:
        archive = node.archive
        archive.hospitals.add_hospital("H1", "First People's Hospital")
        archive.hospitals.add_hospital("H2", "Central Hospital")
        for username, (role, hospital) in USERS.items():
            archive.users.create_user(username, PASSWORD, role, hospital_id=hospital)
        built = World(node)
        for day in range(1, 21):
            built.store("H1", "CT", day)
        for day in range(1, 6):
            built.store("H1", "MR", day)
        for day in range(1, 11):
            built.store("H2", "CT", day)
        yield built
    for _ in urls:  # drop the PostgreSQL schema
        pass


def _ok(answer: httpx.Response, status: int = 200) -> Any:
    assert answer.status_code == status, answer.text
    return answer.json()


def _refused(answer: httpx.Response, status: int) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == PROBLEM
    assert answer.json()["detail"]


def _plan(world: World, username: str, criteria: dict[str, str], percent: float) -> dict:
    body = {"name": "2025年1月 CT 质控抽查", "criteria": criteria, "sample_percent": percent}
    with world.http(username) as http:
        return _ok(http.post("/api/qc/plans", json=body), 201)


def _sample(world: World, plan_id: int, username: str = "admin_h1") -> dict:
    with world.http(username) as http:
        return _ok(http.post(f"/api/qc/plans/{plan_id}/sample"))


def _sampled_uids(world: World, plan_id: int) -> set[str]:
    with world.node.archive.sessions() as session:
        rows = session.scalars(
            select(Study.study_instance_uid)
            .join(QcReview, QcReview.study_pk == Study.pk)
            .where(QcReview.plan_pk == plan_id)
        )
        return set(rows)


def test_sample_is_reproducible_and_of_the_right_size(world: World) -> None:
    plan = _plan(world, "admin_h1", {"modality": "CT", "from": "2025-01-01", "to": "20250131"}, 25)
    # a hospital admin's plan is limited to their own hospital
    assert plan["criteria"] == {
        "hospital_id": "H1",
        "modality": "CT",
        "from": "20250101",
        "to": "20250131",
    }
    first = _sample(world, plan["id"])
    assert first == {
        "plan_id": plan["id"],
        "population": 20,
        "sample_size": 5,
        "sampled": 5,
        "added": 5,
    }
    drawn = _sampled_uids(world, plan["id"])
    with world.node.archive.sessions() as session:  # all of H1, CT, in January
        hospitals = session.execute(
            select(Study.hospital_pk, Series.modality, Study.study_date)
            .join(Series, Series.study_pk == Study.pk)
            .where(Study.study_instance_uid.in_(drawn))
        ).all()
    h1 = world.node.archive.hospitals.by_id("H1")
    assert h1 is not None
    assert {(h, m) for h, m, _ in hospitals} == {(h1.pk, "CT")}
    assert all("20250101" <= d <= "20250131" for _, _, d in hospitals)

    again = _sample(world, plan["id"])
    assert again["added"] == 0 and again["sampled"] == 5
    assert _sampled_uids(world, plan["id"]) == drawn

    with world.node.archive.sessions() as session:  # forget the draw: it comes out the same
        session.execute(delete(QcReview).where(QcReview.plan_pk == plan["id"]))
        session.commit()
    assert _sample(world, plan["id"])["added"] == 5
    assert _sampled_uids(world, plan["id"]) == drawn

    other = _plan(world, "admin_h1", {"modality": "CT"}, 25)  # another plan, another draw
    _sample(world, other["id"])
    assert len(_sampled_uids(world, other["id"])) == 5

    for day in (21, 22, 23, 24):  # the population grows: the sample is topped up, not redrawn
        world.store("H1", "CT", day)
    grown = _sample(world, plan["id"])
    assert grown["population"] == 24 and grown["sample_size"] == 6 and grown["added"] == 1
    assert drawn < _sampled_uids(world, plan["id"])


def test_reviews_give_pass_rates(world: World) -> None:
    plan = _plan(world, ADMIN, {"hospital_id": "H2", "modality": "CT"}, 70)
    assert _sample(world, plan["id"], ADMIN)["sampled"] == 7
    with world.http("rad_h2") as http:
        queue = _ok(http.get("/api/qc/reviews", params={"plan": plan["id"]}))["reviews"]
    assert len(queue) == 7
    item = queue[0]
    assert item["hospital_id"] == "H2" and item["modalities"] == ["CT"]
    assert item["study_date"].startswith("202501") and item["state"] == "pending"
    assert not set(world.patients.values()) & {str(v) for v in item.values()}
    with world.http("rad_h1") as http:  # another hospital's studies are not in their queue
        theirs = _ok(http.get("/api/qc/reviews", params={"plan": plan["id"]}))["reviews"]
    assert theirs == []

    # the platform admin gives one to the platform admin's own queue, then grades the rest
    with world.http(ADMIN) as http:
        assigned = _ok(
            http.post(f"/api/qc/reviews/{queue[0]['id']}/assignment", json={"reviewer": ADMIN})
        )
    assert assigned["reviewer"] == ADMIN
    with world.http("rad_h2") as http:
        remaining = _ok(http.get("/api/qc/reviews", params={"plan": plan["id"]}))["reviews"]
        assert queue[0]["id"] not in {r["id"] for r in remaining}
        _refused(
            http.post(
                f"/api/qc/reviews/{queue[0]['id']}", json={"image_grade": "A", "report_grade": "A"}
            ),
            403,
        )
        grades = [("A", "A"), ("b", "A"), ("A", "B"), ("C", "A"), ("A", "D"), ("甲", "乙")]
        for review, (image, report) in zip(remaining, grades, strict=True):
            body = {"image_grade": image, "report_grade": report, "comment": "层厚合适"}
            graded = _ok(http.post(f"/api/qc/reviews/{review['id']}", json=body))
            assert graded["state"] == "done" and graded["reviewer"] == "rad_h2"
        assert graded["image_grade"] == "A" and graded["report_grade"] == "B"  # 甲乙
        again = http.post(
            f"/api/qc/reviews/{remaining[0]['id']}", json={"image_grade": "D", "report_grade": "D"}
        )
        _refused(again, 409)
        done = _ok(http.get("/api/qc/reviews", params={"plan": plan["id"], "state": "done"}))
    assert len(done["reviews"]) == 6
    with world.http(ADMIN) as http:
        _ok(
            http.post(
                f"/api/qc/reviews/{queue[0]['id']}", json={"image_grade": "B", "report_grade": "C"}
            )
        )

    with world.http("regulator") as http:  # results are aggregates: regulators may read them
        results = _ok(http.get(f"/api/qc/plans/{plan['id']}"))["results"]
    assert (results["sampled"], results["done"], results["pending"]) == (7, 7, 0)
    assert results["passed"] == 4 and results["pass_rate"] == pytest.approx(4 / 7, abs=1e-4)
    assert results["by_hospital"] == [
        {
            "hospital_id": "H2",
            "hospital_name": "Central Hospital",
            "sampled": 7,
            "done": 7,
            "pending": 0,
            "passed": 4,
            "pass_rate": pytest.approx(4 / 7, abs=1e-4),
        }
    ]
    assert results["grades"]["image"] == {"A": 4, "B": 2, "C": 1, "D": 0}
    assert results["grades"]["report"] == {"A": 3, "B": 2, "C": 1, "D": 1}

    with world.http("regulator") as http:  # across plans, per hospital
        h2 = _ok(http.get("/api/qc/results", params={"hospital_id": "H2"}))
    assert (h2["done"], h2["passed"]) == (7, 4)
    assert [h["hospital_id"] for h in h2["by_hospital"]] == ["H2"]
    with world.http("admin_h1") as http:  # a hospital admin: their own hospital only
        _refused(http.get("/api/qc/results", params={"hospital_id": "H2"}), 403)
        own = _ok(http.get("/api/qc/results"))
    assert {h["hospital_id"] for h in own["by_hospital"]} <= {"H1"}

    with world.node.archive.sessions() as session:  # each grading is audited, with the patient
        audited = session.scalars(
            select(AuditEvent.patient_id).where(AuditEvent.action == "qc_review")
        ).all()
        queue_reads = session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "qc_queue")
        )
    assert len(audited) >= 7 and set(audited) <= set(world.patients.values())
    assert queue_reads >= 4


def test_who_may_plan_draw_read_and_grade(world: World) -> None:
    regional = _plan(world, ADMIN, {"modality": "MR"}, 40)
    h1_plan = _plan(world, "admin_h1", {"modality": "MR"}, 40)
    _sample(world, h1_plan["id"])
    with world.http("rad_h1") as http:
        review = _ok(http.get("/api/qc/reviews", params={"plan": h1_plan["id"]}))["reviews"][0]
    body = {"name": "x", "criteria": {}, "sample_percent": 10}
    grades = {"image_grade": "A", "report_grade": "A"}
    with world.http("clinician_h1") as http:  # neither plans nor reviews
        _refused(http.post("/api/qc/plans", json=body), 403)
        _refused(http.get("/api/qc/reviews"), 403)
        _refused(http.post(f"/api/qc/reviews/{review['id']}", json=grades), 403)
    with world.http("regulator") as http:  # reads results, makes no plans
        _refused(http.post("/api/qc/plans", json=body), 403)
        _ok(http.get(f"/api/qc/plans/{regional['id']}"))
        assert len(_ok(http.get("/api/qc/plans"))["plans"]) >= 2
    with world.http("rad_h1") as http:
        _refused(http.get(f"/api/qc/plans/{h1_plan['id']}"), 403)
        _refused(http.post(f"/api/qc/plans/{h1_plan['id']}/sample"), 403)
    with world.http("admin_h1") as http:  # own hospital only
        _refused(http.post("/api/qc/plans", json={**body, "criteria": {"hospital_id": "H2"}}), 403)
        _refused(http.get(f"/api/qc/plans/{regional['id']}"), 403)
        _refused(http.post(f"/api/qc/plans/{regional['id']}/sample"), 403)
        own = _ok(http.get("/api/qc/plans"))["plans"]
        assert own and {p["criteria"].get("hospital_id") for p in own} == {"H1"}
        for reviewer, why in (
            ("clinician_h1", "qc_review"),
            ("rad_h2", "cannot review"),
            ("nobody", "not an active account"),
        ):
            answer = http.post(
                f"/api/qc/reviews/{review['id']}/assignment", json={"reviewer": reviewer}
            )
            _refused(answer, 400)
            assert why in answer.json()["detail"]
    with world.http("rad_h2") as http:  # an H1 study is outside an H2 radiologist's scope
        _refused(http.post(f"/api/qc/reviews/{review['id']}", json=grades), 403)
    with world.node.archive.sessions() as session:
        denied = session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(
                AuditEvent.actor == "rad_h2",
                AuditEvent.outcome == "denied",
                AuditEvent.study_instance_uid == review["study_instance_uid"],
            )
        )
    assert denied == 1
    with world.http("rad_h1") as http:
        assert _ok(http.post(f"/api/qc/reviews/{review['id']}", json=grades))["passed"] is True


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"name": "x", "criteria": {}, "sample_percent": 0}, "sample_percent"),
        ({"name": "x", "criteria": {}, "sample_percent": 150}, "sample_percent"),
        ({"name": "", "criteria": {}, "sample_percent": 10}, "name"),
        ({"name": "x", "criteria": {"patient_id": "P1"}, "sample_percent": 10}, "unknown"),
        ({"name": "x", "criteria": {"modality": "ct"}, "sample_percent": 10}, "modality"),
        ({"name": "x", "criteria": {"from": "2025-02-30"}, "sample_percent": 10}, "from"),
        (
            {"name": "x", "criteria": {"from": "20250301", "to": "20250201"}, "sample_percent": 10},
            "after",
        ),
        ({"name": "x", "criteria": {"modality": 7}, "sample_percent": 10}, "criteria"),
        ({"name": "x", "sample_percent": 10, "owner": "me"}, "owner"),
    ],
)
def test_bad_plans_are_refused(world: World, body: dict, detail: str) -> None:
    with world.http(ADMIN) as http:
        answer = http.post("/api/qc/plans", json=body)
    _refused(answer, 400)
    assert detail in answer.json()["detail"]


def test_bad_grades_and_unknown_rows_are_refused(world: World) -> None:
    plan = _plan(world, "admin_h1", {"modality": "CT", "from": "20250115"}, 10)
    _sample(world, plan["id"])
    with world.http("rad_h1") as http:
        review = _ok(http.get("/api/qc/reviews", params={"plan": plan["id"]}))["reviews"][0]
        path = f"/api/qc/reviews/{review['id']}"
        for body in (
            {"image_grade": "E", "report_grade": "A"},
            {"image_grade": "A", "report_grade": "优"},
            {"image_grade": "A"},
            {"image_grade": "", "report_grade": "A"},
            {"image_grade": "A", "report_grade": "A", "score": 5},
            {"image_grade": "A", "report_grade": "A", "comment": "x" * 4001},
        ):
            _refused(http.post(path, json=body), 400)
        _refused(
            http.post("/api/qc/reviews/999999", json={"image_grade": "A", "report_grade": "A"}), 404
        )
        _refused(http.post("/api/qc/reviews/0", json={}), 400)
        _refused(http.get("/api/qc/reviews", params={"state": "lost"}), 400)
        assert _ok(http.get("/api/qc/reviews", params={"plan": plan["id"]}))["reviews"]
    with world.http(ADMIN) as http:
        _refused(http.get("/api/qc/plans/999999"), 404)
        _refused(http.get("/api/qc/plans/abc"), 400)
        _refused(http.post("/api/qc/plans/999999/sample"), 404)
        unknown = {"name": "x", "criteria": {"hospital_id": "NOPE"}, "sample_percent": 10}
        _refused(http.post("/api/qc/plans", json=unknown), 404)
