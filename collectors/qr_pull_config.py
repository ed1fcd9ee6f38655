"""Settings of the Query/Retrieve pull: PACS address, AE titles, date window, modalities.

Kept apart from the puller so the gateway's sources file is checked the same way whether or
not a PACS is reachable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Literal

Method = Literal["get", "move"]

_CONFIG_KEYS = {
    "kind",
    "host",
    "port",
    "ae_title",
    "method",
    "move_destination",
    "days",
    "date_from",
    "date_to",
    "modalities",
    "interval_seconds",
}


# -- configuration ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DateWindow:
    """Which study dates to ask for: the last ``days`` days (today included) or start..end.

    An explicit window may be open on one side (``start`` only: everything since then).
    """

    days: int | None = None
    start: date | None = None
    end: date | None = None

    def __post_init__(self) -> None:
        if self.days is not None:
            if self.start is not None or self.end is not None:
                raise ValueError("a date window is either the last N days or from/to, not both")
            if isinstance(self.days, bool) or not isinstance(self.days, int) or self.days < 1:
                raise ValueError(f"days must be a whole number of at least 1, not {self.days!r}")
        elif self.start is None and self.end is None:
            raise ValueError("a date window needs days, or a start and/or end date")
        if self.start is not None and self.end is not None and self.start > self.end:
            raise ValueError(f"date window starts ({self.start}) after it ends ({self.end})")

    def bounds(self, today: date) -> tuple[date | None, date | None]:
        """First and last date included (None: open on that side)."""
        if self.days is not None:
            return today - timedelta(days=self.days - 1), today
        return self.start, self.end

    def dicom_range(self, today: date) -> str:
        """The StudyDate range matching value, e.g. ``20240101-20240102``."""
        first, last = self.bounds(today)
        return f"{_dicom_date(first)}-{_dicom_date(last)}"

    def contains(self, day: date, today: date) -> bool:
        first, last = self.bounds(today)
        return (first is None or first <= day) and (last is None or day <= last)


@dataclass(frozen=True)
class QueryRetrieveConfig:
    """Where the PACS is and what to pull from it."""

    host: str
    port: int
    called_ae: str
    calling_ae: str
    window: DateWindow
    method: Method = "get"
    move_destination: str | None = None
    modalities: tuple[str, ...] = ()
    interval_seconds: float = 600.0
    network_timeout: float = 30.0
    # Longest wait for one DIMSE message: a PACS sends a pending C-GET/C-MOVE response per
    # sub-operation, so this bounds one instance, not a whole study.
    dimse_timeout: float = 120.0

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("host must not be empty")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ValueError(f"port must be an integer, not {self.port!r}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be between 1 and 65535, not {self.port}")
        _check_ae_title("ae_title", self.called_ae)
        _check_ae_title("calling AE title", self.calling_ae)
        if self.method not in ("get", "move"):
            raise ValueError(f'method must be "get" or "move", not {self.method!r}')
        if self.method == "move":
            if not self.move_destination:
                raise ValueError('method "move" needs a move destination AE title')
            _check_ae_title("move destination", self.move_destination)
        for modality in self.modalities:
            if not modality or len(modality) > 16 or not modality.isascii() or "\\" in modality:
                raise ValueError(f"not a modality code: {modality!r}")
        if self.interval_seconds <= 0:
            raise ValueError(f"interval_seconds must be positive, not {self.interval_seconds}")

    @property
    def peer(self) -> str:
        return f"{self.called_ae}@{self.host}:{self.port}"


def config_from_entry(
    entry: Mapping[str, Any], *, calling_ae: str, move_destination: str | None
) -> QueryRetrieveConfig:
    """The puller's settings from one ``kind = "qr"`` entry; ValueError names the bad key."""
    unknown = sorted(set(entry) - _CONFIG_KEYS)
    if unknown:
        raise ValueError(f"qr collector: unknown keys {unknown}; allowed: {sorted(_CONFIG_KEYS)}")
    if entry.get("kind", "qr") != "qr":
        raise ValueError(f'qr collector: kind must be "qr", not {entry.get("kind")!r}')
    try:
        return QueryRetrieveConfig(
            host=_required_str(entry, "host"),
            port=_required(entry, "port"),
            called_ae=_required_str(entry, "ae_title").strip(),
            calling_ae=calling_ae.strip(),
            method=entry.get("method", "get"),
            move_destination=entry.get("move_destination", move_destination),
            window=_window_from_entry(entry),
            modalities=_modalities_from_entry(entry),
            interval_seconds=_interval_from_entry(entry),
        )
    except ValueError as exc:
        raise ValueError(f"qr collector {entry.get('host')}:{entry.get('port')}: {exc}") from exc


def _required(entry: Mapping[str, Any], key: str) -> Any:
    if key not in entry:
        raise ValueError(f"missing {key}")
    return entry[key]


def _required_str(entry: Mapping[str, Any], key: str) -> str:
    value = _required(entry, key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key} must be a non-empty string, not {value!r}")
    return value


def _window_from_entry(entry: Mapping[str, Any]) -> DateWindow:
    if "days" in entry:
        if "date_from" in entry or "date_to" in entry:
            raise ValueError("give either days or date_from/date_to, not both")
        return DateWindow(days=entry["days"])
    start = _parse_date("date_from", entry.get("date_from"))
    end = _parse_date("date_to", entry.get("date_to"))
    if start is None and end is None:
        # Without a window every poll would walk the PACS' whole archive.
        raise ValueError("needs days (e.g. days = 2) or date_from/date_to")
    return DateWindow(start=start, end=end)


def _parse_date(key: str, value: Any) -> date | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        for pattern in ("%Y-%m-%d", "%Y%m%d"):
            try:
                return datetime.strptime(value.strip(), pattern).date()
            except ValueError:
                pass
    raise ValueError(f"{key} must be a date (2024-01-31 or 20240131), not {value!r}")


def _modalities_from_entry(entry: Mapping[str, Any]) -> tuple[str, ...]:
    value = entry.get("modalities", [])
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ValueError(f'modalities must be a list such as ["CT", "MR"], not {value!r}')
    if not all(isinstance(item, str) for item in value):
        raise ValueError(f"modalities must be strings, not {value!r}")
    return tuple(dict.fromkeys(item.strip().upper() for item in value))


def _interval_from_entry(entry: Mapping[str, Any]) -> float:
    value = entry.get("interval_seconds", 600)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"interval_seconds must be a number, not {value!r}")
    return float(value)


def _check_ae_title(what: str, title: str) -> None:
    valid = (
        isinstance(title, str)
        and 0 < len(title.strip()) <= 16
        and title.isascii()
        and title.isprintable()
        and "\\" not in title
    )
    if not valid:
        raise ValueError(f"{what} must be 1 to 16 printable ASCII characters, not {title!r}")


def _dicom_date(day: date | None) -> str:
    return "" if day is None else day.strftime("%Y%m%d")
