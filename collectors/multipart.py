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


DEFAULT_MAX_PART_BYTES = 4 * 1024**3  # a whole-slide or long cine object can be huge
_MAX_PART_HEADER_BYTES = 64 * 1024
_MAX_PREAMBLE_BYTES = 64 * 1024


# -- incremental reader -----------------------------------------------------------------


class MultipartStreamReader:
    """Cut a multipart body (RFC 2046) into parts as its bytes arrive.

    Feed chunks with :meth:`feed`, which yields every part completed so far; call
    :meth:`close` at the end of the body, which refuses a body cut short. A part is only
    yielded once its closing delimiter has been seen, so a truncated transfer never hands a
    truncated object on. Memory: the part being read plus at most one chunk.
    """

    _PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY, _DONE = range(5)

    def __init__(self, boundary: str, *, max_part_bytes: int = DEFAULT_MAX_PART_BYTES) -> None:
        if not boundary or len(boundary) > 200:
            raise MultipartError("Malformed multipart body", "missing or invalid boundary")
        self._dash_boundary = b"--" + boundary.encode("latin-1")
        self._delimiter = b"\r\n" + self._dash_boundary
        self._max_part_bytes = max_part_bytes
        self._buffer = bytearray()
        self._state = self._PREAMBLE
        self._skipped = 0  # preamble bytes thrown away
        self._scanned = 0  # bytes at the buffer's start known to hold no delimiter
        self._headers: dict[str, str] = {}

    @property
    def finished(self) -> bool:
        """True once the closing delimiter has been read."""
        return self._state == self._DONE

    def feed(self, chunk: bytes) -> Iterator[BodyPart]:
        if self._state == self._DONE:
            return  # the epilogue carries nothing
        self._buffer += chunk
        while True:
            if self._state == self._PREAMBLE:
                if not self._skip_preamble():
                    return
            elif self._state == self._AFTER_DELIMITER:
                if not self._read_delimiter_line():
                    return
            elif self._state == self._HEADERS:
                if not self._read_headers():
                    return
            elif self._state == self._BODY:
                part = self._read_body()
                if part is None:
                    return
                yield part
            else:
                return

    def close(self) -> None:
        if self._state != self._DONE:
            raise MultipartError(
                "Malformed multipart body", "body ends before the closing boundary"
            )

    def _skip_preamble(self) -> bool:
        index = self._buffer.find(self._dash_boundary)
        if index < 0:
            # Keep a tail that may be the start of a boundary split across chunks.
            drop = max(0, len(self._buffer) - len(self._dash_boundary) + 1)
            self._skipped += drop
            del self._buffer[:drop]
            if self._skipped > _MAX_PREAMBLE_BYTES:
                raise MultipartError("Malformed multipart body", "boundary not found in the body")
            return False
        del self._buffer[: index + len(self._dash_boundary)]
        self._state = self._AFTER_DELIMITER
        return True

    def _read_delimiter_line(self) -> bool:
        if len(self._buffer) < 2:
            return False
        if self._buffer.startswith(b"--"):
            self._state = self._DONE
            self._buffer.clear()
            return False
        line_end = self._buffer.find(b"\r\n")
        if line_end < 0:
            if len(self._buffer) > 1024:
                raise MultipartError("Malformed multipart body", "no line end after a boundary")
            return False
        if self._buffer[:line_end].strip(b" \t"):  # only transport padding may follow
            raise MultipartError("Malformed multipart body", "text after a boundary")
        del self._buffer[: line_end + 2]
        self._state = self._HEADERS
        return True

    def _read_headers(self) -> bool:
        if len(self._buffer) < 2:
            return False
        if self._buffer.startswith(b"\r\n"):  # a part without headers
            self._start_body({}, 2)
            return True
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_PART_HEADER_BYTES:
                raise MultipartError("Malformed multipart body", "part headers too long")
            return False
        self._start_body(_parse_headers(bytes(self._buffer[:end])), end + 4)
        return True

    def _start_body(self, headers: dict[str, str], header_length: int) -> None:
        del self._buffer[:header_length]
        self._headers, self._scanned, self._state = headers, 0, self._BODY

    def _read_body(self) -> BodyPart | None:
        index = self._buffer.find(self._delimiter, self._scanned)
        if index < 0:
            # Search only the new bytes next time, minus an overlap for a split delimiter.
            self._scanned = max(0, len(self._buffer) - len(self._delimiter) + 1)
            if self._scanned > self._max_part_bytes:
                raise MultipartError(
                    "Part too large", f"a part exceeds {self._max_part_bytes} bytes"
                )
            return None
        if index > self._max_part_bytes:
            raise MultipartError("Part too large", f"a part exceeds {self._max_part_bytes} bytes")
        part = BodyPart(self._headers, bytes(self._buffer[:index]))
        del self._buffer[: index + len(self._delimiter)]
        self._state = self._AFTER_DELIMITER
        return part


def iter_multipart(
    chunks: Iterable[bytes], boundary: str, *, max_part_bytes: int = DEFAULT_MAX_PART_BYTES
) -> Iterator[BodyPart]:
    """Yield the parts of a multipart body given as chunks, reading no further than needed."""
    reader = MultipartStreamReader(boundary, max_part_bytes=max_part_bytes)
    for chunk in chunks:
        yield from reader.feed(chunk)
    reader.close()
