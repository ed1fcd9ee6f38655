"""Series as the viewer sees them: their instances, whether MPR is offered, their volume."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from cloud.archive import Archive, StoredInstance
from cloud.query import Query
from mpr.pixels import PixelDecodeError
from mpr.volume import MIN_MPR_IMAGES, Volume, VolumeError, assemble_volume, mpr_offered
from viewer_api.etag import instances_digest
from viewer_api.problems import problem
from viewer_api.volume_cache import Volumes, volume_key

MPR_MODALITIES = ("CT", "MR", "PT")
_READERS = 8  # blob reads and decoding of one series in parallel


async def get_volumes(request: Request) -> Volumes:
    volumes: Volumes = request.app.state.volumes
    return volumes


VolumesDep = Annotated[Volumes, Depends(get_volumes)]


@dataclass(frozen=True)
class SeriesInstances:
    """One series as stored now: enough to name it (cache key, ETag) without reading pixels."""

    study_instance_uid: str
    series_instance_uid: str
    modality: str
    instances: tuple[StoredInstance, ...]

    @property
    def images(self) -> int:
        """Frames in the series (a single-frame instance counts one)."""
        return sum(stored.number_of_frames or 1 for stored in self.instances)

    @property
    def digest(self) -> str:
        return instances_digest(stored.sop_instance_uid for stored in self.instances)

    @property
    def key(self) -> str:
        """The volume cache key: changes when an instance is added or removed."""
        return volume_key(self.series_instance_uid, (s.sop_instance_uid for s in self.instances))


def locate_series(archive: Archive, study: str, series: str) -> SeriesInstances:
    """The series' instances (404 if absent) and its modality, from the index only."""
    stored = archive.locate(study, series)
    matches = archive.search(
        Query("series", study_instance_uid=study, series_instance_uid=series, limit=1)
    )
    modality = str(matches[0].attributes.get("Modality") or "") if matches else ""
    return SeriesInstances(study, series, modality, tuple(stored))


def not_offered_reason(modality: str, images: int) -> str | None:
    """Why MPR is not offered for a series of this modality and size; None if it is."""
    if mpr_offered(modality, images):
        return None
    if modality.upper() not in MPR_MODALITIES:
        return (
            f"MPR is offered for {', '.join(MPR_MODALITIES)} series; "
            f"this series is {modality or 'of unknown modality'}"
        )
    return f"MPR needs at least {MIN_MPR_IMAGES} images; this series has {images}"


def _read(archive: Archive, stored: StoredInstance) -> Dataset:
    try:
        return archive.read_dataset(stored)
    except (InvalidDicomError, ValueError, EOFError) as exc:
        raise VolumeError(f"instance {stored.sop_instance_uid} cannot be read: {exc}") from exc


def assemble_series(archive: Archive, series: SeriesInstances) -> Volume:
    """Read every instance of the series and assemble them (VolumeError with the reason)."""
    with ThreadPoolExecutor(max_workers=_READERS) as pool:
        datasets = list(pool.map(lambda s: _read(archive, s), series.instances))
    try:
        return assemble_volume(datasets)
    except PixelDecodeError as exc:
        raise VolumeError(f"the pixel data cannot be decoded: {exc}") from exc


def series_volume(archive: Archive, volumes: Volumes, series: SeriesInstances) -> Volume:
    """The series' volume from the cache, assembled once on a miss.

    Raises
    ------
    VolumeError
        If MPR is not offered for the series or its images do not form a volume.
    """
    reason = not_offered_reason(series.modality, series.images)
    if reason is not None:
        raise VolumeError(reason)
    return volumes.get_or_build(series.key, lambda: assemble_series(archive, series))


def known_failure(volumes: Volumes, series: SeriesInstances) -> str | None:
    """The reason this series failed to form a volume before, if it did."""
    failure = volumes.failure(series.key)
    return None if failure is None else str(failure)


def not_available(reason: str) -> JSONResponse:
    """422 problem+json saying why the series has no MPR (also as ``reason``)."""
    return problem(422, "MPR not available", reason, offered=False, reason=reason)
