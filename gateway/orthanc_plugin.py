"""Orthanc Python plugin: every instance the hospital's Orthanc receives goes into the spool.

For hospitals that already run Orthanc. Debian's ``orthanc-python`` (4.0) loads this file into
Orthanc's embedded CPython (``/usr/bin/python3.11``'s ``libpython3.11``, *not* the project venv);
the running ``imaging-cloud gateway serve --spool-dir S`` process forwards what appears in ``S``.

Orthanc configuration::

    {
      "Plugins": ["/usr/share/orthanc/plugins/libOrthancPython.so"],
      "PythonScript": "/opt/imaging-cloud/gateway/orthanc_plugin.py",
      "ImagingCloudGateway": {
        "SpoolDir": "/var/spool/imaging-cloud",
        "RepoDir": "/opt/imaging-cloud",
        "SitePackages": "/opt/imaging-cloud/.venv/lib/python3.11/site-packages",
        "RefuseWhenSpoolFails": true
      }
    }

Every key also has an environment fallback (``IMAGING_CLOUD_SPOOL_DIR``,
``IMAGING_CLOUD_REPO_DIR``, ``IMAGING_CLOUD_SITE_PACKAGES``,
``IMAGING_CLOUD_REFUSE_WHEN_SPOOL_FAILS``); the JSON section wins. ``RepoDir`` defaults to the
directory above this file, ``SitePackages`` to ``RepoDir/.venv/lib/python3.X/site-packages``
when that exists. Both go on ``sys.path`` after the standard library and before the system's
``dist-packages``, so ``gateway.spool`` and the venv's pydicom are what gets imported. The venv
must be CPython 3.11 like Orthanc's interpreter (pydicom is pure Python, but numpy, which pydicom
imports, is a compiled extension).

When the acknowledgement waits for the spool:

* C-STORE (``InstanceOrigin.DICOM_PROTOCOL``, also C-MOVE answers Orthanc receives): an incoming
  C-STORE filter (``orthanc.RegisterIncomingCStoreInstanceFilter``, Orthanc >= 1.10, plugin >= 4.0)
  spools the exact bytes Orthanc is about to store, *before* Orthanc stores or acknowledges them.
  If the spool cannot take them, the filter answers ``0xA700`` (Out of Resources): Orthanc does
  not store the instance and the modality keeps it and retries, so nothing is acknowledged that
  is not durable in the spool. ``"RefuseWhenSpoolFails": false`` lets Orthanc store it anyway
  (the failure is only logged and the instance never reaches the cloud unless re-sent).
* REST ``POST /instances``, STOW-RS, Lua, other plugins, WebDAV: spooled by the on-stored
  callback (``orthanc.RegisterOnStoredInstanceCallback``). It runs synchronously before Orthanc
  answers the upload, but *after* Orthanc stored the instance, and it cannot fail the upload:
  a spool failure is logged with ``LogError`` only. (``RegisterReceivedInstanceCallback`` cannot
  fail an upload either: its ``DISCARD`` still answers HTTP 200 with ``"Status": "FilteredOut"``,
  and an exception in it means "keep as is".)
* Without the C-STORE filter (older Orthanc or plugin) everything goes through the on-stored
  callback and a warning says so at startup.

Objects the spool quarantines (e.g. an invalid UID) are still stored by Orthanc; the spool keeps a
copy with the reason (``imaging-cloud gateway quarantine``). Nothing here ever raises into Orthanc.
The spool-writing logic is :func:`forward_instance`, testable without Orthanc.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collectors.intake import SinkResult
    from gateway.spool import Spool

CONFIG_SECTION = "ImagingCloudGateway"
ENVIRONMENT = {
    "SpoolDir": "IMAGING_CLOUD_SPOOL_DIR",
    "RepoDir": "IMAGING_CLOUD_REPO_DIR",
    "SitePackages": "IMAGING_CLOUD_SITE_PACKAGES",
    "RefuseWhenSpoolFails": "IMAGING_CLOUD_REFUSE_WHEN_SPOOL_FAILS",
}
LOG_PREFIX = "imaging-cloud gateway plugin: "

# DIMSE statuses, as in collectors.intake; repeated here because they must be answerable even
# when the project itself cannot be imported (wrong RepoDir or SitePackages).
_SUCCESS = 0x0000
_OUT_OF_RESOURCES = 0xA700

# orthanc.InstanceOrigin values -> the origin label written to the spool journal.
_ORIGIN_LABELS = {
    "DICOM_PROTOCOL": "dicom",
    "REST_API": "rest",
    "PLUGIN": "plugin",
    "LUA": "lua",
    "WEB_DAV": "webdav",
    "UNKNOWN": "unknown",
}


# -- the part that needs no Orthanc ---------------------------------------------------------------


def forward_instance(spool: Spool, data: bytes, origin: str) -> SinkResult:
    """Spool ``data`` (the exact Part-10 bytes) and say what became of it; never raises.

    ``SinkResult.status`` 0 means fsync'd and journaled; ``quarantined`` means set aside with a
    reason; any other failure (disk full, read-only directory, locked or corrupt journal) comes
    back as ``0xA700`` with the reason in ``error_comment``.
    """
    from collectors.intake import OUT_OF_RESOURCES, SinkResult

    try:
        return spool.accept(data, origin)
    except Exception as exc:  # sqlite3.Error and anything else: Orthanc must never see it
        return SinkResult(OUT_OF_RESOURCES, f"spool write failed: {type(exc).__name__}: {exc}")


def orthanc_instance_id(patient_id: str, study_uid: str, series_uid: str, sop_uid: str) -> str:
    """Orthanc's public identifier of an instance (what ``/instances/{id}`` uses).

    Orthanc hashes ``PatientID|StudyInstanceUID|SeriesInstanceUID|SOPInstanceUID`` with SHA-1 and
    writes the 40 hex digits as five dash-separated groups of eight.
    """
    digest = hashlib.sha1(
        f"{patient_id}|{study_uid}|{series_uid}|{sop_uid}".encode(), usedforsecurity=False
    ).hexdigest()
    return "-".join(digest[i : i + 8] for i in range(0, 40, 8))


@dataclass(frozen=True)
class PluginSettings:
    spool_dir: Path | None
    repo_dir: Path
    site_packages: Path | None
    refuse_when_spool_fails: bool = True


def _as_bool(value: object) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() not in {"0", "false", "no", "off", ""}


def read_settings(
    configuration_json: str, environ: Mapping[str, str], plugin_file: Path
) -> PluginSettings:
    """The plugin's settings: the Orthanc JSON section first, then the environment."""
    try:
        configuration = json.loads(configuration_json) if configuration_json.strip() else {}
    except ValueError:
        configuration = {}
    section = configuration.get(CONFIG_SECTION) if isinstance(configuration, dict) else None
    section = section if isinstance(section, dict) else {}

    def value(key: str) -> object:
        found = section.get(key)
        if found is None or found == "":
            found = environ.get(ENVIRONMENT[key]) or None
        return found

    spool_dir = value("SpoolDir")
    repo_dir = value("RepoDir")
    site_packages = value("SitePackages")
    refuse = value("RefuseWhenSpoolFails")
    repo = Path(str(repo_dir)) if repo_dir else plugin_file.resolve().parent.parent
    if site_packages:
        packages: Path | None = Path(str(site_packages))
    else:
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        default = repo / ".venv" / "lib" / version / "site-packages"
        packages = default if default.is_dir() else None
    return PluginSettings(
        spool_dir=Path(str(spool_dir)) if spool_dir else None,
        repo_dir=repo,
        site_packages=packages,
        refuse_when_spool_fails=True if refuse is None else _as_bool(refuse),
    )


def prepare_sys_path(settings: PluginSettings, path: list[str], plugin_dir: Path) -> list[str]:
    """Make ``gateway``/``collectors`` and the venv's packages importable; return what was added.

    They go after the standard library and before the first ``site-``/``dist-packages`` entry,
    so the venv's pydicom wins over a system one without shadowing the standard library.
    Orthanc puts the script's own directory (``gateway/``) first on ``sys.path``; that would make
    ``gateway/config.py`` importable as a top-level ``config``, so it is taken out again.
    """
    own = str(plugin_dir)
    if plugin_dir.name == "gateway" and (plugin_dir / "__init__.py").is_file():
        path[:] = [entry for entry in path if entry != own]
    wanted = [str(p) for p in (settings.repo_dir, settings.site_packages) if p is not None]
    added = [entry for entry in wanted if entry not in path]
    position = next(
        (i for i, entry in enumerate(path) if entry.endswith(("site-packages", "dist-packages"))),
        len(path),
    )
    path[position:position] = added
    return added


# -- the glue to Orthanc --------------------------------------------------------------------------


class _OrthancLogHandler(logging.Handler):
    """Route the project's ``logging`` (e.g. the spool's own messages) into Orthanc's log."""

    def __init__(self, api: Any) -> None:
        super().__init__(logging.INFO)
        self._api = api

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = f"{record.name}: {self.format(record)}"
            if record.levelno >= logging.ERROR:
                self._api.LogError(message)
            elif record.levelno >= logging.WARNING:
                self._api.LogWarning(message)
            else:
                self._api.LogInfo(message)
        except Exception:
            self.handleError(record)


class OrthancForwarder:
    """The callbacks registered with Orthanc, around one lazily opened :class:`Spool`.

    The spool is opened at startup and, if that fails (directory missing or not writable,
    project not importable), again on every instance until it works, so fixing the directory
    needs no Orthanc restart.
    """

    def __init__(self, api: Any, settings: PluginSettings) -> None:
        self.api = api
        self.settings = settings
        self.cstore_filter_registered = False
        self._spool: Spool | None = None
        self._lock = threading.Lock()
        self._dicom_origin = getattr(getattr(api, "InstanceOrigin", None), "DICOM_PROTOCOL", 2)
        self._origin_labels: dict[int, str] = {}
        origins = getattr(api, "InstanceOrigin", None)
        for name, label in _ORIGIN_LABELS.items():
            code = getattr(origins, name, None)
            if isinstance(code, int):
                self._origin_labels[code] = label

    # -- spool ---------------------------------------------------------------------------------

    def open_spool(self) -> Spool:
        with self._lock:
            if self._spool is None:
                if self.settings.spool_dir is None:
                    raise RuntimeError(f"no {CONFIG_SECTION}.SpoolDir configured")
                from gateway.spool import Spool

                self._spool = Spool(self.settings.spool_dir)
            return self._spool

    def _spool_or_reason(self) -> tuple[Spool | None, str]:
        try:
            return self.open_spool(), ""
        except Exception as exc:
            return None, (
                f"cannot open the spool {self.settings.spool_dir}: {type(exc).__name__}: {exc}"
            )

    def spool(self, data: bytes, origin: str) -> tuple[bool, str]:
        """Spool one instance; (taken, reason). Logs what happened."""
        spool, reason = self._spool_or_reason()
        if spool is None:
            self.api.LogError(f"{LOG_PREFIX}NOT spooled {origin}: {reason}")
            return False, reason
        result = forward_instance(spool, data, origin)
        if result.status == _SUCCESS:
            self.api.LogInfo(f"{LOG_PREFIX}spooled {origin} ({len(data)} bytes)")
            return True, ""
        if result.quarantined:
            self.api.LogWarning(
                f"{LOG_PREFIX}quarantined {origin} in {spool.root}: {result.error_comment}"
            )
            return True, result.error_comment
        self.api.LogError(
            f"{LOG_PREFIX}NOT spooled {origin} into {spool.root}: {result.error_comment}"
        )
        return False, result.error_comment

    # -- callbacks -----------------------------------------------------------------------------

    def on_incoming_cstore(self, dicom: Any) -> int:
        """Incoming C-STORE filter: 0 lets Orthanc store and acknowledge; else the DIMSE status."""
        try:
            origin = f"orthanc:{self._remote_aet(dicom) or 'dicom'}/{self._instance_id(dicom)}"
            taken, _ = self.spool(bytes(dicom.GetInstanceData()), origin)
        except Exception as exc:
            self.api.LogError(f"{LOG_PREFIX}C-STORE filter failed: {type(exc).__name__}: {exc}")
            taken = False
        if taken or not self.settings.refuse_when_spool_fails:
            return _SUCCESS
        self.api.LogError(
            f"{LOG_PREFIX}C-STORE refused with 0xA700 (Out of Resources): not durable in the "
            "spool, the sender keeps the instance and should retry"
        )
        return _OUT_OF_RESOURCES

    def on_stored_instance(self, dicom: Any, instance_id: str) -> None:
        """On-stored callback: spools what the C-STORE filter did not see (REST, STOW, ...)."""
        try:
            origin_code = dicom.GetInstanceOrigin()
            if self.cstore_filter_registered and origin_code == self._dicom_origin:
                return  # already spooled by the C-STORE filter, before Orthanc stored it
            label = self._remote_aet(dicom) or self._origin_labels.get(origin_code, "rest")
            taken, _ = self.spool(bytes(dicom.GetInstanceData()), f"orthanc:{label}/{instance_id}")
            if not taken:
                self.api.LogError(
                    f"{LOG_PREFIX}instance {instance_id} is stored in Orthanc but NOT in the "
                    "spool (an upload cannot be refused after the fact): send it again once "
                    "the spool works"
                )
        except Exception as exc:
            self.api.LogError(
                f"{LOG_PREFIX}on-stored callback failed for {instance_id}: "
                f"{type(exc).__name__}: {exc}"
            )

    @staticmethod
    def _remote_aet(dicom: Any) -> str:
        try:
            return str(dicom.GetInstanceRemoteAet() or "").strip()
        except Exception:
            return ""

    @staticmethod
    def _instance_id(dicom: Any) -> str:
        """Orthanc's future ``/instances/{id}`` (the filter runs before Orthanc assigns it)."""
        try:
            tags = json.loads(dicom.GetInstanceSimplifiedJson())
            return orthanc_instance_id(
                str(tags.get("PatientID", "")),
                str(tags.get("StudyInstanceUID", "")),
                str(tags.get("SeriesInstanceUID", "")),
                str(tags.get("SOPInstanceUID", "")),
            )
        except Exception:
            return "unknown-instance"


def install(
    api: Any,
    *,
    environ: Mapping[str, str] | None = None,
    plugin_file: Path | None = None,
    path: list[str] | None = None,
    route_logging: bool = True,
) -> OrthancForwarder | None:
    """Read the settings, fix ``sys.path``, register the callbacks; log, never raise.

    ``api`` is the ``orthanc`` module (or a stand-in); ``path`` defaults to ``sys.path`` and
    ``route_logging`` sends the project's ``logging`` records to Orthanc's log.
    """
    try:
        plugin_file = plugin_file or Path(__file__)
        settings = read_settings(
            str(api.GetConfiguration()), os.environ if environ is None else environ, plugin_file
        )
        added = prepare_sys_path(
            settings, sys.path if path is None else path, plugin_file.resolve().parent
        )
        api.LogInfo(
            f"{LOG_PREFIX}Python {sys.version.split()[0]}; added to sys.path: {added}; "
            f"orthanc API: {sorted(n for n in dir(api) if n.startswith('Register'))}"
        )
        if settings.spool_dir is None:
            api.LogError(
                f"{LOG_PREFIX}disabled: set {CONFIG_SECTION}.SpoolDir in the Orthanc "
                f"configuration (or {ENVIRONMENT['SpoolDir']})"
            )
            return None
        running = f"python{sys.version_info.major}.{sys.version_info.minor}"
        packages = str(settings.site_packages or "")
        if "/python3." in packages and f"/{running}/" not in f"{packages}/":
            api.LogWarning(
                f"{LOG_PREFIX}SitePackages {packages} is not for {running} (Orthanc's "
                "interpreter): compiled packages there (numpy) will not import"
            )
        if route_logging:
            _route_logging(api)
        forwarder = OrthancForwarder(api, settings)
        try:
            # Exists from plugin 4.0 but raises RuntimeError when built for an SDK < 1.10.
            api.RegisterIncomingCStoreInstanceFilter(forwarder.on_incoming_cstore)
            forwarder.cstore_filter_registered = True
        except Exception as exc:
            api.LogWarning(f"{LOG_PREFIX}no incoming C-STORE filter: {type(exc).__name__}: {exc}")
        api.RegisterOnStoredInstanceCallback(forwarder.on_stored_instance)
        _, reason = forwarder._spool_or_reason()
        if reason:
            api.LogError(f"{LOG_PREFIX}{reason} (will retry on every instance)")
        if forwarder.cstore_filter_registered:
            mode = (
                "C-STORE acknowledged only once durable in the spool"
                if settings.refuse_when_spool_fails
                else "C-STORE spooled before storage, but acknowledged even if the spool fails"
            )
        else:
            mode = (
                "no C-STORE filter in this Orthanc/plugin: every instance is spooled after "
                "Orthanc stored and acknowledged it"
            )
            api.LogWarning(f"{LOG_PREFIX}{mode}")
        api.LogWarning(
            f"{LOG_PREFIX}spooling into {settings.spool_dir} ({mode}; REST/STOW/other "
            "uploads spooled after Orthanc stored them)"
        )
        return forwarder
    except Exception as exc:
        api.LogError(
            f"{LOG_PREFIX}failed to start, nothing is spooled: {type(exc).__name__}: {exc}"
        )
        return None


def _route_logging(api: Any) -> None:
    for name in ("gateway", "collectors"):
        logger = logging.getLogger(name)
        if not any(isinstance(h, _OrthancLogHandler) for h in logger.handlers):
            logger.addHandler(_OrthancLogHandler(api))
            logger.setLevel(logging.INFO)
            logger.propagate = False


def _embedded_orthanc() -> Any:
    """Orthanc's ``orthanc`` module when running inside Orthanc, else None (tests, tools)."""
    try:
        module = importlib.import_module("orthanc")
    except ImportError:
        return None
    return module if hasattr(module, "RegisterOnStoredInstanceCallback") else None


_ORTHANC = _embedded_orthanc()
FORWARDER = install(_ORTHANC) if _ORTHANC is not None else None
