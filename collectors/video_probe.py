"""What an operating-room recording is made of, read with PyAV without decoding it.

`probe` opens an MP4/MOV (or MPEG-TS) file and reports the facts the conformance report and
the DICOM wrapper need: container, video codec, profile, level, size, frame rate, duration,
frame count, bitrates and the audio track. Nothing is decoded; when the container does not
state a bitrate or a frame count, they are computed from the packet headers.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# Containers PS3.5 allows for the MPEG-4 AVC / HEVC transfer syntaxes (MP4 or MPEG-TS);
# QuickTime MOV is read too, and remuxed (not re-encoded) to MP4 by the wrapper.
READABLE_FORMATS = ("mov", "mp4", "mpegts")


class VideoError(Exception):
    """A file that is not a usable video: unreadable, not video, or not a regular file.

    Carries the same DIMSE and HTTP statuses as the archive's `InvalidDatasetError`, so the
    gateway and the HTTP intake can refuse it the same way (collectors may not import cloud).
    """

    dimse_status: int = 0xC000
    http_status: int = 400
    title: str = "Unusable video"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class VideoFacts:
    """Measured properties of one recording. Bitrates in bit/s, durations in seconds."""

    path: str
    size_bytes: int
    container: str  # "mp4", "mov" (QuickTime brand) or "mpegts"
    major_brand: str | None
    video_codec: str  # FFmpeg's codec name: "h264", "hevc", ...
    profile: str | None  # "High", "Main", "Main 10", ...
    level: int | None  # as coded: H.264 level_idc (41 = 4.1), HEVC general_level_idc (153 = 5.1)
    width: int
    height: int
    frame_rate: float | None  # average frames per second
    duration_s: float | None
    frame_count: int | None
    video_bitrate: int | None
    pixel_format: str | None
    audio_codec: str | None = None
    audio_profile: str | None = None
    audio_sample_rate: int | None = None
    audio_channels: int | None = None
    audio_bitrate: int | None = None

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None

    @property
    def level_text(self) -> str | None:
        """The level as people write it: "4.1" for H.264, "5.1" for HEVC."""
        if self.level is None or self.level <= 0:
            return None
        if self.video_codec == "hevc":
            return f"{self.level / 30:g}"
        return f"{self.level / 10:g}"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "level_text": self.level_text}


def _regular_file(path: str | Path) -> Path:
    """Refuse what is not a plain file: directories, devices, FIFOs, dangling links."""
    p = Path(path)
    if "\x00" in str(p):
        raise VideoError("file name contains a NUL byte")
    try:
        resolved = p.resolve(strict=True)
    except (OSError, RuntimeError) as exc:
        raise VideoError(f"cannot open {p.name!r}: {exc.__class__.__name__}") from exc
    if not resolved.is_file():
        raise VideoError(f"{p.name!r} is not a regular file")
    if resolved.stat().st_size == 0:
        raise VideoError(f"{p.name!r} is empty")
    return resolved


def _container_name(format_name: str, metadata: dict[str, str]) -> str:
    if "mpegts" in format_name:
        return "mpegts"
    if "mp4" in format_name or "mov" in format_name:
        brand = metadata.get("major_brand", "").strip()
        return "mov" if brand == "qt" else "mp4"
    return format_name


def _packet_stats(container: Any, streams: list[Any]) -> dict[int, tuple[int, int, float | None]]:
    """{stream index: (packets, bytes, seconds)} from packet headers only (no decoding)."""
    stats: dict[int, list[Any]] = {s.index: [0, 0, None, None] for s in streams}
    for packet in container.demux(streams):
        if packet.size == 0:  # the flush packet
            continue
        entry = stats[packet.stream.index]
        entry[0] += 1
        entry[1] += packet.size
        if packet.pts is not None:
            end = packet.pts + (packet.duration or 0)
            entry[2] = packet.pts if entry[2] is None else min(entry[2], packet.pts)
            entry[3] = end if entry[3] is None else max(entry[3], end)
    result = {}
    for stream in streams:
        count, size, first, last = stats[stream.index]
        seconds = None
        if first is not None and last is not None and stream.time_base:
            seconds = float((last - first) * stream.time_base)
        result[stream.index] = (count, size, seconds)
    return result


def probe(path: str | Path) -> VideoFacts:
    """Read the facts of a video file with PyAV.

    Parameters
    ----------
    path
        An MP4, MOV or MPEG-TS file.

    Returns
    -------
    VideoFacts

    Raises
    ------
    VideoError
        The path is not a regular file, the file cannot be parsed, or it has no video stream.
    """
    import av  # lazily: PyAV is only needed by the video intake

    resolved = _regular_file(path)
    try:
        container = av.open(str(resolved), mode="r")
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoError(f"{resolved.name!r} is not a readable video file") from exc
    with container:
        format_name = container.format.name
        if not any(name in format_name.split(",") for name in READABLE_FORMATS):
            raise VideoError(f"{resolved.name!r} is a {format_name!r} file, not MP4/MOV/MPEG-TS")
        if not container.streams.video:
            raise VideoError(f"{resolved.name!r} has no video stream")
        video = container.streams.video[0]
        vcc = video.codec_context
        audio = container.streams.audio[0] if container.streams.audio else None
        rate = video.average_rate or video.guessed_rate
        duration = None
        if video.duration is not None and video.time_base:
            duration = float(video.duration * video.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000
        frames = video.frames or None
        bitrate = video.bit_rate or vcc.bit_rate or None
        audio_facts: dict[str, Any] = {}
        if audio is not None:
            acc = audio.codec_context
            audio_facts = {
                "audio_codec": acc.name,
                "audio_profile": acc.profile,
                "audio_sample_rate": acc.sample_rate or None,
                "audio_channels": acc.channels or None,
                "audio_bitrate": audio.bit_rate or acc.bit_rate or None,
            }
        missing_audio_rate = audio is not None and not audio_facts["audio_bitrate"]
        if frames is None or not bitrate or missing_audio_rate:
            streams = [video] + ([audio] if audio is not None else [])
            try:
                stats = _packet_stats(container, streams)
            except av.FFmpegError as exc:
                raise VideoError(f"{resolved.name!r} has unreadable packets") from exc
            count, size, seconds = stats[video.index]
            frames = frames or count or None
            duration = duration or seconds
            if not bitrate and duration:
                bitrate = round(size * 8 / duration)
            if missing_audio_rate and audio is not None:
                _, audio_size, audio_seconds = stats[audio.index]
                if audio_seconds:
                    audio_facts["audio_bitrate"] = round(audio_size * 8 / audio_seconds)
        facts = VideoFacts(
            path=str(resolved),
            size_bytes=resolved.stat().st_size,
            container=_container_name(format_name, dict(container.metadata)),
            major_brand=container.metadata.get("major_brand"),
            video_codec=vcc.name,
            profile=vcc.profile,
            level=vcc.level if vcc.level and vcc.level > 0 else None,
            width=vcc.width,
            height=vcc.height,
            frame_rate=float(Fraction(rate)) if rate else None,
            duration_s=duration,
            frame_count=frames,
            video_bitrate=bitrate,
            pixel_format=vcc.pix_fmt,
            **audio_facts,
        )
    if facts.width <= 0 or facts.height <= 0:
        raise VideoError(f"{resolved.name!r} has a video stream without a picture size")
    logger.info(
        "probed video: %s %s %sx%s %.3g fps",
        facts.container,
        facts.video_codec,
        facts.width,
        facts.height,
        facts.frame_rate or 0,
    )
    return facts
