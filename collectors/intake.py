"""The one contract every collector feeds: hand over Part-10 bytes, learn whether they were taken.

Collectors (C-STORE SCP, Q/R pull, FTP, SFTP, HTTP, watched folder) never decide where objects
go. They call an `IntakeSink` with the exact bytes they received and a short description of
where the bytes came from. The hospital gateway's sink writes to its durable spool; the cloud
node's sink ingests into the archive.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700  # transient: try again later (disk full, backend down)
CANNOT_UNDERSTAND = 0xC000  # the bytes are not a DICOM object we can keep
UNEXPECTED_FAILURE = 0xC211


@dataclass(frozen=True)
class SinkResult:
    """What the sink made of an object.

    ``status`` is a DIMSE status: 0x0000 means the object is durable (fsync'd and journaled)
    and the sender may forget it. A failure with ``quarantined`` set means the sink kept a
    copy aside with the reason, so a polling collector must not fetch the same file again;
    a failure without it (e.g. 0xA700, disk full) means "not taken, retry later".
    """

    status: int
    error_comment: str = ""
    quarantined: bool = False

    @property
    def taken(self) -> bool:
        """True when the sender may consider the object handed over (stored or quarantined)."""
        return self.status == SUCCESS or self.quarantined


IntakeSink = Callable[[bytes, str], SinkResult]
"""``sink(part10_bytes, origin) -> SinkResult``; origin is e.g. ``ftp://host/dir/file.dcm``."""
