"""Operating-room recordings reach the cloud: dropped in a gateway's watched video folder,
posted to the gateway's ``POST /videos``, or posted to the cloud's ``POST /api/videos``.
A compliant H.264/AAC recording is stored byte for byte; a non-compliant one is transcoded
and says so; bad input is refused with a reason and nothing stored."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments

from cloud.archive import Archive
from cloud.errors import InstanceNotFoundError
from gateway.config import GatewayConfig
from gateway.service import Gateway
from imaging_cloud.node import Node
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.ports import free_ports
from tests.support.servers import client, http_base
from tests.support.video import MPEG4_AVC_HP41, make_mp4

pytestmark = pytest.mark.needs_ffmpeg

PASSWORD = "video-intake-pass-1"
SIDECAR = {
    "patient_id": "OR-0001",
    "patient_name": "Doe^Jane",
    "birth_date": "1970-05-04",
    "sex": "F",
    "accession_number": "ACC42",
    "procedure": "Laparoscopic cholecystectomy",
    "surgeon": "Surgeon^Alice",
    "camera_role": "endoscope",
    "start": "2026-03-04T08:15:00",
}


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A compliant H.264/AAC MP4 and an MPEG-4 Part 2 + MP3 one (both 320x240, 1 s)."""
    folder = tmp_path_factory.mktemp("recordings")
    compliant = make_mp4(folder / "compliant.mp4", seconds=1.0)
    legacy = folder / "legacy.mp4"
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25:duration=1",
         "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100:duration=1",
         "-c:v", "mpeg4", "-c:a", "libmp3lame", str(legacy)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return {"compliant": compliant, "legacy": legacy}


def _pixel_payload(data: bytes) -> bytes:
    """The single Pixel Data fragment of a stored video object (one trailing pad byte kept)."""
    ds = pydicom.dcmread(io.BytesIO(data))
    offset_table, *fragments = generate_fragments(ds.PixelData)
    assert offset_table == b"" and len(fragments) == 1
    return fragments[0]


def _stored(archive: Archive, study_uid: str) -> list[bytes]:
    try:
        return [archive.read(found) for found in archive.locate(study_uid)]
    except InstanceNotFoundError:
        return []


def _wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _post_video(
    http: httpx.Client,
    path: str,
    video: bytes,
    sidecar: dict[str, Any] | str | None,
    *,
    name: str = "recording.mp4",
    params: dict[str, str] | None = None,
) -> httpx.Response:
    files: dict[str, Any] = {"file": (name, video, "video/mp4")}
    if sidecar is not None:
        text = sidecar if isinstance(sidecar, str) else json.dumps(sidecar)
        files["sidecar"] = ("sidecar.json", text.encode(), "application/json")
    return http.post(path, files=files, params=params, timeout=120)


def _is_problem(response: httpx.Response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert words.lower() in response.json()["detail"].lower(), response.json()


# -- the cloud's POST /api/videos ---------------------------------------------------------


def test_a_compliant_recording_is_stored_byte_for_byte(
    sqlite_node: Node, recordings: dict[str, Path]
) -> None:
    original = recordings["compliant"].read_bytes()
    with client(sqlite_node) as http:
        answer = _post_video(http, "/api/videos", original, SIDECAR)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["transcoded"] is False
    assert body["transferSyntaxUid"] == MPEG4_AVC_HP41
    assert body["sopClassUid"] == "1.2.840.10008.5.1.4.1.1.77.1.1.1"  # endoscope
    assert body["conformance"]["file"] == "recording.mp4"
    assert body["conformance"]["dicom"]["wrappable_without_reencoding"] is True
    [stored] = _stored(sqlite_node.archive, body["studyInstanceUid"])
    assert _pixel_payload(stored)[: len(original)] == original
    ds = pydicom.dcmread(io.BytesIO(stored), stop_before_pixels=True)
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY"]
    assert ds.PatientID == "OR-0001" and ds.AccessionNumber == "ACC42"
    assert ds.SOPInstanceUID == body["sopInstanceUid"]


def test_a_legacy_recording_is_transcoded_and_says_what_changed(
    sqlite_node: Node, recordings: dict[str, Path]
) -> None:
    with client(sqlite_node) as http:
        answer = _post_video(http, "/api/videos", recordings["legacy"].read_bytes(), SIDECAR)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert body["transcoded"] is True
    assert body["transferSyntaxUid"] == MPEG4_AVC_HP41
    change = body["conformance"]["transcode"]
    assert change["reencode_video"] and change["reencode_audio"]
    assert any("mpeg4" in reason for reason in change["reasons"])
    assert any("not AAC" in reason for reason in change["reasons"])
    after = body["conformance"]["after_transcode"]
    assert after["facts"]["video_codec"] == "h264" and after["facts"]["audio_codec"] == "aac"
    assert (after["facts"]["width"], after["facts"]["height"]) == (320, 240)  # never upscaled
    resolution = next(f for f in after["findings"] if f["rule"].startswith("Resolution"))
    assert resolution["verdict"] == "fail"  # and the report says it is below 1080p
    [stored] = _stored(sqlite_node.archive, body["studyInstanceUid"])
    ds = pydicom.dcmread(io.BytesIO(stored))
    assert list(ds.ImageType) == ["DERIVED", "PRIMARY"]
    assert "transcoded from mpeg4" in ds.DerivationDescription
    assert ds.LossyImageCompression == "01"
    assert _pixel_payload(stored)[4:8] == b"ftyp"  # an MP4 inside
    if shutil.which("dcmdump"):
        dump = subprocess.run(
            ["dcmdump", "-M", "+P", "0002,0010", "-"], input=stored, capture_output=True
        ).stdout.decode()
        assert "MPEG4HighProfile/Level4.1" in dump  # DCMTK names the transfer syntax


def test_a_video_joining_a_study_by_accession_repeats_the_study_as_the_index_has_it(
    sqlite_node: Node, recordings: dict[str, Path]
) -> None:
    spec = StudySpec(
        patient=PatientSpec(
            patient_id="PID-77", patient_name="Li^Na", birth_date="19800515", sex="F"
        ),
        study_date="20260301",
        study_time="101500",
        accession_number="A777",
        study_description="Appendectomy",
        referring_physician_name="Zhou^Referrer",
        study_id="S-9",
    )
    ct = [to_part10(ds) for ds in ct_series(spec, slices=1, size=16)]
    study_uid = str(pydicom.dcmread(io.BytesIO(ct[0]), stop_before_pixels=True).StudyInstanceUID)
    sqlite_node.archive.store(ct[0], source="test")
    video = recordings["compliant"].read_bytes()
    sidecar = {"camera_role": "field", "surgeon": "Zhang^Wei", "procedure": "Conversion to open",
               "start": "2026-03-04T08:15:00", "study_date": "2020-01-01"}  # fmt: skip
    with client(sqlite_node) as http:
        answer = _post_video(http, "/api/videos", video, sidecar, params={"accession": "A777"})
        assert answer.status_code == 201, answer.text
        none = _post_video(http, "/api/videos", video, {}, params={"accession": "NOSUCH"})
        other = _post_video(http, "/api/videos", video, {**sidecar, "patient_id": "PID-78"},
                            params={"accession": "A777"})  # fmt: skip
    _is_problem(none, 422, "no study")
    _is_problem(other, 422, "differs from the study")
    body = answer.json()
    assert body["studyInstanceUid"] == study_uid  # the video joins the study
    stored = _stored(sqlite_node.archive, study_uid)
    assert len(stored) == 2
    video_ds = next(
        ds
        for ds in (pydicom.dcmread(io.BytesIO(d), stop_before_pixels=True) for d in stored)
        if ds.SOPInstanceUID == body["sopInstanceUid"]
    )
    assert video_ds.PatientID == "PID-77" and str(video_ds.PatientName) == "Li^Na"
    assert video_ds.PatientBirthDate == "19800515" and video_ds.PatientSex == "F"
    assert video_ds.PerformingPhysicianName == "Zhang^Wei"
    # the study's attributes are the study's, not the recording's
    assert (video_ds.StudyDate, video_ds.StudyTime) == ("20260301", "101500")
    assert video_ds.StudyDescription == "Appendectomy" and video_ds.AccessionNumber == "A777"
    assert video_ds.ReferringPhysicianName == "Zhou^Referrer" and video_ds.StudyID == "S-9"
    # what was done and when it was recorded belong to the video
    assert video_ds.PerformedProcedureStepDescription == "Conversion to open"
    assert (video_ds.ContentDate, video_ds.ContentTime) == ("20260304", "081500")
    assert video_ds.AcquisitionDateTime == "20260304081500"


def test_a_part_with_endless_headers_is_refused(
    sqlite_node: Node, recordings: dict[str, Path]
) -> None:
    """Form-part headers are held in memory while parsed: 16 KiB of them is the most (the
    parser itself allows 8 lines of 4 KiB; older releases had no limit at all)."""
    boundary = "videoformboundary"
    padding = "".join(f"X-Padding-{n}: {'x' * 3000}\r\n" for n in range(6))
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="sidecar"; filename="s.json"\r\n'
            f"{padding}\r\n{json.dumps(SIDECAR)}\r\n"
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="r.mp4"\r\n'
            "Content-Type: video/mp4\r\n\r\n"
        ).encode()
        + recordings["compliant"].read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    with client(sqlite_node) as http:
        answer = http.post(
            "/api/videos",
            content=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
    _is_problem(answer, 400, "headers exceed")


def test_bad_uploads_are_refused_and_nothing_is_stored(
    sqlite_node: Node, recordings: dict[str, Path]
) -> None:
    archive = sqlite_node.archive
    archive.hospitals.add_hospital("HV", "Video Hospital", ae_title="HV_GW")
    archive.users.create_user("clin.v", PASSWORD, "clinician", hospital_id="HV")
    video = recordings["compliant"].read_bytes()
    with client(sqlite_node) as http:
        _is_problem(_post_video(http, "/api/videos", b"not a video at all", SIDECAR), 400,
                    "not a readable video")  # fmt: skip
        _is_problem(_post_video(http, "/api/videos", video[: len(video) // 3], SIDECAR), 400, "")
        _is_problem(_post_video(http, "/api/videos", video, None), 422, "no 'sidecar'")
        _is_problem(_post_video(http, "/api/videos", video, "{not json"), 422, "not valid JSON")
        _is_problem(
            _post_video(http, "/api/videos", video, {**SIDECAR, "patient-id": "x"}), 422, "unknown"
        )
        _is_problem(
            _post_video(http, "/api/videos", video, {"camera_role": "field"}), 422, "patient_id"
        )
        _is_problem(
            _post_video(http, "/api/videos", video, SIDECAR, name="../../etc/evil.mp4"), 400,
            "plain name",
        )  # fmt: skip
        _is_problem(_post_video(http, "/api/videos", video, SIDECAR, name="notes.txt"), 415, "")
        raw = http.post("/api/videos", content=video, headers={"Content-Type": "video/mp4"})
        _is_problem(raw, 415, "multipart/form-data")
    with client(sqlite_node, "clin.v") as clinician:  # no upload permission
        assert _post_video(clinician, "/api/videos", video, SIDECAR).status_code == 403
    with client(sqlite_node, None) as nobody:
        assert _post_video(nobody, "/api/videos", video, SIDECAR).status_code == 401
    with archive.sessions() as session:
        from sqlalchemy import func, select

        from cloud.models import Instance

        assert session.scalar(select(func.count()).select_from(Instance)) == 0


# -- through a running gateway ------------------------------------------------------------


@pytest.fixture
def gateway_setup(sqlite_node: Node, tmp_path: Path) -> Iterator[tuple[Gateway, Path, int]]:
    credential = sqlite_node.archive.hospitals.add_hospital("HG", "Gateway", ae_title="HGGW")
    watched = tmp_path / "or-recordings"
    watched.mkdir()
    push_port, scp_port = free_ports(2)
    config = GatewayConfig(
        cloud_url=http_base(sqlite_node),
        credential=credential,
        spool_dir=tmp_path / "spool",
        hospital_id="HG",
        ae_title="HGGW",
        dicom_port=scp_port,
        sources=[
            {"kind": "video_folder", "path": str(watched), "settle_seconds": 0.3,
             "interval_seconds": 0.2},
            {"kind": "http_push", "port": push_port, "credential": "push-secret"},
        ],
    )  # fmt: skip
    gateway = Gateway(config)
    gateway.start()
    try:
        yield gateway, watched, push_port
    finally:
        gateway.close()


def _video_in_cloud(archive: Archive, patient_id: str) -> Callable[[], bytes | None]:
    def find() -> bytes | None:
        from sqlalchemy import select

        from cloud.models import Patient, Study

        with archive.sessions() as session:
            uids = session.scalars(
                select(Study.study_instance_uid)
                .join(Patient, Study.patient_pk == Patient.pk)
                .where(Patient.patient_id == patient_id)
            ).all()
        for uid in uids:
            for data in _stored(archive, uid):
                return data
        return None

    return find


def test_recordings_dropped_in_the_watched_folder_reach_the_cloud(
    sqlite_node: Node,
    gateway_setup: tuple[Gateway, Path, int],
    recordings: dict[str, Path],
) -> None:
    archive = sqlite_node.archive
    _, watched, _ = gateway_setup
    # written the way an FTP server does: a temporary name, renamed when complete
    (watched / "ACC1.json").write_text(json.dumps({**SIDECAR, "patient_id": "DROP-1"}))
    shutil.copy(recordings["compliant"], watched / "ACC1.mp4.part")
    (watched / "ACC1.mp4.part").rename(watched / "ACC1.mp4")
    (watched / "ACC2.json").write_text(json.dumps({**SIDECAR, "patient_id": "DROP-2"}))
    shutil.copy(recordings["legacy"], watched / "ACC2.mp4")
    (watched / "ACC3.json").write_text('{"patient_id": "DROP-3", "sex": "X"}')
    shutil.copy(recordings["compliant"], watched / "ACC3.mp4")
    shutil.copy(recordings["compliant"], watched / "NOSIDECAR.mov")

    compliant = _wait_for(_video_in_cloud(archive, "DROP-1"), 60, "the compliant recording")
    original = recordings["compliant"].read_bytes()
    assert _pixel_payload(compliant)[: len(original)] == original  # not re-encoded
    transcoded = _wait_for(_video_in_cloud(archive, "DROP-2"), 90, "the transcoded recording")
    ds = pydicom.dcmread(io.BytesIO(transcoded))
    assert ds.file_meta.TransferSyntaxUID == MPEG4_AVC_HP41
    assert list(ds.ImageType) == ["DERIVED", "PRIMARY"]
    owner = archive.hospitals.by_id("HG")
    assert owner is not None
    assert archive.hospitals.study_manifest(owner, str(ds.StudyInstanceUID))

    _wait_for(lambda: (watched / "failed" / "NOSIDECAR.reason.txt").exists(), 30, "refusal")
    _wait_for(lambda: (watched / "failed" / "ACC3.reason.txt").exists(), 30, "bad sidecar")
    assert "sex must be" in (watched / "failed" / "ACC3.reason.txt").read_text()
    assert (watched / "failed" / "ACC3.json").exists() and (
        watched / "failed" / "ACC3.mp4"
    ).exists()
    assert "no worklist" in (watched / "failed" / "NOSIDECAR.reason.txt").read_text()
    _wait_for(lambda: (watched / "done" / "ACC2.mp4").exists(), 30, "moved to done/")
    assert sorted(p.name for p in (watched / "done").iterdir()) == [
        "ACC1.json", "ACC1.mp4", "ACC2.json", "ACC2.mp4"
    ]  # fmt: skip
    assert not _video_in_cloud(archive, "DROP-3")()


def test_a_recording_posted_to_the_gateway_reaches_the_cloud(
    sqlite_node: Node,
    gateway_setup: tuple[Gateway, Path, int],
    recordings: dict[str, Path],
) -> None:
    _, _, port = gateway_setup
    original = recordings["compliant"].read_bytes()
    with httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": "Bearer push-secret"}
    ) as push:
        _wait_for(lambda: _answers(push), 10, "the push listener")
        answer = _post_video(push, "/videos", original, {**SIDECAR, "patient_id": "PUSH-V"})
        assert answer.status_code == 201, answer.text
        assert answer.json()["transcoded"] is False
        _is_problem(_post_video(push, "/videos", original, '{"patient_id": 1, "x": 2}'), 422,
                    "unknown")  # fmt: skip
        _is_problem(_post_video(push, "/videos", b"\x00" * 100, SIDECAR), 400, "")
    stored = _wait_for(_video_in_cloud(sqlite_node.archive, "PUSH-V"), 60, "the pushed video")
    assert _pixel_payload(stored)[: len(original)] == original


def _answers(http: httpx.Client) -> bool:
    try:
        http.get("/")
    except httpx.TransportError:
        return False
    return True


def test_a_sources_file_declares_a_video_folder_and_its_mistakes_are_named(
    tmp_path: Path,
) -> None:
    from collectors.intake import SinkResult
    from collectors.video_folder import video_folder_from_config
    from gateway.config import load_sources_file

    watched = tmp_path / "videos"
    watched.mkdir()
    sources = tmp_path / "sources.toml"
    sources.write_text(
        f'[[sources]]\nkind = "video_folder"\npath = "{watched}"\nsettle_seconds = 30\n'
        'worklist_host = "ris.example"\nworklist_port = 104\nworklist_ae = "RIS"\n'
    )
    _, [entry] = load_sources_file(sources)

    def sink(data: bytes, origin: str) -> SinkResult:
        return SinkResult(0)

    collector = video_folder_from_config(entry, sink, workdir=tmp_path / "w", calling_ae="GW")
    assert collector.root == watched and (watched / "done").is_dir()
    mistakes: list[tuple[dict[str, Any], str]] = [
        ({"settle_second": 3}, "unknown keys"),
        ({"path": "relative/dir"}, "absolute path"),
        ({"worklist_port": 0}, "worklist_port"),
        ({"worklist_ae": "A" * 17}, "16 characters"),
        ({"transcode": "yes"}, "true or false"),
    ]
    for change, words in mistakes:
        with pytest.raises(ValueError, match=words):
            video_folder_from_config({**entry, **change}, sink, workdir=tmp_path, calling_ae="GW")
    partial = {k: v for k, v in entry.items() if k != "worklist_ae"}
    with pytest.raises(ValueError, match="all of worklist_host"):
        video_folder_from_config(partial, sink, workdir=tmp_path, calling_ae="GW")


# -- a worklist that matches loosely ------------------------------------------------------


@pytest.fixture
def loose_worklist() -> Iterator[tuple[int, list[Dataset]]]:
    """A worklist SCP (pynetdicom) answering every query with its items, whatever was asked:
    the behaviour of a RIS that ignores a key or matches case-insensitively."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ModalityWorklistInformationFind  # type: ignore[attr-defined]

    items: list[Dataset] = []

    def on_find(event: Any) -> Iterator[tuple[int, Dataset | None]]:
        for item in items:
            yield 0xFF00, item

    ae = AE(ae_title="LOOSE")
    ae.add_supported_context(ModalityWorklistInformationFind)
    [port] = free_ports(1)
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_FIND, on_find)]
    )
    assert server is not None
    try:
        yield port, items
    finally:
        server.shutdown()


def _scheduled(accession: str, patient_id: str) -> Dataset:
    item = Dataset()
    item.PatientID, item.PatientName, item.AccessionNumber = patient_id, "Wu^Lan", accession
    item.StudyInstanceUID = "1.2.826.0.1.3680043.10.1370.99.1"
    return item


def test_a_worklist_item_for_another_accession_or_patient_is_no_match(
    loose_worklist: tuple[int, list[Dataset]],
) -> None:
    from collectors.worklist import find_worklist_item

    port, items = loose_worklist

    def ask(**keys: str) -> dict[str, Any] | None:
        return find_worklist_item("127.0.0.1", port, "LOOSE", "ORCAM1", timeout=10, **keys)

    items.append(_scheduled("acc100", "P-1"))  # case differs: not the accession asked for
    assert ask(accession_number="ACC100") is None
    items[:] = [_scheduled("ACC100", "P-1")]
    assert ask(accession_number="ACC100", patient_id="P-2") is None
    found = ask(accession_number="ACC100")
    assert found is not None and found["patient_id"] == "P-1"
    items.append(_scheduled("ACC1000", "P-3"))  # a prefix match left out, the exact one kept
    found = ask(accession_number="ACC100")
    assert found is not None and found["patient_id"] == "P-1"


# -- the watched folder gives up on a recording that keeps failing ------------------------


def test_a_recording_that_keeps_failing_is_given_up_but_a_full_spool_is_waited_for(
    tmp_path: Path, recordings: dict[str, Path]
) -> None:
    """An unexpected error is tried three times, then the recording goes to failed/ with the
    reason (not re-transcoded every poll forever); "not now" from the spool never counts."""
    from collectors.intake import SinkResult
    from collectors.video_folder import VideoFolderCollector

    calls: dict[str, int] = {}

    def sink(data: bytes, origin: str) -> SinkResult:
        name = Path(origin).name
        calls[name] = calls.get(name, 0) + 1
        if name == "BROKEN.mp4":
            raise RuntimeError("the spool's journal is corrupt")
        return SinkResult(0xA700, "spool full")  # FULL.mp4: out of resources, try later

    watched = tmp_path / "watched"
    watched.mkdir()
    for name in ("BROKEN", "FULL"):
        shutil.copy(recordings["compliant"], watched / f"{name}.mp4")
        (watched / f"{name}.json").write_text(json.dumps(SIDECAR))
    collector = VideoFolderCollector(watched, sink, workdir=tmp_path / "work", settle_seconds=0)
    for _ in range(6):
        collector.poll_once()
    assert calls["BROKEN.mp4"] == 3
    reason = (watched / "failed" / "BROKEN.reason.txt").read_text()
    assert "3 attempts" in reason and "journal is corrupt" in reason
    assert (watched / "failed" / "BROKEN.json").exists()
    assert calls["FULL.mp4"] >= 4 and (watched / "FULL.mp4").exists()  # still waiting
    assert not (watched / "failed" / "FULL.reason.txt").exists()


def test_a_recording_that_cannot_be_prepared_is_given_up_after_three_attempts(
    tmp_path: Path, recordings: dict[str, Path]
) -> None:
    from collectors.intake import SinkResult
    from collectors.video_folder import VideoFolderCollector

    def sink(data: bytes, origin: str) -> SinkResult:
        return SinkResult(0)

    watched = tmp_path / "watched"
    watched.mkdir()
    shutil.copy(recordings["compliant"], watched / "ACC9.mp4")
    (watched / "ACC9.json").write_text(json.dumps(SIDECAR))
    blocked = tmp_path / "work"
    blocked.write_text("a file where the work directory should be")
    collector = VideoFolderCollector(watched, sink, workdir=blocked, settle_seconds=0)
    reports = [collector.poll_once() for _ in range(4)]
    assert [r.failed for r in reports] == [0, 1, 1, 0] and reports[3].quarantined == 1
    reason = (watched / "failed" / "ACC9.reason.txt").read_text()
    assert "could not prepare (3 attempts)" in reason and "FileExistsError" in reason
