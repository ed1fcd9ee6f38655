"""multipart/related: parse STOW-RS bodies, stream WADO-RS responses, read Accept headers."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field


class MultipartError(ValueError):
    """A malformed multipart body or Accept header; HTTP layers answer it with 400."""

    def __init__(self, title: str, detail: str) -> None:
        super().__init__(detail)
        self.title, self.detail = title, detail


_PARAM = re.compile(r';\s*([A-Za-z0-9_.-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,\s]*)')


@dataclass(frozen=True)
class MediaRange:
    """One entry of an Accept or Content-Type header."""

    media_type: str
    params: dict[str, str] = field(default_factory=dict)
    quality: float = 1.0

    @property
    def part_type(self) -> str | None:
        value = self.params.get("type")
        return value.lower() if value else None

    @property
    def transfer_syntax(self) -> str | None:
        return self.params.get("transfer-syntax")


def parse_media_type(text: str) -> MediaRange:
    main, _, rest = text.partition(";")
    params = {k.lower(): v.strip('"') for k, v in _PARAM.findall(";" + rest)}
    quality = 1.0
    if "q" in params:
        try:
            quality = float(params.pop("q"))
        except ValueError:
            raise MultipartError("Bad Accept header", f"invalid q value in {text!r}") from None
    return MediaRange(main.strip().lower(), params, quality)


def parse_accept(header: str | None) -> list[MediaRange]:
    """Accept entries, best first; an absent header accepts anything."""
    if not header or not header.strip():
        return [MediaRange("*/*")]
    entries = _split_header(header)
    ranges = [parse_media_type(e) for e in entries if e.strip()]
    return sorted(ranges, key=lambda r: -r.quality)


def _split_header(header: str) -> list[str]:
    """Split on commas that are not inside quoted strings."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in header:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def new_boundary() -> str:
    return f"imaging-cloud-{secrets.token_hex(16)}"


def stream_parts(
    parts: Iterable[tuple[str, bytes]], boundary: str, *, extra_headers: str = ""
) -> Iterator[bytes]:
    """Yield a multipart/related body part by part: (content type, payload) pairs."""
    for content_type, payload in parts:
        head = f"--{boundary}\r\nContent-Type: {content_type}\r\n{extra_headers}"
        yield f"{head}Content-Length: {len(payload)}\r\n\r\n".encode("latin-1")
        yield payload
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("latin-1")


@dataclass(frozen=True)
class BodyPart:
    headers: dict[str, str]
    content: bytes

    @property
    def content_type(self) -> str | None:
        return self.headers.get("content-type")


def split_multipart(body: bytes, boundary: str) -> list[BodyPart]:
    """Split a multipart body (RFC 2046) into its parts; refuse anything malformed."""
    if not boundary or len(boundary) > 200:
        raise MultipartError("Malformed multipart body", "missing or invalid boundary")
    delimiter = b"--" + boundary.encode("latin-1")
    start = body.find(delimiter)
    if start < 0:
        raise MultipartError("Malformed multipart body", "boundary not found in the body")
    parts: list[BodyPart] = []
    position = start + len(delimiter)
    while True:
        if body.startswith(b"--", position):
            return parts  # closing delimiter
        line_end = body.find(b"\r\n", position)
        if line_end < 0:
            raise MultipartError("Malformed multipart body", "body ends inside a delimiter")
        header_end = body.find(b"\r\n\r\n", line_end)
        next_delimiter = body.find(b"\r\n" + delimiter, line_end)
        if next_delimiter < 0:
            raise MultipartError("Malformed multipart body", "no closing boundary")
        if header_end < 0 or header_end > next_delimiter:
            header_block, content_start = b"", line_end + 2
        else:
            header_block, content_start = body[line_end + 2 : header_end], header_end + 4
        parts.append(BodyPart(_parse_headers(header_block), body[content_start:next_delimiter]))
        position = next_delimiter + 2 + len(delimiter)


def _parse_headers(block: bytes) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(b"\r\n"):
        if not line:
            continue
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon:
            raise MultipartError("Malformed multipart body", f"bad part header {name[:40]!r}")
        headers[name.strip().lower()] = value.strip()
    return headers
