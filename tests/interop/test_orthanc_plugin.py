"""The Orthanc Python plugin (``gateway/orthanc_plugin.py``) inside a real Orthanc.

Orthanc plays a hospital's existing PACS with ``libOrthancPython.so`` loading the plugin; its
embedded interpreter (Debian's CPython 3.11) imports ``gateway.spool`` from this checkout and
pydicom from this venv. What a modality sends by C-STORE and what is uploaded over REST must land
in the gateway spool, byte for byte what Orthanc stored; an unusable spool must be logged and
make C-STORE fail (0xA700) while Orthanc keeps running. The first tests need no Orthanc.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from collectors.intake import OUT_OF_RESOURCES, SUCCESS
from gateway.orthanc_plugin import (
    forward_instance,
    install,
    orthanc_instance_id,
    prepare_sys_path,
    read_settings,
)
from gateway.spool import Spool
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10, write_files
from tests.support.orthanc import OrthancServer, orthanc_available

REPO = Path(__file__).resolve().parents[2]
PLUGIN_SCRIPT = REPO / "gateway" / "orthanc_plugin.py"
PYTHON_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancPython.so")
SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])
MODALITY_AE = "MODALITY"


def needs_orthanc_python(test: Callable[..., None]) -> Callable[..., None]:
    """Real Orthanc with orthanc-python, and DCMTK's storescu as the modality."""
    for mark in (
        pytest.mark.needs_orthanc,
        pytest.mark.needs_dcmtk,
        pytest.mark.skipif(
            not orthanc_available() or not PYTHON_PLUGIN.is_file(),
            reason="Orthanc or its Python plugin (orthanc-python) is not installed",
        ),
        pytest.mark.skipif(shutil.which("storescu") is None, reason="DCMTK is not installed"),
        pytest.mark.timeout(60),
    ):
        test = mark(test)
    return test


def _instances(count: int, patient_id: str = "SYN0001") -> list[bytes]:
    study = StudySpec(patient=PatientSpec(patient_id=patient_id))
    return [to_part10(ds) for ds in ct_series(study, slices=count, size=32)]


# -- without Orthanc ---------------------------------------------------------------------------


def test_forward_instance_spools_quarantines_and_never_raises(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    data = _instances(1)[0]

    stored = forward_instance(spool, data, "orthanc:CT1/abc")
    junk = forward_instance(spool, b"not dicom at all", "orthanc:rest/def")

    assert stored.status == SUCCESS
    [entry] = spool.entries()
    assert (entry.sha256, entry.origin, entry.state) == (
        hashlib.sha256(data).hexdigest(),
        "orthanc:CT1/abc",
        "queued",
    )
    assert spool.object_path(entry.sha256).read_bytes() == data
    assert junk.quarantined and not junk.status == SUCCESS

    class LockedSpool(Spool):
        def accept(self, data: bytes, origin: str) -> Any:
            raise sqlite3.OperationalError("database is locked")

    failed = forward_instance(LockedSpool(tmp_path / "other"), data, "orthanc:CT1/abc")
    assert failed.status == OUT_OF_RESOURCES and not failed.taken
    assert "OperationalError: database is locked" in failed.error_comment


def test_settings_come_from_the_orthanc_section_then_the_environment(tmp_path: Path) -> None:
    environ = {"IMAGING_CLOUD_SPOOL_DIR": "/env/spool", "IMAGING_CLOUD_SITE_PACKAGES": "/env/sp"}
    section = {"ImagingCloudGateway": {"SpoolDir": "/cfg/spool", "RefuseWhenSpoolFails": False}}

    from_config = read_settings(json.dumps(section), environ, PLUGIN_SCRIPT)
    from_env = read_settings("{}", environ, PLUGIN_SCRIPT)

    assert from_config.spool_dir == Path("/cfg/spool")
    assert from_config.site_packages == Path("/env/sp")
    assert from_config.repo_dir == REPO  # the directory above gateway/
    assert not from_config.refuse_when_spool_fails
    assert from_env.spool_dir == Path("/env/spool") and from_env.refuse_when_spool_fails

    # Orthanc puts the script's directory (gateway/) first; the repo and the venv go after the
    # standard library and before the system's dist-packages.
    path = [str(REPO / "gateway"), "/usr/lib/python3.11", "/usr/lib/python3/dist-packages"]
    added = prepare_sys_path(from_config, path, REPO / "gateway")
    assert added == [str(REPO), "/env/sp"]
    assert path == ["/usr/lib/python3.11", str(REPO), "/env/sp", "/usr/lib/python3/dist-packages"]


@dataclass
class FakeOrthanc:
    """The few parts of the ``orthanc`` module the plugin uses."""

    configuration: dict[str, Any]
    log: list[tuple[str, str]] = field(default_factory=list)
    cstore_filter: Callable[[Any], int] | None = None
    on_stored: Callable[[Any, str], None] | None = None

    class InstanceOrigin:
        DICOM_PROTOCOL, REST_API = 2, 3

    def GetConfiguration(self) -> str:
        return json.dumps(self.configuration)

    def LogError(self, message: str) -> None:
        self.log.append(("E", message))

    def LogWarning(self, message: str) -> None:
        self.log.append(("W", message))

    def LogInfo(self, message: str) -> None:
        self.log.append(("I", message))

    def RegisterIncomingCStoreInstanceFilter(self, callback: Callable[[Any], int]) -> None:
        self.cstore_filter = callback

    def RegisterOnStoredInstanceCallback(self, callback: Callable[[Any, str], None]) -> None:
        self.on_stored = callback


@dataclass
class FakeInstance:
    data: bytes
    origin: int = 2
    aet: str = MODALITY_AE

    def GetInstanceData(self) -> bytes:
        return self.data

    def GetInstanceOrigin(self) -> int:
        return self.origin

    def GetInstanceRemoteAet(self) -> str:
        return self.aet

    def GetInstanceSimplifiedJson(self) -> str:
        return json.dumps({"PatientID": "SYN0001", "SOPInstanceUID": "1.2"})


def test_cstore_filter_refuses_when_the_spool_cannot_take_the_instance(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    api = FakeOrthanc({"ImagingCloudGateway": {"SpoolDir": str(blocker / "spool")}})
    forwarder = install(api, plugin_file=PLUGIN_SCRIPT, path=list(sys.path), route_logging=False)
    assert forwarder is not None and api.cstore_filter and api.on_stored
    data = _instances(1)[0]

    assert api.cstore_filter(FakeInstance(data)) == 0xA700
    api.on_stored(FakeInstance(data, origin=3, aet=""), "rest-id")  # logs, cannot refuse
    errors = "\n".join(message for level, message in api.log if level == "E")
    assert f"cannot open the spool {blocker / 'spool'}: NotADirectoryError" in errors
    assert "C-STORE refused with 0xA700" in errors
    assert "rest-id is stored in Orthanc but NOT in the spool" in errors

    blocker.unlink()  # the operator fixes the directory: no restart needed
    assert api.cstore_filter(FakeInstance(data)) == 0
    api.on_stored(FakeInstance(data), "already-spooled-by-the-filter")
    [entry] = Spool(blocker / "spool").entries()
    expected_id = orthanc_instance_id("SYN0001", "", "", "1.2")
    assert entry.origin == f"orthanc:{MODALITY_AE}/{expected_id}"


# -- inside a real Orthanc ---------------------------------------------------------------------


@contextmanager
def orthanc_with_plugin(spool_dir: Path) -> Iterator[OrthancServer]:
    server = OrthancServer(
        extra_plugins=[PYTHON_PLUGIN],
        config_overrides={
            "PythonScript": str(PLUGIN_SCRIPT),
            "ImagingCloudGateway": {
                "SpoolDir": str(spool_dir),
                "RepoDir": str(REPO),
                "SitePackages": str(SITE_PACKAGES),
            },
        },
        startup_timeout=20.0,
    )
    with server:
        yield server


def storescu(orthanc: OrthancServer, files: list[Path]) -> subprocess.CompletedProcess[str]:
    command = ["storescu", "-v", "-aet", MODALITY_AE, "-aec", orthanc.aet, "127.0.0.1"]
    return subprocess.run(
        [*command, str(orthanc.dicom_port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "TCP_NODELAY": "1"},
        check=False,
    )


def stored_in_orthanc(orthanc: OrthancServer) -> dict[str, str]:
    """Orthanc instance ID -> SHA-256 of the file Orthanc stored."""
    with httpx.Client(base_url=orthanc.base_url, timeout=10) as client:
        ids = client.get("/instances").raise_for_status().json()
        return {
            i: hashlib.sha256(
                client.get(f"/instances/{i}/file").raise_for_status().content
            ).hexdigest()
            for i in ids
        }


@needs_orthanc_python
def test_cstore_and_rest_instances_reach_the_spool_byte_for_byte(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    files = write_files(ct_series(StudySpec(), slices=3, size=32), tmp_path / "ct")
    uploaded = _instances(1, patient_id="SYN0002")[0]

    with orthanc_with_plugin(spool_dir) as orthanc:
        sent = storescu(orthanc, files)
        assert sent.returncode == 0, sent.stdout + sent.stderr + orthanc.log_tail()
        response = httpx.post(f"{orthanc.base_url}/instances", content=uploaded, timeout=10)
        assert response.status_code == 200, response.text
        rest_id = response.json()["ID"]
        in_orthanc = stored_in_orthanc(orthanc)
        log = orthanc.log_path.read_text(errors="replace")

    assert len(in_orthanc) == 4, log
    assert in_orthanc[rest_id] == hashlib.sha256(uploaded).hexdigest()
    entries = {entry.sha256: entry for entry in Spool(spool_dir).entries()}
    assert set(entries) == set(in_orthanc.values()), log
    for instance_id, sha256 in in_orthanc.items():
        entry = entries[sha256]
        assert entry.state == "queued"
        label = "rest" if instance_id == rest_id else MODALITY_AE
        assert entry.origin == f"orthanc:{label}/{instance_id}"
        assert hashlib.sha256(Spool(spool_dir).object_path(sha256).read_bytes()).hexdigest() == (
            sha256
        )
    assert "C-STORE acknowledged only once durable in the spool" in log
    assert "imaging-cloud gateway plugin: NOT spooled" not in log


def _block_with_a_file(spool_dir: Path) -> Callable[[], None]:
    spool_dir.parent.mkdir(parents=True, exist_ok=True)
    spool_dir.write_text("a file where the spool directory should be")
    return spool_dir.unlink


def _block_with_permissions(spool_dir: Path) -> Callable[[], None]:
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions")
    spool_dir.mkdir(parents=True)
    spool_dir.chmod(0o500)
    return lambda: spool_dir.chmod(0o700)


@needs_orthanc_python
@pytest.mark.parametrize(
    "block",
    [
        pytest.param(_block_with_a_file, id="spool-path-is-a-file"),
        pytest.param(_block_with_permissions, id="read-only-dir"),
    ],
)
def test_unusable_spool_is_logged_refuses_cstore_and_orthanc_keeps_running(
    tmp_path: Path, block: Callable[[Path], Callable[[], None]]
) -> None:
    spool_dir = tmp_path / "spool"
    unblock = block(spool_dir)
    refused, retried = write_files(ct_series(StudySpec(), slices=2, size=32), tmp_path / "ct")

    try:
        with orthanc_with_plugin(spool_dir) as orthanc:
            sent = storescu(orthanc, [refused])
            assert sent.returncode != 0
            assert "Refused: OutOfResources" in sent.stdout + sent.stderr
            assert orthanc.instance_count() == 0  # not acknowledged, so not kept either

            upload = httpx.post(f"{orthanc.base_url}/instances", content=_instances(1)[0])
            assert upload.status_code == 200  # an upload cannot be refused after the fact
            rest_id = upload.json()["ID"]
            log = orthanc.log_path.read_text(errors="replace")

            assert httpx.get(f"{orthanc.base_url}/system").status_code == 200
            unblock()
            again = storescu(orthanc, [retried])
            assert again.returncode == 0, again.stdout + again.stderr + orthanc.log_tail()
            assert orthanc.instance_count() == 2
    finally:
        with suppress(OSError):
            unblock()  # already done unless an assertion failed first; tmp_path must be removable

    assert f"imaging-cloud gateway plugin: cannot open the spool {spool_dir}" in log
    assert "C-STORE refused with 0xA700 (Out of Resources)" in log
    assert f"instance {rest_id} is stored in Orthanc but NOT in the spool" in log
    [entry] = Spool(spool_dir).entries()
    assert entry.sop_instance_uid == retried.stem and entry.state == "queued"


def test_without_a_cstore_filter_every_origin_goes_through_on_stored(tmp_path: Path) -> None:
    class OldOrthanc(FakeOrthanc):
        def RegisterIncomingCStoreInstanceFilter(self, callback: Callable[[Any], int]) -> None:
            raise RuntimeError("The version of your Orthanc SDK doesn't provide it")

    api = OldOrthanc({"ImagingCloudGateway": {"SpoolDir": str(tmp_path / "spool")}})
    forwarder = install(api, plugin_file=PLUGIN_SCRIPT, path=list(sys.path), route_logging=False)
    assert forwarder is not None and api.on_stored and not forwarder.cstore_filter_registered
    data = _instances(1)[0]

    api.on_stored(FakeInstance(data), "cstore-id")

    [entry] = Spool(tmp_path / "spool").entries()
    assert entry.origin == f"orthanc:{MODALITY_AE}/cstore-id"
    warnings = [message for level, message in api.log if level == "W"]
    assert any("spooled after Orthanc stored and acknowledged it" in m for m in warnings)
