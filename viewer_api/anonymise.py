"""Anonymised display: what a principal without the PHI permission is not shown.

The attributes are those of PS3.15's Basic Profile that identify the patient directly or
through their visit (names, IDs, dates of birth, addresses, accession and admission numbers),
removed from DICOM JSON at every depth. Searching by them is refused, so a search cannot be
used to learn whether a named person has studies here.
"""

from __future__ import annotations

from typing import Any

from pydicom.datadict import tag_for_keyword

from viewer_api.problems import HTTPProblem

IDENTIFYING_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientBirthTime",
    "OtherPatientIDs", "OtherPatientNames", "OtherPatientIDsSequence", "PatientBirthName",
    "PatientMotherBirthName", "PatientAddress", "PatientTelephoneNumbers", "MedicalRecordLocator",
    "MilitaryRank", "BranchOfService", "PatientInsurancePlanCodeSequence", "PatientComments",
    "AdditionalPatientHistory", "EthnicGroup", "Occupation", "PersonName",
    "AccessionNumber", "AdmissionID", "IssuerOfAdmissionIDSequence", "ReferringPhysicianName",
    "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers", "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy", "OperatorsName", "RequestingPhysician",
    "PhysiciansOfRecord", "ResponsiblePerson", "StudyID", "InstitutionAddress",
    "RequestAttributesSequence", "ReferencedPatientSequence",
)  # fmt: skip


def _hex(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    assert tag is not None, keyword
    return f"{tag:08X}"


IDENTIFYING_TAGS = frozenset(_hex(k) for k in IDENTIFYING_KEYWORDS)


def strip_json(body: dict[str, Any]) -> dict[str, Any]:
    """DICOM JSON without the identifying attributes, sequences included."""
    kept: dict[str, Any] = {}
    for tag, element in body.items():
        if tag.upper() in IDENTIFYING_TAGS:
            continue
        if isinstance(element, dict) and element.get("vr") == "SQ" and "Value" in element:
            element = {**element, "Value": [strip_json(item) for item in element["Value"]]}
        kept[tag] = element
    return kept


def refuse_identifying_filters(keywords: set[str]) -> None:
    """A search by an identifying attribute, from someone who may not see identities."""
    asked = sorted(keywords & set(IDENTIFYING_KEYWORDS))
    if asked:
        raise HTTPProblem(
            403,
            "Forbidden",
            f"your role sees anonymised studies only; it cannot search by {', '.join(asked)}",
        )
