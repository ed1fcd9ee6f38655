"""``[[sources]]`` entries become collectors, or fail at start-up naming the bad key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncssh
import pytest

from collectors.folder import FolderCollector
from collectors.intake import SUCCESS, SinkResult
from collectors.polling_config import collector_from_config
from collectors.remote_files import RemoteFolderCollector


def sink(data: bytes, origin: str) -> SinkResult:
    return SinkResult(SUCCESS)


@pytest.fixture
def key_files(tmp_path: Path) -> tuple[Path, Path]:
    private_key = tmp_path / "id_ed25519"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(private_key)
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    return private_key, known_hosts


def test_folder_source(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    built = collector_from_config(
        {"kind": "folder", "path": str(tmp_path / "in"), "interval_seconds": 5},
        sink,
        tmp_path / "state",
    )
    assert isinstance(built, FolderCollector)
    assert built.poll_interval == 5.0


def test_ftp_source_as_in_the_gateway_file(tmp_path: Path) -> None:
    entry = {
        "kind": "ftp",
        "host": "pacs.example.org",
        "port": 21,
        "user": "gateway",
        "password": "secret",
        "remote_dir": "/out",
        "delete_after_taken": True,
        "interval_seconds": 30,
    }
    built = collector_from_config(entry, sink, tmp_path)
    assert isinstance(built, RemoteFolderCollector)
    again = collector_from_config(dict(entry), sink, tmp_path)
    assert built.poll_interval == again.poll_interval == 30.0


def test_sftp_source_with_a_key_and_a_pinned_host_key(
    tmp_path: Path, key_files: tuple[Path, Path]
) -> None:
    private_key, _ = key_files
    built = collector_from_config(
        {
            "kind": "sftp",
            "host": "10.0.0.5",
            "user": "gateway",
            "private_key": str(private_key),
            "host_key_fingerprint": "SHA256:orYU4c1IQShEXEiP101GEYGGa4+op3iWX3AoYue5dxY",
            "remote_dir": "/export",
        },
        sink,
        tmp_path,
    )
    assert isinstance(built, RemoteFolderCollector)


def _ftp(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"kind": "ftp", "host": "h", "user": "u", "password": "p"}
    entry.update(changes)
    return {key: value for key, value in entry.items() if value is not None}


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"kind": "smb"}, "kind must be one of"),
        ({"host": "h"}, "kind must be one of"),
        (_ftp(host=None), "'host' is required"),
        (_ftp(user=None), "'user' is required"),
        (_ftp(port="21"), "'port' must be an integer"),
        (_ftp(port=70000), "'port' must be an integer"),
        (_ftp(port=True), "'port' must be an integer"),
        (_ftp(delete_after_take=True), "unknown keys ['delete_after_take']"),
        (_ftp(delete_after_taken="yes"), "'delete_after_taken' must be true or false"),
        (_ftp(interval_seconds=0), "'interval_seconds' must be a number"),
        (_ftp(settle_seconds=-1), "'settle_seconds' must be a number"),
        (_ftp(remote_dir="out"), "'remote_dir' must be an absolute path"),
        (_ftp(remote_dir="/out/../etc"), "'remote_dir' must be an absolute path"),
        (_ftp(host="h\r\nx"), "control characters"),
        (_ftp(ca_file="/nonexistent/ca.pem", tls=True), "is not a readable file"),
        ({"kind": "folder"}, "'path' is required"),
        ({"kind": "folder", "path": "relative/dir"}, "must be an absolute path"),
        ({"kind": "folder", "path": "/nonexistent/dir"}, "is not an existing directory"),
        (
            {"kind": "sftp", "host": "h", "user": "u", "password": "p"},
            "exactly one of known_hosts or host_key_fingerprint",
        ),
        (
            {
                "kind": "sftp",
                "host": "h",
                "user": "u",
                "password": "p",
                "host_key_fingerprint": "ab",
            },
            "must look like 'SHA256:",
        ),
        (
            {"kind": "sftp", "host": "h", "user": "u", "host_key_fingerprint": "SHA256:x"},
            "give password or private_key",
        ),
    ],
)
def test_invalid_entries_are_refused_with_the_key_named(
    tmp_path: Path, entry: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=None) as raised:
        collector_from_config(entry, sink, tmp_path)
    assert message in str(raised.value)


def test_a_password_is_never_echoed(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as raised:
        collector_from_config(_ftp(password=12345678), sink, tmp_path)
    assert "12345678" not in str(raised.value)
