"""Query/Retrieve pull: ask the hospital PACS for recent studies and fetch the ones we lack.

Some PACS cannot push to the gateway (or the hospital will not route to it), so the gateway
polls instead: a Study Root C-FIND over a date window (optionally limited to modalities), a
``wanted`` callback per study (the gateway answers "the cloud does not have all of it yet"),
then one of

* C-GET: the PACS sends the instances back on the same association; each goes to the intake
  sink and the sink's status goes back to the PACS as the C-STORE response, or
* C-MOVE: the PACS sends them to a move destination (the gateway's own C-STORE SCP, which
  feeds the same sink); the puller only waits for the final status.

A poll never raises: whatever went wrong (PACS down, association rejected, sub-operations
failed) is written in the :class:`PullReport` with its DIMSE status in hex.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from collectors.intake import UNEXPECTED_FAILURE, IntakeSink, SinkResult
from collectors.part10 import file_meta_header
from collectors.qr_pull_config import (
    DateWindow,
    QueryRetrieveConfig,
    config_from_entry,
)
from collectors.storage_scp import STORAGE_TRANSFER_SYNTAXES

__all__ = [
    "DateWindow",
    "PullReport",
    "QueryRetrieveConfig",
    "QueryRetrievePuller",
    "StudyMatch",
    "StudyRetrieval",
    "puller_from_config",
]

logger = logging.getLogger(__name__)

WantedCallback = Callable[[str, int | None], bool]
"""``wanted(study_instance_uid, instance_count_or_None) -> bool``: retrieve this study?"""

_PENDING = (0xFF00, 0xFF01)
_SUCCESS = 0x0000

# A-ASSOCIATE-RQ may carry at most 128 presentation contexts; one is the C-GET model.
_STORAGE_CONTEXT_BUDGET = 127

# When a C-GET proposes fewer syntaxes than we accept for storage (many SOP classes share
# the budget), these come first: the PACS sends an instance unchanged only when its own
# syntax was accepted, and transcodes (or fails) otherwise.
_PREFERRED_SYNTAXES = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.5",  # RLE Lossless
)
RETRIEVE_TRANSFER_SYNTAXES = (
    *_PREFERRED_SYNTAXES,
    *(uid for uid in STORAGE_TRANSFER_SYNTAXES if uid not in _PREFERRED_SYNTAXES),
)

# -- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyMatch:
    """One study the PACS returned for the C-FIND."""

    study_uid: str
    study_date: str = ""
    modalities: tuple[str, ...] = ()
    instance_count: int | None = None
    patient_id: str = ""
    accession_number: str = ""
    sop_classes: tuple[str, ...] = ()


@dataclass
class StudyRetrieval:
    """How the C-GET or C-MOVE of one study ended.

    ``status`` is the final DIMSE status (None when no final response came); the counts are
    the PACS' sub-operation counts (for C-GET, ours when the PACS did not report them).
    """

    study_uid: str
    status: int | None = None
    completed: int = 0
    failed: int = 0
    warning: int = 0
    error: str = ""

    @property
    def succeeded(self) -> bool:
        return self.status == _SUCCESS and self.failed == 0 and not self.error


@dataclass
class PullReport:
    """What one poll did.

    ``studies_queried`` counts what the PACS returned, ``studies_matching`` what is left
    after our own date and modality check (some PACS ignore those keys), ``studies_wanted``
    what the ``wanted`` callback asked for, ``studies_retrieved`` what arrived without a
    failed sub-operation.
    """

    studies_queried: int = 0
    studies_matching: int = 0
    studies_wanted: int = 0
    studies_retrieved: int = 0
    retrievals: list[StudyRetrieval] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        completed = sum(r.completed for r in self.retrievals)
        failed = sum(r.failed for r in self.retrievals)
        return (
            f"{self.studies_queried} studies found, {self.studies_matching} matching, "
            f"{self.studies_wanted} wanted, {self.studies_retrieved} retrieved "
            f"({completed} instances, {failed} failed), {len(self.errors)} errors"
        )


# -- the puller ------------------------------------------------------------------------------


class QueryRetrievePuller:
    """Polls one PACS by C-FIND and retrieves wanted studies by C-GET or C-MOVE."""

    def __init__(
        self,
        config: QueryRetrieveConfig,
        sink: IntakeSink,
        *,
        wanted: WantedCallback | None = None,
        today: Callable[[], date] = date.today,
    ) -> None:
        self.config = config
        self._sink = sink
        self._wanted = wanted or _want_everything
        self._today = today
        self._origin = f"qr-get:{config.called_ae}@{config.host}:{config.port}"

    # -- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event, interval: float | None = None) -> None:
        """Poll now and then every ``interval`` seconds (default: the config's) until stopped."""
        pause = self.config.interval_seconds if interval is None else interval
        while not stop.is_set():
            try:
                report = self.poll_once()
            except Exception:  # poll_once reports its own errors; this is a last resort
                logger.exception("Q/R poll of %s failed unexpectedly", self.config.peer)
            else:
                log = logger.warning if report.errors else logger.info
                log("Q/R poll of %s: %s", self.config.peer, report.summary())
                for error in report.errors:
                    logger.warning("Q/R poll of %s: %s", self.config.peer, error)
            stop.wait(pause)

    def poll_once(self) -> PullReport:
        """Query the PACS, then retrieve every matching study the ``wanted`` callback wants."""
        report = PullReport()
        try:
            studies = self.find_studies(report)
            report.studies_matching = len(studies)
            for study in studies:
                if self._is_wanted(study, report):
                    report.studies_wanted += 1
                    self._retrieve(study, report)
        except Exception as exc:  # the run loop and the gateway rely on getting a report
            logger.exception("Q/R poll of %s failed", self.config.peer)
            report.errors.append(f"unexpected error: {exc!r}")
        return report

    def _is_wanted(self, study: StudyMatch, report: PullReport) -> bool:
        try:
            return bool(self._wanted(study.study_uid, study.instance_count))
        except Exception as exc:
            logger.exception("wanted() failed for study %s", study.study_uid)
            report.errors.append(f"study {study.study_uid}: wanted() failed: {exc!r}")
            return False

    def _retrieve(self, study: StudyMatch, report: PullReport) -> None:
        if self.config.method == "get":
            retrieval = self._get_study(study)
        else:
            retrieval = self._move_study(study)
        report.retrievals.append(retrieval)
        if retrieval.succeeded:
            report.studies_retrieved += 1
        elif retrieval.error:
            report.errors.append(retrieval.error)

    # -- C-FIND --------------------------------------------------------------------------

    def find_studies(self, report: PullReport | None = None) -> list[StudyMatch]:
        """The studies in the date window (and modalities), deduplicated and checked by us too.

        Problems go to ``report.errors``; after a failed query nothing is returned, so a
        poll retrieves nothing rather than acting on a partial answer.
        """
        report = report if report is not None else PullReport()
        model = StudyRootQueryRetrieveInformationModelFind
        assoc, error = self._associate([build_context(model)])
        if assoc is None:
            report.errors.append(f"C-FIND failed: {error}")
            return []
        today = self._today()  # once, so the query and our own check agree at midnight
        found: dict[str, StudyMatch] = {}
        failure = ""
        try:
            for status, identifier, waited in _timed(
                assoc.send_c_find(self._study_query(today), model)
            ):
                if "Status" not in status:
                    failure = _no_response(assoc, waited)
                    break
                code = int(status.Status)
                if code in _PENDING and identifier is not None:
                    match = _study_from_identifier(identifier)
                    if match.study_uid:
                        found.setdefault(match.study_uid, match)
                elif code not in _PENDING and code != _SUCCESS:
                    failure = f"status {_hex(code)}{_comment(status)}"
        finally:
            assoc.release()
        report.studies_queried = len(found)
        if failure:
            report.errors.append(f"C-FIND failed: {failure}")
            return []
        return [study for study in found.values() if self._matches(study, today)]

    def _study_query(self, today: date) -> Dataset:
        query = Dataset()
        query.QueryRetrieveLevel = "STUDY"
        query.StudyInstanceUID = ""
        query.StudyDate = self.config.window.dicom_range(today)
        query.ModalitiesInStudy = "\\".join(self.config.modalities)
        query.NumberOfStudyRelatedInstances = ""
        query.PatientID = ""
        query.AccessionNumber = ""
        # Lets a C-GET propose exactly the SOP classes the study holds (see _get_contexts).
        query.SOPClassesInStudy = ""
        return query

    def _matches(self, study: StudyMatch, today: date) -> bool:
        """Our own check of the window and modalities, for PACS that ignore those keys.

        A study without a (parsable) date or modality list is kept: better pulled once
        more than never.
        """
        day = _parse_study_date(study.study_date)
        if day is not None and not self.config.window.contains(day, today):
            return False
        wanted_modalities = set(self.config.modalities)
        if wanted_modalities and study.modalities:
            return bool(wanted_modalities & set(study.modalities))
        return True

    # -- C-GET ---------------------------------------------------------------------------

    def _get_study(self, study: StudyMatch) -> StudyRetrieval:
        contexts, roles = _get_contexts(study.sop_classes)
        tally = StudyRetrieval(study.study_uid)
        handlers = [(evt.EVT_C_STORE, self._store_handler(tally))]
        model = StudyRootQueryRetrieveInformationModelGet
        assoc, error = self._associate(
            [build_context(model), *contexts], ext_neg=roles, handlers=handlers
        )
        if assoc is None:
            return StudyRetrieval(
                study.study_uid, error=f"C-GET of study {study.study_uid} failed: {error}"
            )
        try:
            responses = assoc.send_c_get(_retrieve_identifier(study), model)
            retrieval = _follow_retrieve(assoc, responses, "C-GET", study.study_uid)
        finally:
            assoc.release()
        if retrieval.completed + retrieval.failed + retrieval.warning == 0:
            # The PACS gave no counts: ours are what the sink actually saw.
            retrieval.completed, retrieval.failed = tally.completed, tally.failed
            retrieval.warning = tally.warning
        return retrieval

    def _store_handler(self, tally: StudyRetrieval) -> Callable[[Any], Dataset | int]:
        """The EVT_C_STORE handler for a C-GET: hand the exact bytes to the sink."""

        def handle_store(event: Any) -> Dataset | int:
            try:
                request = event.request
                header = file_meta_header(
                    str(request.AffectedSOPClassUID),
                    str(request.AffectedSOPInstanceUID),
                    str(event.context.transfer_syntax),
                    self.config.called_ae,
                )
                result = self._sink(
                    header + event.encoded_dataset(include_meta=False), self._origin
                )
            except Exception:
                logger.exception("C-GET sink failed unexpectedly")
                result = SinkResult(UNEXPECTED_FAILURE, "unexpected error while storing")
            if result.status == _SUCCESS:
                tally.completed += 1
            elif result.status >> 12 == 0xB:
                tally.warning += 1
            else:
                tally.failed += 1
            return _store_status(result)

        return handle_store

    # -- C-MOVE --------------------------------------------------------------------------

    def _move_study(self, study: StudyMatch) -> StudyRetrieval:
        destination = self.config.move_destination
        assert destination is not None  # QueryRetrieveConfig checks it for "move"
        model = StudyRootQueryRetrieveInformationModelMove
        assoc, error = self._associate([build_context(model)])
        if assoc is None:
            return StudyRetrieval(
                study.study_uid, error=f"C-MOVE of study {study.study_uid} failed: {error}"
            )
        try:
            responses = assoc.send_c_move(_retrieve_identifier(study), destination, model)
            return _follow_retrieve(assoc, responses, "C-MOVE", study.study_uid)
        finally:
            assoc.release()

    # -- association ---------------------------------------------------------------------

    def _associate(
        self,
        contexts: list[PresentationContext],
        *,
        ext_neg: Sequence[Any] = (),
        handlers: Iterable[tuple[Any, Callable[..., Any]]] = (),
    ) -> tuple[Association | None, str]:
        """An established association, or None and why not."""
        ae = AE(ae_title=self.config.calling_ae)
        ae.acse_timeout = self.config.network_timeout
        ae.connection_timeout = self.config.network_timeout
        ae.network_timeout = self.config.network_timeout
        ae.dimse_timeout = self.config.dimse_timeout
        ae.maximum_pdu_size = 1048576
        rejection: list[Any] = []

        def remember_rejection(event: Any) -> None:
            if getattr(event.primitive, "result", None) in (0x01, 0x02):
                rejection.append(event.primitive)

        assoc = ae.associate(
            self.config.host,
            self.config.port,
            contexts=contexts,
            ae_title=self.config.called_ae,
            ext_neg=list(ext_neg),
            evt_handlers=[*handlers, (evt.EVT_ACSE_RECV, remember_rejection)],
        )
        if assoc.is_established:
            return assoc, ""
        peer = self.config.peer
        if rejection:
            rj = rejection[0]
            return None, (
                f"association rejected by {peer}: {rj.result_str}, {rj.source_str}, {rj.reason_str}"
            )
        if assoc.rejected_contexts and not assoc.accepted_contexts:
            return None, f"{peer} accepted none of the proposed presentation contexts"
        return None, f"could not associate with {peer} (unreachable, refused or aborted)"


# -- helpers ---------------------------------------------------------------------------------


def _timed(
    responses: Iterator[tuple[Dataset, Dataset | None]],
) -> Iterator[tuple[Dataset, Dataset | None, float]]:
    """The responses, each with the seconds waited for it (to tell a timeout from an abort)."""
    since = time.monotonic()
    for status, identifier in responses:
        now = time.monotonic()
        yield status, identifier, now - since
        since = time.monotonic()


def _no_response(assoc: Association, waited: float) -> str:
    timeout = assoc.dimse_timeout
    if timeout is not None and waited >= 0.9 * timeout:
        return f"no response from the PACS within {timeout:g} s"
    # Cut off well before the timeout: what many PACS do to a calling AE title they do not
    # let query or retrieve.
    return (
        "the PACS aborted the association or closed the connection "
        f"(does it let {assoc.requestor.ae_title!r} query and retrieve?)"
    )


def _want_everything(_study_uid: str, _instance_count: int | None) -> bool:
    return True


def _get_contexts(sop_classes: Sequence[str]) -> tuple[list[PresentationContext], list[Any]]:
    """Storage contexts and SCP roles for a C-GET of a study holding ``sop_classes``.

    A PACS sends an instance unchanged only over a context accepted with the instance's own
    transfer syntax, and an acceptor picks one syntax per context, so each (class, syntax)
    pair gets its own context, within the budget of 127. Without the study's SOP classes we
    fall back to pynetdicom's common storage classes (the PACS may then transcode).
    """
    classes = list(dict.fromkeys(uid for uid in sop_classes if uid))[:_STORAGE_CONTEXT_BUDGET]
    if classes:
        per_class = max(1, _STORAGE_CONTEXT_BUDGET // len(classes))
        syntaxes = RETRIEVE_TRANSFER_SYNTAXES[:per_class]
        contexts = [build_context(uid, [syntax]) for uid in classes for syntax in syntaxes]
    else:
        contexts = [
            build_context(context.abstract_syntax, [*context.transfer_syntax])
            for context in StoragePresentationContexts[:_STORAGE_CONTEXT_BUDGET]
            if context.abstract_syntax is not None
        ]
        classes = [str(context.abstract_syntax) for context in contexts]
    return contexts, [build_role(uid, scp_role=True) for uid in classes]


def _retrieve_identifier(study: StudyMatch) -> Dataset:
    # Only the Study Instance UID: some PACS (Orthanc) prefer an Accession Number if present.
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study.study_uid
    return identifier


def _follow_retrieve(
    assoc: Association,
    responses: Iterator[tuple[Dataset, Dataset | None]],
    operation: str,
    study_uid: str,
) -> StudyRetrieval:
    """Read C-GET/C-MOVE responses up to the final one, keeping the latest counts."""
    retrieval = StudyRetrieval(study_uid)
    for status, _identifier, waited in _timed(responses):
        if "Status" not in status:
            retrieval.error = (
                f"{operation} of study {study_uid} failed: {_no_response(assoc, waited)}"
            )
            return retrieval
        for attribute, name in _COUNT_ATTRIBUTES:
            value = status.get(name)
            if value is not None and value != "":
                setattr(retrieval, attribute, int(value))
        code = int(status.Status)
        if code in _PENDING:
            continue
        retrieval.status = code
        if code != _SUCCESS or retrieval.failed:
            retrieval.error = (
                f"{operation} of study {study_uid} ended with status {_hex(code)}"
                f"{_comment(status)}: {retrieval.completed} completed, "
                f"{retrieval.failed} failed, {retrieval.warning} warnings"
            )
    if retrieval.status is None and not retrieval.error:
        retrieval.error = f"{operation} of study {study_uid} failed: no final response"
    return retrieval


_COUNT_ATTRIBUTES = (
    ("completed", "NumberOfCompletedSuboperations"),
    ("failed", "NumberOfFailedSuboperations"),
    ("warning", "NumberOfWarningSuboperations"),
)


def _study_from_identifier(identifier: Dataset) -> StudyMatch:
    return StudyMatch(
        study_uid=str(identifier.get("StudyInstanceUID", "") or "").strip(),
        study_date=str(identifier.get("StudyDate", "") or "").strip(),
        modalities=_strings(identifier.get("ModalitiesInStudy")),
        instance_count=_count(identifier.get("NumberOfStudyRelatedInstances")),
        patient_id=str(identifier.get("PatientID", "") or ""),
        accession_number=str(identifier.get("AccessionNumber", "") or ""),
        sop_classes=_strings(identifier.get("SOPClassesInStudy")),
    )


def _strings(value: Any) -> tuple[str, ...]:
    """A possibly multi-valued element (pydicom gives a str or a MultiValue) as a tuple."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else list(value)
    return tuple(text for text in (str(item).strip() for item in items) if text)


def _count(value: Any) -> int | None:
    """An IS count, or None when absent or garbled (the ``wanted`` callback then decides)."""
    try:
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _parse_study_date(value: str) -> date | None:
    try:
        return datetime.strptime(value[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _store_status(result: SinkResult) -> Dataset | int:
    if result.status == _SUCCESS:
        return _SUCCESS
    status = Dataset()
    status.Status = result.status
    if result.error_comment:
        status.ErrorComment = result.error_comment[:64]  # LO: at most 64 characters
    return status


def _hex(code: int) -> str:
    return f"0x{code:04X}"


def _comment(status: Dataset) -> str:
    comment = str(status.get("ErrorComment", "") or "").strip()
    return f" ({comment})" if comment else ""


def puller_from_config(
    entry: Mapping[str, Any],
    sink: IntakeSink,
    *,
    calling_ae: str,
    move_destination: str | None,
    wanted: WantedCallback | None = None,
) -> QueryRetrievePuller:
    """Build a puller from one ``kind = "qr"`` collector entry of the gateway's TOML.

    ``move_destination`` is the gateway's own SCP AE title; an entry may override it.
    Raises ValueError naming the offending key for anything malformed.
    """
    config = config_from_entry(entry, calling_ae=calling_ae, move_destination=move_destination)
    return QueryRetrievePuller(config, sink, wanted=wanted)
