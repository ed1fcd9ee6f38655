"""One settings object for a node: defaults from config/defaults.toml, env IMAGING_CLOUD_*."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

if TYPE_CHECKING:
    from cloud.archive import Archive

DEFAULTS_FILE = Path(__file__).resolve().parents[1] / "config" / "defaults.toml"


class Settings(BaseSettings):
    """Settings of an all-in-one node. Never built at import time; tests pass their own."""

    model_config = SettingsConfigDict(env_prefix="IMAGING_CLOUD_", extra="ignore")

    data_dir: Path
    http_host: str
    http_port: int = Field(ge=0, le=65535)
    dicom_host: str
    dicom_port: int = Field(ge=0, le=65535)
    ae_title: str = Field(min_length=1, max_length=16, pattern=r"^[ -~]*[!-~][ -~]*$")
    max_pdu_size: int = Field(ge=0)
    database_url: str
    blob_url: str
    encryption: bool
    kek_url: str = Field(pattern=r"^(|file:///.*)$")
    blob_replica_urls: list[str]
    cold_blob_url: str
    volume_refresh_seconds: float = Field(gt=0)
    cold_after_days: float = Field(ge=0)
    cold_read_wait_seconds: float = Field(ge=0)
    job_queue_url: str = Field(pattern=r"^(|rediss?://.*|unix://.*)$")
    lifecycle_schedule: bool
    lifecycle_check_seconds: float = Field(gt=0)
    index_backup_keep: int = Field(ge=1)
    max_stow_bytes: int = Field(gt=0)
    volume_cache_bytes: int = Field(ge=0)
    volume_cache_url: str = Field(pattern=r"^(|rediss?://.*|unix://.*)$")
    video_memory_bytes: int = Field(ge=0)
    video_memory_clip_bytes: int = Field(ge=0)
    video_disk_cache_bytes: int = Field(ge=0)
    alert_webhook_url: str
    alert_check_seconds: float = Field(gt=0)
    alert_stale_heartbeat_seconds: float = Field(gt=0)
    alert_low_disk_bytes: int = Field(ge=0)
    alert_backlog_instances: int = Field(ge=0)
    alert_backlog_age_seconds: float = Field(gt=0)
    alert_repeated_failures: int = Field(gt=0)
    audit_view_idle_seconds: float = Field(gt=0)
    audit_view_flush_seconds: float = Field(gt=0)
    audit_address_history_days: float = Field(gt=0)
    audit_working_hours_start: int = Field(ge=0, le=23)
    audit_working_hours_end: int = Field(ge=0, le=23)
    audit_timezone: str = Field(min_length=1)
    audit_burst_downloads: int = Field(ge=0)
    audit_burst_minutes: float = Field(gt=0)
    audit_denied_attempts: int = Field(ge=0)
    audit_denied_minutes: float = Field(gt=0)
    audit_mass_deletions: int = Field(ge=0)
    audit_deletion_minutes: float = Field(gt=0)
    audit_alert_dedup_minutes: float = Field(ge=0)
    oidc_issuer: str
    oidc_client_id: str
    oidc_client_secret: SecretStr
    oidc_redirect_base: str
    oidc_username_claim: str = Field(min_length=1)

    @model_validator(mode="after")
    def _oidc_complete(self) -> Settings:
        """Single sign-on is off without an issuer; with one, it needs the rest, and https
        (plain http only to this machine, for tests and a provider on the same host)."""
        if not self.oidc_issuer:
            return self
        if not self.oidc_client_id or not self.oidc_redirect_base:
            raise ValueError("oidc_issuer needs oidc_client_id and oidc_redirect_base")
        for name in ("oidc_issuer", "oidc_redirect_base"):
            url = urlsplit(getattr(self, name))
            loopback = url.hostname in ("127.0.0.1", "localhost", "::1")
            if url.scheme != "https" and not (url.scheme == "http" and loopback):
                raise ValueError(f"{name} must be an https:// URL")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003 (pydantic-settings hook signature)
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments (CLI), environment, an operator's TOML, our defaults.
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        operator_file = os.environ.get("IMAGING_CLOUD_CONFIG")
        if operator_file:
            sources.append(TomlConfigSettingsSource(settings_cls, Path(operator_file)))
        sources.append(TomlConfigSettingsSource(settings_cls, DEFAULTS_FILE))
        return tuple(sources)


def load_settings(**overrides: Any) -> Settings:
    """Settings with ``overrides`` (None values mean 'not given') on top of env and defaults."""
    given = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**given)


def index_backup_dir(settings: Settings) -> Path:
    """Where the index backups are kept (`cloud.index_backup`)."""
    return settings.data_dir / "backups" / "index"


def open_archive(settings: Settings) -> Archive:
    """The archive as the settings describe it: index, hot store with its replicas, cold
    store, key-encryption keys and encryption, and the wait for cold reads. Every command
    that opens the archive goes through here, so they all see the same stores."""
    from cloud.archive import Archive  # here: loading settings must stay cheap

    return Archive.open(
        settings.data_dir,
        settings.database_url,
        settings.blob_url,
        encryption=settings.encryption,
        kek_url=settings.kek_url,
        replica_urls=settings.blob_replica_urls,
        cold_url=settings.cold_blob_url,
        cold_read_wait_seconds=settings.cold_read_wait_seconds,
        volume_refresh_seconds=settings.volume_refresh_seconds,
    )
