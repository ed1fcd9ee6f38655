"""Audit entries as text for other systems: JSON lines, or RFC 5424 syslog lines.

A syslog line carries the whole entry as structured data (SD-ID ``audit@32473``), so a SIEM
can index it without parsing the message, and the hashes let the chain be re-checked there.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Iterator
from typing import Any

FORMATS = ("jsonl", "syslog")
SD_ID = "audit@32473"  # 32473: the enterprise number RFC 5612 reserves for documentation
APP_NAME = "imaging-cloud"
FACILITY_LOG_AUDIT = 13  # RFC 5424 facility "log audit"
SEVERITY_NOTICE, SEVERITY_WARNING = 5, 4

# SD-PARAM names in line order; "at" is the header's TIMESTAMP.
_PARAMS = (
    "seq",
    "actor_kind",
    "actor",
    "role",
    "hospital_id",
    "action",
    "outcome",
    "study_instance_uid",
    "patient_id",
    "client_address",
    "view_started_at",
    "view_ended_at",
    "duration_seconds",
    "detail",
    "prev_hash",
    "entry_hash",
)


def jsonl_line(event: dict[str, Any]) -> str:
    """One entry as one line of JSON (with seq, prev_hash and entry_hash), newline included."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")) + "\n"


def sd_escape(value: str) -> str:
    """PARAM-VALUE escaping of RFC 5424 section 6.3.3: ``"``, ``\\`` and ``]``."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")
    # Not an RFC rule: a line break would split the record in a line-oriented file.
    return escaped.replace("\r", " ").replace("\n", " ")


def _text(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return str(value)


def _header_field(value: str) -> str:
    # HOSTNAME and friends are PRINTUSASCII without spaces; "-" when there is nothing.
    cleaned = "".join(ch for ch in value if "!" <= ch <= "~")
    return cleaned[:255] or "-"


def syslog_line(event: dict[str, Any], hostname: str | None = None) -> str:
    """One entry as an RFC 5424 line, newline included:
    ``<PRI>1 TIMESTAMP HOST imaging-cloud - AUDIT [audit@32473 seq="..." ...] message``."""
    severity = SEVERITY_WARNING if event.get("outcome") == "denied" else SEVERITY_NOTICE
    pri = FACILITY_LOG_AUDIT * 8 + severity
    timestamp = str(event.get("at") or "-").replace("+00:00", "Z")
    host = _header_field(hostname if hostname is not None else socket.gethostname())
    params = " ".join(
        f'{name}="{sd_escape(_text(event[name]))}"'
        for name in _PARAMS
        if event.get(name) not in (None, "", {})
    )
    return f"<{pri}>1 {timestamp} {host} {APP_NAME} - AUDIT [{SD_ID} {params}] {_message(event)}\n"


def _message(event: dict[str, Any]) -> str:
    who = f"{event.get('actor_kind', '')} {event.get('actor', '')}"
    if event.get("role"):
        where = f"@{event['hospital_id']}" if event.get("hospital_id") else ""
        who += f" ({event['role']}{where})"
    what = str(event.get("action", ""))
    if event.get("study_instance_uid"):
        what += f" study {event['study_instance_uid']}"
    if event.get("duration_seconds") is not None:
        what += f" for {event['duration_seconds']} s"
    origin = f" from {event['client_address']}" if event.get("client_address") else ""
    text = f"{who}: {what}{origin}: {event.get('outcome', '')}"
    return text.replace("\r", " ").replace("\n", " ")


def export_lines(
    events: Iterable[dict[str, Any]], fmt: str, hostname: str | None = None
) -> Iterator[str]:
    """The entries in format ``fmt`` (``jsonl`` or ``syslog``), one line each."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if fmt == "jsonl":
        for event in events:
            yield jsonl_line(event)
        return
    host = hostname if hostname is not None else socket.gethostname()
    for event in events:
        yield syslog_line(event, host)
