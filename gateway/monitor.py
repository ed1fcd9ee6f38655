"""Heartbeats and per-study audits (数据稽核): the gateway proves to the cloud what it sent.

A study is audited once it has been quiet for a while and nothing of it is queued: the gateway
sends its manifest (SOP Instance UID -> SHA-256) and the cloud answers what it is missing or
holds differently. Missing objects are queued again from the local backup; different content
is reported, never overwritten.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from gateway.cloud_link import CloudLink, CloudLinkError
from gateway.spool import Spool

logger = logging.getLogger(__name__)


def send_heartbeat(spool: Spool, link: CloudLink) -> dict[str, Any]:
    """Report the spool's state; remember the cloud's answer (its alerts) for `status`."""
    status = spool.status()
    report = {
        "queued": status.queued,
        "queued_bytes": status.queued_bytes,
        "quarantined": status.quarantined,
        "oldest_unsent_seconds": status.oldest_unsent_seconds,
        "disk_free_bytes": status.disk_free_bytes,
        "consecutive_failures": status.consecutive_failures,
        "last_error": status.last_error,
    }
    answer = link.heartbeat(report)
    spool.remember("cloud_heartbeat", json.dumps({"at": time.time(), **answer}))
    return answer


@dataclass
class AuditReport:
    studies: int = 0
    matched: int = 0
    resent: int = 0
    mismatched: int = 0


def audit_studies(spool: Spool, link: CloudLink, settle_seconds: float) -> AuditReport:
    """Reconcile every settled study with the cloud; queue again what the cloud lacks."""
    report = AuditReport()
    for study in spool.studies_to_reconcile(settle_seconds):
        manifest = spool.study_manifest(study)
        answer = link.reconcile(study, manifest)
        report.studies += 1
        missing = [str(uid) for uid in answer.get("missing", [])]
        mismatched = [str(uid) for uid in answer.get("mismatched", [])]
        requeued = 0
        if missing:
            requeued = spool.requeue(study, missing)
            report.resent += requeued
            logger.warning(
                "audit of %s: cloud lacks %d objects, %d queued again",
                study,
                len(missing),
                requeued,
            )
            if requeued < len(missing):
                spool.note_error(
                    f"audit of {study}: {len(missing) - requeued} missing objects have no "
                    "local copy left"
                )
        if mismatched:
            report.mismatched += len(mismatched)
            spool.note_error(
                f"audit of {study}: the cloud holds different content for {len(mismatched)} "
                f"objects (e.g. {mismatched[0]})"
            )
        if not missing or not requeued:
            result = "missing" if missing else "mismatch" if mismatched else "match"
            spool.mark_reconciled(study, result)
            report.matched += result == "match"
    return report


def safely(action: str, function: Any, *args: Any) -> Any:
    """Run one periodic task; a cloud outage is logged and noted, never fatal."""
    try:
        return function(*args)
    except CloudLinkError as exc:
        logger.warning("%s failed: %s", action, exc)
    except Exception:
        logger.exception("%s failed", action)
    return None
