"""The seed data of the regional code tables: ``config/exam_codes.toml`` (regional exam codes
and the mutual-recognition settings) and ``config/dictionaries.toml`` (device types, body parts).

Loaded and checked once per process; `TableSeed.ensure` copies into the index whatever the
index does not hold yet, and nothing else: a row already in the index (edited or retired
through the admin API) is never overwritten by the file. Also the values and checks the code
services share (`fold`, the code patterns, the errors).
"""

from __future__ import annotations

import json
import re
import threading
import tomllib
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from cloud.errors import ArchiveError, InvalidQueryError
from cloud.models import DictionaryEntry, RegionalExamCode

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
EXAM_CODES_FILE = CONFIG_DIR / "exam_codes.toml"
DICTIONARIES_FILE = CONFIG_DIR / "dictionaries.toml"
DICTIONARY_NAMES = ("device_type", "body_part")

# Regional codes and exam classes: upper-case letters, digits and . _ - (safe in URLs and logs).
CODE = re.compile(r"^[A-Z0-9][A-Z0-9._-]{0,31}$")
# Dictionary codes are DICOM code strings (CS: upper case, digits, space, underscore).
DICTIONARY_CODE = re.compile(r"^[A-Z0-9][A-Z0-9_]{0,63}$")
MAX_RECOGNITION_DAYS = 3650
MAX_SYNONYMS = 50
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class CodeNotFoundError(ArchiveError):
    """A regional code, mapping, dictionary or entry that does not exist."""

    http_status = 404
    title = "Not found"


class CodeConflictError(ArchiveError):
    """An edit that would make two dictionary entries claim the same spelling."""

    http_status = 409
    title = "Conflicting code table entry"


class CodeTableError(ValueError):
    """A seed file is malformed; the message names the file and the entry."""


def fold(text: str) -> str:
    """The form spellings are compared in: NFKC (full-width letters become ASCII), upper case,
    without spaces, '-' and '_' — so "C-Spine", "c spine" and full-width "CSPINE" are one."""
    folded = unicodedata.normalize("NFKC", text).upper()
    return "".join(ch for ch in folded if not ch.isspace() and ch not in "-_")


def check_text(value: str, what: str, max_length: int, *, required: bool = True) -> str:
    """``value`` stripped, if it is printable text of at most ``max_length`` characters."""
    value = value.strip()
    if required and not value:
        raise InvalidQueryError(f"{what} must not be empty")
    if len(value) > max_length:
        raise InvalidQueryError(f"{what} is longer than {max_length} characters")
    if _CONTROL.search(value):
        raise InvalidQueryError(f"{what} contains control characters")
    return value


def check_code(value: str, what: str = "regional code") -> str:
    if not CODE.match(value):
        raise InvalidQueryError(
            f"{what} {value!r}: 1-32 upper-case letters, digits, '.', '_' or '-'"
        )
    return value


@dataclass(frozen=True)
class ExamCodeSpec:
    """One regional exam code."""

    code: str
    name: str
    modality: str
    body_part: str
    exam_class: str
    recognition_days: int
    active: bool = True


@dataclass(frozen=True)
class EntrySpec:
    """One entry of a dictionary (device type or body part)."""

    dictionary: str
    code: str
    name: str
    synonyms: tuple[str, ...]
    active: bool = True


@dataclass(frozen=True)
class RecognitionSettings:
    """How mutual recognition judges a prior (``[recognition]`` of config/exam_codes.toml)."""

    qc_pass_score: float = 60.0
    qc_required: bool = True
    timezone: str = "Asia/Shanghai"
    max_priors: int = 10


@dataclass(frozen=True)
class SeedData:
    codes: tuple[ExamCodeSpec, ...]
    entries: tuple[EntrySpec, ...]
    recognition: RecognitionSettings


@cache
def load_seed(
    exam_codes_path: Path = EXAM_CODES_FILE, dictionaries_path: Path = DICTIONARIES_FILE
) -> SeedData:
    """Both files, checked: every code's modality and body part is a dictionary entry."""
    entries = _load_dictionaries(dictionaries_path)
    known = {(e.dictionary, e.code) for e in entries}
    document = _read(exam_codes_path)
    codes = []
    for code, raw in (document.get("codes") or {}).items():
        spec = _exam_code(exam_codes_path, code, raw)
        if ("device_type", spec.modality) not in known:
            raise CodeTableError(f"{exam_codes_path.name}: {code}: unknown modality")
        if spec.body_part and ("body_part", spec.body_part) not in known:
            raise CodeTableError(f"{exam_codes_path.name}: {code}: unknown body part")
        codes.append(spec)
    return SeedData(tuple(codes), entries, _recognition(exam_codes_path, document))


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CodeTableError(f"{path}: {exc}") from exc


def _exam_code(path: Path, code: str, raw: Mapping[str, Any]) -> ExamCodeSpec:
    where = f"{path.name}: [codes.{code}]"
    try:
        spec = ExamCodeSpec(
            code=check_code(code),
            name=check_text(str(raw["name"]), "name", 128),
            modality=str(raw["modality"]),
            body_part=str(raw.get("body_part", "")),
            exam_class=check_code(str(raw["exam_class"]), "exam class"),
            recognition_days=int(raw["recognition_days"]),
            active=bool(raw.get("active", True)),
        )
    except (KeyError, TypeError, ValueError, InvalidQueryError) as exc:
        raise CodeTableError(f"{where}: {exc}") from exc
    if not 0 <= spec.recognition_days <= MAX_RECOGNITION_DAYS:
        raise CodeTableError(f"{where}: recognition_days must be 0-{MAX_RECOGNITION_DAYS}")
    return spec


def _load_dictionaries(path: Path) -> tuple[EntrySpec, ...]:
    document = _read(path)
    entries: list[EntrySpec] = []
    for dictionary in DICTIONARY_NAMES:
        claimed: dict[str, str] = {}  # folded spelling -> code
        for code, raw in (document.get(dictionary) or {}).items():
            where = f"{path.name}: [{dictionary}.{code}]"
            if not DICTIONARY_CODE.match(code):
                raise CodeTableError(f"{where}: codes are DICOM code strings (A-Z, 0-9, _)")
            name = str(raw["name"])
            synonyms = tuple(str(s) for s in raw.get("synonyms", []))
            for spelling in (code, *synonyms, *name.split(" / ")):
                owner = claimed.setdefault(fold(spelling), code)
                if owner != code:
                    raise CodeTableError(f"{where}: {spelling!r} already belongs to {owner}")
            entries.append(EntrySpec(dictionary, code, name, synonyms))
    return tuple(entries)


def _recognition(path: Path, document: Mapping[str, Any]) -> RecognitionSettings:
    raw = document.get("recognition") or {}
    try:
        settings = RecognitionSettings(
            qc_pass_score=float(raw.get("qc_pass_score", 60.0)),
            qc_required=bool(raw.get("qc_required", True)),
            timezone=str(raw.get("timezone", "Asia/Shanghai")),
            max_priors=int(raw.get("max_priors", 10)),
        )
    except (TypeError, ValueError) as exc:
        raise CodeTableError(f"{path.name}: [recognition]: {exc}") from exc
    if not 0 <= settings.qc_pass_score <= 100 or not 1 <= settings.max_priors <= 100:
        raise CodeTableError(f"{path.name}: [recognition]: qc_pass_score 0-100, max_priors 1-100")
    return settings


class TableSeed:
    """Copies the seed data into the index once per process: only rows the index lacks."""

    def __init__(self, sessions: sessionmaker[Session], data: SeedData | None = None) -> None:
        self._sessions = sessions
        self.data = data or load_seed()
        self._done = False
        self._lock = threading.Lock()

    def ensure(self) -> None:
        if self._done:
            return
        with self._lock:
            if not self._done:
                self._seed()
                self._done = True

    def _seed(self) -> None:
        with self._sessions() as session:
            have_codes = set(session.scalars(select(RegionalExamCode.code)))
            have_entries = {
                (dictionary, code)
                for dictionary, code in session.execute(
                    select(DictionaryEntry.dictionary, DictionaryEntry.code)
                )
            }
            for entry in self.data.entries:
                if (entry.dictionary, entry.code) not in have_entries:
                    values = _entry_row(entry)
                    insert_ignore(session, DictionaryEntry.__table__, values)
            for spec in self.data.codes:
                if spec.code not in have_codes:
                    insert_ignore(session, RegionalExamCode.__table__, _code_row(spec))
            session.commit()


def _entry_row(entry: EntrySpec) -> dict[str, Any]:
    return {
        "dictionary": entry.dictionary,
        "code": entry.code,
        "name": entry.name,
        "synonyms": json.dumps(list(entry.synonyms), ensure_ascii=False),
        "active": entry.active,
    }


def _code_row(spec: ExamCodeSpec) -> dict[str, Any]:
    return {
        "code": spec.code,
        "name": spec.name,
        "modality": spec.modality,
        "body_part": spec.body_part,
        "exam_class": spec.exam_class,
        "recognition_days": spec.recognition_days,
        "active": spec.active,
    }


def insert_ignore(session: Session, table: Any, values: dict[str, Any]) -> None:
    """INSERT that does nothing when another process inserted the same key first."""
    module: Any = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    session.execute(module.insert(table).values(**values).on_conflict_do_nothing())
