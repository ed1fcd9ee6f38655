"""Hospitals and their gateways: registration, credentials, heartbeats, audits, send-back.

A hospital's gateway authenticates with a bearer credential printed once at registration;
only its SHA-256 is stored. Everything a gateway may ask is scoped to its own hospital: it
sees checksums and send-back requests of the studies it uploaded, never another hospital's.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from cloud.errors import ArchiveError, InstanceNotFoundError, InvalidQueryError
from cloud.models import (
    Alert,
    GatewayHeartbeat,
    Hospital,
    Instance,
    Reconciliation,
    SendBack,
    Series,
    Study,
)

CREDENTIAL_PREFIX = "icg_"
HOSPITAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
AE_TITLE = re.compile(r"^[ -~]*[!-~][ -~]*$")


class HospitalExistsError(ArchiveError):
    title = "Hospital already registered"
    http_status = 409


@dataclass(frozen=True)
class HospitalRef:
    """The identity a credential or an AE title resolves to."""

    pk: int
    hospital_id: str
    name: str
    ae_title: str
    dicom_host: str
    dicom_port: int | None


@dataclass(frozen=True)
class HeldInstance:
    sop_instance_uid: str
    series_instance_uid: str
    sha256: str


@dataclass(frozen=True)
class ReconciliationResult:
    study_instance_uid: str
    missing: list[str]  # the gateway has them, we do not
    mismatched: list[str]  # same UID, different bytes
    cloud_instances: int

    @property
    def result(self) -> str:
        return "match" if not self.missing and not self.mismatched else "mismatch"


def credential_hash(credential: str) -> str:
    return hashlib.sha256(credential.encode("utf-8")).hexdigest()


def _ref(row: Hospital) -> HospitalRef:
    return HospitalRef(
        row.pk, row.hospital_id, row.name, row.ae_title, row.dicom_host, row.dicom_port
    )


class HospitalRegistry:
    """All hospital/gateway bookkeeping of the cloud, over the index database."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions

    # -- registration and identity ----------------------------------------------------------

    def add_hospital(
        self,
        hospital_id: str,
        name: str,
        *,
        ae_title: str = "",
        dicom_host: str = "",
        dicom_port: int | None = None,
    ) -> str:
        """Register a hospital; return its gateway credential (shown once, stored hashed)."""
        if not HOSPITAL_ID.match(hospital_id):
            raise InvalidQueryError(
                f"hospital id {hospital_id!r}: use 1-64 letters, digits, '_', '.', '-'"
            )
        if ae_title and (len(ae_title) > 16 or not AE_TITLE.match(ae_title)):
            raise InvalidQueryError(f"AE title {ae_title!r} is not 1-16 printable characters")
        credential = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
        row = Hospital(
            hospital_id=hospital_id,
            name=name.strip() or hospital_id,
            credential_sha256=credential_hash(credential),
            ae_title=ae_title.strip(),
            dicom_host=dicom_host,
            dicom_port=dicom_port,
            active=True,
            created_at=datetime.now(UTC),
        )
        with self._sessions() as session:
            session.add(row)
            try:
                session.commit()
            except IntegrityError as exc:
                raise HospitalExistsError(f"hospital {hospital_id} is already registered") from exc
        return credential

    def rotate_credential(self, hospital_id: str) -> str:
        """Issue a new credential; the old one stops working at once."""
        credential = CREDENTIAL_PREFIX + secrets.token_urlsafe(32)
        with self._sessions() as session:
            row = session.scalar(select(Hospital).where(Hospital.hospital_id == hospital_id))
            if row is None:
                raise InstanceNotFoundError(f"hospital {hospital_id} is not registered")
            row.credential_sha256 = credential_hash(credential)
            session.commit()
        return credential

    def authenticate(self, credential: str) -> HospitalRef | None:
        """The active hospital holding ``credential``, or None."""
        if not credential.startswith(CREDENTIAL_PREFIX):
            return None
        digest = credential_hash(credential)
        with self._sessions() as session:
            row = session.scalar(
                select(Hospital).where(Hospital.credential_sha256 == digest, Hospital.active)
            )
            # compare_digest as well: the index lookup alone leaks nothing useful, but be plain.
            if row is None or not secrets.compare_digest(row.credential_sha256, digest):
                return None
            return _ref(row)

    def by_ae_title(self, ae_title: str) -> HospitalRef | None:
        with self._sessions() as session:
            row = session.scalar(
                select(Hospital).where(Hospital.ae_title == ae_title.strip(), Hospital.active)
            )
            return None if row is None else _ref(row)

    def by_id(self, hospital_id: str) -> HospitalRef | None:
        with self._sessions() as session:
            row = session.scalar(select(Hospital).where(Hospital.hospital_id == hospital_id))
            return None if row is None else _ref(row)

    def all(self) -> list[HospitalRef]:
        with self._sessions() as session:
            return [_ref(row) for row in session.scalars(select(Hospital).order_by(Hospital.pk))]

    # -- what the cloud holds, as a gateway may see it ---------------------------------------

    def held_instances(self, hospital: HospitalRef, sop_uids: Iterable[str]) -> dict[str, str]:
        """SOP Instance UID -> SHA-256 for those of ``sop_uids`` held in this hospital's studies."""
        wanted = list(dict.fromkeys(sop_uids))
        found: dict[str, str] = {}
        with self._sessions() as session:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                rows = session.execute(
                    select(Instance.sop_instance_uid, Instance.sha256)
                    .join(Series, Instance.series_pk == Series.pk)
                    .join(Study, Series.study_pk == Study.pk)
                    .where(Instance.sop_instance_uid.in_(chunk))
                    .where(_visible_to(hospital))
                )
                found.update({str(uid): str(sha) for uid, sha in rows})
        return found

    def study_manifest(self, hospital: HospitalRef, study_uid: str) -> list[HeldInstance]:
        with self._sessions() as session:
            study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
            if study is None or study.hospital_pk not in (hospital.pk, None):
                raise InstanceNotFoundError(f"study {study_uid} is not held for this hospital")
            rows = session.execute(
                select(Instance.sop_instance_uid, Series.series_instance_uid, Instance.sha256)
                .join(Series, Instance.series_pk == Series.pk)
                .where(Series.study_pk == study.pk)
                .order_by(Series.pk, Instance.pk)
            )
            return [HeldInstance(str(a), str(b), str(c)) for a, b, c in rows]

    def reconcile(
        self, hospital: HospitalRef, study_uid: str, gateway_manifest: dict[str, str]
    ) -> ReconciliationResult:
        """Compare the gateway's SOP UID -> SHA-256 manifest of a study with ours; record it."""
        held = self.held_instances(hospital, gateway_manifest)
        missing = sorted(uid for uid in gateway_manifest if uid not in held)
        mismatched = sorted(
            uid for uid, sha in gateway_manifest.items() if uid in held and held[uid] != sha
        )
        with self._sessions() as session:
            cloud_count = session.scalar(
                select(func.count(Instance.pk))
                .join(Series, Instance.series_pk == Series.pk)
                .join(Study, Series.study_pk == Study.pk)
                .where(Study.study_instance_uid == study_uid)
                .where(_visible_to(hospital))
            )
            outcome = ReconciliationResult(study_uid, missing, mismatched, int(cloud_count or 0))
            session.add(
                Reconciliation(
                    hospital_pk=hospital.pk,
                    study_instance_uid=study_uid,
                    checked_at=datetime.now(UTC),
                    gateway_instances=len(gateway_manifest),
                    cloud_instances=outcome.cloud_instances,
                    missing=len(missing),
                    mismatched=len(mismatched),
                    result=outcome.result,
                )
            )
            session.commit()
        return outcome

    # -- heartbeats ---------------------------------------------------------------------------

    def record_heartbeat(self, hospital: HospitalRef, report: dict[str, Any]) -> None:
        values = {
            "received_at": datetime.now(UTC),
            "queued": int(report.get("queued", 0)),
            "queued_bytes": int(report.get("queued_bytes", 0)),
            "quarantined": int(report.get("quarantined", 0)),
            "oldest_unsent_seconds": _optional_float(report.get("oldest_unsent_seconds")),
            "disk_free_bytes": _optional_int(report.get("disk_free_bytes")),
            "consecutive_failures": int(report.get("consecutive_failures", 0)),
            "last_error": str(report.get("last_error") or "")[:2000],
        }
        with self._sessions() as session:
            row = session.get(GatewayHeartbeat, hospital.pk)
            if row is None:
                session.add(GatewayHeartbeat(hospital_pk=hospital.pk, **values))
            else:
                for name, value in values.items():
                    setattr(row, name, value)
            session.commit()

    def open_alerts(self, hospital: HospitalRef) -> list[dict[str, str]]:
        with self._sessions() as session:
            rows = session.scalars(
                select(Alert).where(Alert.hospital_pk == hospital.pk, Alert.cleared_at.is_(None))
            )
            return [{"kind": row.kind, "message": row.message} for row in rows]

    # -- back to the hospital -------------------------------------------------------------

    def request_send_back(self, hospital: HospitalRef, study_uid: str) -> int:
        """Queue a study for its own hospital's PACS; refused for another hospital's study."""
        with self._sessions() as session:
            owner = session.scalar(
                select(Study.hospital_pk).where(Study.study_instance_uid == study_uid)
            )
            if owner is None or owner != hospital.pk:
                raise InstanceNotFoundError(
                    f"study {study_uid} was not uploaded by hospital {hospital.hospital_id}; "
                    "studies are only sent back to the hospital they came from"
                )
            now = datetime.now(UTC)
            row = SendBack(
                hospital_pk=hospital.pk,
                study_instance_uid=study_uid,
                state="pending",
                requested_at=now,
                updated_at=now,
                detail="",
            )
            session.add(row)
            session.commit()
            return row.pk

    def pending_send_backs(self, hospital: HospitalRef) -> list[SendBack]:
        with self._sessions() as session:
            return list(
                session.scalars(
                    select(SendBack)
                    .where(SendBack.hospital_pk == hospital.pk, SendBack.state == "pending")
                    .order_by(SendBack.pk)
                )
            )

    def finish_send_back(self, hospital: HospitalRef, pk: int, ok: bool, detail: str) -> bool:
        with self._sessions() as session:
            row = session.get(SendBack, pk)
            if row is None or row.hospital_pk != hospital.pk:
                return False
            row.state = "done" if ok else "failed"
            row.detail = detail[:2000]
            row.updated_at = datetime.now(UTC)
            session.commit()
        return True

    def send_back(self, pk: int) -> SendBack | None:
        with self._sessions() as session:
            return session.get(SendBack, pk)


def _visible_to(hospital: HospitalRef) -> Any:
    # Studies loaded without a hospital (demo data, direct STOW) are nobody's to hide.
    return (Study.hospital_pk == hospital.pk) | (Study.hospital_pk.is_(None))


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _optional_int(value: Any) -> int | None:
    return None if value is None else int(value)
