"""Start and stop a private Orthanc server for interop tests and the benchmark.

Orthanc's Debian configuration loads every installed plugin and serves the system-wide
storage, so :class:`OrthancServer` writes its own configuration into a temporary directory:
its own storage and index, free ports, no authentication and only the DICOMweb plugin.

Orthanc 1.10 binds its DICOM and HTTP ports on every interface (``RemoteAccessAllowed``
only refuses remote HTTP clients, it does not stop the bind), so callers that care about
exposure should run it inside a private network namespace, as ``bench/run.py`` does.

Usage::

    with OrthancServer() as orthanc:
        storescu = ["storescu", "-aec", orthanc.aet, "127.0.0.1", str(orthanc.dicom_port)]
        subprocess.run([*storescu, path], env={**os.environ, "TCP_NODELAY": "1"})
        httpx.get(f"{orthanc.dicomweb_url}/studies")
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from tests.support.ports import free_port, free_ports

__all__ = [
    "LOOPBACK",
    "OrthancError",
    "OrthancServer",
    "free_port",
    "free_ports",
    "orthanc_available",
]

ORTHANC_EXECUTABLE = "Orthanc"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
LOOPBACK = "127.0.0.1"


class OrthancError(RuntimeError):
    """Orthanc could not be started, or died."""


def orthanc_available() -> bool:
    """True when the Orthanc binary and its DICOMweb plugin are installed."""
    return shutil.which(ORTHANC_EXECUTABLE) is not None and DICOMWEB_PLUGIN.is_file()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


class OrthancServer:
    """A throw-away Orthanc with its own config, storage, index and ports.

    ``tcp_nodelay`` puts ``TCP_NODELAY=1`` in Orthanc's environment: DCMTK (which Orthanc
    uses for DICOM) otherwise leaves Nagle's algorithm on, costing ~40 ms per C-STORE.
    ``config_overrides`` is merged on top of the generated configuration.
    ``extra_plugins`` are loaded after the DICOMweb plugin (e.g. ``libOrthancPython.so``).
    """

    def __init__(
        self,
        *,
        aet: str = "ORTHANC",
        tcp_nodelay: bool = True,
        config_overrides: Mapping[str, Any] | None = None,
        startup_timeout: float = 60.0,
        workdir: Path | None = None,
        extra_plugins: Sequence[Path] = (),
    ) -> None:
        self.aet = aet
        self.tcp_nodelay = tcp_nodelay
        self.config_overrides = dict(config_overrides or {})
        self.startup_timeout = startup_timeout
        self._given_workdir = workdir
        self.extra_plugins = list(extra_plugins)
        self.workdir: Path | None = None
        self.dicom_port = 0
        self.http_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log_file: Any = None

    # -- addresses ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.base_url}/dicom-web"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None, "server not started"
        return self.workdir / "orthanc.log"

    # -- configuration -----------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The configuration Orthanc is started with (valid once ports are chosen)."""
        assert self.workdir is not None, "server not started"
        config: dict[str, Any] = {
            "Name": f"bench-{self.aet}",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "StorageCompression": False,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [str(DICOMWEB_PLUGIN), *(str(p) for p in self.extra_plugins)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        config.update(self.config_overrides)
        return config

    def _write_config(self) -> Path:
        assert self.workdir is not None
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(self.config(), indent=2))
        return path

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.tcp_nodelay:
            env["TCP_NODELAY"] = "1"
        return env

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> OrthancServer:
        if self._process is not None:
            raise OrthancError("Orthanc already started")
        if not orthanc_available():
            raise OrthancError(f"Orthanc or its DICOMweb plugin ({DICOMWEB_PLUGIN}) is missing")
        self.workdir = self._given_workdir or Path(tempfile.mkdtemp(prefix="orthanc-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.dicom_port, self.http_port = free_ports(2)
        config_path = self._write_config()
        self._log_file = self.log_path.open("wb")
        self._process = subprocess.Popen(
            [ORTHANC_EXECUTABLE, str(config_path)],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=self._environment(),
            start_new_session=True,
        )
        try:
            self._wait_until_up()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                self._raise_if_dead()
                if self._http_up(client) and _port_open(self.dicom_port):
                    return
                time.sleep(0.2)
        raise OrthancError(f"Orthanc not up after {self.startup_timeout:.0f} s\n{self.log_tail()}")

    def _http_up(self, client: httpx.Client) -> bool:
        try:
            return client.get(f"{self.base_url}/system").status_code == 200
        except httpx.TransportError:
            return False

    def _raise_if_dead(self) -> None:
        assert self._process is not None
        code = self._process.poll()
        if code is not None:
            raise OrthancError(f"Orthanc exited with code {code}\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """Stop Orthanc (SIGTERM, then SIGKILL) and remove its temporary directory."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.workdir is not None and self._given_workdir is None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, AssertionError):
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- convenience for tests ---------------------------------------------------------

    def instance_count(self) -> int:
        """Number of instances Orthanc holds (from its REST ``/statistics``)."""
        response = httpx.get(f"{self.base_url}/statistics", timeout=30.0)
        response.raise_for_status()
        return int(response.json()["CountInstances"])
