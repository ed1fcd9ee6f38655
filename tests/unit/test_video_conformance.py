"""Conformance findings and DICOM transfer-syntax choice from VideoFacts values (no FFmpeg)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from collectors.video_conformance import (
    HEVC_MAIN,
    HEVC_MAIN10,
    MPEG4_HP41,
    MPEG4_HP42_2D,
    check,
    dicom_encoding,
)
from collectors.video_probe import VideoFacts

COMPLIANT = VideoFacts(
    path="or.mp4",
    size_bytes=1,
    container="mp4",
    major_brand="isom",
    video_codec="h264",
    profile="High",
    level=41,
    width=1920,
    height=1080,
    frame_rate=25.0,
    duration_s=2.0,
    frame_count=50,
    video_bitrate=2_000_000,
    pixel_format="yuv420p",
    audio_codec="aac",
    audio_profile="LC",
    audio_sample_rate=48_000,
    audio_channels=2,
    audio_bitrate=128_000,
)


def facts(**changes: object) -> VideoFacts:
    return dataclasses.replace(COMPLIANT, **changes)


def verdicts(f: VideoFacts) -> dict[str, str]:
    return {x.rule: x.verdict for x in check(f).findings}


def test_compliant_recording_passes_every_rule() -> None:
    report = check(COMPLIANT)
    assert report.compliant
    assert set(verdicts(COMPLIANT).values()) == {"pass"}
    assert len(report.findings) == 8
    assert report.dicom is not None and report.dicom.transfer_syntax_uid == MPEG4_HP41


@pytest.mark.parametrize(
    ("changes", "rule", "verdict"),
    [
        ({"video_codec": "mpeg2video"}, "Video codec", "fail"),
        ({"video_codec": "hevc", "profile": "Main", "level": 123}, "Video codec", "pass"),
        ({"video_bitrate": 1_023_000}, "Video bitrate", "fail"),
        ({"video_bitrate": 1_024_000}, "Video bitrate", "pass"),
        ({"video_bitrate": 2_500_000}, "Video bitrate", "pass"),
        ({"video_bitrate": 2_600_000}, "Video bitrate", "fail"),
        ({"video_bitrate": None}, "Video bitrate", "fail"),
        ({"frame_rate": 24.0}, "Frame rate", "fail"),
        ({"frame_rate": 30000 / 1001}, "Frame rate", "pass"),
        ({"width": 1280, "height": 720}, "Resolution", "fail"),
        ({"width": 3840, "height": 2160}, "Resolution", "pass"),
        ({"audio_codec": "mp3"}, "Audio AAC", "fail"),
        ({"audio_sample_rate": 44_100}, "Audio sample rate", "fail"),
        ({"audio_sample_rate": 96_000}, "Audio sample rate", "pass"),
        ({"audio_bitrate": 96_000}, "Audio bitrate", "fail"),
        ({"audio_bitrate": 127_000}, "Audio bitrate", "pass"),  # encoders land just under
        ({"audio_channels": 1}, "Audio stereo", "warn"),
    ],
)
def test_each_rule(changes: dict[str, object], rule: str, verdict: str) -> None:
    report = check(facts(**changes))
    assert report.finding(rule).verdict == verdict


def test_mono_is_only_a_warning() -> None:
    report = check(facts(audio_channels=1))
    assert report.compliant
    assert "stereo is preferred" in report.finding("Audio stereo").detail


def test_missing_audio_fails() -> None:
    report = check(facts(audio_codec=None, audio_sample_rate=None, audio_channels=None))
    assert not report.compliant
    assert report.finding("Audio AAC").measured == "no audio track"


def test_non_compliant_states_every_failure_in_text_and_json() -> None:
    bad = facts(
        width=640,
        height=480,
        frame_rate=15.0,
        video_bitrate=500_000,
        audio_channels=1,
        audio_sample_rate=22_050,
        audio_bitrate=64_000,
    )
    report = check(bad)
    assert not report.compliant
    text = report.as_text()
    assert "NOT COMPLIANT" in text
    assert "640x480" in text and "15 fps" in text and "500 kbps" in text
    assert "22.05 kHz" in text and "64 kbps" in text
    data = json.loads(report.as_json())
    assert data["compliant"] is False
    assert [f["verdict"] for f in data["findings"]].count("fail") == 5
    assert data["dicom"]["wrappable_without_reencoding"] is True


@pytest.mark.parametrize(
    ("changes", "ts", "remux"),
    [
        ({}, MPEG4_HP41, False),
        ({"profile": "Main", "level": 40}, MPEG4_HP41, False),
        ({"container": "mov"}, MPEG4_HP41, True),
        ({"container": "mpegts"}, MPEG4_HP41, False),
        ({"level": 42, "frame_rate": 50.0}, MPEG4_HP42_2D, False),
        ({"video_codec": "hevc", "profile": "Main", "level": 153}, HEVC_MAIN, False),
        ({"video_codec": "hevc", "profile": "Main 10", "level": 150}, HEVC_MAIN10, False),
    ],
)
def test_wrappable_streams(changes: dict[str, object], ts: str, remux: bool) -> None:
    encoding = dicom_encoding(facts(**changes))
    assert encoding.wrappable
    assert encoding.transfer_syntax_uid == ts
    assert encoding.remux_to_mp4 is remux


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"profile": "High 4:2:2", "pixel_format": "yuv422p"}, "4:2:0"),
        ({"profile": "High 10"}, "profile High 10"),
        ({"level": 51, "width": 3840, "height": 2160}, "exceeds 1920x1080"),
        ({"level": 50, "frame_rate": 60.0}, "above 4.2"),
        ({"video_codec": "hevc", "profile": "Main", "level": 156}, "above 5.1"),
        ({"video_codec": "hevc", "profile": "Rext", "level": 120}, "not Main"),
        ({"video_codec": "vp9"}, "no DICOM video transfer syntax"),
        ({"container": "matroska"}, "not MP4"),
    ],
)
def test_unwrappable_streams_say_why(changes: dict[str, object], reason: str) -> None:
    encoding = dicom_encoding(facts(**changes))
    assert not encoding.wrappable
    assert reason in encoding.reason
    assert "DICOM: cannot be wrapped as is" in check(facts(**changes)).as_text()
