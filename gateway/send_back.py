"""Back to the hospital (Liaoning spec): studies the PACS lost, returned from the cloud by C-STORE.

The cloud queues a send-back for this hospital only; the gateway fetches the study's
instances over its authenticated link into a scratch folder of the spool (never the whole
study in memory), then stores them into the hospital PACS in their original transfer syntax.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom import AE

from gateway.cloud_link import CloudLink, CloudLinkError
from gateway.config import PacsPeer
from gateway.spool import Spool

logger = logging.getLogger(__name__)


class SendBackError(Exception):
    pass


def store_into_pacs(files: list[Path], pacs: PacsPeer, calling_ae: str) -> int:
    """C-STORE each file to the PACS; the number stored. Raises SendBackError on any failure."""
    contexts: dict[str, set[str]] = {}
    for path in files:
        meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"]).file_meta
        contexts.setdefault(str(meta.MediaStorageSOPClassUID), set()).add(
            str(meta.TransferSyntaxUID)
        )
    ae = AE(ae_title=calling_ae)
    for sop_class, syntaxes in contexts.items():
        ae.add_requested_context(sop_class, sorted(syntaxes))
    if len(ae.requested_contexts) > 128:
        raise SendBackError("study needs more than 128 presentation contexts")
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title)
    if not assoc.is_established:
        raise SendBackError(f"PACS {pacs.ae_title}@{pacs.host}:{pacs.port} refused association")
    stored = 0
    try:
        for path in files:
            dataset = dcmread(path)
            status: Any = assoc.send_c_store(dataset)
            code = getattr(status, "Status", None)
            if code is None or code not in (0x0000, 0xB000, 0xB006, 0xB007):
                raise SendBackError(
                    f"PACS answered C-STORE of {dataset.SOPInstanceUID} with "
                    f"{'no response' if code is None else f'0x{code:04X}'}"
                )
            stored += 1
    finally:
        assoc.release()
    return stored


def run_send_backs(spool: Spool, link: CloudLink, pacs: PacsPeer | None, calling_ae: str) -> int:
    """Carry out every pending send-back; report each result to the cloud. Number done."""
    done = 0
    for request in link.send_backs():
        pk, study = int(request["id"]), str(request["study_instance_uid"])
        if pacs is None:
            link.finish_send_back(pk, False, "this gateway has no [pacs] in its sources file")
            continue
        scratch = spool.root / "tmp" / f"send-back-{pk}-{uuid.uuid4().hex}"
        scratch.mkdir(parents=True)
        try:
            files = []
            for index, data in enumerate(link.send_back_instances(pk)):
                path = scratch / f"{index:06d}.dcm"
                path.write_bytes(data)
                files.append(path)
            stored = store_into_pacs(files, pacs, calling_ae)
            detail = f"{stored} instances of {study} stored into {pacs.ae_title}"
            link.finish_send_back(pk, True, detail)
            logger.info("send-back %d: %s", pk, detail)
            done += 1
        except (SendBackError, OSError, ValueError) as exc:
            logger.error("send-back %d of %s failed: %s", pk, study, exc)
            try:
                link.finish_send_back(pk, False, str(exc))
            except CloudLinkError:
                logger.warning("could not report send-back %d failure", pk)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return done
