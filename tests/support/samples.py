"""The shared real DICOM samples (../shared/dicom-samples), when this machine has them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def samples_root() -> Path | None:
    env = os.environ.get("IMAGING_CLOUD_SAMPLES")
    root = Path(env) if env else REPO.parent / "shared" / "dicom-samples"
    return root if (root / "MANIFEST.tsv").is_file() else None


def require_samples() -> Path:
    root = samples_root()
    if root is None:
        pytest.skip("shared DICOM samples not found (set IMAGING_CLOUD_SAMPLES)")
    return root
