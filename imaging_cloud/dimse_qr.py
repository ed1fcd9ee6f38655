"""DIMSE Query/Retrieve answered from the archive, each hospital seeing only its own studies.

The calling AE title names the hospital (its registered gateway AE). A C-FIND identifier
becomes a `cloud.query.Query` for the same engine QIDO-RS uses, restricted to that hospital;
a C-GET or C-MOVE sends the stored Part-10 objects of the matches, and a C-MOVE only to the
hospital's own registered AE, so a study never leaves for another hospital this way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from cloud.archive import Archive, StoredInstance
from cloud.audit import AuditEntry
from cloud.crypto import KeyDestroyedError
from cloud.errors import ArchiveError, InstanceNotFoundError
from cloud.hospitals import HospitalRef
from cloud.query import ATTRIBUTES, Match, Query, QueryLevel, matchable
from cloud.scope import StudyScope
from collectors.qr_scp import (
    IDENTIFIER_DOES_NOT_MATCH,
    UNABLE_TO_PROCESS,
    QueryRefused,
    RetrieveItem,
    RetrieveLevel,
)

LEVELS: dict[RetrieveLevel, QueryLevel] = {
    "PATIENT": "patient",
    "STUDY": "study",
    "SERIES": "series",
    "IMAGE": "instance",
}
# The unique key of each level, in hierarchy order: what a C-GET/C-MOVE identifier names.
UNIQUE_KEYS: dict[QueryLevel, str] = {
    "patient": "PatientID",
    "study": "StudyInstanceUID",
    "series": "SeriesInstanceUID",
    "instance": "SOPInstanceUID",
}
_HANDLED_BY_DIMSE = {"QueryRetrieveLevel", "SpecificCharacterSet"}
_PAGE = 500  # matches fetched per index query while C-FIND responses are being sent


class ArchiveQueryRetrieve:
    """The `collectors.qr_scp.QueryRetrieveProvider` of the cloud node."""

    def __init__(self, archive: Archive) -> None:
        self._archive = archive

    def find(self, level: RetrieveLevel, identifier: Dataset, calling_ae: str) -> Iterator[Dataset]:
        hospital = self._hospital(calling_ae)
        query_level = LEVELS[level]
        filters, requested = _filters_and_keys(identifier, query_level)
        query = Query(query_level, filters, scope=StudyScope.of_hospital(hospital.pk), limit=_PAGE)
        self._audit(hospital, calling_ae, "search", detail={"level": level, "keys": filters})
        return self._responses(query, requested, level)

    def retrieve(
        self, level: RetrieveLevel, identifier: Dataset, calling_ae: str
    ) -> list[RetrieveItem]:
        hospital = self._hospital(calling_ae)
        query_level = LEVELS[level]
        filters = _unique_keys(identifier, query_level)
        scope = StudyScope.of_hospital(hospital.pk)
        matches = self._search(Query("instance", filters, scope=scope))
        wanted: dict[str, set[str]] = defaultdict(set)
        for match in matches:
            wanted[match.attributes["StudyInstanceUID"]].add(match.attributes["SOPInstanceUID"])
        items: list[RetrieveItem] = []
        for study_uid, sop_uids in wanted.items():
            detail = {"level": level, "instances": len(sop_uids)}
            self._audit(hospital, calling_ae, "download", study_uid, detail)
            items += [
                _item(self._archive, s)
                for s in self._located(study_uid)
                if s.sop_instance_uid in sop_uids
            ]
        return items

    def move_destination(self, move_ae: str, calling_ae: str) -> tuple[str, int] | None:
        hospital = self._hospital(calling_ae)
        if move_ae.strip() != hospital.ae_title or not hospital.dicom_host:
            return None
        if hospital.dicom_port is None:
            return None
        return hospital.dicom_host, hospital.dicom_port

    def _audit(
        self,
        hospital: HospitalRef,
        calling_ae: str,
        action: str,
        study_uid: str = "",
        detail: dict[str, Any] | None = None,
    ) -> None:
        """DIMSE reads are audited like HTTP ones; the actor is the hospital's gateway AE."""
        self._archive.audit.append(
            AuditEntry(
                actor_kind="gateway",
                actor=f"{calling_ae.strip()}@{hospital.hospital_id}",
                action=action,
                hospital_id=hospital.hospital_id,
                study_instance_uid=study_uid,
                detail={"protocol": "DIMSE", **(detail or {})},
            )
        )

    def _hospital(self, calling_ae: str) -> HospitalRef:
        hospital = self._archive.hospitals.by_ae_title(calling_ae) if calling_ae else None
        if hospital is None:
            raise QueryRefused(
                UNABLE_TO_PROCESS, f"calling AE title {calling_ae} is not registered to a hospital"
            )
        return hospital

    def _search(self, query: Query) -> list[Match]:
        try:
            return self._archive.search(query)
        except ArchiveError as exc:
            raise QueryRefused(exc.dimse_status, exc.detail) from exc

    def _located(self, study_uid: str) -> list[StoredInstance]:
        try:
            return self._archive.locate(study_uid)
        except (InstanceNotFoundError, KeyDestroyedError):
            return []  # deleted or crypto-shredded since the search: nothing left to send
        except ArchiveError as exc:  # e.g. being restored from the cold tier: retry later
            raise QueryRefused(exc.dimse_status, exc.detail) from exc

    def _responses(
        self, query: Query, requested: list[DataElement], level: RetrieveLevel
    ) -> Iterator[Dataset]:
        while True:
            page = self._search(query)
            for match in page:
                yield _response(match, requested, level)
            if len(page) < _PAGE:
                return
            query.offset += _PAGE


def _filters_and_keys(
    identifier: Dataset, level: QueryLevel
) -> tuple[dict[str, str], list[DataElement]]:
    """The matching keys for the index, and the elements each response must carry."""
    filters: dict[str, str] = {}
    requested: list[DataElement] = []
    for element in identifier:
        keyword = element.keyword
        if keyword in _HANDLED_BY_DIMSE or element.tag.is_private or element.tag.group < 0x0008:
            continue
        value = _query_value(element)
        if matchable(keyword, level):
            if value:
                filters[keyword] = value
        elif keyword in ATTRIBUTES and value:
            raise QueryRefused(
                IDENTIFIER_DOES_NOT_MATCH, f"{keyword} cannot be matched at {level} level"
            )
        requested.append(element)
    return filters, requested


def _unique_keys(identifier: Dataset, level: QueryLevel) -> dict[str, str]:
    """The unique keys of a retrieve down to ``level``; the level's own one is required."""
    filters: dict[str, str] = {}
    for key_level, keyword in UNIQUE_KEYS.items():
        value = _query_value(identifier[keyword]) if keyword in identifier else ""
        if "*" in value or "?" in value:
            raise QueryRefused(IDENTIFIER_DOES_NOT_MATCH, f"{keyword} must not hold wildcards")
        if value:
            filters[keyword] = value
        if key_level == level:
            break
    if UNIQUE_KEYS[level] not in filters:
        raise QueryRefused(
            IDENTIFIER_DOES_NOT_MATCH, f"a {level} level retrieve needs {UNIQUE_KEYS[level]}"
        )
    return filters


def _query_value(element: DataElement) -> str:
    """An identifier value as the query engine reads it: multiple values joined by ``\\``."""
    if element.VR == "SQ" or element.value is None:
        return ""
    if isinstance(element.value, MultiValue):
        return "\\".join(str(v) for v in element.value)
    return str(element.value).strip()


def _response(match: Match, requested: list[DataElement], level: RetrieveLevel) -> Dataset:
    response = Dataset()
    response.QueryRetrieveLevel = level
    non_ascii = False
    for element in requested:
        value = _response_value(match.attributes.get(element.keyword))
        vr = _vr(element)
        if vr == "SQ":
            value = []
        response.add(DataElement(element.tag, vr, value))
        non_ascii = non_ascii or any(not str(v).isascii() for v in _values(value))
    if non_ascii:
        # Index values are Unicode; UTF-8 carries any of them (PS3.4 C.4.1.1.3.1 allows it).
        response.SpecificCharacterSet = "ISO_IR 192"
    return response


def _response_value(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, list | tuple):
        return [str(v) for v in value] or None
    return value


def _values(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


def _vr(element: DataElement) -> str:
    """The element's VR, from the dictionary where it is known; ambiguous ones resolved."""
    try:
        vr = dictionary_VR(element.tag)
    except KeyError:
        vr = element.VR
    return vr.split(" or ")[0]


def _item(archive: Archive, stored: StoredInstance) -> RetrieveItem:
    return RetrieveItem(
        sop_class_uid=stored.sop_class_uid,
        sop_instance_uid=stored.sop_instance_uid,
        transfer_syntax_uid=stored.transfer_syntax_uid,
        load=lambda: archive.read(stored),
    )
