"""DICOM JSON (PS3.18 F.2) of a stored instance, without its bulk data.

Large binary top-level elements (Pixel Data, big private blobs) are replaced by a BulkDataURI
whose base is the placeholder `BULK_BASE`; the HTTP layer swaps in the instance's URL, so the
cached text serves every host name the archive is reached by.
"""

from __future__ import annotations

import io
import json
import re
import warnings
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset

BULK_BASE = "bulkdata-base:"
_JSON_ESCAPE = re.compile(r"\\u001b[ -/]+[0-~]")
BULK_THRESHOLD = 1024
_BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


def bulk_tags(ds: Dataset) -> list[int]:
    """Top-level tags whose values are served as bulk data rather than inline."""
    tags = []
    for element in ds:
        if element.VR in _BULK_VRS and element.tag != 0x00020001:
            value = element.value
            if isinstance(value, bytes) and len(value) > BULK_THRESHOLD:
                tags.append(int(element.tag))
    return tags


def metadata_json(part10: bytes) -> str:
    """The instance's metadata as DICOM JSON text, bulk data as placeholder URIs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(io.BytesIO(part10))
        bulk = bulk_tags(ds)
        described: dict[int, str] = {t: ds[t].VR for t in bulk}
        for tag in bulk:
            del ds[tag]
        result: dict[str, Any] = ds.to_json_dict(bulk_data_threshold=2**31)
    for tag, vr in described.items():
        result[f"{tag:08X}"] = {"vr": vr, "BulkDataURI": f"{BULK_BASE}{tag:08X}"}
    ordered = dict(sorted(result.items()))
    text = json.dumps(ordered, ensure_ascii=False, separators=(",", ":"))
    # ISO 2022 escapes pydicom left in decoded text are encoding, not content (see dataset.py)
    return _JSON_ESCAPE.sub("", text)


def bulk_value(part10: bytes, tag: int) -> bytes:
    """The raw value of a top-level bulk data element."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(io.BytesIO(part10))
    if tag not in ds or tag not in bulk_tags(ds):
        raise KeyError(tag)
    value = ds[tag].value
    assert isinstance(value, bytes)
    return value
