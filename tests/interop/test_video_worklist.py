"""Modality Worklist match against a real Orthanc with its ModalityWorklists plugin: the
recording named after its accession number joins the scheduled study with its patient, its
study attributes and surgeon."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from collectors.video_intake import join_study
from collectors.video_probe import VideoError
from collectors.worklist import WorklistUnavailableError, find_worklist_item
from tests.support.orthanc import OrthancServer

pytestmark = pytest.mark.needs_orthanc

WORKLIST_PLUGIN = Path("/usr/share/orthanc/plugins/libModalityWorklists.so")
STUDY_UID = generate_uid()


def _worklist_file(folder: Path, name: str, accession: str, patient_id: str) -> None:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.PatientName = "Li^Hua"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700504"
    ds.PatientSex = "F"
    ds.AccessionNumber = accession
    ds.StudyInstanceUID = STUDY_UID
    ds.ReferringPhysicianName = "Chen^Referrer"
    ds.RequestedProcedureDescription = "Laparoscopic cholecystectomy"
    ds.RequestedProcedureID = "RP1"
    step = Dataset()
    step.Modality = "XC"
    step.ScheduledStationAETitle = "ORCAM1"
    step.ScheduledProcedureStepStartDate = "20260304"
    step.ScheduledProcedureStepStartTime = "081500"
    step.ScheduledProcedureStepDescription = "Lap chole"
    step.ScheduledPerformingPhysicianName = "Wang^Surgeon"
    step.ScheduledProcedureStepID = "SPS1"
    ds.ScheduledProcedureStepSequence = Sequence([step])
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.276.0.7230010.3.1.0.1")
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(folder / name, enforce_file_format=True)


@pytest.fixture(scope="module")
def worklist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    if not WORKLIST_PLUGIN.is_file():
        pytest.skip("Orthanc's ModalityWorklists plugin is not installed")
    folder = tmp_path_factory.mktemp("worklists")
    _worklist_file(folder, "one.wl", "ACC100", "P-100")
    _worklist_file(folder, "two-a.wl", "ACC200", "P-200")
    _worklist_file(folder, "two-b.wl", "ACC200", "P-201")
    server = OrthancServer(
        extra_plugins=[WORKLIST_PLUGIN],
        config_overrides={
            "Worklists": {"Enable": True, "Database": str(folder)},
            # Orthanc answers worklist queries of known modalities only
            "DicomModalities": {"ORCAM1": ["ORCAM1", "127.0.0.1", 104]},
        },
    )
    with server:
        yield server


def test_one_scheduled_item_fills_the_sidecar(worklist: OrthancServer) -> None:
    found = find_worklist_item(
        "127.0.0.1", worklist.dicom_port, worklist.aet, "ORCAM1", accession_number="ACC100"
    )
    assert found == {
        "patient_id": "P-100",
        "issuer_of_patient_id": "",
        "patient_name": "Li^Hua",
        "birth_date": "1970-05-04",
        "sex": "F",
        "accession_number": "ACC100",
        "study_instance_uid": STUDY_UID,
        "study_description": "Laparoscopic cholecystectomy",
        "referring_physician": "Chen^Referrer",
        "study_id": "RP1",
        "study_date": "20260304",
        "study_time": "081500",
        "procedure": "Lap chole",
        "surgeon": "Wang^Surgeon",
    }
    # the recorder's own account of what was done wins; the study's attributes are the study's
    joined = join_study(
        {"procedure": "Conversion to open", "camera_role": "endoscope", "study_date": "20250101"},
        found,
    )
    assert joined["procedure"] == "Conversion to open" and joined["study_date"] == "20260304"
    assert joined["patient_id"] == "P-100" and joined["camera_role"] == "endoscope"
    with pytest.raises(VideoError, match="differs from the study"):
        join_study({"patient_id": "P-999"}, found)


def test_no_item_and_several_items(worklist: OrthancServer) -> None:
    port, aet = worklist.dicom_port, worklist.aet
    assert find_worklist_item("127.0.0.1", port, aet, "ORCAM1", accession_number="NOPE") is None
    with pytest.raises(VideoError, match="ambiguous"):
        find_worklist_item("127.0.0.1", port, aet, "ORCAM1", accession_number="ACC200")
    found = find_worklist_item(
        "127.0.0.1", port, aet, "ORCAM1", accession_number="ACC200", patient_id="P-201"
    )
    assert found is not None and found["patient_id"] == "P-201"


def test_an_unreachable_worklist_is_a_retry_not_a_refusal(worklist: OrthancServer) -> None:
    with pytest.raises(WorklistUnavailableError):
        find_worklist_item("127.0.0.1", 1, "NOBODY", "ORCAM1", accession_number="ACC100", timeout=2)


@pytest.mark.needs_ffmpeg
def test_a_recording_without_sidecar_is_matched_by_its_file_name(
    worklist: OrthancServer, tmp_path: Path
) -> None:
    """The OR recorder names the file after the accession number and writes no sidecar."""
    import io
    import shutil

    import pydicom

    from collectors.intake import SinkResult
    from collectors.video_folder import VideoFolderCollector, WorklistSettings
    from tests.support.video import make_mp4

    received: list[bytes] = []

    def sink(data: bytes, origin: str) -> SinkResult:
        received.append(data)
        return SinkResult(0)

    watched = tmp_path / "watched"
    watched.mkdir()
    recording = make_mp4(tmp_path / "clip.mp4", seconds=0.5)
    shutil.copy(recording, watched / "ACC100.mp4")
    shutil.copy(recording, watched / "ACC404.mp4")
    (watched / "ACC200.json").write_text('{"camera_role": "endoscope"}')
    shutil.copy(recording, watched / "ACC200.mp4")
    collector = VideoFolderCollector(
        watched,
        sink,
        workdir=tmp_path / "work",
        settle_seconds=0,
        worklist=WorklistSettings("127.0.0.1", worklist.dicom_port, worklist.aet, "ORCAM1"),
    )
    collector.poll_once()  # first sight: the files start to settle
    report = collector.poll_once()
    assert (report.taken, report.quarantined) == (1, 2)
    ds = pydicom.dcmread(io.BytesIO(received[0]), stop_before_pixels=True)
    assert (ds.PatientID, ds.AccessionNumber, ds.StudyInstanceUID) == ("P-100", "ACC100", STUDY_UID)
    assert ds.PerformingPhysicianName == "Wang^Surgeon"
    # the study's attributes are the worklist's, whenever and whatever was recorded
    assert (ds.StudyDate, ds.StudyTime, ds.StudyID) == ("20260304", "081500", "RP1")
    assert ds.StudyDescription == "Laparoscopic cholecystectomy"
    assert ds.ReferringPhysicianName == "Chen^Referrer"
    assert ds.PerformedProcedureStepDescription == "Lap chole"
    assert ds.ContentDate != "20260304"  # the recording's own start (today, no sidecar)
    assert (watched / "done" / "ACC100.mp4").exists()
    no_match = (watched / "failed" / "ACC404.reason.txt").read_text()
    assert "no worklist item" in no_match
    assert "ambiguous" in (watched / "failed" / "ACC200.reason.txt").read_text()
    assert (watched / "failed" / "ACC200.json").exists()
