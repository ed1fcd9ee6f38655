"""One error hierarchy for the archive.

Each error carries the DIMSE status a C-STORE SCP answers with and the HTTP status a DICOMweb
route answers with, so both front ends refuse the same thing the same way.
"""

from __future__ import annotations


class ArchiveError(Exception):
    """Base of every refusal the archive makes on purpose."""

    dimse_status: int = 0xC211  # Error: unable to process
    http_status: int = 500
    title: str = "Archive error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidDatasetError(ArchiveError):
    """The object cannot be parsed, is truncated, or lacks the UIDs an archive needs."""

    dimse_status = 0xC000  # Error: cannot understand
    http_status = 400
    title = "Invalid DICOM object"


class SOPClassMismatchError(InvalidDatasetError):
    """The object is not of the SOP class (or study) its envelope announced."""

    dimse_status = 0xA900  # Error: data set does not match SOP class
    title = "Object does not match its request"


class DuplicateInstanceError(ArchiveError):
    """A different object arrived under a SOP Instance UID we already hold."""

    dimse_status = 0xC409  # Error: cannot understand (implementation-specific 0xCxxx range)
    http_status = 409
    title = "SOP Instance UID already stored with different content"


class InstanceNotFoundError(ArchiveError):
    """The study, series, instance or frame asked for is not in the archive."""

    dimse_status = 0xA801  # C-MOVE/C-GET: unknown object
    http_status = 404
    title = "Not found"


class InvalidQueryError(ArchiveError):
    """A query parameter is not understood or its value is malformed."""

    dimse_status = 0xA900  # C-FIND: identifier does not match SOP class
    http_status = 400
    title = "Invalid query"


class BackendUnavailableError(ArchiveError):
    """The index or the blob store cannot be reached or is full."""

    dimse_status = 0xA700  # Refused: out of resources
    http_status = 503
    title = "Storage backend unavailable"


class RestoreInProgressError(ArchiveError):
    """What was asked for is in the cold tier; a restore job is bringing it back.

    HTTP 202 Accepted with the job's status URL (``Location``) and ``Retry-After``; DIMSE
    0xA702 (C-GET/C-MOVE "Refused: out of resources - unable to perform sub-operations"), the
    retrieve status that tells an SCU to try again later, with the reason in Error Comment.
    """

    dimse_status = 0xA702
    http_status = 202
    title = "Restoring from cold storage"

    def __init__(self, detail: str, job_pk: int, retry_after_seconds: int) -> None:
        super().__init__(detail)
        self.job_pk = job_pk
        self.retry_after_seconds = retry_after_seconds
