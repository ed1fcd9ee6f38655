"""The regional code tables over HTTP: exam codes, hospitals' code mappings, the unmapped-codes
report and the device-type and body-part dictionaries.

Any staff account may read the regional codes and the dictionaries (a HIS integrator needs
them); editing them needs ``manage_codes`` (platform admins). A hospital's own mappings (and
its unmapped codes) are also open to that hospital's administrators (``manage_hospitals``,
own hospital only). Every edit is audited (action ``code_table``). Deleting retires: the row
stays inactive, so the seed files in ``config/`` cannot bring it back.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from cloud.access import AccessDeniedError, Principal
from cloud.archive import Archive
from cloud.code_tables import DICTIONARY_NAMES, CodeNotFoundError
from cloud.exam_codes import ExamCodes
from viewer_api.access_deps import PrincipalDep, audit_entry, require
from viewer_api.deps import ArchiveDep
from viewer_api.patient_api import TEXT

router = APIRouter(tags=["exam codes"])


async def exam_codes_service(request: Request, archive: ArchiveDep) -> ExamCodes:
    """The app's code tables service, made on first use (it touches the index only when
    asked, and seeds the tables from ``config/`` then)."""
    service: ExamCodes | None = getattr(request.app.state, "exam_codes", None)
    if service is None:
        service = ExamCodes.of(archive)
        request.app.state.exam_codes = service
    return service


ExamCodesDep = Annotated[ExamCodes, Depends(exam_codes_service)]
CodeManager = Annotated[Principal, Depends(require("manage_codes"))]

PathText = Annotated[str, Path(min_length=1, max_length=64, pattern=TEXT)]
HospitalId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]
Text = Annotated[str, Field(max_length=128, pattern=TEXT)]
UpperCode = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._-]+$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CodeBody(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=128, pattern=TEXT)]
    modality: Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[A-Z0-9_]+$")]
    body_part: Annotated[str, Field(max_length=64, pattern=r"^[A-Z0-9_]*$")] = ""
    exam_class: UpperCode
    recognition_days: Annotated[int, Field(ge=0, le=3650)]
    active: bool = True


class MappingBody(_Strict):
    regional_code: UpperCode
    local_name: Text = ""


class EntryBody(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=128, pattern=TEXT)]
    synonyms: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=64, pattern=TEXT)]],
        Field(max_length=50),
    ] = []
    active: bool = True


async def _staff(who: PrincipalDep) -> Principal:
    if who.kind != "user":
        raise AccessDeniedError("the code tables are for staff accounts")
    return who


StaffDep = Annotated[Principal, Depends(_staff)]


async def _edited(
    archive: Archive, who: Principal, request: Request, table: str, key: str, change: str
) -> None:
    detail = {"table": table, "key": key, "change": change}
    await run_in_threadpool(
        archive.audit.append, audit_entry(who, request, "code_table", detail=detail)
    )


async def _mapping_hospital(
    archive: Archive, who: Principal, request: Request, hospital_id: str | None
) -> int | None:
    """(pk, id) of the hospital whose mappings ``who`` asks for; None = every hospital.
    ``manage_codes`` reaches every hospital; ``manage_hospitals`` its own only."""
    if not who.may("manage_codes"):
        own = who.may("manage_hospitals") and who.scope_kind in ("hospital", "department")
        if not own or not who.hospital_id or (hospital_id and hospital_id != who.hospital_id):
            detail = {"permission": "manage_codes", "hospital_id": hospital_id}
            entry = audit_entry(who, request, "access", outcome="denied", detail=detail)
            await run_in_threadpool(archive.audit.append, entry)
            raise AccessDeniedError(
                "code mappings need manage_codes, or manage_hospitals for your own hospital "
                f"({who.hospital_id or 'you have none'})"
            )
        hospital_id = who.hospital_id
    if not hospital_id:
        return None
    return await _hospital_pk(archive, hospital_id)


async def _hospital_pk(archive: Archive, hospital_id: str) -> int:
    found = await run_in_threadpool(archive.hospitals.by_id, hospital_id)
    if found is None:
        raise CodeNotFoundError(f"hospital {hospital_id!r} is not registered")
    return found.pk


async def _one_hospital(
    archive: Archive, who: Principal, request: Request, hospital_id: str
) -> int:
    """The pk of the hospital named in the path, if ``who`` may edit its mappings."""
    await _mapping_hospital(archive, who, request, hospital_id)
    return await _hospital_pk(archive, hospital_id)


# --- regional exam codes --------------------------------------------------------------------


@router.get("/api/exam-codes")
async def list_codes(
    codes: ExamCodesDep,
    _who: StaffDep,
    modality: Annotated[str, Query(max_length=16, pattern=r"^[A-Z0-9_]*$")] = "",
    exam_class: Annotated[str, Query(max_length=32, pattern=r"^[A-Za-z0-9._-]*$")] = "",
    include_inactive: bool = False,
) -> dict[str, Any]:
    """The regional code table (active codes unless ``include_inactive``)."""
    found = await run_in_threadpool(
        lambda: codes.codes(
            include_inactive=include_inactive, modality=modality, exam_class=exam_class
        )
    )
    return {"codes": [code.as_dict() for code in found]}


@router.get("/api/exam-codes/unmapped")
async def unmapped_codes(
    request: Request,
    archive: ArchiveDep,
    codes: ExamCodesDep,
    who: PrincipalDep,
    hospital_id: Annotated[str, Query(max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")] = "",
) -> dict[str, Any]:
    """Local codes seen (in studies or orders) that no mapping covers yet, most seen first."""
    hospital_pk = await _mapping_hospital(archive, who, request, hospital_id or None)
    found = await run_in_threadpool(codes.unmapped, hospital_pk)
    return {"unmapped": [m.as_dict() for m in found], "total": len(found)}


@router.get("/api/exam-codes/{code}")
async def get_code(code: PathText, codes: ExamCodesDep, _who: StaffDep) -> dict[str, Any]:
    found = await run_in_threadpool(codes.code, code)
    return found.as_dict()


@router.put("/api/exam-codes/{code}")
async def put_code(
    code: PathText,
    body: CodeBody,
    request: Request,
    response: Response,
    archive: ArchiveDep,
    codes: ExamCodesDep,
    who: CodeManager,
) -> dict[str, Any]:
    """Create (201) or replace (200) a regional code; its studies follow a new class."""
    view, created = await run_in_threadpool(lambda: codes.put_code(code, **body.model_dump()))
    await _edited(archive, who, request, "exam_codes", code, "create" if created else "update")
    response.status_code = 201 if created else 200
    return view.as_dict()


@router.delete("/api/exam-codes/{code}")
async def retire_code(
    code: PathText, request: Request, archive: ArchiveDep, codes: ExamCodesDep, who: CodeManager
) -> dict[str, Any]:
    """Retire a code: it stops resolving and its studies stop qualifying for recognition."""
    view = await run_in_threadpool(codes.retire_code, code)
    await _edited(archive, who, request, "exam_codes", code, "retire")
    return view.as_dict()


# --- hospitals' mappings --------------------------------------------------------------------

MAPPING = "/api/exam-code-mappings/{hospital_id}/{local_code:path}"


@router.get("/api/exam-code-mappings")
async def list_mappings(
    request: Request,
    archive: ArchiveDep,
    codes: ExamCodesDep,
    who: PrincipalDep,
    hospital_id: Annotated[str, Query(max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")] = "",
    state: Literal["all", "mapped", "unmapped"] = "all",
) -> dict[str, Any]:
    hospital_pk = await _mapping_hospital(archive, who, request, hospital_id or None)
    found = await run_in_threadpool(codes.mappings, hospital_pk, state)
    return {"mappings": [m.as_dict() for m in found]}


@router.get(MAPPING)
async def get_mapping(
    hospital_id: HospitalId,
    local_code: PathText,
    request: Request,
    archive: ArchiveDep,
    codes: ExamCodesDep,
    who: PrincipalDep,
) -> dict[str, Any]:
    hospital_pk = await _one_hospital(archive, who, request, hospital_id)
    found = await run_in_threadpool(codes.mapping, hospital_pk, local_code)
    return found.as_dict()


@router.put(MAPPING)
async def put_mapping(
    hospital_id: HospitalId,
    local_code: PathText,
    body: MappingBody,
    request: Request,
    archive: ArchiveDep,
    codes: ExamCodesDep,
    who: PrincipalDep,
) -> dict[str, Any]:
    """Map a local code (``desc:<STUDY DESCRIPTION>`` for PACSs that send no code) to a
    regional code; the hospital's studies under it follow."""
    hospital_pk = await _one_hospital(archive, who, request, hospital_id)
    found = await run_in_threadpool(
        lambda: codes.map(hospital_pk, local_code, body.regional_code, who.name, body.local_name)
    )
    await _edited(archive, who, request, "exam_code_mappings", f"{hospital_id}/{local_code}", "map")
    return found.as_dict()


@router.delete(MAPPING)
async def delete_mapping(
    hospital_id: HospitalId,
    local_code: PathText,
    request: Request,
    archive: ArchiveDep,
    codes: ExamCodesDep,
    who: PrincipalDep,
) -> dict[str, Any]:
    """Take a mapping back; the local code is reported as unmapped again."""
    hospital_pk = await _one_hospital(archive, who, request, hospital_id)
    found = await run_in_threadpool(codes.unmap, hospital_pk, local_code, who.name)
    key = f"{hospital_id}/{local_code}"
    await _edited(archive, who, request, "exam_code_mappings", key, "unmap")
    return found.as_dict()


# --- dictionaries ---------------------------------------------------------------------------

Dictionary = Annotated[str, Path(min_length=1, max_length=32, pattern=r"^[a-z_]+$")]
EntryCode = Annotated[str, Path(min_length=1, max_length=64, pattern=TEXT)]


@router.get("/api/dictionaries")
async def list_dictionaries(codes: ExamCodesDep, _who: StaffDep) -> dict[str, Any]:
    counts = await run_in_threadpool(codes.dictionaries.counts)
    return {"dictionaries": [{"name": name, "entries": counts[name]} for name in DICTIONARY_NAMES]}


@router.get("/api/dictionaries/{name}")
async def dictionary_entries(
    name: Dictionary, codes: ExamCodesDep, _who: StaffDep, include_inactive: bool = False
) -> dict[str, Any]:
    found = await run_in_threadpool(
        lambda: codes.dictionaries.entries(name, include_inactive=include_inactive)
    )
    return {"name": name, "entries": [entry.as_dict() for entry in found]}


@router.get("/api/dictionaries/{name}/lookup")
async def lookup(
    name: Dictionary,
    codes: ExamCodesDep,
    _who: StaffDep,
    text: Annotated[str, Query(min_length=1, max_length=64, pattern=TEXT)],
) -> dict[str, Any]:
    """Which entry a spelling means ("胸部" -> CHEST); ``code`` null when none."""
    found = await run_in_threadpool(codes.dictionaries.normalise, name, text)
    return {"dictionary": name, "text": text, "code": found or None}


@router.get("/api/dictionaries/{name}/{code}")
async def dictionary_entry(
    name: Dictionary, code: EntryCode, codes: ExamCodesDep, _who: StaffDep
) -> dict[str, Any]:
    found = await run_in_threadpool(codes.dictionaries.entry, name, code)
    return found.as_dict()


@router.put("/api/dictionaries/{name}/{code}")
async def put_entry(
    name: Dictionary,
    code: EntryCode,
    body: EntryBody,
    request: Request,
    response: Response,
    archive: ArchiveDep,
    codes: ExamCodesDep,
    who: CodeManager,
) -> dict[str, Any]:
    """Create (201) or replace (200) an entry; a spelling another entry owns is a 409."""
    view, created = await run_in_threadpool(
        lambda: codes.dictionaries.put(name, code, body.name, body.synonyms, active=body.active)
    )
    await _edited(archive, who, request, name, code, "create" if created else "update")
    response.status_code = 201 if created else 200
    return view.as_dict()


@router.delete("/api/dictionaries/{name}/{code}")
async def retire_entry(
    name: Dictionary,
    code: EntryCode,
    request: Request,
    archive: ArchiveDep,
    codes: ExamCodesDep,
    who: CodeManager,
) -> dict[str, Any]:
    view = await run_in_threadpool(codes.dictionaries.retire, name, code)
    await _edited(archive, who, request, name, code, "retire")
    return view.as_dict()
