"""DICOMweb pull: find recent studies on a hospital archive (QIDO-RS), fetch them (WADO-RS).

Some hospitals cannot push to the gateway but expose a DICOMweb endpoint. Each poll asks
QIDO-RS for the studies of the last few days (one query per modality, if a modality list is
configured), lets the caller skip the ones the cloud already holds in full, and retrieves the
rest with WADO-RS in their stored transfer syntax (``transfer-syntax=*``), so the bytes the
sink sees are the archive's own, not a transcoded copy.

A study can be gigabytes: the WADO-RS response is streamed and cut into parts as it arrives
(:class:`MultipartStreamReader`), so at most one instance plus a read buffer is in memory.
"""

from __future__ import annotations

import json
import logging
import re
import ssl
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from collectors.intake import OUT_OF_RESOURCES, UNEXPECTED_FAILURE, IntakeSink, SinkResult
from collectors.multipart import (
    MultipartError,
    iter_multipart,
    parse_media_type,
)

logger = logging.getLogger(__name__)

__all__ = [
    "DicomwebError",
    "DicomwebPuller",
    "FoundStudy",
    "PollReport",
    "Wanted",
    "puller_from_config",
]

WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
QIDO_ACCEPT = "application/dicom+json"
STUDY_INSTANCE_UID = "0020000D"
MODALITIES_IN_STUDY = "00080061"
NUMBER_OF_STUDY_RELATED_INSTANCES = "00201208"

DEFAULT_MAX_INSTANCE_BYTES = 4 * 1024**3  # a whole-slide or long cine object can be huge
_MAX_ERROR_BODY_BYTES = 16 * 1024
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")

Wanted = Callable[[str, "int | None"], bool]
"""``wanted(study_instance_uid, instance_count) -> bool``: False when the cloud has it all."""


class DicomwebError(Exception):
    """The DICOMweb server refused a request, or could not be reached (``status`` None)."""

    def __init__(self, method: str, url: str, status: int | None, detail: str) -> None:
        where = f"{method} {url}"
        super().__init__(f"{where}: HTTP {status}: {detail}" if status else f"{where}: {detail}")
        self.method, self.url, self.status, self.detail = method, url, status, detail


# -- the puller ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FoundStudy:
    """One QIDO-RS match."""

    study_instance_uid: str
    instance_count: int | None  # NumberOfStudyRelatedInstances, when the server says
    modalities: tuple[str, ...] = ()


@dataclass
class PollReport:
    """What one poll (or one study retrieval) did.

    ``instances_stored`` counts status 0; ``instances_quarantined`` failures the sink kept
    aside; ``instances_failed`` objects not taken (to be fetched again at a later poll).
    """

    studies_seen: int = 0
    studies_wanted: int = 0
    studies_retrieved: int = 0
    instances_stored: int = 0
    instances_quarantined: int = 0
    instances_failed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def instances_taken(self) -> int:
        """Stored or quarantined: handed over for good (as :attr:`SinkResult.taken`)."""
        return self.instances_stored + self.instances_quarantined

    @property
    def ok(self) -> bool:
        return not self.errors and not self.instances_failed

    def summary(self) -> str:
        return (
            f"{self.studies_seen} studies seen, {self.studies_wanted} wanted, "
            f"{self.studies_retrieved} retrieved; instances: {self.instances_stored} stored, "
            f"{self.instances_quarantined} quarantined, {self.instances_failed} failed; "
            f"{len(self.errors)} errors"
        )


class _SinkBackOff(Exception):
    """The sink did not take an object: stop fetching until the next poll."""


class DicomwebPuller:
    """Polls one DICOMweb endpoint and hands every retrieved instance to ``sink``.

    ``days`` is the StudyDate window: today and the ``days - 1`` days before it, in local
    time (StudyDate is the hospital's local date). ``wanted`` is asked per study found and
    should answer False for studies the cloud already holds in full.
    """

    def __init__(
        self,
        url: str,
        sink: IntakeSink,
        *,
        days: int = 1,
        modalities: Sequence[str] = (),
        wanted: Wanted | None = None,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        ca_file: str | None = None,
        verify: bool = True,
        timeout: float = 60.0,
        interval_seconds: float = 300.0,
        max_instance_bytes: int = DEFAULT_MAX_INSTANCE_BYTES,
        page_size: int = 500,
        today: Callable[[], date] = date.today,
    ) -> None:
        if days < 1:
            raise ValueError("days must be at least 1")
        if token and (username or password):
            raise ValueError("give either a bearer token or a username and password, not both")
        if (username is None) != (password is None):
            raise ValueError("basic authentication needs both username and password")
        self.base_url = url.rstrip("/")
        self.sink = sink
        self.days = days
        self.modalities = tuple(m.strip().upper() for m in modalities if m.strip())
        self.wanted: Wanted = wanted or _always
        self.interval_seconds = interval_seconds
        self.max_instance_bytes = max_instance_bytes
        self.page_size = page_size
        self._today = today
        self._origin_base = _without_credentials(self.base_url)
        headers = {"User-Agent": "imaging-cloud-gateway"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._client = httpx.Client(
            headers=headers,
            auth=(username, password) if username is not None and password is not None else None,
            verify=ssl.create_default_context(cafile=ca_file) if ca_file else verify,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 15.0)),
        )

    # -- lifecycle --

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> DicomwebPuller:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def run(self, stop: threading.Event, interval: float | None = None) -> None:
        """Poll now and then every ``interval`` (default ``interval_seconds``) until stopped."""
        pause = self.interval_seconds if interval is None else interval
        while not stop.is_set():
            try:
                report = self.poll()
                log = logger.info if report.ok else logger.warning
                log("DICOMweb pull %s: %s", self._origin_base, report.summary())
                for error in report.errors:
                    logger.warning("DICOMweb pull %s: %s", self._origin_base, error)
            except Exception:  # a collector thread must outlive one bad poll
                logger.exception("DICOMweb pull %s failed unexpectedly", self._origin_base)
            stop.wait(pause)

    # -- polling --

    def date_range(self) -> str:
        """The QIDO-RS StudyDate range of this poll, ``YYYYMMDD-YYYYMMDD``."""
        last = self._today()
        first = last - timedelta(days=self.days - 1)
        return f"{first:%Y%m%d}-{last:%Y%m%d}"

    def poll(self) -> PollReport:
        """One round: query, filter through ``wanted``, retrieve. HTTP errors are reported."""
        report = PollReport()
        studies: dict[str, FoundStudy] = {}
        for modality in self.modalities or (None,):
            try:
                for found in self.find_studies(modality):
                    studies.setdefault(found.study_instance_uid, found)
            except DicomwebError as exc:
                report.errors.append(f"query failed: {exc}")
        report.studies_seen = len(studies)
        for study in studies.values():
            try:
                if not self.wanted(study.study_instance_uid, study.instance_count):
                    continue
            except Exception as exc:
                logger.exception("wanted() failed for study %s", study.study_instance_uid)
                report.errors.append(f"study {study.study_instance_uid}: wanted() failed: {exc}")
                continue
            report.studies_wanted += 1
            try:
                self._retrieve(study.study_instance_uid, report)
            except (DicomwebError, MultipartError) as exc:
                report.errors.append(f"study {study.study_instance_uid}: {exc}")
            except _SinkBackOff as exc:
                report.errors.append(f"study {study.study_instance_uid}: {exc}")
                break
        return report

    def find_studies(self, modality: str | None = None) -> list[FoundStudy]:
        """QIDO-RS: the studies in the date window (of one modality, if given)."""
        found: dict[str, FoundStudy] = {}
        offset = 0
        while True:
            page = self._query_page(modality, offset)
            new = [study for study in page if study.study_instance_uid not in found]
            found.update((study.study_instance_uid, study) for study in new)
            # Stop on a short page, and on a server that ignores offset (nothing new).
            if not self.page_size or len(page) < self.page_size or not new:
                return list(found.values())
            offset += len(page)

    def retrieve_study(self, study_instance_uid: str) -> PollReport:
        """WADO-RS one study into the sink; raises :class:`DicomwebError` on HTTP errors."""
        report = PollReport(studies_seen=1, studies_wanted=1)
        try:
            self._retrieve(study_instance_uid, report)
        except _SinkBackOff as exc:
            report.errors.append(str(exc))
        return report

    # -- internals --

    def _query_page(self, modality: str | None, offset: int) -> list[FoundStudy]:
        params: list[tuple[str, str]] = [("StudyDate", self.date_range())]
        if modality:
            params.append(("ModalitiesInStudy", modality))
        params += [
            ("includefield", NUMBER_OF_STUDY_RELATED_INSTANCES),
            ("includefield", MODALITIES_IN_STUDY),
        ]
        if self.page_size:
            params += [("limit", str(self.page_size)), ("offset", str(offset))]
        url = f"{self.base_url}/studies"
        try:
            # A tuple, as httpx's list type is invariant; includefield repeats, so no dict.
            response = self._client.get(url, params=tuple(params), headers={"Accept": QIDO_ACCEPT})
        except httpx.HTTPError as exc:
            raise DicomwebError("GET", url, None, _transport_detail(exc)) from exc
        if response.status_code == 204:
            return []
        if response.status_code != 200:
            raise DicomwebError("GET", url, response.status_code, _problem_detail(response.content))
        try:
            matches = response.json()
        except ValueError as exc:
            raise DicomwebError("GET", url, 200, "the QIDO-RS answer is not JSON") from exc
        if not isinstance(matches, list):
            raise DicomwebError("GET", url, 200, "the QIDO-RS answer is not a JSON array")
        return [study for item in matches if (study := _found_study(item)) is not None]

    def _retrieve(self, study_uid: str, report: PollReport) -> None:
        if not _UID.fullmatch(study_uid) or len(study_uid) > 64:
            raise DicomwebError("GET", self.base_url, None, f"invalid study UID {study_uid!r}")
        url = f"{self.base_url}/studies/{study_uid}"
        origin = f"dicomweb:{self._origin_base}/studies/{study_uid}"
        try:
            with self._client.stream("GET", url, headers={"Accept": WADO_ACCEPT}) as response:
                if response.status_code not in (200, 206):
                    body = _read_at_most(response.iter_bytes(), _MAX_ERROR_BODY_BYTES)
                    raise DicomwebError("GET", url, response.status_code, _problem_detail(body))
                media = parse_media_type(response.headers.get("content-type", ""))
                if media.media_type != "multipart/related":
                    raise DicomwebError(
                        "GET", url, response.status_code, f"not multipart/related: {media}"
                    )
                boundary = media.params.get("boundary", "")
                parts = iter_multipart(
                    response.iter_bytes(), boundary, max_part_bytes=self.max_instance_bytes
                )
                for part in parts:
                    self._hand_over(part.content, origin, report)
                if response.status_code == 206:
                    report.errors.append(f"study {study_uid}: server sent only part of it (206)")
        except httpx.HTTPError as exc:
            raise DicomwebError("GET", url, None, _transport_detail(exc)) from exc
        report.studies_retrieved += 1

    def _hand_over(self, part10: bytes, origin: str, report: PollReport) -> None:
        try:
            result = self.sink(part10, origin)
        except Exception:
            logger.exception("sink failed unexpectedly on %s", origin)
            result = SinkResult(UNEXPECTED_FAILURE, "unexpected error in the sink")
        if result.status == 0:
            report.instances_stored += 1
        elif result.quarantined:
            report.instances_quarantined += 1
        else:
            report.instances_failed += 1
            hint = " (out of resources)" if result.status == OUT_OF_RESOURCES else ""
            comment = f": {result.error_comment}" if result.error_comment else ""
            raise _SinkBackOff(
                f"sink did not take an object, status 0x{result.status:04X}{hint}{comment}; "
                "the rest waits for the next poll"
            )


def _always(_study_uid: str, _instance_count: int | None) -> bool:
    return True


def _found_study(item: Any) -> FoundStudy | None:
    if not isinstance(item, dict):
        return None
    uid = _first_value(item, STUDY_INSTANCE_UID)
    if not isinstance(uid, str) or not uid:
        return None
    count = _first_value(item, NUMBER_OF_STUDY_RELATED_INSTANCES)
    try:
        instance_count = int(count) if count is not None else None
    except (TypeError, ValueError):
        instance_count = None
    element = item.get(MODALITIES_IN_STUDY)
    values = element.get("Value", []) if isinstance(element, dict) else []
    return FoundStudy(uid, instance_count, tuple(str(v) for v in values if isinstance(v, str)))


def _first_value(item: dict[str, Any], tag: str) -> Any:
    element = item.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    return values[0] if isinstance(values, list) and values else None


def _read_at_most(chunks: Iterable[bytes], limit: int) -> bytes:
    body = bytearray()
    for chunk in chunks:
        body += chunk
        if len(body) >= limit:
            break
    return bytes(body[:limit])


def _problem_detail(body: bytes) -> str:
    """The useful words of an error body: problem+json, Orthanc's JSON, or plain text."""
    text = body.decode("utf-8", "replace")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        words = [str(data[k]) for k in ("title", "detail", "Message", "Details") if data.get(k)]
        if words:
            return " - ".join(words)
    return " ".join(text.split())[:300] or "(empty body)"


def _transport_detail(exc: httpx.HTTPError) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _without_credentials(url: str) -> str:
    """The URL without ``user:password@``, so origins and logs never carry a password."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


# -- configuration ------------------------------------------------------------------------

_N = TypeVar("_N", int, float)
_CONFIG_KEYS = {
    "kind",
    "name",
    "url",
    "days",
    "modalities",
    "interval_seconds",
    "token",
    "username",
    "password",
    "ca_file",
    "verify",
    "timeout",
    "max_instance_bytes",
}


def puller_from_config(
    entry: Mapping[str, Any], sink: IntakeSink, wanted: Wanted | None = None
) -> DicomwebPuller:
    """A puller from a TOML collector entry::

    kind = "dicomweb"  url = "https://pacs/dicom-web"  days = 3  modalities = ["CT", "MR"]
    interval_seconds = 300  token = "..."   (or username/password; ca_file, verify, timeout)
    """
    kind = entry.get("kind", "dicomweb")
    if kind != "dicomweb":
        raise ValueError(f"not a dicomweb collector entry (kind = {kind!r})")
    unknown = sorted(set(entry) - _CONFIG_KEYS)
    if unknown:
        raise ValueError(f"unknown dicomweb collector keys: {', '.join(unknown)}")
    url = entry.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError("dicomweb collector needs url = 'http(s)://host/dicom-web'")
    modalities = entry.get("modalities", [])
    if not isinstance(modalities, list) or not all(isinstance(m, str) for m in modalities):
        raise ValueError("modalities must be a list of strings, e.g. ['CT', 'MR']")
    return DicomwebPuller(
        url,
        sink,
        days=_config_number(entry, "days", 1, int),
        modalities=modalities,
        wanted=wanted,
        username=_config_text(entry, "username"),
        password=_config_text(entry, "password"),
        token=_config_text(entry, "token"),
        ca_file=_config_text(entry, "ca_file"),
        verify=_config_flag(entry, "verify", True),
        timeout=_config_number(entry, "timeout", 60.0, float),
        interval_seconds=_config_number(entry, "interval_seconds", 300.0, float),
        max_instance_bytes=_config_number(
            entry, "max_instance_bytes", DEFAULT_MAX_INSTANCE_BYTES, int
        ),
    )


def _config_number(entry: Mapping[str, Any], key: str, default: _N, kind: type[_N]) -> _N:
    value = entry.get(key, default)
    allowed = (int,) if kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, allowed) or value <= 0:
        raise ValueError(f"{key} must be a positive {kind.__name__}, not {value!r}")
    return kind(value)


def _config_text(entry: Mapping[str, Any], key: str) -> str | None:
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{key} must be a string")
    return value or None


def _config_flag(entry: Mapping[str, Any], key: str, default: bool) -> bool:
    value = entry.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false")
    return value
