"""Teaching export of a surgical recording over HTTP (Xuzhou spec): a de-identified DICOM video
object, pixels and sound cleaned, the stored original untouched, every request audited. It
claims only the cleaning that was done, each set of options is its own object (its own,
reproducible SOP Instance UID), a damaged recording is refused, not a server error, and at
most two exports run at once."""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import select

from cloud.deidentify import UidRemapper, export_key
from cloud.models import AuditEvent
from imaging_cloud.node import Node
from imaging_cloud.synthetic import to_part10
from tests.support.servers import PASSWORD, client
from tests.support.video import make_mp4, video_dataset
from tests.unit.test_video_deid import (
    OVERLAY,
    dominant_hz,
    frames_of,
    frontal_faces,
    make_face_video,
    overlap,
)
from viewer_api import video_export_api
from viewer_api.video_api import mp4_bytes

pytestmark = pytest.mark.needs_ffmpeg

PATIENT = "P-TEACH-42"
NAME = "Zhang^San"


def _store(node: Node, tmp_path: Path, clip: Path | None = None) -> tuple[str, str, Path]:
    archive = node.archive
    archive.hospitals.add_hospital("XA", "徐州市中心医院")
    archive.hospitals.add_hospital("XB", "徐州医科大学附属医院")
    owner = archive.hospitals.by_id("XA")
    assert owner is not None
    clip = clip or make_face_video(tmp_path / "face.mp4")
    ds = video_dataset(
        clip, patient_id=PATIENT, hospital="徐州市中心医院", procedure="腹腔镜胆囊切除术",
        surgeon="Li^Si", operation_start="2026-01-05T09:00:00",
    )  # fmt: skip
    ds.PatientName = NAME
    archive.store(
        to_part10(ds, str(ds.file_meta.TransferSyntaxUID)), source="test", hospital_pk=owner.pk
    )
    for username, role, hospital in (
        ("rad.xa", "radiologist", "XA"),
        ("doc.xa", "clinician", "XA"),
        ("rad.xb", "radiologist", "XB"),
    ):
        archive.users.create_user(username, PASSWORD, role, hospital_id=hospital)
    return str(ds.StudyInstanceUID), str(ds.SOPInstanceUID), clip


def _stored_digest(node: Node, study: str) -> tuple[str, str]:
    stored = node.archive.locate(study)[0]
    blob = node.archive.blobs.get(stored.blob_key)
    return hashlib.sha256(blob).hexdigest(), hashlib.sha256(node.archive.read(stored)).hexdigest()


def _audited(node: Node, action: str) -> list[AuditEvent]:
    with node.archive.sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
            )
        )


@pytest.mark.slow  # heavy: CI runs it, the quick local run leaves it out
def test_teaching_export_is_de_identified_and_leaves_the_original(
    node: Node, tmp_path: Path
) -> None:
    study, sop, clip = _store(node, tmp_path)
    before = _stored_digest(node, study)
    url = f"/api/videos/{sop}/teaching-export"
    body = {"project": "teach-2026", "audio": "remove"}

    with client(node, "doc.xa") as clinician:  # in scope, but no export permission
        assert clinician.post(url, json=body).status_code == 403
    with client(node, "rad.xb") as other:  # export, but another hospital's study
        assert other.post(url, json=body).status_code == 403
    with client(node, "rad.xa") as radiologist:
        assert radiologist.post(url, json={"project": "../etc"}).status_code == 400
        answer = radiologist.post(url, json=body, timeout=120)
        disguised = radiologist.post(
            url, json={**body, "audio": "disguise", "textRegions": [[0.0, 0.0, 0.25, 0.1]]},
            timeout=120,
        )  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/dicom"
    assert "attachment" in answer.headers["content-disposition"]

    out = dcmread(io.BytesIO(answer.content))
    assert PATIENT not in answer.content.decode("latin-1")
    assert b"Zhang" not in answer.content
    assert str(out.PatientID).startswith("ANON-") and out.PatientName == out.PatientID
    assert out.SOPInstanceUID != sop and out.StudyInstanceUID != study
    assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
    assert out.PatientIdentityRemoved == "YES"
    codes = {item.CodeValue for item in out.DeidentificationMethodCodeSequence}
    assert {"113100", "113101", "113102"} <= codes  # basic profile, clean pixels, faces
    assert any("audio removed" in m for m in out.DeidentificationMethod)
    assert out.BurnedInAnnotation == "NO" and out.RecognizableVisualFeatures == "NO"
    assert list(out.ImageType)[:2] == ["DERIVED", "PRIMARY"]
    assert "faces blurred" in out.DerivationDescription
    assert "burned-in text regions blacked out" in out.DerivationDescription
    assert "PerformingPhysicianName" not in out and "InstitutionName" not in out
    assert (out.Rows, out.Columns) == (240, 320)
    # DCMTK reads it too
    exported = tmp_path / "export.dcm"
    exported.write_bytes(answer.content)
    dumped = subprocess.run(["dcmdump", str(exported)], capture_output=True, text=True)
    assert dumped.returncode == 0, dumped.stderr

    # the pixels: no face where it was, the overlay blacked out, no sound
    movie = tmp_path / "export.mp4"
    movie.write_bytes(mp4_bytes(out))
    assert dominant_hz(movie) is None
    original_frames, cleaned_frames = frames_of(clip), frames_of(movie)
    assert len(original_frames) == len(cleaned_frames)
    for was, now in zip(original_frames[::3], cleaned_frames[::3], strict=True):
        for face in frontal_faces(was):
            assert all(overlap(face, seen) < 0.2 for seen in frontal_faces(now))
        x0, y0, _, y1 = OVERLAY
        assert now[y0 + 4 : y1 - 4, x0 + 2 : x0 + 100].max() < 40

    # disguised sound: the 440 Hz tone comes out lower, and the extra region is black
    assert disguised.status_code == 200, disguised.text
    second = dcmread(io.BytesIO(disguised.content))
    assert second.PatientID == out.PatientID  # same project: same pseudonym
    assert second.StudyInstanceUID == out.StudyInstanceUID
    assert second.SeriesInstanceUID == out.SeriesInstanceUID
    assert any(
        "pitch-shifted (reversible" in m and "not de-identified" in m
        for m in second.DeidentificationMethod
    )
    assert not any("disguis" in m for m in second.DeidentificationMethod)
    voiced = tmp_path / "voiced.mp4"
    voiced.write_bytes(mp4_bytes(second))
    assert dominant_hz(clip) == pytest.approx(440, abs=5)
    assert dominant_hz(voiced) == pytest.approx(352, abs=6)
    assert all(f[2:22, 2:78].max() < 40 for f in frames_of(voiced)[::10])

    # the original is byte-identical, and still plays as it was
    assert _stored_digest(node, study) == before
    events = _audited(node, "export")
    denied = [e for e in events if e.outcome == "denied"]
    allowed = [e for e in events if e.outcome == "allowed"]
    assert [e.actor for e in denied] == ["rad.xb"]  # out of scope
    no_permission = [e for e in _audited(node, "access") if e.outcome == "denied"]
    assert "doc.xa" in {e.actor for e in no_permission}
    assert [e.actor for e in allowed] == ["rad.xa", "rad.xa"]
    first, last = (json.loads(e.detail) for e in allowed)
    assert first["project"] == last["project"] == "teach-2026"
    assert (first["audio"], last["audio"]) == ("remove", "disguise")
    assert last["text_regions"] == [[0.0, 0.0, 0.25, 0.1]] and first["blur_faces"] is True
    assert all(e.study_instance_uid == study and e.patient_id == PATIENT for e in allowed)


@pytest.mark.slow  # heavy: CI runs it, the quick local run leaves it out
def test_each_option_set_is_its_own_object_and_claims_only_what_was_done(
    node: Node, tmp_path: Path
) -> None:
    study, sop, _ = _store(node, tmp_path)
    series = node.archive.locate(study)[0].series_instance_uid
    url = f"/api/videos/{sop}/teaching-export"
    untouched = {"project": "uids", "blurFaces": False, "detectText": False}
    with client(node, "rad.xa") as radiologist:
        first, again = (radiologist.post(url, json=untouched, timeout=120) for _ in range(2))
        cleaned = radiologist.post(url, json={"project": "uids"}, timeout=120)
    assert first.status_code == again.status_code == cleaned.status_code == 200, first.text
    plain, repeat, full = (dcmread(io.BytesIO(a.content)) for a in (first, again, cleaned))

    # the same options give the same object again; other options another object; neither is
    # the plain study export's instance, while study and series match that export
    remapper = UidRemapper(export_key(node.settings.data_dir, "uids"))
    assert plain.SOPInstanceUID == repeat.SOPInstanceUID
    assert plain.SOPInstanceUID != full.SOPInstanceUID
    assert remapper.remap(sop) not in {plain.SOPInstanceUID, full.SOPInstanceUID}
    assert plain.SOPInstanceUID.startswith("2.25.")
    assert plain.file_meta.MediaStorageSOPInstanceUID == plain.SOPInstanceUID
    for ds in (plain, full):
        assert ds.StudyInstanceUID == remapper.remap(study)
        assert ds.SeriesInstanceUID == remapper.remap(series)

    # nothing was looked for: no claim of clean pixels or of hidden faces
    codes = {item.CodeValue for item in plain.DeidentificationMethodCodeSequence}
    assert "113100" in codes and not codes & {"113101", "113102"}
    assert "BurnedInAnnotation" not in plain
    assert plain.RecognizableVisualFeatures == "YES"
    assert not any("Clean" in m for m in plain.DeidentificationMethod)
    assert full.BurnedInAnnotation == "NO" and full.RecognizableVisualFeatures == "NO"


def test_a_damaged_recording_is_refused_not_a_server_error(node: Node, tmp_path: Path) -> None:
    clip = make_mp4(tmp_path / "ok.mp4", seconds=1.0, size=(320, 240), audio=False)
    data = bytearray(clip.read_bytes())
    start = data.find(b"mdat") + 8
    for offset in range(start, len(data) - 40, 50):  # garbage NAL units all through the stream
        data[offset : offset + 20] = b"\x00\x00\x01" + b"\xff" * 17
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    _, sop, _ = _store(node, tmp_path, clip=damaged)

    with client(node, "rad.xa") as radiologist:
        answer = radiologist.post(
            f"/api/videos/{sop}/teaching-export", json={"project": "p"}, timeout=120
        )
    assert answer.status_code in (400, 422), answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert "cannot be de-identified" in answer.json()["detail"]


def test_a_third_export_at_once_is_told_to_come_back(node: Node, tmp_path: Path) -> None:
    _, sop, _ = _store(node, tmp_path, clip=make_mp4(tmp_path / "c.mp4", seconds=1.0))
    slots = video_export_api._slots
    for _ in range(video_export_api.EXPORT_SLOTS):  # two exports running
        assert slots.acquire(blocking=False)
    try:
        with client(node, "rad.xa") as radiologist:
            busy = radiologist.post(f"/api/videos/{sop}/teaching-export", json={"project": "p"})
    finally:
        for _ in range(video_export_api.EXPORT_SLOTS):
            slots.release()
    assert busy.status_code == 503
    assert int(busy.headers["retry-after"]) > 0
    with client(node, "rad.xa") as radiologist:
        done = radiologist.post(
            f"/api/videos/{sop}/teaching-export", json={"project": "p"}, timeout=120
        )
    assert done.status_code == 200, done.text


def test_an_unknown_video_is_404(node: Node) -> None:
    with client(node) as admin:
        answer = admin.post("/api/videos/1.2.3.4/teaching-export", json={"project": "p"})
    assert answer.status_code == 404


def test_the_cli_cleans_an_mp4_and_a_dicom_video(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from imaging_cloud.cli import main

    clip = make_face_video(tmp_path / "face.mp4", seconds=1.0)
    original = clip.read_bytes()
    out = tmp_path / "clean.mp4"
    argv = ["video", "deidentify", str(clip), "-o", str(out), "--audio", "disguise", "--json"]
    assert main([*argv, "--text-region", "0,0,0.5,0.1"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["audio"] == "disguised" and report["faces_found"] > 0
    assert report["text_regions_configured"] == [[0, 0, 160, 24]]
    assert dominant_hz(out) == pytest.approx(352, abs=8)
    assert clip.read_bytes() == original

    ds = video_dataset(clip, patient_id=PATIENT)
    source = tmp_path / "video.dcm"
    source.write_bytes(to_part10(ds, str(ds.file_meta.TransferSyntaxUID)))
    cleaned = tmp_path / "clean.dcm"
    assert main(["video", "deidentify", str(source), "-o", str(cleaned)]) == 0
    assert "audio removed" in capsys.readouterr().out
    result = dcmread(cleaned)
    assert result.PatientIdentityRemoved == "YES" and result.PatientID != PATIENT
    assert result.SOPInstanceUID != ds.SOPInstanceUID
    movie = tmp_path / "from-dicom.mp4"
    movie.write_bytes(mp4_bytes(result))
    assert dominant_hz(movie) is None

    assert main(["video", "deidentify", str(tmp_path / "missing.mp4"), "-o", str(out)]) == 2
    (tmp_path / "junk.dcm").write_bytes(b"not dicom")
    assert main(["video", "deidentify", str(tmp_path / "junk.dcm"), "-o", str(out)]) == 2
