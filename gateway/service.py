"""The hospital gateway as one process: collectors feed the spool, workers empty it.

Threads: the C-STORE SCP (pynetdicom's own), one per configured collector, the forwarder,
and one for the periodic chores (heartbeat, audit, send-back, retention purge).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import pydicom.config

from collectors.storage_scp import ReceivedObject, SinkResult, StorageSCP
from gateway.cloud_link import CloudLink, CloudLinkError
from gateway.config import GatewayConfig
from gateway.forwarder import Forwarder
from gateway.monitor import audit_studies, safely, send_heartbeat
from gateway.send_back import run_send_backs
from gateway.sources import start_sources
from gateway.spool import Spool

logger = logging.getLogger(__name__)


class Gateway:
    def __init__(self, config: GatewayConfig) -> None:
        # The spool reads only four UIDs; pydicom's per-value checks would just fill the log
        # with warnings about attributes the gateway never looks at.
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        self.config = config
        self.spool = Spool(config.spool_dir)
        self.link = CloudLink(
            config.cloud_url,
            config.credential,
            ca_file=config.ca_file,
            bandwidth_bytes_per_second=config.bandwidth_bytes_per_second,
        )
        self.forwarder = Forwarder(
            self.spool,
            self.link,
            batch_count=config.batch_count,
            batch_bytes=config.batch_bytes,
            keep_days=config.keep_days,
            retry_base_seconds=config.retry_base_seconds,
        )
        self.scp = StorageSCP(
            self._scp_sink,
            ae_title=config.ae_title,
            host=config.dicom_host,
            port=config.dicom_port,
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.http_push_port: int | None = None

    def _scp_sink(self, received: ReceivedObject) -> SinkResult:
        return self.accept(received.part10, received.origin)

    def accept(self, data: bytes, origin: str) -> SinkResult:
        """The sink every collector of this gateway feeds: spool, then wake the forwarder."""
        result = self.spool.accept(data, origin)
        if result.status == 0:
            self.forwarder.wake.set()
        return result

    def wanted(self, study_uid: str, instance_count: int | None) -> bool:
        """For pull collectors: is any of this study still missing from cloud and spool?

        While the cloud is unreachable the spool alone answers: collecting goes on during an
        outage, which is what the spool is for.
        """
        held = {e.sop_instance_uid for e in self.spool.entries(study_uid)}
        try:
            held |= set(self.link.study_manifest(study_uid))
        except CloudLinkError as exc:
            logger.info("cloud unreachable for %s (%s); deciding from the spool", study_uid, exc)
        return instance_count is None or len(held) < instance_count

    def start(self) -> None:
        self.scp.start()
        self._spawn("forwarder", self.forwarder.run, self._stop)
        self._spawn("chores", self._chores)
        self.http_push_port = start_sources(self, self._spawn)
        logger.info(
            "gateway %s for hospital %s: DICOM %s@%s:%d -> %s",
            self.config.ae_title,
            self.config.hospital_id,
            self.config.ae_title,
            self.config.dicom_host,
            self.scp.port,
            self.config.cloud_url,
        )

    def _spawn(self, name: str, target: Callable[..., Any], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    @property
    def stop_event(self) -> threading.Event:
        return self._stop

    def _chores(self) -> None:
        config = self.config
        last: dict[str, float] = {}

        def due(name: str, every: float) -> bool:
            now = time.monotonic()
            if now - last.get(name, -1e9) >= every:
                last[name] = now
                return True
            return False

        while not self._stop.is_set():
            if due("heartbeat", config.heartbeat_seconds):
                safely("heartbeat", send_heartbeat, self.spool, self.link)
            if due("audit", min(config.reconcile_settle_seconds, 60.0)):
                safely(
                    "audit", audit_studies, self.spool, self.link, config.reconcile_settle_seconds
                )
            if due("send-back", config.send_back_poll_seconds):
                safely(
                    "send-back", run_send_backs, self.spool, self.link, config.pacs, config.ae_title
                )
            self._stop.wait(0.5)

    def run(self) -> None:
        """Serve until interrupted."""
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        self.forwarder.wake.set()
        self.scp.stop()
        for thread in self._threads:
            thread.join(timeout=10)
        self.link.close()
        self.spool.close()
