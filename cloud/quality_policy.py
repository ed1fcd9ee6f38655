"""The data-quality policy: ``config/quality.toml`` loaded and checked.

What each number means is written in the file; `cloud.quality_score` applies the scoring
part, `cloud.qc` the grades a QC review needs to pass.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

POLICY_FILE = Path(__file__).resolve().parents[1] / "config" / "quality.toml"
DIMENSIONS = ("completeness", "timeliness", "consistency", "conformance")
GRADES = ("A", "B", "C", "D")
CONSISTENCY_POINTS = (
    "reconciliation_missing",
    "reconciliation_mismatched",
    "patient_identity",
    "uid_mismatch",
    "conflict_each",
    "conflict_max",
)
CONFORMANCE_POINTS = (
    "unknown_sop_class",
    "unknown_transfer_syntax",
    "image_attributes",
    "invalid_value_each",
    "invalid_value_max",
)


class QualityPolicyError(ValueError):
    """The policy file is malformed; the message names the entry."""


@dataclass(frozen=True)
class QualityPolicy:
    """The numbers of ``config/quality.toml`` (see the file for what each one means)."""

    weights: dict[str, float]
    poor_below: float
    required: tuple[str, ...]
    report_points: float
    draft_penalty: float
    full_marks_hours: float
    zero_marks_hours: float
    clock_skew_minutes: float
    consistency: dict[str, float]
    conformance: dict[str, float]
    headers_per_study: int
    image_pass_grade: str
    report_pass_grade: str

    def passes(self, image_grade: str, report_grade: str) -> bool:
        """Whether a QC review with these grades (A best .. D worst) passes."""
        at_least = GRADES.index
        return at_least(image_grade) <= at_least(self.image_pass_grade) and at_least(
            report_grade
        ) <= at_least(self.report_pass_grade)


def _number(table: dict[str, Any], key: str, where: str) -> float:
    value = table.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise QualityPolicyError(f"{where}.{key} must be a number >= 0, not {value!r}")
    return float(value)


def _grade(table: dict[str, Any], key: str) -> str:
    value = table.get(key)
    if value not in GRADES:
        raise QualityPolicyError(f"qc.{key} must be one of {', '.join(GRADES)}, not {value!r}")
    return str(value)


@cache
def load_policy(path: Path = POLICY_FILE) -> QualityPolicy:
    """The policy in ``path``, checked; `QualityPolicyError` names what is wrong."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        weights = {d: _number(data["weights"], d, "weights") for d in DIMENSIONS}
        if sum(weights.values()) <= 0:
            raise QualityPolicyError("weights must not all be 0")
        comp, late = data["completeness"], data["timeliness"]
        required = tuple(str(k) for k in comp["required"])
        full = _number(late, "full_marks_hours", "timeliness")
        zero = _number(late, "zero_marks_hours", "timeliness")
        if zero <= full:
            raise QualityPolicyError("timeliness.zero_marks_hours must exceed full_marks_hours")
        report_points = _number(comp, "report_points", "completeness")
        if report_points > 100 or not required:
            raise QualityPolicyError(
                "completeness needs required keywords and report_points <= 100"
            )
        per_study = int(data["headers"]["per_study"])
        if per_study < 1:
            raise QualityPolicyError("headers.per_study must be at least 1")
        return QualityPolicy(
            weights=weights,
            poor_below=_number(data["summary"], "poor_below", "summary"),
            required=required,
            report_points=report_points,
            draft_penalty=min(_number(comp, "draft_penalty", "completeness"), report_points),
            full_marks_hours=full,
            zero_marks_hours=zero,
            clock_skew_minutes=_number(late, "clock_skew_minutes", "timeliness"),
            consistency={
                k: _number(data["consistency"], k, "consistency") for k in CONSISTENCY_POINTS
            },
            conformance={
                k: _number(data["conformance"], k, "conformance") for k in CONFORMANCE_POINTS
            },
            headers_per_study=per_study,
            image_pass_grade=_grade(data["qc"], "image_pass_grade"),
            report_pass_grade=_grade(data["qc"], "report_pass_grade"),
        )
    except (KeyError, TypeError, ValueError, tomllib.TOMLDecodeError) as exc:
        if isinstance(exc, QualityPolicyError):
            raise
        raise QualityPolicyError(f"{path}: {type(exc).__name__}: {exc}") from exc
