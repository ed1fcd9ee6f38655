"""Dependencies declared once: the archive and the API settings the routes share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request

from cloud.archive import Archive


@dataclass(frozen=True)
class ApiSettings:
    """What the HTTP layer needs to know beyond the archive."""

    max_stow_bytes: int = 2 * 1024**3
    max_query_results: int = 10_000
    # Assembled MPR volumes kept in this process (bytes of voxels), or in Redis if a URL is set.
    volume_cache_bytes: int = 1024**3
    volume_cache_url: str = ""
    # Where the node keeps its keys (de-identification key for exports).
    data_dir: Path = Path("data")
    # Extracted video MP4s (viewer_api.video_clips): clips up to video_memory_clip_bytes in a
    # memory LRU of video_memory_bytes; larger ones encrypted in video_cache_dir (None:
    # <data_dir>/cache/video-clips), at most video_disk_cache_bytes in all.
    video_memory_bytes: int = 256 * 1024**2
    video_memory_clip_bytes: int = 64 * 1024**2
    video_disk_cache_bytes: int = 8 * 1024**3
    video_cache_dir: Path | None = None


async def get_archive(request: Request) -> Archive:
    archive: Archive = request.app.state.archive
    return archive


async def get_settings(request: Request) -> ApiSettings:
    settings: ApiSettings = request.app.state.api_settings
    return settings


ArchiveDep = Annotated[Archive, Depends(get_archive)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]


def dicomweb_base(request: Request) -> str:
    """Absolute URL of the DICOMweb root as the client reached it."""
    return str(request.base_url).rstrip("/") + "/dicom-web"
