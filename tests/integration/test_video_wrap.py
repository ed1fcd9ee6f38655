"""Probe, conformance, wrap and CLI on real H.264/H.265 + AAC files made with Debian's FFmpeg.

The wrapped object must carry the recording unchanged: the video elementary stream taken out
of the DICOM Pixel Data is byte-identical to the one taken out of the original file.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import av
import pytest
from pydicom import dcmread
from pydicom.encaps import generate_fragments

from collectors.video_conformance import HEVC_MAIN, MPEG4_HP41, check
from collectors.video_probe import VideoError, probe
from collectors.video_wrap import VIDEO_ENDOSCOPIC, VIDEO_PHOTOGRAPHIC, wrap, write
from imaging_cloud.cli import main

pytestmark = pytest.mark.needs_ffmpeg

SIDECAR = {
    "patient_id": "OR-0001",
    "patient_name": "Test^Surgical",
    "birth_date": "1970-05-04",
    "sex": "F",
    "accession_number": "ACC42",
    "procedure": "Laparoscopic cholecystectomy",
    "surgeon": "Surgeon^Alice",
    "camera_role": "endoscope",
    "start": "2026-03-04T08:15:00",
}


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *args], check=True, timeout=120)


def _lavfi(size: str, rate: int, hz: int, channels: int) -> list[str]:
    return [
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={size}:rate={rate}",
        "-f",
        "lavfi",
        "-i",
        f"sine=frequency=440:sample_rate={hz}",
        "-ac",
        str(channels),
    ]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    if not shutil.which("ffmpeg"):
        pytest.skip("FFmpeg not installed")
    root = tmp_path_factory.mktemp("videos")
    out = {"compliant": root / "compliant.mp4", "small": root / "small.mp4"}
    _ffmpeg(
        *_lavfi("1920x1080", 25, 48000, 2),
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-profile:v",
        "high",
        "-level",
        "4.1",
        "-b:v",
        "2000k",
        "-maxrate",
        "2000k",
        "-bufsize",
        "4000k",
        "-c:a",
        "aac",
        "-b:a",
        "128k",
        "-t",
        "1",
        str(out["compliant"]),
    )
    _ffmpeg(
        *_lavfi("640x480", 15, 22050, 1),
        "-c:v",
        "libx264",
        "-b:v",
        "500k",
        "-c:a",
        "aac",
        "-b:a",
        "64k",
        "-t",
        "2",
        str(out["small"]),
    )
    out["mov"] = root / "small.mov"
    _ffmpeg("-i", str(out["small"]), "-c", "copy", "-f", "mov", str(out["mov"]))
    if (
        "libx265"
        in subprocess.run(
            ["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True, check=True
        ).stdout
    ):
        out["hevc"] = root / "hevc.mp4"
        _ffmpeg(
            *_lavfi("320x240", 25, 48000, 2),
            "-c:v",
            "libx265",
            "-x265-params",
            "log-level=error",
            "-b:v",
            "300k",
            "-c:a",
            "aac",
            "-t",
            "1",
            str(out["hevc"]),
        )
    return out


def _annexb(path: Path, codec: str) -> bytes:
    return subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(path),
            "-map",
            "0:v:0",
            "-c:v",
            "copy",
            "-bsf:v",
            f"{codec}_mp4toannexb",
            "-f",
            codec,
            "-",
        ],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout


def _audio_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return [bytes(p) for p in container.demux(stream) if p.size]


def _payload(dcm: Path, tmp_path: Path) -> Path:
    ds = dcmread(dcm)
    fragments = [f for f in generate_fragments(ds.PixelData) if f]  # skip the empty BOT
    assert len(fragments) == 1, "PS3.5: the whole stream in one fragment"
    target = tmp_path / "from-dicom.mp4"
    target.write_bytes(fragments[0])
    return target


def test_probe_reads_compliant_file(videos: dict[str, Path]) -> None:
    facts = probe(videos["compliant"])
    assert (facts.container, facts.video_codec, facts.profile, facts.level) == (
        "mp4",
        "h264",
        "High",
        41,
    )
    assert (facts.width, facts.height, facts.frame_rate, facts.frame_count) == (1920, 1080, 25, 25)
    assert facts.audio_codec == "aac" and facts.audio_sample_rate == 48000
    assert facts.audio_channels == 2 and facts.audio_bitrate and facts.video_bitrate
    assert facts.duration_s == pytest.approx(1.0, abs=0.1)


def test_compliant_file_passes(videos: dict[str, Path]) -> None:
    report = check(probe(videos["compliant"]))
    assert report.compliant, report.as_text()
    assert report.dicom is not None and report.dicom.transfer_syntax_uid == MPEG4_HP41


def test_small_file_fails_the_right_rules(videos: dict[str, Path]) -> None:
    report = check(probe(videos["small"]))
    assert not report.compliant
    failed = {
        f.rule.split(" ")[0] + " " + f.rule.split(" ")[1]
        for f in report.findings
        if f.verdict == "fail"
    }
    assert failed == {
        "Video bitrate",
        "Frame rate",
        "Resolution at",
        "Audio sample",
        "Audio bitrate",
    }
    assert report.finding("Audio stereo").verdict == "warn"
    assert report.finding("Resolution").measured == "640x480"


@pytest.mark.parametrize("bad", ["not-a-video.mp4", "dir", "missing.mp4"])
def test_probe_refuses_non_video(tmp_path: Path, bad: str) -> None:
    (tmp_path / "not-a-video.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"junk" * 100)
    (tmp_path / "dir").mkdir()
    with pytest.raises(VideoError):
        probe(tmp_path / bad)


@pytest.mark.parametrize(
    ("name", "codec"), [("compliant", "h264"), ("small", "h264"), ("hevc", "hevc"), ("mov", "h264")]
)
def test_wrap_keeps_streams_byte_exact(
    videos: dict[str, Path], tmp_path: Path, name: str, codec: str
) -> None:
    if name not in videos:
        pytest.skip("FFmpeg without libx265")
    source = videos[name]
    dcm = tmp_path / "video.dcm"
    write(source, SIDECAR, dcm)
    ds = dcmread(dcm)
    assert ds.SOPClassUID == VIDEO_ENDOSCOPIC and ds.Modality == "ES"
    expected_ts = HEVC_MAIN if codec == "hevc" else MPEG4_HP41
    assert ds.file_meta.TransferSyntaxUID == expected_ts
    facts = probe(source)
    assert (ds.Rows, ds.Columns) == (facts.height, facts.width)
    assert ds.NumberOfFrames == facts.frame_count
    assert facts.frame_rate
    assert float(ds.FrameTime) == pytest.approx(1000 / facts.frame_rate)
    assert ds.PhotometricInterpretation == "YBR_PARTIAL_420" and ds.BitsAllocated == 8
    assert ds.PatientID == "OR-0001" and ds.PatientBirthDate == "19700504"
    assert ds.PerformingPhysicianName == "Surgeon^Alice"
    assert ds.StudyDescription == "Laparoscopic cholecystectomy"
    assert ds.SOPInstanceUID.startswith("1.2.826.0.1.3680043.10.1370.")
    inner = _payload(dcm, tmp_path)
    if name != "mov":
        assert inner.read_bytes().rstrip(b"\x00") == source.read_bytes().rstrip(b"\x00")
    else:
        assert probe(inner).container == "mp4"  # remuxed, not re-encoded
    assert _annexb(inner, codec) == _annexb(source, codec)
    assert _audio_packets(inner) == _audio_packets(source)


def test_wrap_in_memory_matches_and_photographic_for_panorama(videos: dict[str, Path]) -> None:
    ds = wrap(videos["small"], {**SIDECAR, "camera_role": "panorama"})
    assert ds.SOPClassUID == VIDEO_PHOTOGRAPHIC and ds.Modality == "XC"
    fragments = [f for f in generate_fragments(ds.PixelData) if f]
    assert fragments[0].rstrip(b"\x00") == videos["small"].read_bytes().rstrip(b"\x00")


@pytest.mark.parametrize(
    "sidecar",
    [
        {"camera_role": "field"},
        {**SIDECAR, "camera_role": "ceiling"},
        {**SIDECAR, "start": "x"},
        {**SIDECAR, "patient_name": "A\\B"},
    ],
)
def test_wrap_refuses_bad_sidecar(videos: dict[str, Path], sidecar: dict[str, str]) -> None:
    with pytest.raises(VideoError):
        wrap(videos["small"], sidecar)


def test_cli_check_exit_codes_and_json(
    videos: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["video", "check", str(videos["compliant"])]) == 0
    assert "COMPLIANT" in capsys.readouterr().out
    assert main(["video", "check", "--json", str(videos["small"])]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["compliant"] is False and len(data["findings"]) == 8
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video")
    assert main(["video", "check", str(junk)]) == 2


def test_cli_wrap(videos: dict[str, Path], tmp_path: Path) -> None:
    sidecar = tmp_path / "s.json"
    sidecar.write_text(json.dumps(SIDECAR))
    out = tmp_path / "out.dcm"
    assert (
        main(["video", "wrap", str(videos["compliant"]), "--sidecar", str(sidecar), "-o", str(out)])
        == 0
    )
    assert dcmread(out).file_meta.TransferSyntaxUID == MPEG4_HP41
    assert (
        main(
            ["video", "wrap", str(tmp_path / "nope.mp4"), "--sidecar", str(sidecar), "-o", str(out)]
        )
        == 2
    )


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"patient_id": "P" * 65}, "'patient_id' has 65 characters; at most 64"),
        ({"accession_number": "A" * 17}, "'accession_number' has 17 characters; at most 16"),
        ({"study_instance_uid": "1.2." + "3" * 61}, "not a valid UID"),
        ({"study_instance_uid": "1.02.3"}, "not a valid UID"),
        ({"study_instance_uid": "1.2.abc"}, "not a valid UID"),
    ],
)
def test_an_identifier_too_long_is_refused_never_cut_short(
    videos: dict[str, Path], change: dict[str, str], words: str
) -> None:
    """Cut to 64 or 16 characters, an identifier can name another patient or procedure."""
    with pytest.raises(VideoError, match=words):
        wrap(videos["small"], {**SIDECAR, **change})


def test_descriptive_text_is_cut_to_its_length_and_a_valid_study_uid_kept(
    videos: dict[str, Path],
) -> None:
    uid = "1.2.826.0.1.3680043.10.1370.7.20260304.1"
    ds = wrap(videos["small"], {**SIDECAR, "procedure": "p" * 100, "study_instance_uid": uid,
                                "patient_id": "P" * 64, "accession_number": "A" * 16})  # fmt: skip
    assert ds.StudyDescription == "p" * 64 and ds.StudyInstanceUID == uid
    assert ds.PatientID == "P" * 64 and ds.AccessionNumber == "A" * 16
