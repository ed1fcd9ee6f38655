"""FTP and SFTP collectors against real servers on 127.0.0.1: pyftpdlib and asyncssh.

Each behaviour runs on three servers: FTP with MLSD, FTP without MLSD (listed with LIST and
MDTM, as vsftpd requires) and SFTP with a chroot. Files are put in place through the
servers' own directories on disk, as the hospital system writing them would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import pytest
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import FTPServer

from collectors.ftp_folder import FtpFolder
from collectors.intake import SUCCESS, SinkResult
from collectors.polling import PollReport, SourceUnavailableError
from collectors.polling_config import collector_from_config
from collectors.remote_files import RemoteFolder, RemoteFolderCollector
from collectors.sftp_folder import SftpFolder
from tests.support.collector_tests import SETTLE, Clock, RecordingSink, dicom_bytes

USER, PASSWORD = "gateway", "s3cret-Pass"
REMOTE_DIR = "/out"


# ---------------------------------------------------------------- data, sink, clock


# ---------------------------------------------------------------- servers


@contextlib.contextmanager
def running_ftp_server(home: Path, *, mlsd: bool = True, may_delete: bool = True) -> Iterator[int]:
    """pyftpdlib on 127.0.0.1 and a free port, in a thread; yields the port."""
    authorizer = DummyAuthorizer()
    authorizer.add_user(USER, PASSWORD, str(home), perm="elradfmw" if may_delete else "elr")
    commands = dict(FTPHandler.proto_cmds)
    if not mlsd:  # like vsftpd: "500 Command not understood"
        del commands["MLSD"], commands["MLST"]
    handler = type(
        "TestFTPHandler",
        (FTPHandler,),
        # surrogateescape: names that are not UTF-8 go out as the raw bytes on disk
        {"authorizer": authorizer, "proto_cmds": commands, "unicode_errors": "surrogateescape"},
    )
    with serving(FTPServer(("127.0.0.1", 0), handler, ioloop=IOLoop())) as server:
        yield server.address[1]


@contextlib.contextmanager
def serving(server: FTPServer) -> Iterator[FTPServer]:
    """Run a pyftpdlib server's own IO loop in a thread until the block ends."""
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            server.ioloop.loop(timeout=0.02, blocking=False)
        server.close_all()

    thread = threading.Thread(target=serve, name="test-ftpd", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(timeout=10)


@dataclass(frozen=True)
class SshKeys:
    host: asyncssh.SSHKey
    client: asyncssh.SSHKey
    client_file: Path


@pytest.fixture(scope="module")
def ssh_keys(tmp_path_factory: pytest.TempPathFactory) -> SshKeys:
    """Generated at test time: nothing secret lives in the repository."""
    client = asyncssh.generate_private_key("ssh-ed25519")
    client_file = tmp_path_factory.mktemp("client-key") / "id_ed25519"
    client.write_private_key(client_file)
    return SshKeys(asyncssh.generate_private_key("ssh-ed25519"), client, client_file)


class _PasswordServer(asyncssh.SSHServer):
    def password_auth_supported(self) -> bool:
        return True

    def validate_password(self, username: str, password: str) -> bool:
        return username == USER and password == PASSWORD


@contextlib.contextmanager
def running_sftp_server(home: Path, keys: SshKeys) -> Iterator[int]:
    """asyncssh on 127.0.0.1, SFTP chrooted to ``home``, on its own loop thread; yields the port."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-sshd", daemon=True)
    thread.start()
    chroot = os.fsencode(home)

    async def start() -> Any:
        return await asyncssh.listen(
            "127.0.0.1",
            0,
            server_host_keys=[keys.host],
            authorized_client_keys=asyncssh.import_authorized_keys(
                keys.client.export_public_key().decode()
            ),
            server_factory=_PasswordServer,
            sftp_factory=lambda channel: asyncssh.SFTPServer(channel, chroot=chroot),
        )

    server = asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)

    async def stop() -> None:  # on the server's own loop: asyncio servers are not thread-safe
        server.close()
        await server.wait_closed()

    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def known_hosts_file(directory: Path, port: int, keys: SshKeys) -> Path:
    path = directory / "known_hosts"
    public = keys.host.export_public_key().decode().strip()
    path.write_text(f"[127.0.0.1]:{port} {public}\n")
    return path


# ---------------------------------------------------------------- one remote folder


@dataclass
class Remote:
    """A running server, the directory on disk behind REMOTE_DIR, and how to reach it."""

    kind: str
    port: int
    out: Path  # what the server shows as REMOTE_DIR
    make_folder: Callable[[], RemoteFolder]

    def origin(self, relative: str) -> str:
        scheme = "sftp" if self.kind == "sftp" else "ftp"
        return f"{scheme}://127.0.0.1:{self.port}{REMOTE_DIR}/{relative}"


@pytest.fixture(params=["ftp", "ftp-without-mlsd", "sftp"])
def remote(request: pytest.FixtureRequest, tmp_path: Path, ssh_keys: SshKeys) -> Iterator[Remote]:
    home = tmp_path / "server-home"
    out = home / REMOTE_DIR.lstrip("/")
    out.mkdir(parents=True)
    kind = request.param
    if kind.startswith("ftp"):
        with running_ftp_server(home, mlsd=kind == "ftp") as port:
            yield Remote(
                kind,
                port,
                out,
                lambda: FtpFolder(
                    "127.0.0.1", port=port, user=USER, password=PASSWORD, root=REMOTE_DIR
                ),
            )
        return
    with running_sftp_server(home, ssh_keys) as port:
        known_hosts = known_hosts_file(tmp_path, port, ssh_keys)
        yield Remote(
            kind,
            port,
            out,
            lambda: SftpFolder(
                "127.0.0.1",
                port=port,
                user=USER,
                private_key=ssh_keys.client_file,
                known_hosts=known_hosts,
                root=REMOTE_DIR,
            ),
        )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink(quarantine_non_dicom=True)


def collector(
    remote: Remote, sink: RecordingSink, clock: Clock, **options: Any
) -> RemoteFolderCollector:
    return RemoteFolderCollector(
        remote.make_folder(), sink, settle_seconds=SETTLE, clock=clock, **options
    )


def settled_poll(watcher: RemoteFolderCollector, clock: Clock) -> PollReport:
    """First sighting, settle time, second sighting."""
    watcher.poll_once()
    clock.advance()
    return watcher.poll_once()


# ---------------------------------------------------------------- behaviour on every server


def test_complete_files_are_taken_exactly_once(
    remote: Remote, sink: RecordingSink, clock: Clock
) -> None:
    first, second = dicom_bytes("P1"), dicom_bytes("P2")
    (remote.out / "IM0001").write_bytes(first)
    (remote.out / "study 1" / "series").mkdir(parents=True)
    (remote.out / "study 1" / "series" / "IM0002.dcm").write_bytes(second)
    watcher = collector(remote, sink, clock)

    assert watcher.poll_once() == PollReport(deferred=2)
    clock.advance()
    assert watcher.poll_once() == PollReport(taken=2)
    clock.advance()
    assert not watcher.poll_once()

    assert sorted(sink.stored) == sorted(
        [
            (first, remote.origin("IM0001")),
            (second, remote.origin("study 1/series/IM0002.dcm")),
        ]
    )


def test_a_file_still_being_written_is_deferred_then_taken(
    remote: Remote, sink: RecordingSink, clock: Clock
) -> None:
    data = dicom_bytes()
    target = remote.out / "growing.dcm"
    target.write_bytes(data[:150])
    watcher = collector(remote, sink, clock)

    assert watcher.poll_once() == PollReport(deferred=1)
    clock.advance()
    with target.open("ab") as handle:
        handle.write(data[150:])
    assert watcher.poll_once() == PollReport(deferred=1)
    clock.advance()
    assert watcher.poll_once() == PollReport(taken=1)
    assert sink.stored_bytes == [data]


def test_temporary_and_hidden_names_are_ignored(
    remote: Remote, sink: RecordingSink, clock: Clock
) -> None:
    (remote.out / "IM0001.part").write_bytes(dicom_bytes())
    (remote.out / "IM0002.filepart").write_bytes(dicom_bytes())
    (remote.out / ".IM0003").write_bytes(dicom_bytes())
    (remote.out / ".staging").mkdir()
    (remote.out / ".staging" / "IM0004").write_bytes(dicom_bytes())
    watcher = collector(remote, sink, clock)
    assert not settled_poll(watcher, clock)

    (remote.out / "IM0001.part").rename(remote.out / "IM0001")
    assert settled_poll(watcher, clock) == PollReport(taken=1)
    assert [origin for _, origin in sink.offered] == [remote.origin("IM0001")]


def test_a_full_disk_leaves_the_file_to_be_retried(
    remote: Remote, sink: RecordingSink, clock: Clock
) -> None:
    data = dicom_bytes()
    (remote.out / "IM0001").write_bytes(data)
    watcher = collector(remote, sink, clock)
    watcher.poll_once()
    clock.advance()

    sink.disk_full = True
    assert watcher.poll_once() == PollReport(failed=1)
    sink.disk_full = False
    clock.advance()
    assert watcher.poll_once() == PollReport(taken=1)
    assert sink.stored_bytes == [data]


def test_a_quarantined_file_is_not_fetched_again(
    remote: Remote, sink: RecordingSink, clock: Clock
) -> None:
    (remote.out / "readme.txt").write_bytes(b"this is not DICOM")
    watcher = collector(remote, sink, clock)
    assert settled_poll(watcher, clock) == PollReport(quarantined=1)
    clock.advance()
    assert not watcher.poll_once()
    assert len(sink.offered) == 1


def test_delete_after_taken_deletes_only_taken_files(
    remote: Remote, sink: RecordingSink, clock: Clock
) -> None:
    (remote.out / "sub").mkdir()
    (remote.out / "sub" / "IM0001").write_bytes(dicom_bytes())
    (remote.out / "junk.bin").write_bytes(b"junk")
    watcher = collector(remote, sink, clock, delete_after_taken=True)
    watcher.poll_once()
    clock.advance()

    sink.disk_full = True
    assert watcher.poll_once().failed == 1
    assert (remote.out / "sub" / "IM0001").exists() and (remote.out / "junk.bin").exists()

    sink.disk_full = False
    clock.advance()
    (remote.out / "late.dcm").write_bytes(dicom_bytes())  # first sighting: not complete yet
    (remote.out / "upload.part").write_bytes(b"partial")
    assert watcher.poll_once() == PollReport(taken=1, quarantined=1, deferred=1)
    remaining = sorted(p.relative_to(remote.out).as_posix() for p in remote.out.rglob("*"))
    assert remaining == ["late.dcm", "sub", "upload.part"]


def test_delete_after_taken_spares_a_file_replaced_meanwhile(remote: Remote, clock: Clock) -> None:
    target = remote.out / "IM0001"
    target.write_bytes(dicom_bytes("FIRST"))
    replacement = dicom_bytes("SECOND-PATIENT")

    def replacing_sink(data: bytes, origin: str) -> SinkResult:
        target.write_bytes(replacement)  # the sender reuses the name while we store
        return SinkResult(SUCCESS)

    watcher = RemoteFolderCollector(
        remote.make_folder(),
        replacing_sink,
        settle_seconds=SETTLE,
        clock=clock,
        delete_after_taken=True,
    )
    assert settled_poll(watcher, clock) == PollReport(taken=1)
    assert target.read_bytes() == replacement


def test_restart_with_the_state_file_does_not_send_again(
    remote: Remote, sink: RecordingSink, clock: Clock, tmp_path: Path
) -> None:
    state = tmp_path / "state" / f"{remote.kind}.json"
    (remote.out / "IM0001").write_bytes(dicom_bytes())
    assert settled_poll(collector(remote, sink, clock, state_path=state), clock).taken == 1

    restarted = collector(remote, sink, clock, state_path=state)
    assert not settled_poll(restarted, clock)
    assert len(sink.offered) == 1
    assert set(json.loads(state.read_text())["taken"]) == {"IM0001"}


def test_hostile_names_on_the_server_are_rejected_and_never_downloaded(
    remote: Remote, sink: RecordingSink, clock: Clock
) -> None:
    hostile = ["a..b.dcm", "back\\slash.dcm", "bell\x07.dcm", "new\nline.dcm"]
    for name in hostile:
        (remote.out / name).write_bytes(dicom_bytes("HOSTILE"))
    os.close(os.open(os.fsencode(remote.out) + b"/latin1-\xe9.dcm", os.O_CREAT | os.O_WRONLY))
    (remote.out / "fine.dcm").write_bytes(dicom_bytes("FINE"))
    watcher = collector(remote, sink, clock)

    assert watcher.poll_once() == PollReport(deferred=1, rejected=5)
    clock.advance()
    assert watcher.poll_once() == PollReport(taken=1, rejected=5)
    assert [origin for _, origin in sink.offered] == [remote.origin("fine.dcm")]


# ---------------------------------------------------------------- server-specific


def test_sftp_does_not_follow_a_link_out_of_the_folder(
    tmp_path: Path, ssh_keys: SshKeys, sink: RecordingSink, clock: Clock
) -> None:
    home = tmp_path / "home"
    (home / "out").mkdir(parents=True)
    secret = tmp_path / "secret.dcm"
    secret.write_bytes(dicom_bytes("SECRET"))
    (home / "out" / "escape.dcm").symlink_to(secret)  # asyncssh's chroot would follow it
    (home / "out" / "escape-dir").symlink_to(tmp_path)
    with running_sftp_server(home, ssh_keys) as port:
        folder = SftpFolder(
            "127.0.0.1",
            port=port,
            user=USER,
            private_key=ssh_keys.client_file,
            known_hosts=known_hosts_file(tmp_path, port, ssh_keys),
            root=REMOTE_DIR,
        )
        watcher = RemoteFolderCollector(folder, sink, settle_seconds=SETTLE, clock=clock)
        assert not settled_poll(watcher, clock)
    assert sink.offered == []


def test_sftp_with_password_and_pinned_fingerprint(
    tmp_path: Path, ssh_keys: SshKeys, sink: RecordingSink, clock: Clock
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "IM0001").write_bytes(dicom_bytes())
    with running_sftp_server(tmp_path, ssh_keys) as port:
        folder = SftpFolder(
            "127.0.0.1",
            port=port,
            user=USER,
            password=PASSWORD,
            host_key_fingerprint=ssh_keys.host.get_fingerprint("sha256"),
            root=REMOTE_DIR,
        )
        watcher = RemoteFolderCollector(folder, sink, settle_seconds=SETTLE, clock=clock)
        assert settled_poll(watcher, clock) == PollReport(taken=1)


def test_sftp_refuses_a_server_with_another_host_key(
    tmp_path: Path, ssh_keys: SshKeys, sink: RecordingSink
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "IM0001").write_bytes(dicom_bytes())
    impostor = asyncssh.generate_private_key("ssh-ed25519").get_fingerprint("sha256")
    with running_sftp_server(tmp_path, ssh_keys) as port:
        pinned = SftpFolder(
            "127.0.0.1",
            port=port,
            user=USER,
            password=PASSWORD,
            host_key_fingerprint=impostor,
            root=REMOTE_DIR,
        )
        with pytest.raises(SourceUnavailableError, match="not trusted"):
            RemoteFolderCollector(pinned, sink).poll_once()

        unknown = tmp_path / "empty_known_hosts"
        unknown.write_text("")
        listed = SftpFolder(
            "127.0.0.1",
            port=port,
            user=USER,
            password=PASSWORD,
            known_hosts=unknown,
            root=REMOTE_DIR,
        )
        with pytest.raises(SourceUnavailableError):
            RemoteFolderCollector(listed, sink).poll_once()
    assert sink.offered == []


def test_ftp_delete_refused_by_the_server_is_remembered_not_resent(
    tmp_path: Path, sink: RecordingSink, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "IM0001").write_bytes(dicom_bytes())
    state = tmp_path / "state.json"
    with running_ftp_server(tmp_path, may_delete=False) as port:
        folder = FtpFolder("127.0.0.1", port=port, user=USER, password=PASSWORD, root=REMOTE_DIR)
        watcher = RemoteFolderCollector(
            folder,
            sink,
            settle_seconds=SETTLE,
            clock=clock,
            delete_after_taken=True,
            state_path=state,
        )
        with caplog.at_level(logging.WARNING, logger="collectors.polling"):
            assert settled_poll(watcher, clock) == PollReport(taken=1)
            clock.advance()
            assert not watcher.poll_once()
        assert "taken but not deleted" in caplog.text
    assert len(sink.offered) == 1
    assert (tmp_path / "out" / "IM0001").exists()
    assert set(json.loads(state.read_text())["taken"]) == {"IM0001"}


def test_an_unreachable_server_fails_the_poll(tmp_path: Path, sink: RecordingSink) -> None:
    with running_ftp_server(tmp_path) as port:
        pass  # the port is free again
    folder = FtpFolder("127.0.0.1", port=port, user=USER, password=PASSWORD, timeout=5)
    with pytest.raises(SourceUnavailableError):
        RemoteFolderCollector(folder, sink).poll_once()


def test_ftps_with_a_private_ca(tmp_path: Path, sink: RecordingSink, clock: Clock) -> None:
    pytest.importorskip("OpenSSL", reason="pyftpdlib's TLS handler needs pyOpenSSL")
    import trustme
    from pyftpdlib.handlers import TLS_FTPHandler

    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1")
    server_pem = tmp_path / "server.pem"
    certificate.private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    ca_pem = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_pem))
    (tmp_path / "home" / "out").mkdir(parents=True)
    (tmp_path / "home" / "out" / "IM0001").write_bytes(dicom_bytes())

    authorizer = DummyAuthorizer()
    authorizer.add_user(USER, PASSWORD, str(tmp_path / "home"), perm="elradfmw")
    handler = type(
        "TestTLSHandler",
        (TLS_FTPHandler,),
        {"authorizer": authorizer, "certfile": str(server_pem), "tls_data_required": True},
    )
    with serving(FTPServer(("127.0.0.1", 0), handler, ioloop=IOLoop())) as server:
        folder = FtpFolder(
            "127.0.0.1",
            port=server.address[1],
            user=USER,
            password=PASSWORD,
            root=REMOTE_DIR,
            tls=True,
            ca_file=ca_pem,
        )
        watcher = RemoteFolderCollector(folder, sink, settle_seconds=SETTLE, clock=clock)
        assert settled_poll(watcher, clock) == PollReport(taken=1)

        untrusting = FtpFolder(
            "127.0.0.1", port=server.address[1], user=USER, password=PASSWORD, tls=True
        )  # the system CAs do not know this server's certificate
        with pytest.raises(SourceUnavailableError, match="CERTIFICATE_VERIFY_FAILED"):
            RemoteFolderCollector(untrusting, sink).poll_once()


@pytest.mark.parametrize("kind", ["ftp", "sftp"])
def test_collectors_built_from_a_sources_entry(
    kind: str, tmp_path: Path, ssh_keys: SshKeys, sink: RecordingSink
) -> None:
    (tmp_path / "home" / "out").mkdir(parents=True)
    data = dicom_bytes()
    (tmp_path / "home" / "out" / "IM0001").write_bytes(data)
    server = (
        running_ftp_server(tmp_path / "home")
        if kind == "ftp"
        else running_sftp_server(tmp_path / "home", ssh_keys)
    )
    with server as port:
        entry: dict[str, Any] = {
            "kind": kind,
            "host": "127.0.0.1",
            "port": port,
            "user": USER,
            "password": PASSWORD,
            "remote_dir": REMOTE_DIR,
            "delete_after_taken": True,
            "settle_seconds": 0,
            "interval_seconds": 30,
        }
        if kind == "sftp":
            entry["known_hosts"] = str(known_hosts_file(tmp_path, port, ssh_keys))
        watcher = collector_from_config(entry, sink, tmp_path / "state")
        watcher.poll_once()
        assert watcher.poll_once() == PollReport(taken=1)
    assert sink.stored_bytes == [data]
    assert not (tmp_path / "home" / "out" / "IM0001").exists()
