"""FTP and FTPS transport for `RemoteFolderCollector`, on the standard library's ftplib.

Passive mode, binary transfers, one control connection per poll. Listings use MLSD (RFC 3659:
exact size and UTC modification time per entry); servers without it, such as vsftpd, are
listed with LIST and asked MDTM per file. Listings are read as raw bytes and decoded with
``surrogateescape``, so a name that is not UTF-8 is rejected by the name check instead of
breaking the whole listing.
"""

from __future__ import annotations

import calendar
import contextlib
import ftplib
import logging
import re
import ssl
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from collectors.polling import FileStamp, SourceUnavailableError
from collectors.remote_files import EntryKind, RemoteEntry, remote_origin

logger = logging.getLogger(__name__)

__all__ = ["FtpFolder", "parse_list_line", "parse_mlsd_line"]

_UNSUPPORTED = ("500", "502")  # command not understood / not implemented

# "-rw-r--r--   1 owner group   12345 Mar 14 12:30 name": the size is the number before the date.
_LIST_LINE = re.compile(
    r"^(?P<type>[-dlpscb])\S*\s.*?\s(?P<size>\d+)\s+"
    r"(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)\s+\d{1,2}\s+(?:\d{1,2}:\d{2}|\d{4})\s"
    r"(?P<name>.+)\Z",
    re.DOTALL,  # a LF inside a name stays part of it, for the name check to refuse
)


class FtpFolder:
    """One directory on an FTP server; ``tls=True`` for explicit FTPS (AUTH TLS, PROT P)."""

    def __init__(
        self,
        host: str,
        *,
        port: int = 21,
        user: str = "anonymous",
        password: str = "",
        root: str = "/",
        tls: bool = False,
        ca_file: Path | None = None,
        timeout: float = 60.0,
    ) -> None:
        self._host = host
        self._port = port
        self._user = user
        self._password = password
        self._root = root
        self._tls = tls
        self._ca_file = ca_file
        self._timeout = timeout
        self._ftp: ftplib.FTP | None = None
        self._mlsd: bool | None = None  # learnt on the first listing
        self._unparsed: set[str] = set()

    @property
    def root(self) -> str:
        return self._root

    def origin(self, path: str) -> str:
        return remote_origin("ftps" if self._tls else "ftp", self._host, self._port, path)

    def connect(self) -> None:
        ftp = self._new_client()
        with _connection_errors():
            try:
                ftp.connect(self._host, self._port)
                ftp.login(self._user, self._password)
                if isinstance(ftp, ftplib.FTP_TLS):
                    ftp.prot_p()  # the data channel too, not only the password
                ftp.set_pasv(True)
                ftp.voidcmd("TYPE I")
            except BaseException:
                ftp.close()
                raise
        self._ftp = ftp

    def close(self) -> None:
        ftp, self._ftp = self._ftp, None
        if ftp is None:
            return
        try:
            ftp.quit()
        except (ftplib.Error, OSError, EOFError):
            pass
        finally:
            ftp.close()

    def list_dir(self, path: str) -> list[RemoteEntry]:
        if self._mlsd is not False:
            try:
                lines = self._retrieve_lines(f"MLSD {path}")
            except ftplib.error_perm as exc:
                if self._mlsd or not str(exc).startswith(_UNSUPPORTED):
                    raise
                logger.info("%s: no MLSD (%s); listing with LIST and MDTM", self.origin(path), exc)
                self._mlsd = False
            else:
                self._mlsd = True
                return self._parsed(lines, parse_mlsd_line)
        return self._parsed(self._retrieve_lines(f"LIST {path}"), parse_list_line)

    def stat(self, path: str) -> FileStamp:
        ftp = self._client()
        with _connection_errors():
            size = ftp.size(path)
            try:
                mtime_ns = _ftp_time_ns(ftp.sendcmd(f"MDTM {path}")[4:].strip())
            except ftplib.error_perm as exc:
                if not str(exc).startswith(_UNSUPPORTED):
                    raise
                mtime_ns = None
        if size is None:
            raise ftplib.error_reply(f"no size for {path}")
        return FileStamp(size, mtime_ns or 0)  # without MDTM, completeness rests on size alone

    def read(self, path: str) -> bytes:
        chunks: list[bytes] = []
        with _connection_errors():
            self._client().retrbinary(f"RETR {path}", chunks.append)
        return b"".join(chunks)

    def delete(self, path: str) -> None:
        with _connection_errors():
            self._client().delete(path)

    def _new_client(self) -> ftplib.FTP:
        if not self._tls:
            return ftplib.FTP(timeout=self._timeout)
        cafile = str(self._ca_file) if self._ca_file is not None else None
        context = ssl.create_default_context(cafile=cafile)
        return ftplib.FTP_TLS(context=context, timeout=self._timeout)

    def _client(self) -> ftplib.FTP:
        if self._ftp is None:
            raise SourceUnavailableError("not connected")
        return self._ftp

    def _retrieve_lines(self, command: str) -> list[str]:
        chunks: list[bytes] = []
        with _connection_errors():
            self._client().retrbinary(command, chunks.append)
        raw = b"".join(chunks)
        # Only CRLF ends a line; a bare LF inside a name stays there for the name check to refuse.
        return [line.decode("utf-8", "surrogateescape") for line in raw.split(b"\r\n") if line]

    def _parsed(
        self, lines: list[str], parse: Callable[[str], RemoteEntry | None]
    ) -> list[RemoteEntry]:
        entries = []
        for line in lines:
            entry = parse(line)
            if entry is not None:
                entries.append(entry)
            elif line not in self._unparsed and not line.startswith("total "):
                self._unparsed.add(line)
                logger.warning("%s: listing line not understood: %r", self.origin(self._root), line)
        return entries


def parse_mlsd_line(line: str) -> RemoteEntry | None:
    """``type=file;size=12;modify=20250314123045; name`` (RFC 3659 section 7)."""
    facts_text, separator, name = line.partition(" ")
    if not separator or not name:
        return None
    facts = {}
    for fact in facts_text.split(";"):
        key, _, value = fact.partition("=")
        facts[key.strip().lower()] = value
    kind = {"file": EntryKind.FILE, "dir": EntryKind.DIRECTORY}.get(
        facts.get("type", "").lower(), EntryKind.OTHER
    )
    size_text = facts.get("size", "")
    return RemoteEntry(
        name=name,
        kind=kind,
        size=int(size_text) if size_text.isdigit() else None,
        mtime_ns=_ftp_time_ns(facts.get("modify", "")),
    )


def parse_list_line(line: str) -> RemoteEntry | None:
    """A Unix ``ls -l`` style LIST line; the time is too coarse to use, so it is left unknown."""
    match = _LIST_LINE.match(line)
    if match is None:
        return None
    kind = {"-": EntryKind.FILE, "d": EntryKind.DIRECTORY}.get(match["type"], EntryKind.OTHER)
    return RemoteEntry(name=match["name"], kind=kind, size=int(match["size"]))


def _ftp_time_ns(value: str) -> int | None:
    """``YYYYMMDDHHMMSS[.fff]`` in UTC (MLSD ``modify``, MDTM) as nanoseconds since the epoch."""
    whole, _, fraction = value.partition(".")
    try:
        moment = datetime.strptime(whole, "%Y%m%d%H%M%S")
    except ValueError:
        return None
    nanoseconds = int(fraction[:9].ljust(9, "0")) if fraction.isdigit() else 0
    return calendar.timegm(moment.timetuple()) * 1_000_000_000 + nanoseconds


@contextlib.contextmanager
def _connection_errors() -> Iterator[None]:
    """A dropped connection ends the poll; a refused command fails only that file."""
    try:
        yield
    except (OSError, EOFError) as exc:
        raise SourceUnavailableError(f"connection lost: {exc}") from exc
    except ftplib.error_temp as exc:
        if str(exc).startswith("421"):  # service closing the control connection
            raise SourceUnavailableError(str(exc)) from exc
        raise
