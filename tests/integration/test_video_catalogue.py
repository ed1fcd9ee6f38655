"""The video catalogue: a stored DICOM video gets its row, from its header, once.

Real H.264/AAC files made by FFmpeg, wrapped by the product's wrapper, stored through the
archive on SQLite and PostgreSQL.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import func, select

import cloud.videos as videos
import collectors.video_wrap as video_wrap
from cloud.archive import Archive
from cloud.models import SurgicalVideo, VideoAnnotation
from tests.support.video import VIDEO_ENDOSCOPIC, make_mp4, video_part10

pytestmark = pytest.mark.needs_ffmpeg


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_mp4(tmp_path_factory.mktemp("catalogue") / "clip.mp4", seconds=2.0)


def _rows(archive: Archive) -> list[SurgicalVideo]:
    with archive._sessions() as session:
        return list(session.scalars(select(SurgicalVideo)))


def test_the_private_block_is_the_same_on_both_sides() -> None:
    # collectors may not import cloud: the two constants are kept in step here.
    assert video_wrap.PRIVATE_CREATOR == videos.PRIVATE_CREATOR
    assert video_wrap.PRIVATE_GROUP == videos.PRIVATE_GROUP


def test_a_stored_video_is_catalogued_from_its_header(archive: Archive, clip: Path) -> None:
    part10 = video_part10(
        clip,
        patient_id="P-CAT",
        procedure="腹腔镜胆囊切除术 laparoscopic cholecystectomy",
        diagnosis="胆囊结石 gallstones",
        surgeon="Li^Wei",
        applicant="Wang^Fang",
        hospital="Chongqing First",
        operation_start="2026-03-02T08:10:00",
        operation_end="2026-03-02T09:40:00",
    )
    archive.store(part10, source="test")
    archive.store(part10, source="test")  # a re-send changes nothing
    [row] = _rows(archive)
    assert row.patient_id == "P-CAT"
    assert row.procedure.startswith("腹腔镜胆囊切除术")
    assert row.diagnosis == "胆囊结石 gallstones"
    assert row.surgeon == "Li^Wei" and row.applicant == "Wang^Fang"
    assert row.institution_name == "Chongqing First"
    assert row.camera_role == "field" and row.video_class == "surgical_field_video"
    assert row.operation_date == "20260302" and row.operation_minutes == 90.0
    assert (row.width, row.height) == (320, 240) and row.definition == "SD"
    assert row.duration_s == pytest.approx(2.0, abs=0.1)
    assert row.frame_rate == pytest.approx(25.0)


def test_safety_video_and_endoscope_roles(archive: Archive, clip: Path) -> None:
    archive.store(video_part10(clip, patient_id="P-S", video_class="safety"), source="test")
    archive.store(video_part10(clip, patient_id="P-E", sop_class_uid=VIDEO_ENDOSCOPIC), source="t")
    by_patient = {row.patient_id: row for row in _rows(archive)}
    assert by_patient["P-S"].video_class == "safety_video"
    assert by_patient["P-E"].camera_role == "endoscope"
    # Without an operation end the recording's length stands for the operation's.
    assert by_patient["P-E"].operation_minutes == pytest.approx(2.0 / 60, abs=0.05)


def test_a_video_from_elsewhere_is_catalogued_from_standard_attributes(
    archive: Archive, clip: Path, tmp_path: Path
) -> None:
    """Another vendor's object has no private block: the catalogue reads what DICOM holds."""
    ds = dcmread(io.BytesIO(video_part10(clip, patient_id="P-X", surgeon="Zhao")))
    del ds[(videos.PRIVATE_GROUP << 16) | 0x0010]
    for element in (0x1001, 0x1002, 0x1003):
        del ds[(videos.PRIVATE_GROUP << 16) | element]
    ds.SeriesDescription = "panorama camera"
    out = tmp_path / "other.dcm"
    ds.save_as(out, enforce_file_format=True)
    archive.store(out.read_bytes(), source="test")
    [row] = _rows(archive)
    assert row.applicant == "Zhao" and row.camera_role == "panorama"
    assert row.video_class == "surgical_field_video"


def test_deleting_the_study_removes_its_videos_and_annotations(
    archive: Archive, clip: Path
) -> None:
    outcome = archive.store(video_part10(clip, patient_id="P-DEL"), source="test")
    [row] = _rows(archive)
    with archive._sessions() as session:
        session.add(
            VideoAnnotation(
                video_pk=row.pk,
                kind="phase",
                start_s=0.0,
                end_s=1.0,
                label="exposure",
                author="test",
                created_at=row.created_at,
                updated_at=row.created_at,
            )
        )
        session.commit()
    archive.delete_study(outcome.study_instance_uid)
    with archive._sessions() as session:
        assert session.scalar(select(func.count(SurgicalVideo.pk))) == 0
        assert session.scalar(select(func.count(VideoAnnotation.pk))) == 0


def test_images_are_not_catalogued(archive: Archive, ct_files: list[bytes]) -> None:
    archive.store(ct_files[0], source="test")
    assert _rows(archive) == []
