"""The gateway's only way to the cloud: HTTP(S), STOW-RS plus the small gateway API.

Every request carries the hospital's bearer credential. With an https URL the server
certificate is verified, against the system store or a CA file the hospital is given. Bodies
are streamed from the spool files, never assembled in memory, and paced when a bandwidth
limit is set.
"""

from __future__ import annotations

import json
import logging
import secrets
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from collectors.multipart import iter_multipart, parse_media_type

logger = logging.getLogger(__name__)

API = "/gateway-api/v1"
CHUNK = 256 * 1024


class CloudLinkError(Exception):
    """The cloud could not be reached or refused the request as a whole."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Upload:
    """One spooled object to send: where its bytes are and who it is."""

    path: Path
    sop_instance_uid: str
    sha256: str


class _Pacer:
    """Keeps an upload under ``bytes_per_second`` by sleeping between chunks."""

    def __init__(self, bytes_per_second: int | None) -> None:
        self._rate = bytes_per_second
        self._start = time.monotonic()
        self._sent = 0

    def account(self, size: int) -> None:
        if not self._rate:
            return
        self._sent += size
        ahead = self._sent / self._rate - (time.monotonic() - self._start)
        if ahead > 0:
            time.sleep(ahead)


def _tls_verification(base_url: str, ca_file: Path | None) -> ssl.SSLContext | bool:
    if not base_url.startswith("https://"):
        return True
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


class CloudLink:
    def __init__(
        self,
        base_url: str,
        credential: str,
        *,
        ca_file: Path | None = None,
        timeout: float = 120.0,
        bandwidth_bytes_per_second: int | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._bandwidth = bandwidth_bytes_per_second
        self._client = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {credential}", "User-Agent": "imaging-cloud-gw"},
            timeout=httpx.Timeout(timeout, connect=10.0),
            verify=_tls_verification(self.base_url, ca_file),
        )

    def close(self) -> None:
        self._client.close()

    # -- STOW-RS ----------------------------------------------------------------------------

    def stow(self, uploads: Sequence[Upload]) -> dict[str, int]:
        """Send objects in one STOW-RS request; SOP Instance UID -> failure status (0 = stored)."""
        boundary = secrets.token_hex(16)
        response = self._request(
            "POST",
            "/dicom-web/studies",
            content=self._multipart(uploads, boundary),
            headers={
                "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
                "Accept": "application/dicom+json",
            },
            accept=(200, 202, 409),
        )
        return _stow_statuses(response)

    def _multipart(self, uploads: Sequence[Upload], boundary: str) -> Iterator[bytes]:
        pacer = _Pacer(self._bandwidth)
        for upload in uploads:
            yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            with open(upload.path, "rb") as handle:
                while chunk := handle.read(CHUNK):
                    pacer.account(len(chunk))
                    yield chunk
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    # -- gateway API ----------------------------------------------------------------------

    def held(self, sop_instance_uids: Sequence[str]) -> dict[str, str]:
        """What the cloud holds of these instances: SOP Instance UID -> SHA-256."""
        response = self._request(
            "POST", f"{API}/instances/held", json={"sop_instance_uids": list(sop_instance_uids)}
        )
        held = response.json().get("instances", {})
        return {str(k): str(v) for k, v in held.items()}

    def study_manifest(self, study_uid: str) -> dict[str, str]:
        """SOP Instance UID -> SHA-256 of what the cloud holds of a study (empty if nothing)."""
        try:
            response = self._request("GET", f"{API}/studies/{study_uid}/manifest")
        except CloudLinkError as exc:
            if exc.status == 404:
                return {}
            raise
        return {i["sop_instance_uid"]: i["sha256"] for i in response.json()["instances"]}

    def heartbeat(self, report: dict[str, Any]) -> dict[str, Any]:
        return dict(self._request("POST", f"{API}/heartbeat", json=report).json())

    def reconcile(self, study_uid: str, manifest: dict[str, str]) -> dict[str, Any]:
        response = self._request(
            "POST", f"{API}/studies/{study_uid}/reconcile", json={"instances": manifest}
        )
        return dict(response.json())

    def send_backs(self) -> list[dict[str, Any]]:
        return list(self._request("GET", f"{API}/send-backs").json().get("send_backs", []))

    def finish_send_back(self, pk: int, ok: bool, detail: str) -> None:
        self._request("POST", f"{API}/send-backs/{pk}", json={"ok": ok, "detail": detail})

    def send_back_instances(self, pk: int) -> Iterator[bytes]:
        """The instances of a send-back request, one Part-10 object at a time."""
        with self._client.stream("GET", f"{API}/send-backs/{pk}/instances") as response:
            _raise_for(response, (200,))
            media = parse_media_type(response.headers.get("content-type", ""))
            boundary = media.params.get("boundary", "")
            if not boundary:
                raise CloudLinkError("send-back response is not multipart")
            for part in iter_multipart(response.iter_bytes(), boundary):
                yield part.content

    # -- plumbing -------------------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, accept: tuple[int, ...] = (200,), **kwargs: Any
    ) -> httpx.Response:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise CloudLinkError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        _raise_for(response, accept)
        return response


def _raise_for(response: httpx.Response, accept: tuple[int, ...]) -> None:
    if response.status_code in accept:
        return
    response.read()
    detail = response.text[:300]
    try:
        detail = str(response.json().get("detail", detail))
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
        pass
    raise CloudLinkError(
        f"{response.request.method} {response.request.url.path}: HTTP {response.status_code}: "
        f"{detail}",
        response.status_code,
    )


def _stow_statuses(response: httpx.Response) -> dict[str, int]:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CloudLinkError(f"STOW-RS answered HTTP {response.status_code} without JSON") from exc
    statuses: dict[str, int] = {}
    for item in body.get("00081199", {}).get("Value", []):
        for uid in item.get("00081155", {}).get("Value", []):
            statuses[str(uid)] = 0
    for item in body.get("00081198", {}).get("Value", []):
        reason = item.get("00081197", {}).get("Value", [0xC000])[0]
        for uid in item.get("00081155", {}).get("Value", []):
            statuses[str(uid)] = int(reason)
    return statuses
