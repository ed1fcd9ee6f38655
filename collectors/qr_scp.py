"""C-FIND / C-GET / C-MOVE SCP: the DIMSE side of Query/Retrieve, over a provider.

The SCP knows DIMSE (levels, statuses, pending responses, C-CANCEL, sub-operations); what
matches and what may be retrieved is the provider's business, which also decides who may ask.
Retrieved objects are sent as the provider's Part-10 bytes: pydicom keeps every element it
does not need to touch as the raw bytes it read, so a sub-operation that uses the stored
transfer syntax sends the stored data set unchanged.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context, evt
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

logger = logging.getLogger(__name__)

RetrieveLevel = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]

SUCCESS = 0x0000
PENDING = 0xFF00
CANCELLED = 0xFE00
UNABLE_TO_PROCESS = 0xC000  # Q/R failure range 0xCxxx: "unable to process"
IDENTIFIER_DOES_NOT_MATCH = 0xA900
MOVE_DESTINATION_UNKNOWN = 0xA801

QUERY_RETRIEVE_SOP_CLASSES = (
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
_STUDY_ROOT = {
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
}
_LEVELS: tuple[RetrieveLevel, ...] = ("PATIENT", "STUDY", "SERIES", "IMAGE")
_UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_MAX_MOVE_CONTEXTS = 128  # PS3.8: presentation context IDs are odd numbers 1-255
_LO_LENGTH = 64  # Error Comment is LO


class QueryRefused(Exception):
    """The provider refuses a request: answered with ``status`` and ``comment``."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(f"0x{status:04X}: {comment}")
        self.status = status
        self.comment = comment


@dataclass(frozen=True)
class RetrieveItem:
    """One instance to send by C-STORE sub-operation; ``load`` returns its Part-10 bytes."""

    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    load: Callable[[], bytes]


class QueryRetrieveProvider(Protocol):
    """What the SCP asks of the archive; any method may raise `QueryRefused`."""

    def find(self, level: RetrieveLevel, identifier: Dataset, calling_ae: str) -> Iterator[Dataset]:
        """The response identifiers of the matches, produced as the SCP sends them."""
        ...

    def retrieve(
        self, level: RetrieveLevel, identifier: Dataset, calling_ae: str
    ) -> list[RetrieveItem]:
        """The instances a C-GET or C-MOVE with this identifier sends, in sending order."""
        ...

    def move_destination(self, move_ae: str, calling_ae: str) -> tuple[str, int] | None:
        """Where ``calling_ae`` may have objects moved to as ``move_ae``; None if nowhere."""
        ...


class QueryRetrieveSCP:
    """Event handlers for C-FIND, C-GET and C-MOVE, bound to a pynetdicom server."""

    def __init__(self, provider: QueryRetrieveProvider) -> None:
        self._provider = provider

    def handlers(self) -> list[tuple[Any, Callable[..., Any]]]:
        return [
            (evt.EVT_C_FIND, self._handle_find),
            (evt.EVT_C_GET, self._handle_get),
            (evt.EVT_C_MOVE, self._handle_move),
        ]

    def _handle_find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        calling = _calling_ae(event)
        try:
            identifier = event.identifier
            level = _level(identifier, event.request.AffectedSOPClassUID)
            wants_retrieve_ae = "RetrieveAETitle" in identifier
            for match in self._provider.find(level, identifier, calling):
                if event.is_cancelled:
                    yield CANCELLED, None
                    return
                if wants_retrieve_ae and not match.get("RetrieveAETitle"):
                    match.RetrieveAETitle = str(event.assoc.acceptor.ae_title).strip()
                yield PENDING, match
        except QueryRefused as refused:
            logger.info("C-FIND from %s refused: %s", calling, refused)
            yield _status(refused.status, refused.comment), None
            return
        except Exception:
            logger.exception("C-FIND from %s failed", calling)
            yield _status(UNABLE_TO_PROCESS, "unexpected error while searching"), None
            return
        yield SUCCESS, None

    def _handle_get(self, event: Any) -> Iterator[Any]:
        calling = _calling_ae(event)
        try:
            level = _level(event.identifier, event.request.AffectedSOPClassUID)
            items = self._provider.retrieve(level, event.identifier, calling)
        except QueryRefused as refused:
            logger.info("C-GET from %s refused: %s", calling, refused)
            _amend_final_response(event, refused.status, refused.comment)
            yield 0  # no sub-operations: pynetdicom answers at once, amended above
            return
        yield len(items)
        yield from _sub_operations(event, items)

    def _handle_move(self, event: Any) -> Iterator[Any]:
        calling = _calling_ae(event)
        move_ae = str(event.request.MoveDestination).strip()
        try:
            level = _level(event.identifier, event.request.AffectedSOPClassUID)
            destination = self._provider.move_destination(move_ae, calling)
            if destination is None:
                raise QueryRefused(
                    MOVE_DESTINATION_UNKNOWN, f"move destination {move_ae} is unknown for {calling}"
                )
            items = self._provider.retrieve(level, event.identifier, calling)
        except QueryRefused as refused:
            logger.info("C-MOVE from %s to %s refused: %s", calling, move_ae, refused)
            _amend_final_response(event, refused.status, refused.comment)
            yield None, None  # "destination unknown" to pynetdicom, amended above
            return
        host, port = destination
        yield host, port, {"contexts": _move_contexts(items)}
        yield len(items)
        yield from _sub_operations(event, items)


def _calling_ae(event: Any) -> str:
    return str(event.assoc.requestor.ae_title).strip()


def _level(identifier: Dataset, sop_class_uid: str) -> RetrieveLevel:
    level = str(identifier.get("QueryRetrieveLevel", "")).strip().upper()
    if level not in _LEVELS:
        raise QueryRefused(IDENTIFIER_DOES_NOT_MATCH, f"QueryRetrieveLevel {level!r} is unknown")
    if level == "PATIENT" and sop_class_uid in _STUDY_ROOT:
        raise QueryRefused(IDENTIFIER_DOES_NOT_MATCH, "Study Root has no PATIENT level")
    return level


def _status(status: int, comment: str) -> Dataset:
    answer = Dataset()
    answer.Status = status
    answer.ErrorComment = comment[:_LO_LENGTH]
    return answer


def _sub_operations(event: Any, items: list[RetrieveItem]) -> Iterator[tuple[int, Dataset]]:
    """One pending (status, dataset) per instance; pynetdicom sends each by C-STORE."""
    for item in items:
        if event.is_cancelled:
            yield CANCELLED, Dataset()  # pynetdicom fills in the failed and remaining counts
            return
        yield PENDING, _dataset_to_send(item)


def _dataset_to_send(item: RetrieveItem) -> Dataset:
    try:
        return dcmread(io.BytesIO(item.load()))
    except Exception:
        logger.exception("cannot read %s for a C-STORE sub-operation", item.sop_instance_uid)
        # Without a SOP Class UID pynetdicom cannot send it, counts one failed
        # sub-operation and lists this SOP Instance UID as failed.
        unsendable = Dataset()
        unsendable.SOPInstanceUID = item.sop_instance_uid
        return unsendable


def _move_contexts(items: list[RetrieveItem]) -> list[PresentationContext]:
    """One context per stored (SOP class, transfer syntax), uncompressed ones convertible."""
    contexts: dict[tuple[str, str], PresentationContext] = {}
    for item in items:
        key = (item.sop_class_uid, item.transfer_syntax_uid)
        if key in contexts or len(contexts) == _MAX_MOVE_CONTEXTS:
            continue
        syntaxes = [item.transfer_syntax_uid]
        if UID(item.transfer_syntax_uid) in _UNCOMPRESSED:
            syntaxes += [s for s in _UNCOMPRESSED if s != item.transfer_syntax_uid]
        contexts[key] = build_context(item.sop_class_uid, syntaxes)
    return list(contexts.values())


def _amend_final_response(event: Any, status: int, comment: str) -> None:
    """Make the response pynetdicom sends next for this request carry ``status``/``comment``.

    A C-GET/C-MOVE handler cannot yield a failure before its sub-operation count (or move
    destination); so the request is ended with "no sub-operations" (or "destination unknown")
    and that one response is amended as pynetdicom sends it.
    """
    dimse = event.assoc.dimse
    message_id = event.request.MessageID
    send = dimse.send_msg

    def amended(primitive: Any, context_id: int) -> None:
        if getattr(primitive, "MessageIDBeingRespondedTo", None) == message_id:
            del dimse.send_msg  # one response only: back to pynetdicom's own method
            primitive.Status = status
            primitive.ErrorComment = comment[:_LO_LENGTH]
        send(primitive, context_id)

    dimse.send_msg = amended
