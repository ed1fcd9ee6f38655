"""An all-in-one node: the archive, its DICOM SCP (store, Q/R) and its HTTP API in one process."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import pydicom.config
import uvicorn

from cloud.archive import Archive
from cloud.errors import ArchiveError
from cloud.identity import TokenSigner
from cloud.monitoring import AlertMonitor, AlertPolicy
from cloud.quality import QualityScorer
from collectors.storage_scp import ReceivedObject, Sink, SinkResult, StorageSCP
from imaging_cloud.audit_cli import install_audit
from imaging_cloud.dimse_qr import ArchiveQueryRetrieve
from imaging_cloud.lifecycle_schedule import LifecycleSchedule, register_lifecycle_jobs
from imaging_cloud.settings import Settings, open_archive
from imaging_cloud.worker import job_queue_for
from viewer_api.app import create_app
from viewer_api.deps import ApiSettings
from viewer_api.oidc import OidcConfig

logger = logging.getLogger(__name__)


class _HospitalsByAE:
    """Calling AE title -> hospital key, remembered for a minute (one lookup per association
    burst, not per instance; a new registration is seen within the minute)."""

    def __init__(self, archive: Archive, ttl_seconds: float = 60.0) -> None:
        self._archive = archive
        self._ttl = ttl_seconds
        self._known: dict[str, tuple[float, int | None]] = {}
        self._lock = threading.Lock()

    def __call__(self, ae_title: str) -> int | None:
        now = time.monotonic()
        with self._lock:
            cached = self._known.get(ae_title)
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        hospital = self._archive.hospitals.by_ae_title(ae_title)
        pk = None if hospital is None else hospital.pk
        with self._lock:
            self._known[ae_title] = (now, pk)
        return pk


def archive_sink(archive: Archive) -> Sink:
    """Connect the SCP to ingest: each received object is stored, refusals become statuses.

    A study C-STOREd by a registered hospital's AE title belongs to that hospital, as if its
    gateway had uploaded it, so the hospital finds it again by C-FIND.
    """
    hospital_of = _HospitalsByAE(archive)

    def sink(received: ReceivedObject) -> SinkResult:
        source = f"dimse:{received.calling_ae_title}@{received.peer_address}"
        try:
            archive.store(
                received.part10,
                source=source,
                expected_sop_class_uid=received.sop_class_uid,
                hospital_pk=hospital_of(received.calling_ae_title),
            )
        except ArchiveError as exc:
            logger.info("C-STORE refused with 0x%04X: %s", exc.dimse_status, exc.detail)
            return SinkResult(exc.dimse_status, exc.detail)
        return SinkResult(0x0000)

    return sink


def oidc_config(settings: Settings) -> OidcConfig | None:
    """Single sign-on settings for the HTTP app, or None while no issuer is configured."""
    if not settings.oidc_issuer:
        return None
    return OidcConfig(
        issuer=settings.oidc_issuer,
        client_id=settings.oidc_client_id,
        client_secret=settings.oidc_client_secret.get_secret_value(),
        redirect_base=settings.oidc_redirect_base,
        username_claim=settings.oidc_username_claim,
    )


@dataclass
class Node:
    """Holds the running parts so `serve`, the demo and tests start and stop them alike."""

    settings: Settings
    archive: Archive = field(init=False)
    scp: StorageSCP = field(init=False)

    def __post_init__(self) -> None:
        # Received objects are validated by cloud.dataset where it matters (UIDs, lengths);
        # pydicom's per-value VR checks on every read only cost time and emit warnings.
        pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
        s = self.settings
        self.archive = open_archive(s)
        queue = job_queue_for(s)
        if queue is not None:  # the production shape: `imaging-cloud worker` runs the jobs
            self.archive.use_job_queue(queue)
        register_lifecycle_jobs(self.archive, s)
        self.schedule = LifecycleSchedule(self.archive, s) if s.lifecycle_schedule else None
        self.tokens = TokenSigner(s.data_dir / "keys" / "token.key")
        self.audit_detector = install_audit(self.archive, s)
        self.scp = StorageSCP(
            archive_sink(self.archive),
            ae_title=s.ae_title,
            host=s.dicom_host,
            port=s.dicom_port,
            max_pdu_size=s.max_pdu_size,
            qr_provider=ArchiveQueryRetrieve(self.archive),
        )
        self.app = create_app(
            self.archive,
            ApiSettings(
                max_stow_bytes=s.max_stow_bytes,
                volume_cache_bytes=s.volume_cache_bytes,
                volume_cache_url=s.volume_cache_url,
                data_dir=s.data_dir,
                video_memory_bytes=s.video_memory_bytes,
                video_memory_clip_bytes=s.video_memory_clip_bytes,
                video_disk_cache_bytes=s.video_disk_cache_bytes,
            ),
            health_checks={"dicom": self.scp.ready.is_set},
            tokens=self.tokens,
            oidc=oidc_config(s),
        )
        self.app.state.quality_scorer = QualityScorer(self.archive, timezone=s.audit_timezone)
        self.app.state.statistics_timezone = s.audit_timezone
        self.alerts = AlertMonitor(
            self.archive.sessions,
            AlertPolicy(
                stale_heartbeat_seconds=s.alert_stale_heartbeat_seconds,
                low_disk_bytes=s.alert_low_disk_bytes,
                backlog_instances=s.alert_backlog_instances,
                backlog_age_seconds=s.alert_backlog_age_seconds,
                repeated_failures=s.alert_repeated_failures,
            ),
            s.alert_webhook_url,
        )

    def start_monitoring(self) -> None:
        """Check the hospitals' gateways periodically (alerts to the log and the webhook), and
        run the lifecycle pass (classify, tier, back up) if this process is the one that does."""
        self.alerts.start(self.settings.alert_check_seconds)
        if self.schedule is not None:
            self.schedule.start()

    def http_server(self) -> uvicorn.Server:
        config = uvicorn.Config(
            self.app,
            host=self.settings.http_host,
            port=self.settings.http_port,
            log_level="warning",
            access_log=False,
            proxy_headers=True,
        )
        return uvicorn.Server(config)

    def urls(self) -> dict[str, str]:
        http = f"http://{self.settings.http_host}:{self.settings.http_port}"
        return {
            "health": f"{http}/healthz",
            "dicomweb": f"{http}/dicom-web",
            "api_docs": f"{http}/docs",
            "dicom": f"{self.settings.ae_title}@{self.settings.dicom_host}:{self.scp.port}",
        }

    def run(self) -> None:
        """Serve until interrupted (SIGINT/SIGTERM), then stop cleanly."""
        self.scp.start()
        self.start_monitoring()
        try:
            self.http_server().run()
        finally:
            self.close()

    def close(self) -> None:
        self.alerts.stop()
        if self.schedule is not None:
            self.schedule.stop()
        self.scp.stop()
        self.archive.close()
        self.audit_detector.close()
