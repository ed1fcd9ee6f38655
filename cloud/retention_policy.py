"""The classification and retention policy (``config/retention.toml``): loaded, checked, applied,
and the values the retention service speaks in (`Lifecycle`, `DueStudy`, `Actor`).

Pure: no database. `Policy.classify` turns what a study holds (per series: modality, SOP
classes, Series Description) into a category, a level and a retention class; `Policy.years`
says how long that class is kept at that level. The loader refuses a policy that names an
unknown category, level or class, or that keeps imaging for less than 15 years.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import cache
from pathlib import Path
from typing import Any

from cloud.audit import AuditEntry
from cloud.audit_query import stamp
from cloud.errors import ArchiveError

POLICY_FILE = Path(__file__).resolve().parents[1] / "config" / "retention.toml"
LEVELS = range(1, 6)
IMAGING = "imaging"
IMAGING_FLOOR_YEARS = 15  # the archive's promise (docs: "keeps it for at least 15 years")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_DATE = re.compile(r"^[0-9]{8}$")


class PolicyError(ValueError):
    """The policy file is malformed; the message names the entry."""


@dataclass(frozen=True)
class Label:
    name: str
    label: str
    description: str = ""


@dataclass(frozen=True)
class RetentionClass:
    name: str
    label: str
    years: int
    minimum_years: int
    years_by_level: Mapping[int, int]
    # Video classes: the HD recording is replaced by a standard-definition copy this many days
    # after the operation (`cloud.video_derivatives`); None = kept as recorded.
    downgrade_to_sd_after_days: int | None = None

    def years_at(self, level: int) -> int:
        return max(self.years, self.years_by_level.get(level, self.years))


@dataclass(frozen=True)
class Rule:
    """A classification: what a matching series (or a whole study) is."""

    category: str
    level: int
    retention_class: str
    name: str = ""


@dataclass(frozen=True)
class DescriptionRule:
    rule: Rule
    contains: tuple[str, ...]  # casefolded
    sop_classes: frozenset[str]

    def matches(self, description: str, sop_classes: Iterable[str]) -> bool:
        text = description.casefold()
        return bool(self.sop_classes & set(sop_classes)) and any(w in text for w in self.contains)


@dataclass(frozen=True)
class SeriesFacts:
    """What the index knows about one series that classification looks at."""

    series_instance_uid: str
    modality: str
    series_description: str
    sop_classes: frozenset[str]


@dataclass(frozen=True)
class Policy:
    categories: Mapping[str, Label]
    levels: Mapping[int, Label]
    classes: Mapping[str, RetentionClass]
    default: Rule
    by_modality: Mapping[str, Rule]
    by_sop_class: Mapping[str, Rule]
    by_series_description: tuple[DescriptionRule, ...]
    extension_max_years: int
    plausible_study_dates_from: str  # YYYYMMDD

    def classify_series(self, series: SeriesFacts) -> Rule:
        """Series Description rules, then SOP class, then modality, then the default."""
        for special in self.by_series_description:
            if special.matches(series.series_description, series.sop_classes):
                return special.rule
        by_class = [
            self.by_sop_class[c] for c in sorted(series.sop_classes) if c in self.by_sop_class
        ]
        if by_class:
            return max(by_class, key=self._weight)
        return self.by_modality.get(series.modality.strip().upper(), self.default)

    def classify(self, series: Iterable[SeriesFacts]) -> Rule:
        """A study is what its longest-kept series is, at the highest level of any series."""
        rules = [self.classify_series(s) for s in series] or [self.default]
        governing = max(rules, key=self._weight)
        level = max(rule.level for rule in rules)
        return Rule(governing.category, level, governing.retention_class, governing.name)

    def _weight(self, rule: Rule) -> tuple[int, int]:
        return self.years(rule.retention_class, rule.level), rule.level

    def years(self, retention_class: str, level: int) -> int:
        return self.retention_class(retention_class).years_at(level)

    def retention_class(self, name: str) -> RetentionClass:
        found = self.classes.get(name)
        if found is None:
            raise PolicyError(f"retention class {name!r} is not in the policy")
        return found

    def check_rule(self, rule: Rule, where: str) -> Rule:
        if rule.category not in self.categories:
            raise PolicyError(f"{where}: unknown category {rule.category!r}")
        if rule.level not in self.levels:
            raise PolicyError(f"{where}: level {rule.level} is not one of 1..5")
        if rule.retention_class not in self.classes:
            raise PolicyError(f"{where}: unknown retention class {rule.retention_class!r}")
        return rule

    def plausible(self, study_date: str) -> date | None:
        """The Study Date as a date, or None if it is missing, malformed or a placeholder."""
        if not _DATE.match(study_date) or study_date < self.plausible_study_dates_from:
            return None
        try:
            return date(int(study_date[:4]), int(study_date[4:6]), int(study_date[6:]))
        except ValueError:
            return None


def add_years(start: date, years: int) -> date:
    """``start`` plus whole years; 29 February lands on 1 March (never earlier)."""
    try:
        return start.replace(year=start.year + years)
    except ValueError:
        return date(start.year + years, 3, 1)


class RetentionRefusedError(ArchiveError):
    """The policy does not allow this (not due, on legal hold, would shorten retention...)."""

    http_status = 409
    title = "Refused by the retention policy"


def utc_today() -> date:
    return datetime.now(UTC).date()


def as_date(yyyymmdd: str) -> date:
    return date(int(yyyymmdd[:4]), int(yyyymmdd[4:6]), int(yyyymmdd[6:8]))


def yyyymmdd(day: date) -> str:
    return day.strftime("%Y%m%d")


@dataclass(frozen=True)
class Actor:
    """Who acts, as the audit log names them (a signed-in user, or the console)."""

    kind: str = "system"
    name: str = "retention"
    role: str = ""
    hospital_id: str = ""
    client_address: str = ""

    def entry(self, action: str, study: str, patient_id: str, detail: dict[str, Any]) -> AuditEntry:
        return AuditEntry(
            actor_kind=self.kind,
            actor=self.name,
            role=self.role,
            hospital_id=self.hospital_id,
            action=action,
            study_instance_uid=study,
            patient_id=patient_id,
            client_address=self.client_address,
            detail=detail,
        )


@dataclass(frozen=True)
class Lifecycle:
    """A study's classification and retention, stored or (``stored`` False) as it would be."""

    study_instance_uid: str
    category: str
    level: int
    retention_class: str
    base_date: date
    retain_until: date
    legal_hold: bool = False
    hold_reason: str = ""
    extended_by: str = ""
    classified_at: datetime | None = None
    classified_by: str = ""
    stored: bool = True
    series: list[dict[str, Any]] = field(default_factory=list)

    def due(self, today: date) -> bool:
        return self.stored and not self.legal_hold and self.retain_until < today

    def as_dict(self, policy: Policy, today: date) -> dict[str, Any]:
        return {
            "study_instance_uid": self.study_instance_uid,
            "category": self.category,
            "category_label": policy.categories[self.category].label
            if self.category in policy.categories
            else "",
            "level": self.level,
            "level_label": policy.levels[self.level].label if self.level in policy.levels else "",
            "retention_class": self.retention_class,
            "retention_years": policy.years(self.retention_class, self.level)
            if self.retention_class in policy.classes
            else None,
            "base_date": self.base_date.isoformat(),
            "retain_until": self.retain_until.isoformat(),
            "legal_hold": self.legal_hold,
            "hold_reason": self.hold_reason,
            "extended_by": self.extended_by,
            "classified_at": stamp(self.classified_at),
            "classified_by": self.classified_by,
            "stored": self.stored,
            "due": self.due(today),
            "series": self.series,
        }


@dataclass(frozen=True)
class DueStudy:
    study_instance_uid: str
    category: str
    level: int
    retention_class: str
    retain_until: date
    instances: int
    size_bytes: int


@cache
def load_policy(path: Path = POLICY_FILE) -> Policy:
    """The policy in ``path`` (read once per path), checked; `PolicyError` names what is wrong."""
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PolicyError(f"{path}: {exc}") from exc
    return parse_policy(document, str(path))


def parse_policy(document: Mapping[str, Any], source: str = "policy") -> Policy:
    try:
        return _parse(document)
    except PolicyError as exc:
        raise PolicyError(f"{source}: {exc}") from exc
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise PolicyError(f"{source}: malformed entry ({type(exc).__name__}: {exc})") from exc


def _parse(document: Mapping[str, Any]) -> Policy:
    categories = {
        name: Label(name, str(entry["label"]), str(entry.get("description", "")))
        for name, entry in _table(document, "categories").items()
    }
    if len(categories) != 4:
        raise PolicyError(f"needs exactly 4 categories, has {len(categories)}")
    levels = {
        int(k): Label(k, str(v["label"]), str(v.get("description", "")))
        for k, v in _table(document, "levels").items()
    }
    if set(levels) != set(LEVELS):
        raise PolicyError(f"levels must be exactly 1..5, found {sorted(levels)}")
    classes = {
        name: _retention_class(name, entry) for name, entry in _table(document, "retention").items()
    }
    imaging = classes.get(IMAGING)
    if imaging is None or imaging.minimum_years < IMAGING_FLOOR_YEARS:
        raise PolicyError(f"retention.{IMAGING} must exist with minimum_years >= 15")
    dates_from = str(document.get("plausible_study_dates_from", "19000102"))
    if not _DATE.match(dates_from):
        raise PolicyError(f"plausible_study_dates_from {dates_from!r} is not YYYYMMDD")
    max_years = int(_table(document, "extension").get("max_years", 30))
    if max_years < 1:
        raise PolicyError("extension.max_years must be at least 1")
    policy = Policy(categories, levels, classes, Rule("", 0, ""), {}, {}, (), max_years, dates_from)
    default = policy.check_rule(_rule(document["default"], "default"), "default")
    by_modality = {
        str(m).upper(): policy.check_rule(_rule(e, str(m)), f"by_modality.{m}")
        for m, e in _table(document, "by_modality").items()
    }
    by_sop_class = {}
    for uid, entry in _table(document, "by_sop_class").items():
        if not _UID.match(uid) or len(uid) > 64:
            raise PolicyError(f"by_sop_class: {uid!r} is not a UID")
        by_sop_class[uid] = policy.check_rule(_rule(entry, uid), f"by_sop_class.{uid}")
    specials = []
    for index, entry in enumerate(document.get("by_series_description", [])):
        where = f"by_series_description[{index}]"
        words = tuple(str(w).casefold() for w in entry["contains"] if str(w).strip())
        if not words or not entry["sop_classes"]:
            raise PolicyError(f"{where}: needs words in 'contains' and 'sop_classes'")
        rule = policy.check_rule(_rule(entry, str(entry.get("name", where))), where)
        specials.append(DescriptionRule(rule, words, frozenset(map(str, entry["sop_classes"]))))
    return Policy(
        categories,
        levels,
        classes,
        default,
        by_modality,
        by_sop_class,
        tuple(specials),
        max_years,
        dates_from,
    )


def _table(document: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = document.get(key, {})
    if not isinstance(value, Mapping):
        raise PolicyError(f"[{key}] must be a table")
    return value


def _retention_class(name: str, entry: Mapping[str, Any]) -> RetentionClass:
    years, minimum = int(entry["years"]), int(entry.get("minimum_years", entry["years"]))
    by_level = {int(k): int(v) for k, v in dict(entry.get("years_by_level", {})).items()}
    if minimum < 1 or years < minimum:
        raise PolicyError(f"retention.{name}: years {years} is below minimum_years {minimum}")
    if any(level not in LEVELS or value < years for level, value in by_level.items()):
        raise PolicyError(f"retention.{name}: years_by_level may only lengthen, for levels 1..5")
    downgrade = entry.get("downgrade_to_sd_after_days")
    if downgrade is not None and (
        isinstance(downgrade, bool) or not isinstance(downgrade, int) or downgrade < 1
    ):
        raise PolicyError(
            f"retention.{name}: downgrade_to_sd_after_days must be a whole number >= 1"
        )
    return RetentionClass(name, str(entry.get("label", name)), years, minimum, by_level, downgrade)


def _rule(entry: Mapping[str, Any], name: str) -> Rule:
    return Rule(
        str(entry["category"]),
        int(entry["level"]),
        str(entry["retention_class"]),
        str(entry.get("name", name)),
    )
