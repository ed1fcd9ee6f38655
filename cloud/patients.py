"""Patients sign in with their ID number and a one-time code, and see their studies.

The region's gateways put the resident ID number in PatientID, so one ID reaches a patient's
studies at every hospital. A code goes out through a `CodeDelivery` (SMS in production; the
log-only `OutboxCodeDelivery` for the demo and the tests). Only its SHA-256 is stored; it
expires after five minutes and is burnt after five wrong tries.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from cloud.identity import AuthenticationError
from cloud.models import Hospital, Instance, OneTimeCode, Patient, Series, Study

logger = logging.getLogger(__name__)

CODE_SECONDS = 300
CODE_ATTEMPTS = 5
CODE_DIGITS = 6

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


def aware(moment: datetime) -> datetime:
    """SQLite returns naive datetimes for timezone-aware columns; they are stored as UTC."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class CodeDelivery(Protocol):
    """Sends a sign-in code to the patient (SMS gateway, hospital app, ...)."""

    def deliver(self, patient_id: str, code: str) -> None: ...


class OutboxCodeDelivery:
    """Delivers nothing: appends ``{"patient_id", "code", "at"}`` to ``<folder>/codes.jsonl``
    (0600), where a demo operator or a test reads it."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "codes.jsonl"
        self._lock = threading.Lock()

    def deliver(self, patient_id: str, code: str) -> None:
        line = json.dumps({"patient_id": patient_id, "code": code, "at": utc_now().isoformat()})
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(descriptor, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        logger.info("sign-in code written to %s (no SMS gateway configured)", self.path)


def _code_hash(patient_id: str, code: str) -> str:
    return hashlib.sha256(f"{patient_id}\n{code}".encode()).hexdigest()


class PatientCodes:
    """Issues and checks one-time sign-in codes."""

    def __init__(
        self, sessions: sessionmaker[Session], delivery: CodeDelivery, clock: Clock = utc_now
    ) -> None:
        self._sessions = sessions
        self.delivery = delivery
        self._clock = clock

    def has_studies(self, patient_id: str) -> bool:
        with self._sessions() as session:
            found = session.scalar(
                select(Study.pk)
                .join(Patient, Study.patient_pk == Patient.pk)
                .where(Patient.patient_id == patient_id)
                .limit(1)
            )
        return found is not None

    def send(self, patient_id: str) -> bool:
        """Send a new code if the archive holds studies for ``patient_id``; earlier unused
        codes stop working. Returns whether a code was sent (never shown to the caller)."""
        if not self.has_studies(patient_id):
            return False
        code = f"{secrets.randbelow(10**CODE_DIGITS):0{CODE_DIGITS}d}"
        now = self._clock()
        with self._sessions() as session:
            session.execute(
                update(OneTimeCode)
                .where(OneTimeCode.patient_id == patient_id, OneTimeCode.used_at.is_(None))
                .values(used_at=now)
            )
            session.add(
                OneTimeCode(
                    patient_id=patient_id,
                    code_sha256=_code_hash(patient_id, code),
                    created_at=now,
                    expires_at=now + timedelta(seconds=CODE_SECONDS),
                    attempts=0,
                )
            )
            session.commit()
        self.delivery.deliver(patient_id, code)
        return True

    def verify(self, patient_id: str, code: str) -> None:
        """Accept ``code`` once; AuthenticationError (one message) otherwise."""
        now = self._clock()
        refused = AuthenticationError("wrong or expired code; ask for a new one 验证码错误或已过期")
        with self._sessions() as session:
            row = session.scalar(
                select(OneTimeCode)
                .where(OneTimeCode.patient_id == patient_id, OneTimeCode.used_at.is_(None))
                .order_by(OneTimeCode.created_at.desc(), OneTimeCode.pk.desc())
                .limit(1)
            )
            if row is None or aware(row.expires_at) <= now or row.attempts >= CODE_ATTEMPTS:
                raise refused
            # Conditional updates, so concurrent tries neither lose a count nor both succeed.
            this = (OneTimeCode.pk == row.pk) & OneTimeCode.used_at.is_(None)
            if not hmac.compare_digest(row.code_sha256, _code_hash(patient_id, code.strip())):
                session.execute(
                    update(OneTimeCode).where(this).values(attempts=OneTimeCode.attempts + 1)
                )
                session.commit()
                raise refused
            taken = session.execute(
                update(OneTimeCode)
                .where(this, OneTimeCode.attempts < CODE_ATTEMPTS)
                .values(used_at=now)
            )
            session.commit()
            if taken.rowcount != 1:  # type: ignore[attr-defined]
                raise refused


@dataclass(frozen=True)
class PatientStudy:
    """One study as the patient's exam list shows it."""

    pk: int
    study_instance_uid: str
    study_date: str
    study_time: str
    study_description: str
    hospital_id: str
    hospital_name: str
    modalities: list[str]
    images: int
    first_series_uid: str
    first_sop_instance_uid: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "study_instance_uid": self.study_instance_uid,
            "study_date": self.study_date,
            "study_time": self.study_time,
            "study_description": self.study_description,
            "hospital_id": self.hospital_id,
            "hospital_name": self.hospital_name,
            "modalities": self.modalities,
            "images": self.images,
            "thumbnail": {
                "series_instance_uid": self.first_series_uid,
                "sop_instance_uid": self.first_sop_instance_uid,
            },
            "report": None,  # reports arrive with issue 7
        }


def patient_studies(sessions: sessionmaker[Session], patient_id: str) -> list[PatientStudy]:
    """Every study of ``patient_id``, at every hospital, newest first."""
    with sessions() as session:
        studies = session.execute(
            select(Study, Hospital.hospital_id, Hospital.name)
            .join(Patient, Study.patient_pk == Patient.pk)
            .outerjoin(Hospital, Study.hospital_pk == Hospital.pk)
            .where(Patient.patient_id == patient_id)
            .order_by(Study.study_date.desc(), Study.study_time.desc(), Study.pk.desc())
        ).all()
        series_rows = session.execute(
            select(
                Series.pk,
                Series.study_pk,
                Series.series_instance_uid,
                Series.modality,
                func.sum(func.coalesce(Instance.number_of_frames, 1)),
            )
            .join(Instance, Instance.series_pk == Series.pk)
            .where(Series.study_pk.in_([study.pk for study, _, _ in studies]))
            .group_by(Series.pk)
            .order_by(Series.series_number, Series.pk)
        ).all()
        found = []
        for study, hospital_id, hospital_name in studies:
            mine = [row for row in series_rows if row[1] == study.pk]
            first_sop = ""
            if mine:
                first_sop = (
                    session.scalar(
                        select(Instance.sop_instance_uid)
                        .where(Instance.series_pk == mine[0][0])
                        .order_by(Instance.instance_number, Instance.pk)
                        .limit(1)
                    )
                    or ""
                )
            found.append(
                PatientStudy(
                    study.pk,
                    study.study_instance_uid,
                    study.study_date,
                    study.study_time,
                    study.study_description,
                    hospital_id or "",
                    hospital_name or "",
                    sorted({row[3] for row in mine if row[3]}),
                    sum(int(row[4] or 0) for row in mine),
                    mine[0][2] if mine else "",
                    first_sop,
                )
            )
    return found
