"""Forward the spool to the cloud: batched STOW-RS, confirmation by checksum, retry, backoff.

An object leaves the queue only when the cloud reports holding it *with the same SHA-256*:
the STOW-RS response says "stored", the gateway API says "these bytes". Everything is keyed
by content, so a batch resent after a crash or a lost response is harmless.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from gateway.cloud_link import CloudLink, CloudLinkError, Upload
from gateway.spool import Spool, SpoolEntry

logger = logging.getLogger(__name__)

# Refusals that will not change on retry: the object itself is the problem.
_PERMANENT = {0xA900, 0xC409}


def _is_permanent(status: int) -> bool:
    return status in _PERMANENT or 0xC000 <= status <= 0xCFFF


@dataclass
class ForwardReport:
    sent: int = 0
    retried: int = 0
    quarantined: int = 0

    @property
    def busy(self) -> bool:
        return bool(self.sent or self.retried or self.quarantined)


class Forwarder:
    def __init__(
        self,
        spool: Spool,
        link: CloudLink,
        *,
        batch_count: int = 32,
        batch_bytes: int = 32 * 1024 * 1024,
        keep_days: float = 15.0,
        retry_base_seconds: float = 1.0,
    ) -> None:
        self.spool = spool
        self.link = link
        self.batch_count = batch_count
        self.batch_bytes = batch_bytes
        self.keep_days = keep_days
        self.retry_base_seconds = retry_base_seconds
        # Set by intake in this process so a new object goes out at once, not after the idle wait.
        self.wake = threading.Event()

    def forward_once(self) -> ForwardReport:
        """Send one batch of due objects; what happened to them."""
        report = ForwardReport()
        batch = self.spool.due(self.batch_count, self.batch_bytes)
        if not batch:
            return report
        uploads = [
            Upload(self.spool.object_path(e.sha256), e.sop_instance_uid, e.sha256) for e in batch
        ]
        try:
            statuses = self.link.stow(uploads)
            held = self.link.held([e.sop_instance_uid for e in batch])
        except (CloudLinkError, OSError) as exc:
            logger.warning("forwarding %d objects failed: %s", len(batch), exc)
            self.spool.mark_retry([e.sha256 for e in batch], str(exc), self.retry_base_seconds)
            report.retried = len(batch)
            return report
        confirmed, retry = self._sort(batch, statuses, held, report)
        self.spool.mark_sent(confirmed)
        if retry:
            self.spool.mark_retry(
                retry, "cloud did not confirm the object", self.retry_base_seconds
            )
        report.sent, report.retried = len(confirmed), len(retry)
        return report

    def _sort(
        self,
        batch: list[SpoolEntry],
        statuses: dict[str, int],
        held: dict[str, str],
        report: ForwardReport,
    ) -> tuple[list[str], list[str]]:
        confirmed: list[str] = []
        retry: list[str] = []
        for entry in batch:
            cloud_sha = held.get(entry.sop_instance_uid)
            status = statuses.get(entry.sop_instance_uid)
            if cloud_sha == entry.sha256:
                confirmed.append(entry.sha256)
            elif cloud_sha is not None:
                self.spool.mark_quarantined(
                    entry.sha256,
                    f"the cloud holds other content under SOP Instance UID "
                    f"{entry.sop_instance_uid} (sha256 {cloud_sha})",
                )
                report.quarantined += 1
            elif status is not None and _is_permanent(status):
                self.spool.mark_quarantined(
                    entry.sha256, f"the cloud refused the object with status 0x{status:04X}"
                )
                report.quarantined += 1
            else:
                retry.append(entry.sha256)
        return confirmed, retry

    def run(self, stop: threading.Event, idle_seconds: float = 1.0) -> None:
        """Forward until ``stop`` is set; purge expired backup copies now and then."""
        purge_every, since_purge = 600.0, 600.0
        while not stop.is_set():
            try:
                report = self.forward_once()
                since_purge += idle_seconds
                if since_purge >= purge_every:
                    since_purge = 0.0
                    purged = self.spool.purge_sent(self.keep_days)
                    if purged:
                        logger.info(
                            "purged %d local backup copies older than %s days",
                            purged,
                            self.keep_days,
                        )
            except Exception:  # the loop must outlive any one bad batch
                logger.exception("forwarder iteration failed")
                report = ForwardReport()
            if not report.busy:
                self.wake.wait(idle_seconds)
                self.wake.clear()
