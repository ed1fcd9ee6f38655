"""The regional dictionaries: device types and body parts, with the spellings each accepts.

Hospitals send "胸部", "THORAX", "Chest" or "LUNG" for one body part; `Dictionaries.normalise`
turns any accepted spelling into the entry's code (a DICOM defined term such as ``CHEST``), so
studies and orders compare by code. Entries are seeded from ``config/dictionaries.toml``
(`cloud.code_tables`) and edited by administrators; retiring an entry keeps its row, so the
seed file cannot bring it back.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cloud.code_tables import (
    DICTIONARY_CODE,
    DICTIONARY_NAMES,
    MAX_SYNONYMS,
    CodeConflictError,
    CodeNotFoundError,
    TableSeed,
    check_text,
    fold,
)
from cloud.errors import InvalidQueryError
from cloud.models import DictionaryEntry

# Edits made by another API process reach this one's spelling index after at most this long.
REFRESH_SECONDS = 30.0


@dataclass(frozen=True)
class EntryView:
    dictionary: str
    code: str
    name: str
    synonyms: tuple[str, ...]
    active: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "dictionary": self.dictionary,
            "code": self.code,
            "name": self.name,
            "synonyms": list(self.synonyms),
            "active": self.active,
        }


def _view(row: DictionaryEntry) -> EntryView:
    try:
        synonyms = tuple(str(s) for s in json.loads(row.synonyms or "[]"))
    except ValueError:
        synonyms = ()
    return EntryView(row.dictionary, row.code, row.name, synonyms, row.active)


def check_dictionary(name: str) -> str:
    if name not in DICTIONARY_NAMES:
        raise CodeNotFoundError(
            f"there is no dictionary {name!r}; dictionaries: {', '.join(DICTIONARY_NAMES)}"
        )
    return name


class Dictionaries:
    """Read, edit and apply the dictionaries; safe to share between threads."""

    def __init__(self, sessions: sessionmaker[Session], seed: TableSeed) -> None:
        self._sessions = sessions
        self._seed = seed
        self._lock = threading.Lock()
        self._index: dict[str, dict[str, str]] = {}  # dictionary -> folded spelling -> code
        self._loaded_at = 0.0

    # --- reading ---------------------------------------------------------------------------

    def entries(self, dictionary: str, *, include_inactive: bool = False) -> list[EntryView]:
        check_dictionary(dictionary)
        self._seed.ensure()
        query = select(DictionaryEntry).where(DictionaryEntry.dictionary == dictionary)
        if not include_inactive:
            query = query.where(DictionaryEntry.active)
        with self._sessions() as session:
            return [_view(row) for row in session.scalars(query.order_by(DictionaryEntry.code))]

    def entry(self, dictionary: str, code: str) -> EntryView:
        check_dictionary(dictionary)
        self._seed.ensure()
        with self._sessions() as session:
            row = self._row(session, dictionary, code)
            if row is None:
                raise CodeNotFoundError(f"{dictionary} has no entry {code!r}")
            return _view(row)

    def counts(self) -> dict[str, int]:
        """Active entries per dictionary."""
        return {name: len(self.entries(name)) for name in DICTIONARY_NAMES}

    def normalise(self, dictionary: str, text: str) -> str:
        """The code of the active entry that accepts ``text`` (its code, name or a synonym),
        or "" when none does."""
        folded = fold(text)
        if not folded:
            return ""
        return self._spellings(check_dictionary(dictionary)).get(folded, "")

    def normalise_body_part(self, text: str) -> str:
        return self.normalise("body_part", text)

    def normalise_device_type(self, text: str) -> str:
        return self.normalise("device_type", text)

    def is_active(self, dictionary: str, code: str) -> bool:
        return code in self._spellings(dictionary).values()

    # --- editing ---------------------------------------------------------------------------

    def put(
        self,
        dictionary: str,
        code: str,
        name: str,
        synonyms: list[str],
        *,
        active: bool = True,
    ) -> tuple[EntryView, bool]:
        """Create or replace an entry; (the entry, whether it is new). A spelling another
        active entry of the dictionary already accepts is a conflict (409)."""
        check_dictionary(dictionary)
        if not DICTIONARY_CODE.match(code):
            raise InvalidQueryError(
                f"code {code!r}: 1-64 upper-case letters, digits or '_' (a DICOM code string)"
            )
        name = check_text(name, "name", 128)
        if len(synonyms) > MAX_SYNONYMS:
            raise InvalidQueryError(f"at most {MAX_SYNONYMS} synonyms")
        cleaned = list(dict.fromkeys(check_text(s, "synonym", 64) for s in synonyms))
        self._seed.ensure()
        with self._sessions() as session:
            if active:
                self._check_unclaimed(session, dictionary, code, [code, name, *cleaned])
            row = self._row(session, dictionary, code)
            created = row is None
            if row is None:
                row = DictionaryEntry(dictionary=dictionary, code=code)
                session.add(row)
            row.name = name
            row.synonyms = json.dumps(cleaned, ensure_ascii=False)
            row.active = active
            session.commit()
            view = _view(row)
        self._forget()
        return view, created

    def retire(self, dictionary: str, code: str) -> EntryView:
        """Stop accepting the entry (kept as a row, so the seed file does not restore it)."""
        check_dictionary(dictionary)
        self._seed.ensure()
        with self._sessions() as session:
            row = self._row(session, dictionary, code)
            if row is None:
                raise CodeNotFoundError(f"{dictionary} has no entry {code!r}")
            row.active = False
            session.commit()
            view = _view(row)
        self._forget()
        return view

    # --- internals -------------------------------------------------------------------------

    @staticmethod
    def _row(session: Session, dictionary: str, code: str) -> DictionaryEntry | None:
        return session.scalar(
            select(DictionaryEntry).where(
                DictionaryEntry.dictionary == dictionary, DictionaryEntry.code == code
            )
        )

    def _check_unclaimed(
        self, session: Session, dictionary: str, code: str, spellings: list[str]
    ) -> None:
        others = session.scalars(
            select(DictionaryEntry).where(
                DictionaryEntry.dictionary == dictionary,
                DictionaryEntry.active,
                DictionaryEntry.code != code,
            )
        )
        claimed = {fold(s): view.code for view in map(_view, others) for s in _spellings(view)}
        for spelling in spellings:
            owner = claimed.get(fold(spelling))
            if owner is not None:
                raise CodeConflictError(f"{spelling!r} already means {owner} in {dictionary}")

    def _spellings(self, dictionary: str) -> dict[str, str]:
        with self._lock:
            fresh = time.monotonic() - self._loaded_at < REFRESH_SECONDS
            if fresh and self._index:
                return self._index.get(dictionary, {})
        self._seed.ensure()
        index: dict[str, dict[str, str]] = {name: {} for name in DICTIONARY_NAMES}
        with self._sessions() as session:
            for row in session.scalars(select(DictionaryEntry).where(DictionaryEntry.active)):
                view = _view(row)
                for spelling in _spellings(view):
                    index.setdefault(view.dictionary, {}).setdefault(fold(spelling), view.code)
        with self._lock:
            self._index, self._loaded_at = index, time.monotonic()
        return index.get(dictionary, {})

    def _forget(self) -> None:
        with self._lock:
            self._index, self._loaded_at = {}, 0.0


def _spellings(view: EntryView) -> tuple[str, ...]:
    # The code comes first so it wins over a name that happens to fold to another code.
    return (view.code, *view.synonyms, *view.name.split(" / "))
