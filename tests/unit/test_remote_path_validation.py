"""Every name a remote server lists is checked before it reaches any FTP or SFTP command."""

from __future__ import annotations

import pytest

from collectors.ftp_folder import parse_list_line, parse_mlsd_line
from collectors.remote_files import EntryKind, UnsafeRemoteNameError, checked_remote_path

HOSTILE = [
    "..",
    "../etc/passwd",
    "../../../../etc/shadow",
    "sub/../../out-sibling/x.dcm",
    "a..b.dcm",  # harmless on its own, but "contains .." is refused outright
    "/etc/passwd",
    "/out-other/x.dcm",  # shares the prefix "/out" but is not inside it
    "//out/x.dcm",
    "/out",  # the root itself
    "x\0.dcm",
    "..\\..\\windows\\win.ini",
    "dir\\file.dcm",
    "x.dcm\r\nDELE /out/other.dcm",
    "line\nfeed.dcm",
    "tab\t.dcm",
    "bell\x07.dcm",
    "del\x7f.dcm",
    "c1\x85.dcm",
    "sep\u2028.dcm",
    "bad-utf8-\udcff.dcm",  # what surrogateescape makes of the byte 0xFF
    "",
]


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_names_are_refused(name: str) -> None:
    with pytest.raises(UnsafeRemoteNameError):
        checked_remote_path("/out", "/out/sub", name)


@pytest.mark.parametrize(
    ("directory", "name", "expected"),
    [
        ("/out", "IM0001", "/out/IM0001"),
        ("/out/sub", "a b (1).dcm", "/out/sub/a b (1).dcm"),
        ("/out/sub", "Wang^XiaoDong 王.dcm", "/out/sub/Wang^XiaoDong 王.dcm"),
        ("/out", "./x.dcm", "/out/x.dcm"),
        ("/out/sub", "/out/other/x.dcm", "/out/other/x.dcm"),  # absolute, but inside
        ("/", "x.dcm", "/x.dcm"),
    ],
)
def test_ordinary_names_are_joined_and_normalized(directory: str, name: str, expected: str) -> None:
    root = "/" if directory == "/" else "/out"
    assert checked_remote_path(root, directory, name) == expected


def test_mlsd_lines_are_parsed_with_exact_size_and_utc_time() -> None:
    entry = parse_mlsd_line("type=file;size=526228;modify=20250314123045.5;perm=r; IM 0001.dcm")
    assert entry is not None
    assert (entry.name, entry.kind, entry.size) == ("IM 0001.dcm", EntryKind.FILE, 526228)
    assert entry.mtime_ns == 1741955445_500_000_000
    directory = parse_mlsd_line("type=dir;modify=20250314123045; series1")
    assert directory is not None and directory.kind is EntryKind.DIRECTORY
    assert parse_mlsd_line("type=OS.unix=slink:/etc;size=4; link") is not None
    assert parse_mlsd_line("garbage-without-a-space") is None


def test_unix_list_lines_are_parsed() -> None:
    entry = parse_list_line("-rw-r--r--   1 ftp      ftp        526228 Mar 14 12:30 IM 0001.dcm")
    assert entry is not None
    assert (entry.name, entry.kind, entry.size, entry.mtime_ns) == (
        "IM 0001.dcm",
        EntryKind.FILE,
        526228,
        None,
    )
    directory = parse_list_line("drwxr-xr-x 2 1000 1000 4096 Dec  1  2024 study")
    assert directory is not None and directory.kind is EntryKind.DIRECTORY
    link = parse_list_line("lrwxrwxrwx 1 u g 11 Jan  2 03:04 out -> /etc/passwd")
    assert link is not None and link.kind is EntryKind.OTHER
    assert parse_list_line("total 12") is None
