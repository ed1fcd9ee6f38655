"""Strong entity tags for rendered images, and conditional GET (``If-None-Match`` -> 304)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping

from fastapi import Request, Response

# Bump when the rendering pipeline changes what the same parameters produce, so that
# browsers holding images of the previous version fetch them again.
RENDERING_VERSION = "viewer-1"
CACHE_CONTROL = "private, max-age=3600"


def instances_digest(sop_instance_uids: Iterable[str]) -> str:
    """A digest of a set of SOP Instance UIDs (order does not matter)."""
    text = "\n".join(sorted(sop_instance_uids))
    return hashlib.sha256(text.encode("ascii", "replace")).hexdigest()[:32]


def strong_etag(instances: str, parameters: Mapping[str, object], media_type: str) -> str:
    """``"<hash>"`` over the instances' digest, every rendering parameter and the format."""
    payload = json.dumps(
        [RENDERING_VERSION, instances, dict(parameters), media_type],
        sort_keys=True,
        separators=(",", ":"),
        default=repr,
    )
    return '"' + hashlib.sha256(payload.encode("utf-8")).hexdigest()[:40] + '"'


def _opaque(tag: str) -> str:
    tag = tag.strip()
    return tag[2:] if tag.startswith(("W/", "w/")) else tag


def matches(request: Request, etag: str) -> bool:
    """Whether ``If-None-Match`` names ``etag`` (weak comparison, RFC 9110 13.1.2) or is ``*``."""
    header = request.headers.get("if-none-match")
    if not header:
        return False
    if header.strip() == "*":
        return True
    return any(_opaque(candidate) == etag for candidate in header.split(","))


def validator_headers(etag: str) -> dict[str, str]:
    """Headers that every image response, 200 or 304, carries."""
    return {"ETag": etag, "Cache-Control": CACHE_CONTROL, "Vary": "Accept"}


def not_modified(etag: str) -> Response:
    return Response(status_code=304, headers=validator_headers(etag))
