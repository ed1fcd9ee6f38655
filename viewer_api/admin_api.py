"""Registration, review and account administration over HTTP.

``/api/registrations/hospitals`` and ``/api/registrations/users`` are public (rate-limited per
client address); reviewing them and everything under ``/api/users`` and
``/api/hospitals/{hospital_id}/departments`` needs ``change_permissions``, with the hospital
and self limits of `cloud.directory_admin`. Decisions and changes are audited (``review``,
``change_permissions``), and so are refusals.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field, StringConstraints

from cloud.access import AccessDeniedError, Principal
from cloud.archive import Archive
from cloud.audit import AuditEntry
from cloud.directory_admin import Assignment, DirectoryAdmin
from cloud.registrations import Registrations
from viewer_api.access_deps import audit_entry, client_address, require
from viewer_api.deps import ArchiveDep
from viewer_api.problems import HTTPProblem

registrations = APIRouter(prefix="/api/registrations", tags=["registration"])
accounts = APIRouter(prefix="/api", tags=["accounts"])

AdminDep = Annotated[Principal, Depends(require("change_permissions"))]
T = TypeVar("T")
# Printable text: PostgreSQL refuses NUL; DICOM LO (department codes) backslash and controls.
TEXT = r"^[^\\\x00-\x1f\x7f]*$"
RegistrationPk = Annotated[int, Path(ge=1, le=2**31 - 1)]
Username = Annotated[str, Path(max_length=64, pattern=TEXT)]
HospitalId = Annotated[str, Path(max_length=64, pattern=TEXT)]
Permission = Annotated[str, StringConstraints(max_length=32, pattern=TEXT)]
NAME = Field(min_length=1, max_length=128, pattern=TEXT)


class SubmissionLimiter:
    """At most ``limit`` submissions per client address within ``window_seconds``, whatever
    their outcome: public forms are cheap to post and each costs a password hash."""

    def __init__(self, limit: int = 20, window_seconds: float = 3600.0) -> None:
        self.limit, self.window_seconds = limit, window_seconds
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, key: str) -> None:
        now = time.monotonic()
        with self._lock:
            seen = self._seen.setdefault(key, deque())
            while seen and now - seen[0] > self.window_seconds:
                seen.popleft()
            if len(seen) >= self.limit:
                wait = int(self.window_seconds - (now - seen[0])) + 1
                raise HTTPProblem(
                    429,
                    "Too many registrations",
                    f"{len(seen)} registrations from your address; try again in {wait} s",
                    headers={"Retry-After": str(wait)},
                )
            seen.append(now)


async def _limited(request: Request) -> None:
    state = request.app.state
    if not hasattr(state, "registration_limiter"):
        state.registration_limiter = SubmissionLimiter()
    limiter: SubmissionLimiter = state.registration_limiter
    limiter.admit(client_address(request) or "unknown")


@dataclass(frozen=True)
class Acting:
    """An admin's request: who acts, and the log their decisions and refusals go to."""

    who: Principal
    request: Request
    archive: Archive

    async def run(
        self,
        action: str,
        detail: dict[str, Any],
        call: Callable[..., T],
        *args: Any,
        record: bool = True,
    ) -> T:
        """``call(who, *args)`` in the thread pool; audited if ``record`` or refused."""
        try:
            result = await run_in_threadpool(call, self.who, *args)
        except AccessDeniedError:
            await self._audit(action, detail, "denied")
            raise
        if record:
            await self._audit(action, detail, "allowed")
        return result

    async def _audit(self, action: str, detail: dict[str, Any], outcome: str) -> None:
        entry = audit_entry(self.who, self.request, action, outcome=outcome, detail=detail)
        await run_in_threadpool(self.archive.audit.append, entry)


async def _acting(request: Request, archive: ArchiveDep, who: AdminDep) -> Acting:
    return Acting(who, request, archive)


ActingDep = Annotated[Acting, Depends(_acting)]


async def _public_audit(request: Request, archive: Archive, actor: str, **fields: Any) -> None:
    """Self-registrations are audited with the asking address (actor kind ``public``)."""
    entry = AuditEntry(
        actor_kind="public",
        actor=actor,
        action="register",
        client_address=client_address(request),
        **fields,
    )
    await run_in_threadpool(archive.audit.append, entry)


# --- public registration -----------------------------------------------------------------------


class HospitalRegistrationBody(BaseModel):
    hospital_id: str = Field(min_length=1, max_length=64, pattern=TEXT)
    name: str = NAME
    ae_title: str = Field(default="", max_length=16, pattern=TEXT)
    district: str = Field(default="", max_length=64, pattern=TEXT)
    level: str = Field(default="", max_length=32, pattern=TEXT)
    contact: str = Field(min_length=1, max_length=255, pattern=TEXT)


class UserRegistrationBody(BaseModel):
    username: str = Field(min_length=1, max_length=64, pattern=TEXT)
    password: str = Field(max_length=1024)
    full_name: str = NAME
    hospital_id: str = Field(min_length=1, max_length=64, pattern=TEXT)
    department: str = Field(default="", max_length=64, pattern=TEXT)
    requested_role: str = Field(min_length=1, max_length=32, pattern=TEXT)


@registrations.post("/hospitals", status_code=202, dependencies=[Depends(_limited)])
async def register_hospital(
    body: HospitalRegistrationBody, request: Request, archive: ArchiveDep
) -> dict[str, Any]:
    fields = body.model_dump(exclude={"hospital_id", "name"})
    submit = Registrations(archive.sessions).submit_hospital
    pk = await run_in_threadpool(submit, body.hospital_id, body.name, **fields)
    detail = {"registration": "hospital", "id": pk}
    await _public_audit(
        request, archive, f"hospital-registration:{pk}", hospital_id=body.hospital_id, detail=detail
    )
    return {"id": pk, "hospital_id": body.hospital_id, "state": "pending"}


@registrations.post("/users", status_code=202, dependencies=[Depends(_limited)])
async def register_user(
    body: UserRegistrationBody, request: Request, archive: ArchiveDep
) -> dict[str, Any]:
    fields = body.model_dump(exclude={"username", "password"})
    submit = Registrations(archive.sessions).submit_user
    user = await run_in_threadpool(submit, body.username, body.password, **fields)
    detail = {"registration": "user", "requested_role": body.requested_role}
    await _public_audit(
        request, archive, user.username, hospital_id=body.hospital_id, detail=detail
    )
    return {"username": user.username, "status": user.status}


# --- review --------------------------------------------------------------------------------------


class NoteBody(BaseModel):
    note: str = Field(default="", max_length=2000, pattern=r"^[^\x00]*$")


class _AccountFields(BaseModel):
    department: str | None = Field(default=None, max_length=64, pattern=TEXT)
    grant: list[Permission] = Field(default_factory=list, max_length=32)
    revoke: list[Permission] = Field(default_factory=list, max_length=32)
    full_name: str | None = Field(default=None, max_length=128, pattern=TEXT)

    def assignment(self, role: str | None) -> Assignment:
        grant, revoke = tuple(self.grant), tuple(self.revoke)
        return Assignment(role, self.department, grant, revoke, self.full_name)


class AssignmentBody(_AccountFields):
    role: str | None = Field(default=None, max_length=32, pattern=TEXT)


@registrations.get("")
async def list_registrations(
    act: ActingDep, state: Literal["pending", "approved", "rejected"] = "pending"
) -> dict[str, Any]:
    listing = Registrations(act.archive.sessions).listing
    return await act.run("review", {"list": state}, listing, state, record=False)


@registrations.post("/hospitals/{pk}/approve")
async def approve_hospital(
    pk: RegistrationPk, response: Response, act: ActingDep
) -> dict[str, Any]:
    detail = {"registration": "hospital", "id": pk, "decision": "approve"}
    approval = await act.run(
        "review", detail, Registrations(act.archive.sessions).approve_hospital, pk
    )
    response.headers["Cache-Control"] = "no-store"  # the credential is shown this once
    return {
        "id": pk,
        "state": "approved",
        "hospital_id": approval.hospital_id,
        "gateway_credential": approval.credential,
    }


@registrations.post("/hospitals/{pk}/reject")
async def reject_hospital(pk: RegistrationPk, body: NoteBody, act: ActingDep) -> dict[str, Any]:
    detail = {"registration": "hospital", "id": pk, "decision": "reject", "note": body.note}
    reject = Registrations(act.archive.sessions).reject_hospital
    hospital_id = await act.run("review", detail, reject, pk, body.note)
    return {"id": pk, "state": "rejected", "hospital_id": hospital_id}


@registrations.post("/users/{username}/approve")
async def approve_user(username: Username, body: AssignmentBody, act: ActingDep) -> dict[str, Any]:
    detail = {
        "registration": "user",
        "username": username,
        "decision": "approve",
        **body.model_dump(exclude_none=True),
    }
    approve = Registrations(act.archive.sessions).approve_user
    user = await act.run("review", detail, approve, username, body.assignment(body.role))
    return user.as_dict()


@registrations.post("/users/{username}/reject")
async def reject_user(username: Username, body: NoteBody, act: ActingDep) -> dict[str, Any]:
    detail = {"registration": "user", "username": username, "decision": "reject", "note": body.note}
    await act.run("review", detail, Registrations(act.archive.sessions).reject_user, username)
    return {"username": username, "status": "rejected"}


# --- accounts and departments ------------------------------------------------------------------

CHANGE = "change_permissions"  # the audit action of every account change


class NewUserBody(_AccountFields):
    username: str = Field(min_length=1, max_length=64, pattern=TEXT)
    password: str = Field(max_length=1024)
    role: str = Field(min_length=1, max_length=32, pattern=TEXT)
    hospital_id: str | None = Field(default=None, max_length=64, pattern=TEXT)


class StatusBody(BaseModel):
    status: Literal["active", "suspended", "retired"]


class DepartmentBody(BaseModel):
    code: str = Field(min_length=1, max_length=64, pattern=TEXT)
    name: str = Field(default="", max_length=128, pattern=TEXT)


@accounts.get("/users")
async def list_users(
    act: ActingDep,
    status: Literal["pending", "active", "suspended", "retired", "rejected"] | None = None,
) -> dict[str, Any]:
    listing = DirectoryAdmin(act.archive.sessions).list_users
    users = await act.run(CHANGE, {"operation": "list_users"}, listing, status, record=False)
    return {"users": users}


@accounts.post("/users", status_code=201)
async def create_user(body: NewUserBody, act: ActingDep) -> dict[str, Any]:
    detail = {"operation": "create_user", **body.model_dump(exclude={"password"})}
    create = DirectoryAdmin(act.archive.sessions).create_user
    change = body.assignment(body.role)
    user = await act.run(
        CHANGE, detail, create, body.username, body.password, body.hospital_id, change
    )
    return user.as_dict()


@accounts.patch("/users/{username}")
async def update_user(username: Username, body: AssignmentBody, act: ActingDep) -> dict[str, Any]:
    detail = {
        "operation": "update_user",
        "username": username,
        **body.model_dump(exclude_none=True),
    }
    update = DirectoryAdmin(act.archive.sessions).update_user
    user = await act.run(CHANGE, detail, update, username, body.assignment(body.role))
    return user.as_dict()


@accounts.post("/users/{username}/status")
async def set_user_status(username: Username, body: StatusBody, act: ActingDep) -> dict[str, Any]:
    detail = {"operation": "set_status", "username": username, "status": body.status}
    set_status = DirectoryAdmin(act.archive.sessions).set_status
    user = await act.run(CHANGE, detail, set_status, username, body.status)
    return user.as_dict()


@accounts.get("/hospitals/{hospital_id}/departments")
async def list_departments(hospital_id: HospitalId, act: ActingDep) -> dict[str, Any]:
    detail = {"operation": "list_departments", "hospital": hospital_id}
    listing = DirectoryAdmin(act.archive.sessions).departments
    found = await act.run(CHANGE, detail, listing, hospital_id, record=False)
    return {"hospital_id": hospital_id, "departments": [d.as_dict() for d in found]}


@accounts.post("/hospitals/{hospital_id}/departments", status_code=201)
async def add_department(
    hospital_id: HospitalId, body: DepartmentBody, act: ActingDep
) -> dict[str, Any]:
    detail = {"operation": "add_department", "hospital": hospital_id, "code": body.code}
    add = DirectoryAdmin(act.archive.sessions).add_department
    department = await act.run(CHANGE, detail, add, hospital_id, body.code, body.name)
    return department.as_dict()
