"""Which studies a principal may reach, as one SQL condition over the studies table.

A hospital user reaches their hospital's studies (a department-scoped one only their
department's), plus the studies of patients who authorised their hospital; a patient reaches
their own; a share link its listed studies. The condition is applied inside the search itself,
so paging and counts never see what is out of scope. Grants enter as a subquery, read at the
moment of the search, so a revoked or expired grant stops counting at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import any_, false, func, or_, select, true

from cloud.models import Patient, PatientGrant, Study


def active_grants(hospital_pk: int, now: datetime | None = None) -> Any:
    """Patient IDs with a grant for this hospital that is neither revoked nor expired."""
    return select(PatientGrant.patient_id).where(
        PatientGrant.hospital_pk == hospital_pk,
        PatientGrant.revoked_at.is_(None),
        PatientGrant.expires_at > (now or datetime.now(UTC)),
    )


@dataclass(frozen=True)
class StudyScope:
    everything: bool = False
    hospital_pk: int | None = None
    department: str | None = None
    granted_to_hospital: int | None = None  # plus the studies of patients who granted it
    patient_ids: frozenset[str] = field(default_factory=frozenset)
    study_uids: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def of_hospital(cls, hospital_pk: int) -> StudyScope:
        return cls(hospital_pk=hospital_pk)

    def condition(self, dialect: str = "", patient_conditions: Sequence[Any] = ()) -> Any:
        """A boolean SQL expression over `Study` (patients through subqueries).

        ``patient_conditions``: conditions on `Patient` the search requires of every result's
        patient anyway (PatientID, PatientName, ...); they narrow the granted patients to those
        that can match. With them, on PostgreSQL (``dialect``), the granted patients are an
        array computed once, when first needed (an InitPlan), not a subquery inside the OR:
        PostgreSQL charges that subquery to every lookup of a nested loop, so it would rather
        read every study, or walk them all by date, than look up the few studies of the
        matching patients. Without them the search starts from the studies (dates,
        modalities), where the subquery is right: it is hashed once and probed per study,
        where an array would be searched linearly.
        """
        if self.everything:
            return true()
        parts: list[Any] = []
        if self.hospital_pk is not None:
            own = Study.hospital_pk == self.hospital_pk
            if self.department is not None:
                own = own & (Study.department == self.department)
            parts.append(own)
        if self.granted_to_hospital is not None:
            granted = (
                select(Patient.pk)
                .where(
                    Patient.patient_id.in_(active_grants(self.granted_to_hospital)),
                    *patient_conditions,
                )
                .correlate(None)  # its own patients, never the search's
            )
            if dialect == "postgresql" and patient_conditions:
                parts.append(Study.patient_pk == any_(func.array(granted.scalar_subquery())))
            else:
                parts.append(Study.patient_pk.in_(granted))
        if self.patient_ids:
            patients = select(Patient.pk).where(Patient.patient_id.in_(sorted(self.patient_ids)))
            parts.append(Study.patient_pk.in_(patients))
        if self.study_uids:
            parts.append(Study.study_instance_uid.in_(sorted(self.study_uids)))
        return or_(*parts) if parts else false()

    def admits_directly(
        self, hospital_pk: int | None, department: str, patient_id: str, uid: str
    ) -> bool:
        """The rule of `condition` for one study, grants aside (they need the index)."""
        if self.everything:
            return True
        if self.hospital_pk is not None and hospital_pk == self.hospital_pk:
            if self.department is None or department == self.department:
                return True
        return patient_id in self.patient_ids or uid in self.study_uids
