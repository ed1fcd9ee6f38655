"""Transcoding does the minimum: nothing for a storable H.264/AAC recording, the audio only
when only the audio is wrong, the video to H.264 High when no transfer syntax takes it; the
picture is never enlarged. Inputs are made by Debian's FFmpeg, a fraction of a second each."""

from __future__ import annotations

import random
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import av
import pydicom
import pytest

from collectors.video_conformance import dicom_encoding
from collectors.video_intake import prepare
from collectors.video_probe import VideoError, probe
from collectors.video_transcode import plan_transcode, transcode
from tests.support.video import MPEG4_AVC_HP41, make_mp4

pytestmark = pytest.mark.needs_ffmpeg

SIDECAR = {"patient_id": "TX-1", "camera_role": "field"}


def _ffmpeg(path: Path, *arguments: str, seconds: float = 0.6, size: str = "320x240") -> Path:
    command = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
               "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25:duration={seconds}",
               "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=44100:duration={seconds}",
               *arguments, str(path)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return path


def _video_packets(path: Path) -> list[bytes]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return [bytes(p) for p in container.demux(stream) if p.size]


def test_a_storable_recording_is_left_alone(tmp_path: Path) -> None:
    facts = probe(make_mp4(tmp_path / "ok.mp4", seconds=0.6))
    assert plan_transcode(facts) is None
    h264_no_audio = probe(make_mp4(tmp_path / "mute.mp4", seconds=0.6, audio=False))
    assert plan_transcode(h264_no_audio) is None


def test_only_the_audio_is_reencoded_when_only_the_audio_is_wrong(tmp_path: Path) -> None:
    source = _ffmpeg(
        tmp_path / "pcm.mov", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-c:a", "pcm_s16le",
    )  # fmt: skip
    facts = probe(source)
    plan = plan_transcode(facts)
    assert plan is not None and plan.reencode_audio and not plan.reencode_video
    assert plan.reasons == ["audio pcm_s16le is not AAC"]
    seen: list[float] = []
    result = transcode(source, tmp_path / "out.mp4", facts, plan, progress=seen.append)
    assert result.command[0].endswith("ffmpeg") and "copy" in result.command
    after = probe(result.output)
    assert (after.container, after.audio_codec, after.audio_sample_rate) == ("mp4", "aac", 48000)
    assert after.audio_channels == 2
    assert _video_packets(result.output) == _video_packets(source)  # video copied, not touched
    assert seen and seen[-1] == 1.0


def test_mpeg4_part2_and_mp3_become_h264_and_aac(tmp_path: Path) -> None:
    source = _ffmpeg(tmp_path / "legacy.mp4", "-c:v", "mpeg4", "-c:a", "libmp3lame")
    prepared = prepare(source, SIDECAR, tmp_path / "work")
    assert prepared.transcoded
    change = prepared.report["transcode"]
    assert change["reencode_video"] and change["reencode_audio"]
    assert change["command"][0] == "ffmpeg" and "INPUT" in change["command"]
    ds = pydicom.dcmread(prepared.dicom_path, stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == MPEG4_AVC_HP41
    assert list(ds.ImageType) == ["DERIVED", "PRIMARY"]
    assert ds.DerivationDescription.startswith("video transcoded from mpeg4")
    assert (ds.Rows, ds.Columns) == (240, 320)
    assert not list((tmp_path / "work").glob("*.mp4"))  # the intermediate file is gone


def test_h264_422_10bit_is_reencoded_to_420_8bit(tmp_path: Path) -> None:
    source = _ffmpeg(
        tmp_path / "pro.mp4", "-c:v", "libx264", "-preset", "ultrafast",
        "-pix_fmt", "yuv422p10le", "-c:a", "aac",
    )  # fmt: skip
    facts = probe(source)
    assert not dicom_encoding(facts).wrappable
    plan = plan_transcode(facts)
    assert plan is not None and plan.reencode_video and not plan.reencode_audio
    after = probe(transcode(source, tmp_path / "out.mp4", facts, plan).output)
    assert (after.video_codec, after.profile, after.pixel_format) == ("h264", "High", "yuv420p")
    assert dicom_encoding(after).transfer_syntax_uid == MPEG4_AVC_HP41


def test_a_picture_above_1080p_is_scaled_down_and_none_is_enlarged(tmp_path: Path) -> None:
    source = _ffmpeg(
        tmp_path / "big.mp4", "-c:v", "mpeg4", "-q:v", "31", "-c:a", "aac",
        seconds=0.2, size="2560x1440",
    )  # fmt: skip
    facts = probe(source)
    plan = plan_transcode(facts)
    assert plan is not None and (plan.width, plan.height) == (1920, 1080)
    assert any("scaled down" in reason for reason in plan.reasons)
    small = plan_transcode(probe(_ffmpeg(tmp_path / "small.mp4", "-c:v", "mpeg4")))
    assert small is not None and (small.width, small.height) == (320, 240)


def test_a_stream_above_2500_kbps_with_wrong_audio_is_brought_into_range(tmp_path: Path) -> None:
    source = _ffmpeg(
        tmp_path / "fat.mp4", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
        "-b:v", "4M", "-minrate", "4M", "-maxrate", "4M", "-bufsize", "2M",
        "-x264-params", "nal-hrd=cbr", "-c:a", "libmp3lame",
    )  # fmt: skip
    facts = probe(source)
    assert (facts.video_bitrate or 0) > 2_500_000 and dicom_encoding(facts).wrappable
    plan = plan_transcode(facts)
    assert plan is not None and plan.reencode_video and plan.video_kbps == 2000
    assert any("above 2500 kbps" in reason for reason in plan.reasons)


def test_pyav_does_the_same_without_the_ffmpeg_binary(tmp_path: Path) -> None:
    source = _ffmpeg(tmp_path / "legacy.mp4", "-c:v", "mpeg4", "-c:a", "libmp3lame")
    facts = probe(source)
    plan = plan_transcode(facts)
    assert plan is not None
    result = transcode(source, tmp_path / "out.mp4", facts, plan, use_ffmpeg_binary=False)
    assert result.command[0] == "pyav"
    after = probe(result.output)
    assert (after.video_codec, after.audio_codec) == ("h264", "aac")
    assert after.frame_rate == pytest.approx(25.0)
    assert dicom_encoding(after).wrappable


def test_transcoding_can_be_refused(tmp_path: Path) -> None:
    source = _ffmpeg(tmp_path / "legacy.mp4", "-c:v", "mpeg4", "-c:a", "aac")
    with pytest.raises(VideoError, match="needs transcoding"):
        prepare(source, SIDECAR, tmp_path / "work", transcode=False)


def test_the_wrap_command_transcodes_like_the_intake_or_refuses_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from imaging_cloud.cli import main

    source = _ffmpeg(tmp_path / "legacy.mp4", "-c:v", "mpeg4", "-c:a", "libmp3lame")
    sidecar = tmp_path / "s.json"
    sidecar.write_text('{"patient_id": "P-CLI"}')
    out = tmp_path / "out.dcm"
    wrap = ["video", "wrap", str(source), "--sidecar", str(sidecar), "-o", str(out)]
    assert main([*wrap, "--no-transcode"]) == 1
    assert not out.exists()
    assert "needs transcoding" in capsys.readouterr().err
    assert main(wrap) == 0
    assert "transcoded: video cannot be stored as is" in capsys.readouterr().out
    ds = pydicom.dcmread(out)
    assert ds.file_meta.TransferSyntaxUID.startswith("1.2.840.10008.1.2.4.10")  # MPEG-4 AVC
    assert ds.PatientID == "P-CLI" and ds.ImageType[0] == "DERIVED"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".video-wrap-")] == []


def _in_thread(work: Callable[[], object], seconds: float) -> object:
    """Run ``work`` in a daemon thread; fail (instead of hanging the run) after ``seconds``."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s: ffmpeg is stuck"
    return outcome[0]


def test_a_damaged_recording_flooding_ffmpeg_errors_never_hangs_the_intake(
    tmp_path: Path,
) -> None:
    """Decoding errors of a damaged MPEG-4 Part 2 recording fill more than a pipe's 64 KiB of
    stderr; the transcode must finish (or fail with VideoError) instead of waiting forever."""
    source = _ffmpeg(tmp_path / "legacy.mp4", "-c:v", "mpeg4", "-c:a", "libmp3lame",
                     seconds=20, size="160x120")  # fmt: skip
    data = bytearray(source.read_bytes())
    noise = random.Random(8)
    for at in range(len(data) * 5 // 100, len(data) * 85 // 100, 5):  # moov (at the end) kept
        data[at] = noise.randrange(256)
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    facts = probe(damaged)
    plan = plan_transcode(facts)
    assert plan is not None and plan.reencode_video
    outcome = _in_thread(lambda: transcode(damaged, tmp_path / "out.mp4", facts, plan), 60)
    if isinstance(outcome, BaseException):
        assert isinstance(outcome, VideoError), outcome
    else:
        assert probe(tmp_path / "out.mp4").video_codec == "h264"


def test_a_transcode_that_runs_past_its_time_is_stopped(tmp_path: Path) -> None:
    source = _ffmpeg(tmp_path / "legacy.mp4", "-c:v", "mpeg4", "-c:a", "libmp3lame", seconds=4)
    facts = probe(source)
    plan = plan_transcode(facts)
    assert plan is not None
    outcome = _in_thread(
        lambda: transcode(source, tmp_path / "out.mp4", facts, plan, timeout=0.01), 60
    )
    assert isinstance(outcome, VideoError) and "did not finish" in outcome.detail
