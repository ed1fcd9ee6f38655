"""Retiring old key-encryption keys never strands a kept index backup."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud.archive import Archive
from imaging_cloud.cli import main
from imaging_cloud.synthetic import StudySpec, ct_series, to_part10


def test_rotate_keeps_a_kek_that_a_kept_backup_needs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    archive = Archive.open(data_dir)
    for ds in ct_series(StudySpec(), slices=2, size=16):
        archive.store(to_part10(ds), source="test")
    old_kek = archive.keys.keks.current_id()
    archive.close()
    base = ["lifecycle", "--data-dir", str(data_dir)]
    assert main([*base, "backup-index", "--no-progress"]) == 0

    assert main([*base, "rotate-kek", "--retire-old", "--no-progress"]) == 1

    out = capsys.readouterr().out
    assert f"kept KEK {old_kek}" in out and "backups still need it" in out
    assert main([*base, "verify-backup"]) == 0, "the backup still opens"
