"""Conformance of a recording to the surgical-video title-review spec, and to DICOM.

`check(facts)` states one finding per rule of the spec (codec H.264/H.265; video bitrate
1024-2500 kbps; at least 25 fps; at least 1920x1080; AAC audio at >= 48 kHz and >= 128 kbps;
stereo preferred, which only warns) and, separately, whether the stream can be stored as
DICOM *without re-encoding* and under which transfer syntax (PS3.5 8.2.7-8.2.11, Annex A):

- H.264 High Profile (Main and Constrained Baseline streams decode as High) at level <= 4.1,
  8-bit 4:2:0, at most 1920x1080 -> 1.2.840.10008.1.2.4.102;
  at level 4.2 (1080p at 50/60 fps) -> 1.2.840.10008.1.2.4.104 (2D video);
  Stereo High at level <= 4.2 -> 1.2.840.10008.1.2.4.106.
- HEVC Main at level <= 5.1 -> 1.2.840.10008.1.2.4.107; Main 10 -> 1.2.840.10008.1.2.4.108.
- The container is MP4 or MPEG-TS (PS3.5: "MPEG-2 Transport Stream ... or MPEG-4 ... MP4
  container"); a QuickTime MOV is remuxed to MP4, which copies the streams unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from collectors.video_probe import VideoFacts

Verdict = Literal["pass", "fail", "warn"]

MPEG4_HP41 = "1.2.840.10008.1.2.4.102"
MPEG4_HP42_2D = "1.2.840.10008.1.2.4.104"
MPEG4_STEREO_HP42 = "1.2.840.10008.1.2.4.106"
HEVC_MAIN = "1.2.840.10008.1.2.4.107"
HEVC_MAIN10 = "1.2.840.10008.1.2.4.108"

MIN_KBPS, MAX_KBPS = 1024, 2500
MIN_FPS = 25.0
MIN_WIDTH, MIN_HEIGHT = 1920, 1080
MIN_AUDIO_HZ = 48_000
MIN_AUDIO_KBPS = 128

_H264_AS_HIGH = {"High", "Main", "Constrained Baseline"}
_CODEC_NAMES = {"h264": "H.264/AVC", "hevc": "H.265/HEVC"}


@dataclass(frozen=True)
class Finding:
    """One rule, what was measured, and the verdict."""

    rule: str
    measured: str
    verdict: Verdict
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {
            "rule": self.rule,
            "measured": self.measured,
            "verdict": self.verdict,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class DicomEncoding:
    """Whether the stream can be wrapped as is, and how."""

    wrappable: bool
    transfer_syntax_uid: str | None
    reason: str
    remux_to_mp4: bool = False  # MOV: copy the streams into an MP4 container first
    transcode_needed: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "wrappable_without_reencoding": self.wrappable,
            "transfer_syntax_uid": self.transfer_syntax_uid,
            "reason": self.reason,
            "remux_to_mp4": self.remux_to_mp4,
            "transcode_needed": self.transcode_needed,
        }


@dataclass(frozen=True)
class ConformanceReport:
    facts: VideoFacts
    findings: list[Finding] = field(default_factory=list)
    dicom: DicomEncoding | None = None

    @property
    def compliant(self) -> bool:
        """True when no rule fails (warnings, such as mono audio, do not count)."""
        return all(f.verdict != "fail" for f in self.findings)

    def finding(self, rule_prefix: str) -> Finding:
        return next(f for f in self.findings if f.rule.startswith(rule_prefix))

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.facts.path,
            "compliant": self.compliant,
            "findings": [f.as_dict() for f in self.findings],
            "dicom": self.dicom.as_dict() if self.dicom else None,
            "facts": self.facts.as_dict(),
        }

    def as_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2)

    def as_text(self) -> str:
        lines = [
            f"File: {self.facts.path}",
            f"Verdict: {'COMPLIANT' if self.compliant else 'NOT COMPLIANT'} with the "
            "surgical-video title-review spec",
        ]
        width = max(len(f.rule) for f in self.findings)
        lines.extend(
            f"  [{f.verdict.upper():4}] {f.rule:<{width}}  {f.measured}: {f.detail}"
            for f in self.findings
        )
        if self.dicom:
            d = self.dicom
            if d.wrappable:
                how = " after remuxing MOV to MP4 (streams copied)" if d.remux_to_mp4 else ""
                lines.append(
                    f"DICOM: can be wrapped without re-encoding{how}, "
                    f"transfer syntax {d.transfer_syntax_uid} ({d.reason})"
                )
            else:
                lines.append(f"DICOM: cannot be wrapped as is: {d.reason}")
                if d.transcode_needed:
                    lines.append(f"       transcode needed: {d.transcode_needed}")
        return "\n".join(lines)


def _kbps(bits: int | None) -> str:
    return "unknown" if not bits else f"{bits / 1000:.0f} kbps"


def _video_findings(facts: VideoFacts) -> list[Finding]:
    codec = _CODEC_NAMES.get(facts.video_codec, facts.video_codec)
    out = [
        Finding(
            "Video codec H.264 or H.265",
            f"{codec} {facts.profile or ''}".strip(),
            "pass" if facts.video_codec in _CODEC_NAMES else "fail",
            "accepted codec" if facts.video_codec in _CODEC_NAMES else "must be H.264 or H.265",
        )
    ]
    kbps = (facts.video_bitrate or 0) / 1000
    ok = MIN_KBPS <= kbps <= MAX_KBPS
    too = "too low" if kbps < MIN_KBPS else "too high"
    out.append(
        Finding(
            f"Video bitrate {MIN_KBPS}-{MAX_KBPS} kbps",
            _kbps(facts.video_bitrate),
            "pass" if ok else "fail",
            "within range" if ok else f"{too}; must be between {MIN_KBPS} and {MAX_KBPS} kbps",
        )
    )
    fps = facts.frame_rate or 0.0
    out.append(
        Finding(
            f"Frame rate at least {MIN_FPS:g} fps",
            f"{fps:.3g} fps",
            "pass" if fps >= MIN_FPS - 0.01 else "fail",
            "enough" if fps >= MIN_FPS - 0.01 else f"below {MIN_FPS:g} fps",
        )
    )
    big = facts.width >= MIN_WIDTH and facts.height >= MIN_HEIGHT
    out.append(
        Finding(
            f"Resolution at least {MIN_WIDTH}x{MIN_HEIGHT}",
            f"{facts.width}x{facts.height}",
            "pass" if big else "fail",
            "full HD or more" if big else f"smaller than {MIN_WIDTH}x{MIN_HEIGHT}",
        )
    )
    return out


def _audio_findings(facts: VideoFacts) -> list[Finding]:
    if not facts.has_audio:
        return [Finding("Audio AAC", "no audio track", "fail", "the recording must carry audio")]
    aac = facts.audio_codec == "aac"
    hz = facts.audio_sample_rate or 0
    kbps = (facts.audio_bitrate or 0) / 1000
    channels = facts.audio_channels or 0
    return [
        Finding(
            "Audio AAC",
            f"{facts.audio_codec} {facts.audio_profile or ''}".strip(),
            "pass" if aac else "fail",
            "accepted codec" if aac else "audio must be AAC",
        ),
        Finding(
            f"Audio sample rate at least {MIN_AUDIO_HZ // 1000} kHz",
            f"{hz / 1000:g} kHz",
            "pass" if hz >= MIN_AUDIO_HZ else "fail",
            "enough" if hz >= MIN_AUDIO_HZ else f"below {MIN_AUDIO_HZ // 1000} kHz",
        ),
        Finding(
            f"Audio bitrate at least {MIN_AUDIO_KBPS} kbps",
            _kbps(facts.audio_bitrate),
            # AAC encoders land a few kbps under their target; 2 % tolerance.
            "pass" if kbps >= MIN_AUDIO_KBPS * 0.98 else "fail",
            "enough" if kbps >= MIN_AUDIO_KBPS * 0.98 else f"below {MIN_AUDIO_KBPS} kbps",
        ),
        Finding(
            "Audio stereo (preferred)",
            {1: "mono", 2: "stereo"}.get(channels, f"{channels} channels"),
            "pass" if channels >= 2 else "warn",
            "stereo" if channels >= 2 else "mono is accepted, stereo is preferred",
        ),
    ]


def dicom_encoding(facts: VideoFacts) -> DicomEncoding:
    """Which MPEG-4 AVC / HEVC transfer syntax fits the stream as it is, if any."""
    remux = facts.container == "mov"
    if facts.container not in ("mp4", "mov", "mpegts"):
        return DicomEncoding(False, None, f"container {facts.container} is not MP4 or MPEG-TS")
    level = facts.level or 0
    size_ok = facts.width <= 1920 and facts.height <= 1080
    fps = facts.frame_rate or 0.0
    to_h264 = "H.264 High Profile level 4.1, yuv420p, at most 1920x1080 at 25/30 fps, AAC 48 kHz"
    if facts.video_codec == "h264":
        if facts.pixel_format not in ("yuv420p", "yuvj420p"):
            return DicomEncoding(
                False,
                None,
                f"pixel format {facts.pixel_format} is not 8-bit 4:2:0",
                transcode_needed=to_h264,
            )
        if facts.profile == "Stereo High" and level <= 42:
            return DicomEncoding(
                True, MPEG4_STEREO_HP42, "H.264 Stereo High level <= 4.2", remux_to_mp4=remux
            )
        if facts.profile not in _H264_AS_HIGH:
            return DicomEncoding(
                False,
                None,
                f"H.264 profile {facts.profile} is not High/Main",
                transcode_needed=to_h264,
            )
        if not size_ok:
            return DicomEncoding(
                False,
                None,
                f"{facts.width}x{facts.height} exceeds 1920x1080",
                transcode_needed=to_h264,
            )
        if level <= 41 and fps <= 30.01:
            return DicomEncoding(
                True,
                MPEG4_HP41,
                f"H.264 {facts.profile} level {facts.level_text}",
                remux_to_mp4=remux,
            )
        if level <= 42 and fps <= 60.01:
            return DicomEncoding(
                True,
                MPEG4_HP42_2D,
                f"H.264 {facts.profile} level {facts.level_text} (2D)",
                remux_to_mp4=remux,
            )
        return DicomEncoding(
            False,
            None,
            f"H.264 level {facts.level_text} at {fps:.3g} fps is above 4.2",
            transcode_needed=to_h264,
        )
    if facts.video_codec == "hevc":
        if level > 153:  # general_level_idc = 30 x level; 5.1 -> 153
            return DicomEncoding(
                False, None, f"HEVC level {facts.level_text} is above 5.1", transcode_needed=to_h264
            )
        if facts.profile == "Main":
            return DicomEncoding(
                True, HEVC_MAIN, f"HEVC Main level {facts.level_text}", remux_to_mp4=remux
            )
        if facts.profile == "Main 10":
            return DicomEncoding(
                True, HEVC_MAIN10, f"HEVC Main 10 level {facts.level_text}", remux_to_mp4=remux
            )
        return DicomEncoding(
            False,
            None,
            f"HEVC profile {facts.profile} is not Main/Main 10",
            transcode_needed=to_h264,
        )
    return DicomEncoding(
        False,
        None,
        f"video codec {facts.video_codec} has no DICOM video transfer syntax here",
        transcode_needed=to_h264,
    )


def check(facts: VideoFacts) -> ConformanceReport:
    """The title-review findings and the DICOM encoding of one probed recording.

    Parameters
    ----------
    facts
        From `collectors.video_probe.probe`.

    Returns
    -------
    ConformanceReport
        `compliant` is true when no finding fails; `dicom` says whether and how the stream
        can be wrapped without re-encoding.
    """
    return ConformanceReport(
        facts=facts,
        findings=_video_findings(facts) + _audio_findings(facts),
        dicom=dicom_encoding(facts),
    )
