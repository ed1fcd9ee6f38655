"""Mutual recognition over HTTP: the HIS asks, when a doctor orders an exam, which recent prior
exams of the patient could stand in for it, and records the doctor's decision.

``POST /api/recognition/check`` ``{"patient_id", "hospital_id", "exam_code", "body_part"}``
answers the qualifying priors (`cloud.recognition`), newest first, each with a viewer URL.
The caller is a hospital's staff account with ``live_view`` ordering for its own hospital.

Privacy: a prior of another hospital is offered as a reminder with minimal fields (date,
hospital, exam name, QC result, report status), never its report text; the impression is
shown only for studies the ordering hospital already reaches (its own, or granted by the
patient). Opening a prior goes through the viewer, which enforces the patient's grant; the
``authoriseUrl`` of such a prior starts the patient's authorisation. Every check, read and
decision is audited with the patient ID.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from cloud.access import AccessDeniedError, Principal
from cloud.archive import Archive
from cloud.recognition import CheckResult, CheckView, Prior, Recognition
from viewer_api.access_deps import audit_entry, require
from viewer_api.codes_api import ExamCodesDep
from viewer_api.deps import ArchiveDep
from viewer_api.patient_api import TEXT, PatientId, no_store

router = APIRouter(
    prefix="/api/recognition", tags=["recognition"], dependencies=[Depends(no_store)]
)


async def recognition_service(request: Request, codes: ExamCodesDep) -> Recognition:
    """The app's recognition service (settings from ``config/exam_codes.toml``)."""
    service: Recognition | None = getattr(request.app.state, "recognition", None)
    if service is None:
        archive: Archive = request.app.state.archive
        service = Recognition(archive.sessions, codes)
        request.app.state.recognition = service
    return service


RecognitionDep = Annotated[Recognition, Depends(recognition_service)]
Clinician = Annotated[Principal, Depends(require("live_view"))]
CheckId = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9-]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CheckRequest(_Strict):
    patient_id: PatientId
    hospital_id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
    exam_code: Annotated[str, Field(min_length=1, max_length=64, pattern=TEXT)]
    body_part: Annotated[str, Field(max_length=64, pattern=TEXT)] = ""


class DecisionRequest(_Strict):
    decision: Literal["accepted", "declined"]
    reason: Annotated[str, Field(max_length=2000, pattern=r"^[^\x00]*$")] = ""
    study_instance_uid: Annotated[str, Field(max_length=64, pattern=r"^([0-9]+(\.[0-9]+)*)?$")] = ""


async def _audit(
    archive: Archive, who: Principal, request: Request, action: str, **fields: Any
) -> None:
    await run_in_threadpool(archive.audit.append, audit_entry(who, request, action, **fields))


async def _ordering_hospital(
    archive: Archive, who: Principal, request: Request, hospital_id: str, patient_id: str
) -> int:
    """The caller's hospital, if it is ``hospital_id``: doctors check for their own orders."""
    if who.kind != "user" or who.hospital_pk is None or who.hospital_id != hospital_id:
        detail = {"path": request.url.path, "hospital_id": hospital_id}
        await _audit(
            archive, who, request, "access", outcome="denied", patient_id=patient_id, detail=detail
        )
        raise AccessDeniedError(
            f"a recognition check is made by staff of the ordering hospital; your account "
            f"belongs to {who.hospital_id or 'no hospital'}, not {hospital_id}"
        )
    return who.hospital_pk


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _prior(
    base: str, patient_id: str, prior: dict[str, Any], impression: str = ""
) -> dict[str, Any]:
    uid = str(prior.get("studyInstanceUid", ""))
    shown = {**prior, "viewerUrl": f"{base}/viewer/?study={quote(uid, safe='')}"}
    if impression:
        shown["report"] = {**shown.get("report", {}), "impression": impression}
    if not prior.get("viewable"):
        shown["authoriseUrl"] = (
            f"{base}/viewer/authorise.html?patient_id={quote(patient_id, safe='')}"
        )
    return shown


def _result(request: Request, result: CheckResult) -> dict[str, Any]:
    base = _base(request)
    return {
        "checkId": result.check_id,
        "patientId": result.patient_id,
        "hospitalId": result.hospital_id,
        "examCode": result.exam_code,
        "regionalCode": result.code.code,
        "examClass": result.code.exam_class,
        "examName": result.code.name,
        "recognitionDays": result.code.recognition_days,
        "bodyPart": result.body_part,
        "requestedAt": result.requested_at.isoformat(),
        "priors": [
            _prior(base, result.patient_id, p.as_dict(), p.impression) for p in result.priors
        ],
        "decisionUrl": f"{base}/api/recognition/checks/{result.check_id}/decision",
    }


def _check(request: Request, view: CheckView) -> dict[str, Any]:
    base = _base(request)
    return {
        "checkId": view.check_id,
        "patientId": view.patient_id,
        "hospitalId": view.hospital_id,
        "examCode": view.exam_code,
        "regionalCode": view.regional_code,
        "bodyPart": view.body_part,
        "requestedBy": view.requested_by,
        "requestedAt": view.requested_at.isoformat(),
        "priors": [_prior(base, view.patient_id, p) for p in view.priors],
        "decision": {
            "state": view.decision,
            "reason": view.decision_reason,
            "studyInstanceUid": view.accepted_study_uid or None,
            "decidedBy": view.decided_by or None,
            "decidedAt": view.decided_at.isoformat() if view.decided_at else None,
        },
    }


def _uids(priors: list[Prior]) -> list[str]:
    return [p.study_instance_uid for p in priors]


@router.post("/check")
async def check(
    body: CheckRequest,
    request: Request,
    who: Clinician,
    archive: ArchiveDep,
    recognition: RecognitionDep,
) -> dict[str, Any]:
    """The prior exams that could stand in for the one being ordered (HIS contract:
    docs/recognition.md). 422 for an exam code neither regional nor mapped."""
    patient_id = body.patient_id.strip()
    await _ordering_hospital(archive, who, request, body.hospital_id, patient_id)
    result = await run_in_threadpool(
        recognition.check, patient_id, body.hospital_id, body.exam_code, body.body_part, who.name
    )
    detail = {
        "check": result.check_id,
        "exam_code": body.exam_code,
        "regional_code": result.code.code,
        "priors": _uids(result.priors),
    }
    await _audit(archive, who, request, "recognition_check", patient_id=patient_id, detail=detail)
    return _result(request, result)


@router.get("/checks/{check_id}")
async def get_check(
    check_id: CheckId,
    request: Request,
    who: Clinician,
    archive: ArchiveDep,
    recognition: RecognitionDep,
) -> dict[str, Any]:
    """A check and its decision: for the ordering hospital's staff (and platform admins)."""
    view = await run_in_threadpool(recognition.get, check_id)
    if who.scope_kind != "platform" and (
        who.hospital_pk is None or who.hospital_pk != view.hospital_pk
    ):
        await _ordering_hospital(archive, who, request, view.hospital_id, view.patient_id)
    detail = {"check": check_id}
    await _audit(
        archive, who, request, "recognition_read", patient_id=view.patient_id, detail=detail
    )
    return _check(request, view)


@router.post("/checks/{check_id}/decision")
async def decide(
    check_id: CheckId,
    body: DecisionRequest,
    request: Request,
    who: Clinician,
    archive: ArchiveDep,
    recognition: RecognitionDep,
) -> dict[str, Any]:
    """Record the doctor's decision, once: ``accepted`` with the prior's
    ``study_instance_uid``, or ``declined`` with a ``reason``. A second decision is 409."""
    view = await run_in_threadpool(recognition.get, check_id)
    hospital_pk = await _ordering_hospital(archive, who, request, view.hospital_id, view.patient_id)
    decided = await run_in_threadpool(
        lambda: recognition.decide(
            check_id,
            body.decision,
            by=who.name,
            reason=body.reason,
            accepted_study_uid=body.study_instance_uid,
            hospital_pk=hospital_pk,
        )
    )
    detail = {"check": check_id, "decision": body.decision, "study": body.study_instance_uid}
    await _audit(
        archive, who, request, "recognition_decision", patient_id=view.patient_id,
        study_instance_uid=body.study_instance_uid, detail=detail,
    )  # fmt: skip
    return _check(request, decided)
