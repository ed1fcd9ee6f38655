"""Building a polling collector from one ``[[sources]]`` entry of the gateway's TOML file.

Every key is checked here, with a message naming the source and the key, so a typo such as
``delete_after_take = true`` stops the gateway at start-up instead of being silently ignored.
Secrets are never echoed in messages.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from collectors.folder import FolderCollector
from collectors.ftp_folder import FtpFolder
from collectors.intake import IntakeSink
from collectors.remote_files import RemoteFolder, RemoteFolderCollector
from collectors.sftp_folder import SftpFolder

__all__ = ["PollingCollector", "collector_from_config"]

PollingCollector = FolderCollector | RemoteFolderCollector

_COMMON = {"kind", "name", "delete_after_taken", "interval_seconds", "settle_seconds"}
_KEYS = {
    "folder": _COMMON | {"path"},
    "ftp": _COMMON
    | {"host", "port", "user", "password", "remote_dir", "tls", "ca_file", "timeout_seconds"},
    "sftp": _COMMON
    | {
        "host",
        "port",
        "user",
        "password",
        "private_key",
        "private_key_passphrase",
        "known_hosts",
        "host_key_fingerprint",
        "remote_dir",
        "timeout_seconds",
    },
}
_SECRETS = {"password", "private_key_passphrase"}
_MISSING: Any = object()


def collector_from_config(
    entry: Mapping[str, Any], sink: IntakeSink, state_dir: Path
) -> PollingCollector:
    """A folder, FTP or SFTP collector for ``entry``; its memory lives in ``state_dir``.

    Raises ValueError naming the offending key when the entry is incomplete or invalid.
    """
    kind = entry.get("kind")
    if kind not in _KEYS:
        raise ValueError(f"source kind must be one of {sorted(_KEYS)}, got {kind!r}")
    source = _Entry(entry, kind)
    options: dict[str, Any] = {
        "delete_after_taken": source.boolean("delete_after_taken", False),
        "settle_seconds": source.number("settle_seconds", 2.0, minimum=0.0),
        "poll_interval": source.number("interval_seconds", 30.0, minimum=0.001),
    }
    if kind == "folder":
        root = source.path("path")
        if not root.is_dir():
            raise source.error("path", f"{str(root)!r} is not an existing directory")
        state_path = state_dir / _state_name("folder", root.name, str(root.resolve()))
        return FolderCollector(root, sink, state_path=state_path, **options)

    folder = _ftp_folder(source) if kind == "ftp" else _sftp_folder(source)
    identity = "|".join(
        str(part) for part in (kind, source.string("host"), source.port(), source.string("user"))
    )
    state_path = state_dir / _state_name(kind, source.string("host"), f"{identity}|{folder.root}")
    return RemoteFolderCollector(folder, sink, state_path=state_path, **options)


def _ftp_folder(source: _Entry) -> RemoteFolder:
    tls = source.boolean("tls", False)
    ca_file = source.path("ca_file", None)
    if ca_file is not None and not tls:
        raise source.error("ca_file", "only applies with tls = true")
    return FtpFolder(
        source.string("host"),
        port=source.port(),
        user=source.string("user"),
        password=source.string("password", ""),
        root=source.remote_dir(),
        tls=tls,
        ca_file=ca_file,
        timeout=source.number("timeout_seconds", 60.0, minimum=0.001),
    )


def _sftp_folder(source: _Entry) -> RemoteFolder:
    known_hosts = source.path("known_hosts", None)
    fingerprint = source.string("host_key_fingerprint", None)
    if (known_hosts is None) == (fingerprint is None):
        raise source.error("known_hosts", "give exactly one of known_hosts or host_key_fingerprint")
    if fingerprint is not None and not fingerprint.startswith("SHA256:"):
        raise source.error("host_key_fingerprint", "must look like 'SHA256:<base64>'")
    password = source.string("password", None)
    private_key = source.path("private_key", None)
    if password is None and private_key is None:
        raise source.error("password", "give password or private_key (or both)")
    return SftpFolder(
        source.string("host"),
        port=source.port(),
        user=source.string("user"),
        password=password,
        private_key=private_key,
        private_key_passphrase=source.string("private_key_passphrase", None),
        known_hosts=known_hosts,
        host_key_fingerprint=fingerprint,
        root=source.remote_dir(),
        timeout=source.number("timeout_seconds", 60.0, minimum=0.001),
    )


def _state_name(kind: str, readable: str, identity: str) -> str:
    """Stable per source: the same server and directory find their memory after a restart."""
    digest = hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", readable).strip("._")[:40] or kind
    return f"{kind}-{slug}-{digest}.json"


class _Entry:
    """Typed access to one entry's keys, each failure naming the source and the key."""

    def __init__(self, entry: Mapping[str, Any], kind: str) -> None:
        self._entry = entry
        name = entry.get("name")
        self._label = f"source {name!r} ({kind})" if isinstance(name, str) else f"{kind} source"
        unknown = sorted(set(entry) - _KEYS[kind])
        if unknown:
            allowed = ", ".join(sorted(_KEYS[kind]))
            raise ValueError(f"{self._label}: unknown keys {unknown}; allowed: {allowed}")
        if name is not None and not isinstance(name, str):
            raise self.error("name", "must be a string")

    def error(self, key: str, problem: str) -> ValueError:
        return ValueError(f"{self._label}: {key!r} {problem}")

    def _value(self, key: str, default: Any) -> Any:
        if key in self._entry:
            return self._entry[key]
        if default is _MISSING:
            raise self.error(key, "is required")
        return default

    def string(self, key: str, default: Any = _MISSING) -> Any:
        value = self._value(key, default)
        if value is default and default is not _MISSING:
            return value
        if not isinstance(value, str) or (not value and key not in _SECRETS):
            shown = "" if key in _SECRETS else f", got {value!r}"
            raise self.error(key, f"must be a non-empty string{shown}")
        if "\0" in value or (key not in _SECRETS and any(ord(c) < 32 for c in value)):
            raise self.error(key, "must not contain control characters")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._value(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def number(self, key: str, default: float, *, minimum: float) -> float:
        value = self._value(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
            raise self.error(key, f"must be a number of at least {minimum:g}, got {value!r}")
        return float(value)

    def port(self) -> int:
        default = {"ftp": 21, "sftp": 22}.get(str(self._entry.get("kind")), 0)
        value = self._value("port", default)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            raise self.error("port", f"must be an integer from 1 to 65535, got {value!r}")
        return value

    def path(self, key: str, default: Any = _MISSING) -> Any:
        text = self.string(key, default)
        if text is default and default is not _MISSING:
            return text
        path = Path(text).expanduser()
        if not path.is_absolute():
            raise self.error(key, f"must be an absolute path, got {text!r}")
        if key != "path" and not path.is_file():
            raise self.error(key, f"{text!r} is not a readable file")
        return path

    def remote_dir(self) -> str:
        text: str = self.string("remote_dir", "/")
        if not text.startswith("/") or "\\" in text or ".." in text.split("/"):
            raise self.error("remote_dir", f"must be an absolute path without '..', got {text!r}")
        return text
