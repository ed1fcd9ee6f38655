"""The retention downgrade of surgical video: an HD recording past its class's
``downgrade_to_sd_after_days`` becomes a new, valid 576-line DICOM instance; the HD one goes,
and the catalogue's annotations follow the video. A study under legal hold keeps its HD
recording; two runs at once make one copy; a run that died after storing its copy is finished
by the next one."""

from __future__ import annotations

import io
import subprocess
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import av
import pytest
from pydicom import dcmread
from sqlalchemy import select

from cloud.errors import InstanceNotFoundError
from cloud.models import AuditEvent, SurgicalVideo, VideoAnnotation
from cloud.retention import Retention
from cloud.retention_policy import POLICY_FILE, Actor, PolicyError, load_policy, parse_policy
from cloud.video_derivatives import (
    CLAIMED,
    Downgraded,
    LegalHoldError,
    _claim,
    derive_sd_header,
    downgrade_due,
    downgrade_video,
    due_for_sd,
)
from imaging_cloud.cli import main
from imaging_cloud.node import Node
from imaging_cloud.synthetic import to_part10
from imaging_cloud.video_processing_cli import make_sd_copy
from tests.support.servers import client
from tests.support.video import make_mp4, video_dataset

pytestmark = pytest.mark.needs_ffmpeg


def _store(node: Node, mp4: Path, operated: datetime, **sidecar: str) -> tuple[str, str, str]:
    ds = video_dataset(
        mp4, patient_id="P-SD", procedure="胃癌根治术", operation_start=operated.isoformat(),
        operation_end=(operated + timedelta(hours=2)).isoformat(), **sidecar,
    )  # fmt: skip
    node.archive.store(to_part10(ds, str(ds.file_meta.TransferSyntaxUID)), source="test")
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def _annotate(node: Node, sop: str) -> int:
    now = datetime.now(UTC)
    with node.archive.sessions() as session:
        video = session.scalar(select(SurgicalVideo).where(SurgicalVideo.sop_instance_uid == sop))
        assert video is not None
        note = VideoAnnotation(
            video_pk=video.pk, kind="phase", start_s=0.0, end_s=1.5, label="游离胃网膜",
            author="doc", created_at=now, updated_at=now,
        )  # fmt: skip
        session.add(note)
        session.commit()
        return note.pk


def _cli(node: Node, *args: str) -> int:
    settings = node.settings
    options = ["--data-dir", str(settings.data_dir)]
    if settings.database_url:
        options += ["--database-url", settings.database_url]
    return main(["video", "downgrade", *options, *args])


def _catalogue(node: Node) -> dict[str, SurgicalVideo]:
    with node.archive.sessions() as session:
        return {v.sop_instance_uid: v for v in session.scalars(select(SurgicalVideo))}


def test_an_old_hd_recording_is_replaced_by_a_valid_sd_instance(
    node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hd = make_mp4(tmp_path / "hd.mp4", size=(1280, 720), colour=None, seconds=2.0)
    old = datetime.now() - timedelta(days=400)
    study, series, sop = _store(node, hd, old)
    _, _, recent = _store(node, make_mp4(tmp_path / "new.mp4", size=(1280, 720)), datetime.now())
    note = _annotate(node, sop)
    assert _catalogue(node)[sop].definition == "HD"
    hd_blob = node.archive.locate(study, series, sop)[0].blob_key

    # dry run: listed, nothing changes
    assert _cli(node, "--dry-run") == 0
    listed = capsys.readouterr().out
    assert sop in listed and recent not in listed and "1 videos would be" in listed
    assert set(_catalogue(node)) == {sop, recent}
    assert node.archive.locate(study, series, sop)

    assert _cli(node) == 0
    assert "1 videos downgraded" in capsys.readouterr().out
    videos = _catalogue(node)
    assert sop not in videos and recent in videos
    (sd_uid,) = [uid for uid, v in videos.items() if uid != recent]
    sd_row = videos[sd_uid]
    assert (sd_row.definition, sd_row.derived_from_uid) == ("SD", sop)
    assert (sd_row.height, sd_row.width) == (576, 1024)
    assert sd_row.procedure == "胃癌根治术"
    with node.archive.sessions() as session:
        moved = session.get(VideoAnnotation, note)
        assert moved is not None and moved.video_pk == sd_row.pk

    # the old instance is gone from the index and its blob with it
    with pytest.raises(InstanceNotFoundError):
        node.archive.locate(study, series, sop)
    with pytest.raises(InstanceNotFoundError):
        node.archive.blobs.get(hd_blob)
    stored = node.archive.locate(study, series, sd_uid)[0]
    assert stored.series_instance_uid == series

    # valid DICOM: pydicom and DCMTK read it, the header matches the new stream
    data = node.archive.read(stored)
    ds = dcmread(io.BytesIO(data))
    assert (ds.Rows, ds.Columns, int(ds.NumberOfFrames)) == (576, 1024, 50)
    assert float(ds.FrameTime) == pytest.approx(40.0)
    assert list(ds.ImageType)[:1] == ["DERIVED"]
    assert "standard definition after 365 days" in ds.DerivationDescription
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == sop
    assert ds.PatientID == "P-SD" and ds.StudyInstanceUID == study
    assert ds.file_meta.TransferSyntaxUID.startswith("1.2.840.10008.1.2.4.10")
    path = tmp_path / "sd.dcm"
    path.write_bytes(data)
    dumped = subprocess.run(["dcmdump", "+P", "0028,0010", str(path)], capture_output=True)
    assert dumped.returncode == 0 and b"576" in dumped.stdout

    # it plays: WADO rendered answers an MP4 of 576 lines; QIDO lists it and not the HD one
    base = f"/dicom-web/studies/{study}/series/{series}/instances"
    with client(node) as admin:
        played = admin.get(f"{base}/{sd_uid}/rendered", headers={"Accept": "video/mp4"})
        assert (
            admin.get(f"{base}/{sop}/rendered", headers={"Accept": "video/mp4"}).status_code == 404
        )
        listed_instances = admin.get(f"/dicom-web/studies/{study}/instances").json()
    assert played.status_code == 200
    with av.open(io.BytesIO(played.content)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.height, stream.codec_context.width) == (576, 1024)
        assert stream.codec_context.name == "h264"
        assert container.streams.audio and container.streams.audio[0].codec_context.name == "aac"
    uids = {item["00080018"]["Value"][0] for item in listed_instances}
    assert uids == {sd_uid}

    with node.archive.sessions() as session:
        audited = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "video_downgrade")
        ).all()
    assert [e.study_instance_uid for e in audited] == [study]

    # nothing more is due
    assert _cli(node, "--dry-run") == 0
    assert "0 videos would be" in capsys.readouterr().out


def test_the_periodic_pass_downgrades_a_due_safety_video(node: Node, tmp_path: Path) -> None:
    hd = make_mp4(tmp_path / "cctv.mp4", size=(1280, 720), seconds=1.0, audio=False)
    _, _, sop = _store(node, hd, datetime.now() - timedelta(days=45), video_class="safety")
    assert _catalogue(node)[sop].video_class == "safety_video"
    assert node.schedule is not None
    results = node.schedule.run_once()
    # the pass only queues the re-encoding, after the backup, as a lifecycle job
    assert results["video_downgrade"] == {"queued": 1}
    assert list(results)[-2:] == ["backup", "video_downgrade"]
    (job,) = node.archive.jobs.recent(kind="video_downgrade")
    assert job.target == sop
    finished = node.archive.jobs.wait(job.pk, 120)
    assert finished.state == "done", finished.error
    assert finished.detail["state"] == "downgraded"
    (row,) = _catalogue(node).values()
    assert (row.definition, row.derived_from_uid, row.video_class) == ("SD", sop, "safety_video")


def test_the_policy_file_parses_with_the_downgrade_key() -> None:
    policy = load_policy()
    assert policy.classes["surgical_field_video"].downgrade_to_sd_after_days == 365
    assert policy.classes["safety_video"].downgrade_to_sd_after_days == 30
    assert policy.classes["imaging"].downgrade_to_sd_after_days is None
    import tomllib

    document = tomllib.loads(POLICY_FILE.read_text(encoding="utf-8"))
    document["retention"]["safety_video"]["downgrade_to_sd_after_days"] = 0
    with pytest.raises(PolicyError, match="downgrade_to_sd_after_days"):
        parse_policy(document)


def _instances(node: Node, study: str) -> set[str]:
    return {s.sop_instance_uid for s in node.archive.locate(study)}


def test_a_study_under_legal_hold_keeps_its_hd_recording(node: Node, tmp_path: Path) -> None:
    hd = make_mp4(tmp_path / "hd.mp4", size=(1280, 720), seconds=1.0, audio=False)
    study, _, sop = _store(node, hd, datetime.now() - timedelta(days=400))
    retention = Retention(node.archive)
    retention.hold(study, reason="case 2026-17", actor=Actor(name="legal"))

    assert due_for_sd(node.archive) == []
    assert _cli(node) == 0
    assert _instances(node, study) == {sop}
    assert _catalogue(node)[sop].definition == "HD"

    # released, it is due; held again while its copy is being made, the HD original stays
    retention.release(study, actor=Actor(name="legal"), reason="case closed")
    (due,) = due_for_sd(node.archive)

    def held_meanwhile(read, identify, folder):  # type: ignore[no-untyped-def]
        made = make_sd_copy(read, identify, folder)
        retention.hold(study, reason="case 2026-18", actor=Actor(name="legal"))
        return made

    with pytest.raises(LegalHoldError):
        downgrade_video(node.archive, due, held_meanwhile)
    assert _instances(node, study) == {sop}  # the SD copy stored meanwhile is gone again
    assert node.archive.read(node.archive.locate(study, None, sop)[0])
    assert {uid: v.definition for uid, v in _catalogue(node).items()} == {sop: "HD"}


def test_two_runs_at_once_make_one_sd_copy(node: Node, tmp_path: Path) -> None:
    hd = make_mp4(tmp_path / "hd.mp4", size=(1280, 720), seconds=1.0, audio=False)
    study, _, sop = _store(node, hd, datetime.now() - timedelta(days=400))
    (due,) = due_for_sd(node.archive)
    start = threading.Barrier(2)
    results: list[Downgraded | BaseException | None] = []

    def run() -> None:
        start.wait()
        try:
            results.append(downgrade_video(node.archive, due, make_sd_copy))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    done = [r for r in results if isinstance(r, Downgraded)]
    assert len(results) == 2 and len(done) == 1, results
    assert _instances(node, study) == {done[0].sd_uid}
    (row,) = _catalogue(node).values()
    assert (row.sop_instance_uid, row.definition, row.derived_from_uid) == (
        done[0].sd_uid,
        "SD",
        sop,
    )


def test_a_run_that_died_after_storing_its_copy_is_finished_not_repeated(
    node: Node, tmp_path: Path
) -> None:
    hd = make_mp4(tmp_path / "hd.mp4", size=(1280, 720), seconds=1.0, audio=False)
    study, _, sop = _store(node, hd, datetime.now() - timedelta(days=400))
    note = _annotate(node, sop)
    (due,) = due_for_sd(node.archive)
    # what a run does before it dies: claim the row, store the SD copy
    assert _claim(node.archive, due.video_pk)
    assert not _claim(node.archive, due.video_pk)  # claimed once only
    stored = node.archive.locate(study, None, sop)[0]
    folder = tmp_path / "work"
    folder.mkdir()
    copy = make_sd_copy(
        lambda: node.archive.read(stored),
        lambda header: derive_sd_header(header, header, due.after_days),
        folder,
    )
    orphan = node.archive.store(copy.read_bytes(), source="test").sop_instance_uid
    assert _catalogue(node)[sop].definition == CLAIMED
    assert _instances(node, study) == {sop, orphan}

    (again,) = due_for_sd(node.archive)
    assert again.claimed
    done, failed = downgrade_due(node.archive, make_sd_copy)

    assert failed == [] and [d.sd_uid for d in done] == [orphan]
    assert _instances(node, study) == {orphan}
    (row,) = _catalogue(node).values()
    assert (row.sop_instance_uid, row.definition, row.derived_from_uid) == (orphan, "SD", sop)
    with node.archive.sessions() as session:
        moved = session.get(VideoAnnotation, note)
        assert moved is not None and moved.video_pk == row.pk


def test_a_claim_left_by_a_dead_run_is_released_by_hand(node: Node, tmp_path: Path) -> None:
    hd = make_mp4(tmp_path / "hd.mp4", size=(1280, 720), seconds=1.0, audio=False)
    _, _, sop = _store(node, hd, datetime.now() - timedelta(days=400))
    (due,) = due_for_sd(node.archive)
    assert _claim(node.archive, due.video_pk)  # and the run died before storing a copy
    assert downgrade_due(node.archive, make_sd_copy) == ([], [])  # not copied: it is claimed

    assert _cli(node, "--release-claims") == 0
    assert _catalogue(node)[sop].definition == "HD"
    assert not due_for_sd(node.archive)[0].claimed
