"""DICOM JSON (PS3.18 F.2) from plain attribute values, without building pydicom datasets."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydicom.datadict import dictionary_VR, tag_for_keyword

_NUMBER_VRS = {"IS", "DS", "US", "UL", "SS", "SL", "FL", "FD", "SV", "UV"}
_INT_VRS = {"IS", "US", "UL", "SS", "SL", "SV", "UV"}


@cache  # a few dozen keywords, looked up for every attribute of every search result
def _vr_of(keyword: str) -> str:
    return str(dictionary_VR(keyword))


@cache
def tag_hex(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise KeyError(keyword)
    return f"{tag:08X}"


def _person_name(text: str) -> dict[str, str]:
    groups = text.split("=")
    names = ("Alphabetic", "Ideographic", "Phonetic")
    return {name: group for name, group in zip(names, groups, strict=False) if group}


def element(keyword: str, value: Any) -> dict[str, Any]:
    """One DICOM JSON element; empty values give a present-but-empty attribute."""
    vr = _vr_of(keyword)
    values = value if isinstance(value, list) else [value]
    values = [v for v in values if v not in (None, "")]
    if not values:
        return {"vr": vr}
    if vr == "PN":
        return {"vr": vr, "Value": [_person_name(str(v)) for v in values]}
    if vr in _INT_VRS:
        return {"vr": vr, "Value": [int(v) for v in values]}
    if vr in _NUMBER_VRS:
        return {"vr": vr, "Value": [float(v) for v in values]}
    return {"vr": vr, "Value": [str(v) for v in values]}


def dataset(attributes: dict[str, Any]) -> dict[str, Any]:
    """A DICOM JSON object from keyword -> value, ordered by tag as PS3.18 shows it."""
    encoded = {tag_hex(k): element(k, v) for k, v in attributes.items()}
    return dict(sorted(encoded.items()))
