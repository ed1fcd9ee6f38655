"""The retention policy as data: what config/retention.toml says, and what the loader refuses."""

from __future__ import annotations

import copy
import tomllib
from datetime import date
from typing import Any

import pytest

from cloud.retention_policy import (
    POLICY_FILE,
    PolicyError,
    SeriesFacts,
    add_years,
    load_policy,
    parse_policy,
)

CT = "1.2.840.10008.5.1.4.1.1.2"
VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
VIDEO_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def series(modality: str, *sop_classes: str, description: str = "") -> SeriesFacts:
    return SeriesFacts(f"1.2.3.{modality}", modality, description, frozenset(sop_classes))


def document() -> dict[str, Any]:
    return tomllib.loads(POLICY_FILE.read_text(encoding="utf-8"))


def test_the_shipped_policy_has_4_categories_5_levels_and_the_required_years() -> None:
    policy = load_policy()
    assert len(policy.categories) == 4
    assert sorted(policy.levels) == [1, 2, 3, 4, 5]
    assert policy.years("imaging", 4) == 15
    assert policy.retention_class("imaging").minimum_years >= 15
    assert policy.years("surgical_field_video", 4) == 5
    assert policy.years("safety_video", 4) == 1


def test_ct_is_imaging_kept_15_years() -> None:
    rule = load_policy().classify([series("CT", CT)])
    assert (rule.category, rule.level, rule.retention_class) == ("health_status", 4, "imaging")


def test_video_endoscopic_is_surgical_field_video_kept_5_years() -> None:
    policy = load_policy()
    rule = policy.classify([series("ES", VIDEO_ENDOSCOPIC)])
    assert rule.retention_class == "surgical_field_video"
    assert rule.category == "medical_application"
    assert policy.years(rule.retention_class, rule.level) == 5
    # endoscopy stills (same modality, an image SOP class) stay imaging
    assert policy.classify([series("ES", SECONDARY_CAPTURE)]).retention_class == "imaging"


def test_safety_video_needs_a_video_object_and_a_safety_description() -> None:
    policy = load_policy()
    cctv = series("XC", VIDEO_PHOTOGRAPHIC, description="OR-3 CCTV 安防")
    assert policy.classify([cctv]).retention_class == "safety_video"
    # the same words on an image series do not make it a 1-year safety video
    words_on_ct = series("CT", CT, description="security camera")
    assert policy.classify([words_on_ct]).retention_class == "imaging"
    assert policy.classify([series("XC", VIDEO_PHOTOGRAPHIC)]).retention_class == (
        "surgical_field_video"
    )


def test_a_study_is_kept_as_long_as_its_longest_kept_series() -> None:
    policy = load_policy()
    rule = policy.classify([series("ES", VIDEO_ENDOSCOPIC), series("CT", CT)])
    assert rule.retention_class == "imaging"
    assert policy.classify([]).retention_class == "imaging"  # nothing known: the default


def test_unknown_modalities_fall_back_to_the_longest_kept_default() -> None:
    rule = load_policy().classify([series("ZZ", "1.2.3.4.5")])
    assert rule.retention_class == "imaging"


def test_level_5_imaging_is_kept_longer() -> None:
    policy = load_policy()
    assert policy.years("imaging", 5) == 30
    assert policy.years("imaging", 3) == 15


def test_placeholder_study_dates_are_not_dates() -> None:
    policy = load_policy()
    assert policy.plausible("19000101") is None
    assert policy.plausible("2025013") is None
    assert policy.plausible("20250230") is None
    assert policy.plausible("20250314") == date(2025, 3, 14)


def test_29_february_plus_years_lands_on_1_march() -> None:
    assert add_years(date(2024, 2, 29), 15) == date(2039, 3, 1)
    assert add_years(date(2025, 3, 14), 15) == date(2040, 3, 14)


def _refused(edit: Any, expected: str) -> None:
    changed = copy.deepcopy(document())
    edit(changed)
    with pytest.raises(PolicyError, match=expected):
        parse_policy(changed, "test")


def test_imaging_below_15_years_is_refused() -> None:
    def shorten(doc: dict[str, Any]) -> None:
        doc["retention"]["imaging"]["years"] = 10
        doc["retention"]["imaging"]["minimum_years"] = 10

    _refused(shorten, "imaging must exist with minimum_years >= 15")


def test_years_below_the_minimum_are_refused() -> None:
    _refused(lambda d: d["retention"]["safety_video"].update(years=0), "below minimum_years")


def test_rules_naming_unknown_things_are_refused() -> None:
    _refused(lambda d: d["by_modality"]["CT"].update(category="secret"), "unknown category")
    _refused(lambda d: d["by_modality"]["CT"].update(level=6), "level 6 is not one of 1..5")
    _refused(
        lambda d: d["by_sop_class"][VIDEO_ENDOSCOPIC].update(retention_class="forever"),
        "unknown retention class",
    )
    _refused(lambda d: d["categories"].pop("public_health"), "exactly 4 categories")
    _refused(lambda d: d["levels"].pop("5"), r"levels must be exactly 1\.\.5")


def test_years_by_level_may_only_lengthen() -> None:
    _refused(
        lambda d: d["retention"]["imaging"].update(years_by_level={"5": 10}), "may only lengthen"
    )


def test_a_malformed_entry_names_the_file() -> None:
    _refused(lambda d: d["by_modality"]["CT"].pop("level"), "test: malformed entry")
