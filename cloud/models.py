"""The index: patients, studies, series and instances, with the attributes QIDO-RS matches on.

Column names are DICOM keywords in snake_case. Person names are kept as received (decoded to
Unicode) and, for matching, casefolded per component group (alphabetic, ideographic, phonetic),
so a query in Latin letters or in Chinese characters finds the same patient.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

UID = String(64)
PN = String(324)  # 64 chars per group x 3 groups, plus separators, in Unicode characters


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Patient(Base):
    __tablename__ = "patients"
    __table_args__ = (
        UniqueConstraint("patient_id", "issuer_of_patient_id"),
        # Person Name prefixes (``zhang*`` -> LIKE 'zhang%') on the casefolded groups. On
        # PostgreSQL a plain btree serves LIKE only under the C collation; the pattern
        # operator class serves it under any (and equality too). Migration 0008.
        *(
            Index(
                f"ix_patients_{column}",
                column,
                postgresql_ops={column: "varchar_pattern_ops"},
            )
            for column in (
                "patient_name_alphabetic",
                "patient_name_ideographic",
                "patient_name_phonetic",
            )
        ),
    )

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(PN, default="")
    patient_name_alphabetic: Mapped[str] = mapped_column(PN, default="")
    patient_name_ideographic: Mapped[str] = mapped_column(PN, default="")
    patient_name_phonetic: Mapped[str] = mapped_column(PN, default="")
    patient_birth_date: Mapped[str] = mapped_column(String(8), default="")
    patient_sex: Mapped[str] = mapped_column(String(16), default="")


class Hospital(Base):
    """A hospital whose gateway uploads to this cloud; it owns the studies it sent first."""

    __tablename__ = "hospitals"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    hospital_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(128))
    # SHA-256 of the gateway credential: the token is 256 random bits, so a fast hash suffices.
    credential_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    # The AE title its gateway calls us with, and where that gateway accepts C-STORE/C-MOVE.
    ae_title: Mapped[str] = mapped_column(String(16), default="", index=True)
    dicom_host: Mapped[str] = mapped_column(String(255), default="")
    dicom_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    district: Mapped[str] = mapped_column(String(64), default="")
    level: Mapped[str] = mapped_column(String(32), default="")
    # Where it is, for the regulator's map (WGS 84 degrees); unknown until an admin sets it.
    latitude: Mapped[float | None] = mapped_column(Float, nullable=True)
    longitude: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Study(Base):
    __tablename__ = "studies"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.pk"), index=True)
    hospital_pk: Mapped[int | None] = mapped_column(
        ForeignKey("hospitals.pk"), nullable=True, index=True
    )
    study_date: Mapped[str] = mapped_column(String(8), default="", index=True)
    study_time: Mapped[str] = mapped_column(String(16), default="")
    accession_number: Mapped[str] = mapped_column(String(16), default="", index=True)
    study_id: Mapped[str] = mapped_column(String(16), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    referring_physician_name: Mapped[str] = mapped_column(PN, default="")
    timezone_offset_from_utc: Mapped[str] = mapped_column(String(16), default="")
    # Institutional Department Name (0008,1040) of the first instance: what department-scoped
    # roles match on.
    department: Mapped[str] = mapped_column(String(64), default="", index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Series(Base):
    __tablename__ = "series"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.pk"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="", index=True)
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    series_description: Mapped[str] = mapped_column(String(64), default="")
    body_part_examined: Mapped[str] = mapped_column(String(16), default="")
    series_date: Mapped[str] = mapped_column(String(8), default="")
    series_time: Mapped[str] = mapped_column(String(16), default="")
    performed_procedure_step_start_date: Mapped[str] = mapped_column(String(8), default="")
    performed_procedure_step_start_time: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Instance(Base):
    __tablename__ = "instances"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.pk"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID, index=True)
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    columns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    number_of_frames: Mapped[int | None] = mapped_column(Integer, nullable=True)
    bits_allocated: Mapped[int | None] = mapped_column(Integer, nullable=True)
    blob_key: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(128), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # "" = the blob holds the Part-10 bytes as received; "aes256gcm" = sealed with the study's
    # data key (cloud.crypto). sha256 and size_bytes always describe the plaintext.
    encryption: Mapped[str] = mapped_column(String(16), default="")
    # "hot": the blob is in the hot store under blob_key; "cold": it is inside its series'
    # cold bundle (SeriesTier.cold_key) and must be restored before it is read.
    tier: Mapped[str] = mapped_column(String(8), default="hot")


class IngestConflict(Base):
    """A different object that arrived under a SOP Instance UID already held; kept for review."""

    __tablename__ = "ingest_conflicts"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    stored_sha256: Mapped[str] = mapped_column(String(64))
    received_sha256: Mapped[str] = mapped_column(String(64))
    received_blob_key: Mapped[str] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(128), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class InstanceMetadata(Base):
    """DICOM JSON of an instance without its bulk data, filled on first request."""

    __tablename__ = "instance_metadata"

    instance_pk: Mapped[int] = mapped_column(
        ForeignKey("instances.pk", ondelete="CASCADE"), primary_key=True
    )
    dicom_json: Mapped[str] = mapped_column(Text)


Index("ix_instances_series_number", Instance.series_pk, Instance.instance_number)


class GatewayHeartbeat(Base):
    """The latest heartbeat of each hospital's gateway (older ones are only logged)."""

    __tablename__ = "gateway_heartbeats"

    hospital_pk: Mapped[int] = mapped_column(ForeignKey("hospitals.pk"), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    queued: Mapped[int] = mapped_column(Integer, default=0)
    queued_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    quarantined: Mapped[int] = mapped_column(Integer, default=0)
    oldest_unsent_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    disk_free_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")


class Reconciliation(Base):
    """One per-study audit (数据稽核): the gateway's manifest compared with what we hold."""

    __tablename__ = "reconciliations"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    hospital_pk: Mapped[int] = mapped_column(ForeignKey("hospitals.pk"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    checked_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    gateway_instances: Mapped[int] = mapped_column(Integer)
    cloud_instances: Mapped[int] = mapped_column(Integer)
    missing: Mapped[int] = mapped_column(Integer)
    mismatched: Mapped[int] = mapped_column(Integer)
    result: Mapped[str] = mapped_column(String(16))


class SendBack(Base):
    """A request to send a study back into its own hospital's PACS through that gateway."""

    __tablename__ = "send_backs"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    hospital_pk: Mapped[int] = mapped_column(ForeignKey("hospitals.pk"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    detail: Mapped[str] = mapped_column(Text, default="")


class Alert(Base):
    """An upload-monitoring alert (采集监测); open while ``cleared_at`` is null."""

    __tablename__ = "alerts"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    hospital_pk: Mapped[int] = mapped_column(ForeignKey("hospitals.pk"), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    raised_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    cleared_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class User(Base):
    """A person who signs in: belongs to a hospital (none for regional roles) and a department."""

    __tablename__ = "users"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(32))
    hospital_pk: Mapped[int | None] = mapped_column(
        ForeignKey("hospitals.pk"), nullable=True, index=True
    )
    department: Mapped[str] = mapped_column(String(64), default="")
    # pending | active | suspended | retired | rejected: only active users get tokens, and a
    # token is checked against this on every use, so staff who leave lose access at once.
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    full_name: Mapped[str] = mapped_column(String(128), default="")
    # What a self-registered user asked for; the reviewer decides the role.
    requested_role: Mapped[str] = mapped_column(String(32), default="")
    # Per-user adjustments to the role's permissions, space-separated permission names.
    permissions_granted: Mapped[str] = mapped_column(Text, default="")
    permissions_revoked: Mapped[str] = mapped_column(Text, default="")
    # The OIDC issuer's subject this account is linked to, if the hospital signs in that way.
    oidc_subject: Mapped[str | None] = mapped_column(String(255), nullable=True, unique=True)
    reviewed_by: Mapped[str] = mapped_column(String(64), default="")
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Department(Base):
    __tablename__ = "departments"
    __table_args__ = (UniqueConstraint("hospital_pk", "code"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    hospital_pk: Mapped[int] = mapped_column(ForeignKey("hospitals.pk"), index=True)
    code: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128), default="")


class HospitalRegistration(Base):
    """A hospital asking to join the region; a platform admin approves or rejects it."""

    __tablename__ = "hospital_registrations"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    hospital_id: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(128))
    ae_title: Mapped[str] = mapped_column(String(16), default="")
    district: Mapped[str] = mapped_column(String(64), default="")
    level: Mapped[str] = mapped_column(String(32), default="")
    contact: Mapped[str] = mapped_column(String(255), default="")
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    submitted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reviewed_by: Mapped[str] = mapped_column(String(64), default="")
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")


class AuditEvent(Base):
    """One entry of the append-only, hash-chained audit log (``seq`` has no gaps)."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    actor_kind: Mapped[str] = mapped_column(String(16))  # user | patient | share_link | system
    actor: Mapped[str] = mapped_column(String(128), index=True)
    role: Mapped[str] = mapped_column(String(32), default="")
    hospital_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    action: Mapped[str] = mapped_column(String(32), index=True)
    outcome: Mapped[str] = mapped_column(String(16), default="allowed")
    study_instance_uid: Mapped[str] = mapped_column(UID, default="", index=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    client_address: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(Text, default="")  # JSON object
    view_started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    view_ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    duration_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))


class AuditChainHead(Base):
    """The single row (pk 1) naming the last entry; appends lock it so the chain stays linear."""

    __tablename__ = "audit_chain_head"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))


class AccessAlert(Base):
    """An access anomaly seen in the audit stream (unusual address or hour, bursts, ...)."""

    __tablename__ = "access_alerts"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    actor: Mapped[str] = mapped_column(String(128), index=True)
    hospital_id: Mapped[str] = mapped_column(String(64), default="")
    message: Mapped[str] = mapped_column(Text)
    audit_seq: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    raised_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class OneTimeCode(Base):
    """A patient's sign-in code (stored hashed), sent through the code-delivery interface."""

    __tablename__ = "one_time_codes"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    code_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class GrantRequest(Base):
    """A hospital's workstation asking a patient to authorise it (shown as a QR code)."""

    __tablename__ = "grant_requests"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    code_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    hospital_pk: Mapped[int] = mapped_column(ForeignKey("hospitals.pk"), index=True)
    requested_by: Mapped[str] = mapped_column(String(64))
    visit: Mapped[str] = mapped_column(String(64), default="")
    valid_hours: Mapped[int] = mapped_column(Integer, default=24)  # how long the grant lasts
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    state: Mapped[str] = mapped_column(String(16), default="pending")  # approved | declined
    grant_pk: Mapped[int | None] = mapped_column(Integer, nullable=True)


class PatientGrant(Base):
    """A patient's authorisation for one hospital to see their studies from other hospitals."""

    __tablename__ = "patient_grants"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    hospital_pk: Mapped[int] = mapped_column(ForeignKey("hospitals.pk"), index=True)
    visit: Mapped[str] = mapped_column(String(64), default="")
    method: Mapped[str] = mapped_column(String(16))  # qr | patient_page
    granted_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ShareLink(Base):
    """A capability URL for one or more studies; only the SHA-256 of its token is kept."""

    __tablename__ = "share_links"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created_by_kind: Mapped[str] = mapped_column(String(16))  # patient | user
    created_by: Mapped[str] = mapped_column(String(128))
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    opened_count: Mapped[int] = mapped_column(Integer, default=0)


class ShareLinkStudy(Base):
    __tablename__ = "share_link_studies"

    share_link_pk: Mapped[int] = mapped_column(
        ForeignKey("share_links.pk", ondelete="CASCADE"), primary_key=True
    )
    study_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)


class StudyKey(Base):
    """A study's data key, wrapped by a key-encryption key; destroying it shreds the study."""

    __tablename__ = "study_keys"

    study_instance_uid: Mapped[str] = mapped_column(UID, primary_key=True)
    kek_id: Mapped[str] = mapped_column(String(64), index=True)
    wrapped_key: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    rewrapped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    destroyed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class StudyLifecycle(Base):
    """Classification and retention of a study (Xuzhou: 4 categories x 5 levels)."""

    __tablename__ = "study_lifecycle"

    study_pk: Mapped[int] = mapped_column(
        ForeignKey("studies.pk", ondelete="CASCADE"), primary_key=True
    )
    category: Mapped[str] = mapped_column(String(32))
    level: Mapped[int] = mapped_column(Integer)
    retention_class: Mapped[str] = mapped_column(String(32))
    retain_until: Mapped[str] = mapped_column(String(8), index=True)  # YYYYMMDD
    legal_hold: Mapped[bool] = mapped_column(Boolean, default=False)
    hold_reason: Mapped[str] = mapped_column(Text, default="")
    extended_by: Mapped[str] = mapped_column(String(64), default="")  # approval of an extension
    classified_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    classified_by: Mapped[str] = mapped_column(String(64), default="")


class DestructionRecord(Base):
    """Proof that a study was destroyed under the policy; hash-chained like the audit log."""

    __tablename__ = "destruction_records"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    patient_id_sha256: Mapped[str] = mapped_column(String(64))
    retention_class: Mapped[str] = mapped_column(String(32))
    retain_until: Mapped[str] = mapped_column(String(8))
    instances: Mapped[int] = mapped_column(Integer)
    bytes_destroyed: Mapped[int] = mapped_column(BigInteger)
    blob_keys_sha256: Mapped[str] = mapped_column(String(64))  # digest of the sorted blob keys
    blob_keys: Mapped[str] = mapped_column(Text)  # JSON list, so verify can check they are gone
    key_destroyed: Mapped[bool] = mapped_column(Boolean)
    approved_by: Mapped[str] = mapped_column(String(64))
    destroyed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    prev_hash: Mapped[str] = mapped_column(String(64))
    entry_hash: Mapped[str] = mapped_column(String(64))


class SeriesTier(Base):
    """Access statistics of a series and, while it is cold, where its bundle lives."""

    __tablename__ = "series_tiers"

    series_pk: Mapped[int] = mapped_column(
        ForeignKey("series.pk", ondelete="CASCADE"), primary_key=True
    )
    last_access_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True, index=True
    )
    access_count: Mapped[int] = mapped_column(Integer, default=0)
    cold_key: Mapped[str] = mapped_column(String(255), default="")  # "" while hot
    cold_sha256: Mapped[str] = mapped_column(String(64), default="")  # of the stored bundle
    cold_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # the bundle as stored
    plain_bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # its instances, plaintext
    cold_instances: Mapped[int] = mapped_column(Integer, default=0)
    tiered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    restored_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class LifecycleJob(Base):
    """A restore, tiering or scrub run: queued, running, done or failed, with its progress."""

    __tablename__ = "lifecycle_jobs"
    __table_args__ = (Index("ix_lifecycle_jobs_kind_target", "kind", "target", "state"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    target: Mapped[str] = mapped_column(String(64), default="")  # a study UID, or ""
    state: Mapped[str] = mapped_column(String(16), index=True)
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    detail: Mapped[str] = mapped_column(Text, default="")  # JSON: what the job found and did
    error: Mapped[str] = mapped_column(Text, default="")
    requested_by: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class BlobVolume(Base):
    """A volume or bucket added to a tier while the node serves (online expansion)."""

    __tablename__ = "blob_volumes"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    url: Mapped[str] = mapped_column(String(1024), unique=True)
    tier: Mapped[str] = mapped_column(String(8))  # "hot" or "cold"
    writable: Mapped[bool] = mapped_column(Boolean, default=True)
    added_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    added_by: Mapped[str] = mapped_column(String(128), default="")


# --- reports, exam codes, mutual recognition, data quality (issue 7) ----------------------


class Report(Base):
    """A study's diagnostic report as the hospital sent it (JSON or DICOM SR), one version.

    Keyed by the Study Instance UID, not the study row: a report may arrive before its images.
    A corrected report is a new version; the previous ones stay for the citations made on them.
    """

    __tablename__ = "reports"
    __table_args__ = (UniqueConstraint("study_instance_uid", "version"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    current: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    hospital_pk: Mapped[int | None] = mapped_column(ForeignKey("hospitals.pk"), nullable=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    accession_number: Mapped[str] = mapped_column(String(64), default="")  # exam number
    exam_type: Mapped[str] = mapped_column(String(16), default="")  # modality, as 检查类型
    body_part: Mapped[str] = mapped_column(String(64), default="")
    exam_name: Mapped[str] = mapped_column(String(128), default="")
    local_exam_code: Mapped[str] = mapped_column(String(64), default="")
    request_date: Mapped[str] = mapped_column(String(8), default="")  # YYYYMMDD
    exam_date: Mapped[str] = mapped_column(String(8), default="")
    report_date: Mapped[str] = mapped_column(String(8), default="")
    report_time: Mapped[str] = mapped_column(String(16), default="")
    findings: Mapped[str] = mapped_column(Text, default="")  # 影像表现
    impression: Mapped[str] = mapped_column(Text, default="")  # 诊断意见
    reporting_physician: Mapped[str] = mapped_column(String(64), default="")
    reviewing_physician: Mapped[str] = mapped_column(String(64), default="")
    status: Mapped[str] = mapped_column(String(16), default="draft")  # draft | final
    source: Mapped[str] = mapped_column(String(16), default="json")  # json | sr
    source_sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReportCitation(Base):
    """Findings or impression copied by someone: the citation ID travels with the text."""

    __tablename__ = "report_citations"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    citation_id: Mapped[str] = mapped_column(String(32), unique=True)
    report_pk: Mapped[int] = mapped_column(ForeignKey("reports.pk", ondelete="CASCADE"), index=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    field: Mapped[str] = mapped_column(String(16))  # findings | impression
    text_sha256: Mapped[str] = mapped_column(String(64))
    actor: Mapped[str] = mapped_column(String(128))
    actor_kind: Mapped[str] = mapped_column(String(16))
    hospital_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    cited_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class RegionalExamCode(Base):
    """The region's exam code table (config/exam_codes.toml seeds it; admins edit it)."""

    __tablename__ = "regional_exam_codes"

    code: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    modality: Mapped[str] = mapped_column(String(16), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    exam_class: Mapped[str] = mapped_column(String(32), default="")  # what counts as "same exam"
    recognition_days: Mapped[int] = mapped_column(Integer, default=0)  # 0: never recognised
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class ExamCodeMapping(Base):
    """A hospital's local procedure code mapped to a regional code."""

    __tablename__ = "exam_code_mappings"
    __table_args__ = (UniqueConstraint("hospital_pk", "local_code"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    hospital_pk: Mapped[int] = mapped_column(ForeignKey("hospitals.pk", ondelete="CASCADE"))
    local_code: Mapped[str] = mapped_column(String(64))
    local_name: Mapped[str] = mapped_column(String(128), default="")
    regional_code: Mapped[str] = mapped_column(String(32), default="", index=True)  # "": unmapped
    seen_count: Mapped[int] = mapped_column(Integer, default=0)
    first_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    last_seen_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    updated_by: Mapped[str] = mapped_column(String(64), default="")
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class DictionaryEntry(Base):
    """Device-type and body-part dictionaries (config/dictionaries.toml seeds them)."""

    __tablename__ = "dictionary_entries"
    __table_args__ = (UniqueConstraint("dictionary", "code"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    dictionary: Mapped[str] = mapped_column(String(32), index=True)  # device_type | body_part
    code: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    synonyms: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of accepted spellings
    active: Mapped[bool] = mapped_column(Boolean, default=True)


class StudyExam(Base):
    """What a study is in regional terms: its normalised exam code, class and body part."""

    __tablename__ = "study_exams"

    study_pk: Mapped[int] = mapped_column(
        ForeignKey("studies.pk", ondelete="CASCADE"), primary_key=True
    )
    local_code: Mapped[str] = mapped_column(String(64), default="")
    regional_code: Mapped[str] = mapped_column(String(32), default="", index=True)
    exam_class: Mapped[str] = mapped_column(String(32), default="", index=True)
    body_part: Mapped[str] = mapped_column(String(64), default="")
    normalised_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class RecognitionCheck(Base):
    """One mutual-recognition check by a HIS, the priors offered and the doctor's decision."""

    __tablename__ = "recognition_checks"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    check_id: Mapped[str] = mapped_column(String(32), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), index=True)
    hospital_pk: Mapped[int | None] = mapped_column(ForeignKey("hospitals.pk"), nullable=True)
    exam_code: Mapped[str] = mapped_column(String(64))
    regional_code: Mapped[str] = mapped_column(String(32), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    priors: Mapped[str] = mapped_column(Text, default="[]")  # JSON: the study UIDs offered
    prior_count: Mapped[int] = mapped_column(Integer, default=0)
    requested_by: Mapped[str] = mapped_column(String(128), default="")
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    decision: Mapped[str] = mapped_column(String(16), default="pending")  # accepted|declined
    decision_reason: Mapped[str] = mapped_column(Text, default="")
    accepted_study_uid: Mapped[str] = mapped_column(String(64), default="")
    decided_by: Mapped[str] = mapped_column(String(128), default="")
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class StudyQuality(Base):
    """Automatic data-quality scores of a study (0-100 each), recomputed when it changes."""

    __tablename__ = "study_quality"

    study_pk: Mapped[int] = mapped_column(
        ForeignKey("studies.pk", ondelete="CASCADE"), primary_key=True
    )
    completeness: Mapped[float] = mapped_column(Float)
    timeliness: Mapped[float] = mapped_column(Float)
    consistency: Mapped[float] = mapped_column(Float)
    conformance: Mapped[float] = mapped_column(Float)
    overall: Mapped[float] = mapped_column(Float, index=True)
    findings: Mapped[str] = mapped_column(Text, default="[]")  # JSON: what lost points, why
    scored_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class QcPlan(Base):
    """A QC sampling plan: which studies, what fraction, reviewed by whom."""

    __tablename__ = "qc_plans"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    criteria: Mapped[str] = mapped_column(Text, default="{}")  # JSON: hospital, modality, dates
    sample_percent: Mapped[float] = mapped_column(Float)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class QcReview(Base):
    """One sampled study's review: image and report quality grades by a reviewer."""

    __tablename__ = "qc_reviews"
    __table_args__ = (UniqueConstraint("plan_pk", "study_pk"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    plan_pk: Mapped[int] = mapped_column(ForeignKey("qc_plans.pk", ondelete="CASCADE"))
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.pk", ondelete="CASCADE"), index=True)
    reviewer: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(16), default="pending", index=True)  # or done
    image_grade: Mapped[str] = mapped_column(String(8), default="")  # A B C D (甲乙丙丁)
    report_grade: Mapped[str] = mapped_column(String(8), default="")
    passed: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    comment: Mapped[str] = mapped_column(Text, default="")
    sampled_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


# --- surgical video: catalogue, annotation, expert review, viewings (issue 8) --------------


class SurgicalVideo(Base):
    """One stored DICOM video object, as the video search, annotation and review see it.

    Filled when a video SOP class is stored (`cloud.videos`); the title page fields (procedure,
    applicant, diagnosis) come from the DICOM attributes and may be corrected over the API.
    """

    __tablename__ = "surgical_videos"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, index=True)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    patient_id: Mapped[str] = mapped_column(String(64), default="", index=True)
    hospital_pk: Mapped[int | None] = mapped_column(ForeignKey("hospitals.pk"), nullable=True)
    institution_name: Mapped[str] = mapped_column(String(64), default="")
    procedure: Mapped[str] = mapped_column(String(128), default="", index=True)
    diagnosis: Mapped[str] = mapped_column(String(256), default="")
    surgeon: Mapped[str] = mapped_column(String(128), default="", index=True)
    applicant: Mapped[str] = mapped_column(String(128), default="", index=True)
    camera_role: Mapped[str] = mapped_column(String(16), default="")  # panorama|field|endoscope
    video_class: Mapped[str] = mapped_column(String(32), default="surgical_field_video")
    operation_date: Mapped[str] = mapped_column(String(8), default="", index=True)  # YYYYMMDD
    operation_minutes: Mapped[float | None] = mapped_column(Float, nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    width: Mapped[int] = mapped_column(Integer, default=0)
    height: Mapped[int] = mapped_column(Integer, default=0)
    frame_rate: Mapped[float | None] = mapped_column(Float, nullable=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID, default="")
    definition: Mapped[str] = mapped_column(String(4), default="HD")  # HD | SD
    derived_from_uid: Mapped[str] = mapped_column(UID, default="")  # SD copy / PiP source
    notes: Mapped[str] = mapped_column(Text, default="")  # free text for search
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class VideoAnnotation(Base):
    """A phase or key step of a recording, with times in seconds from the video's start."""

    __tablename__ = "video_annotations"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    video_pk: Mapped[int] = mapped_column(
        ForeignKey("surgical_videos.pk", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(8))  # phase | step
    start_s: Mapped[float] = mapped_column(Float)
    end_s: Mapped[float] = mapped_column(Float)
    label: Mapped[str] = mapped_column(String(128))
    tissue: Mapped[str] = mapped_column(String(128), default="")
    instrument: Mapped[str] = mapped_column(String(128), default="")
    action: Mapped[str] = mapped_column(String(128), default="")
    compliance: Mapped[str] = mapped_column(Text, default="")
    note: Mapped[str] = mapped_column(Text, default="")
    voice_note_key: Mapped[str] = mapped_column(String(128), default="")  # blob key
    voice_note_type: Mapped[str] = mapped_column(String(64), default="")
    author: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ReviewTask(Base):
    """An expert panel's review of one applicant's surgical videos, with its scoring form."""

    __tablename__ = "review_tasks"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(256))
    applicant: Mapped[str] = mapped_column(String(128), index=True)
    hospital_pk: Mapped[int | None] = mapped_column(ForeignKey("hospitals.pk"), nullable=True)
    form: Mapped[str] = mapped_column(Text)  # JSON: {"criteria": [{"key","label","max"}], ...}
    status: Mapped[str] = mapped_column(String(16), default="open")  # open | closed
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    due_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ReviewTaskVideo(Base):
    __tablename__ = "review_task_videos"
    __table_args__ = (UniqueConstraint("task_pk", "video_pk"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_pk: Mapped[int] = mapped_column(ForeignKey("review_tasks.pk", ondelete="CASCADE"))
    video_pk: Mapped[int] = mapped_column(
        ForeignKey("surgical_videos.pk", ondelete="CASCADE"), index=True
    )


class ReviewAssignment(Base):
    """One expert on one task, and their scores once submitted."""

    __tablename__ = "review_assignments"
    __table_args__ = (UniqueConstraint("task_pk", "reviewer"),)

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_pk: Mapped[int] = mapped_column(ForeignKey("review_tasks.pk", ondelete="CASCADE"))
    reviewer: Mapped[str] = mapped_column(String(128), index=True)  # username
    assigned_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    scores: Mapped[str] = mapped_column(Text, default="")  # JSON {criterion key: points}
    total: Mapped[float | None] = mapped_column(Float, nullable=True)
    recommendation: Mapped[str] = mapped_column(String(16), default="")  # pass | fail | ""
    comment: Mapped[str] = mapped_column(Text, default="")
    submitted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ReviewComment(Base):
    """A reviewer's remark on a task, optionally at a moment of one of its videos."""

    __tablename__ = "review_comments"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    task_pk: Mapped[int] = mapped_column(
        ForeignKey("review_tasks.pk", ondelete="CASCADE"), index=True
    )
    video_pk: Mapped[int | None] = mapped_column(
        ForeignKey("surgical_videos.pk", ondelete="CASCADE"), nullable=True
    )
    at_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    author: Mapped[str] = mapped_column(String(128))
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class VideoViewing(Base):
    """One viewing of a video: who, from which organisation, from when to when."""

    __tablename__ = "video_viewings"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    viewing_id: Mapped[str] = mapped_column(String(32), unique=True)
    video_pk: Mapped[int] = mapped_column(
        ForeignKey("surgical_videos.pk", ondelete="CASCADE"), index=True
    )
    task_pk: Mapped[int | None] = mapped_column(
        ForeignKey("review_tasks.pk", ondelete="SET NULL"), nullable=True
    )
    viewer: Mapped[str] = mapped_column(String(128), index=True)
    viewer_kind: Mapped[str] = mapped_column(String(16))  # user | patient | share_link
    organisation: Mapped[str] = mapped_column(String(128), default="")
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
