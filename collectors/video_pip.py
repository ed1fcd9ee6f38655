"""Picture-in-picture of two synchronised operating-room recordings (Debian FFmpeg).

The field or endoscope camera is the main picture for the whole duration; the panorama is a
fixed inset in one corner (no switching), as the surgical-video spec asks. Only the main
recording's audio is kept: both cameras' microphones hear the same room, and mixing two copies
of it a few milliseconds apart gives comb-filter echo, while the surgeon's voice is on the main
(field/endoscope) recording. The output is H.264 (yuv420p, 2000 kbps average, capped at
2400, inside the spec's 1024-2500) + AAC 160 kbps 48 kHz stereo with ``moov`` first, so it can
be wrapped as DICOM video without re-encoding and played progressively. The inputs are only
read.

The recordings are aligned by their start: ``inset_offset`` seconds > 0 means the panorama
started that much after the main camera (its picture appears then), < 0 that it started before
(its first seconds are skipped). Before it starts and after it ends, the main picture is alone.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")


class PipError(Exception):
    """The recordings cannot be read or composed."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class PipResult:
    output: Path
    encode_seconds: float
    duration_seconds: float  # of the output
    width: int
    height: int

    @property
    def speed(self) -> float:
        """Encoded seconds of video per second of wall time (> 1: faster than real time)."""
        return self.duration_seconds / self.encode_seconds if self.encode_seconds else 0.0


def _video_facts(path: Path) -> tuple[int, int, float, bool]:
    """Width, height, duration (s) and whether it has audio, read with PyAV."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise PipError(f"{path.name}: no video stream")
            video = container.streams.video[0]
            duration = float(container.duration or 0) / 1_000_000
            if video.duration and video.time_base:
                duration = float(video.duration * video.time_base)
            width, height = video.codec_context.width, video.codec_context.height
            return width, height, duration, bool(container.streams.audio)
    except (OSError, av.FFmpegError) as exc:
        raise PipError(f"{path.name}: cannot read: {exc}") from exc


def _position(corner: str, margin: int) -> tuple[str, str]:
    if corner not in CORNERS:
        raise PipError(f"corner must be one of {', '.join(CORNERS)}")
    vertical, horizontal = corner.split("-")
    x = f"main_w-overlay_w-{margin}" if horizontal == "right" else str(margin)
    y = f"main_h-overlay_h-{margin}" if vertical == "bottom" else str(margin)
    return x, y


def pip_command(
    main: Path,
    inset: Path,
    out: Path,
    *,
    main_size: tuple[int, int],
    duration: float,
    has_audio: bool,
    inset_scale: float = 0.3,
    corner: str = "top-right",
    inset_offset: float = 0.0,
    preset: str = "veryfast",
    video_kbps: int = 2000,
) -> list[str]:
    """The FFmpeg argument list (no shell) that composes ``out``."""
    if not 0.05 <= inset_scale <= 0.9:
        raise PipError("inset_scale must be between 0.05 and 0.9")
    width = main_size[0]
    inset_width = max(2, int(width * inset_scale) // 2 * 2)
    x, y = _position(corner, margin=max(2, round(width * 0.02)) // 2 * 2)
    inset_input: list[str] = []
    if inset_offset > 0:
        inset_input = ["-itsoffset", f"{inset_offset:.3f}"]
    elif inset_offset < 0:
        inset_input = ["-ss", f"{-inset_offset:.3f}"]
    graph = (
        f"[1:v]scale={inset_width}:-2,setsar=1[inset];"
        f"[0:v][inset]overlay=x={x}:y={y}:eof_action=pass:repeatlast=0,format=yuv420p[v]"
    )
    command = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
    command += ["-i", str(main), *inset_input, "-i", str(inset)]
    command += ["-filter_complex", graph, "-map", "[v]"]
    if has_audio:
        command += ["-map", "0:a:0", "-c:a", "aac", "-b:a", "160k", "-ar", "48000", "-ac", "2"]
    command += ["-c:v", "libx264", "-preset", preset, "-pix_fmt", "yuv420p"]
    # a capped average bitrate keeps the result inside the spec's 1024-2500 kbps
    cap = min(2400, int(video_kbps * 1.2))
    command += ["-b:v", f"{video_kbps}k", "-maxrate", f"{cap}k", "-bufsize", f"{2 * cap}k"]
    command += ["-t", f"{duration:.3f}", "-movflags", "+faststart", str(out)]
    return command


def compose_pip(
    main: Path,
    inset: Path,
    out: Path,
    *,
    inset_scale: float = 0.3,
    corner: str = "top-right",
    inset_offset: float = 0.0,
    preset: str = "veryfast",
) -> PipResult:
    """Compose ``main`` (field/endoscope) with ``inset`` (panorama) into ``out``.

    Parameters
    ----------
    main, inset
        The two recordings (any container/codec FFmpeg reads); neither is changed.
    out
        The MP4 to write (H.264 + AAC); must not be one of the inputs.
    inset_scale
        Inset width as a fraction of the main picture's width.
    corner
        ``top-left``, ``top-right``, ``bottom-left`` or ``bottom-right``.
    inset_offset
        Seconds the panorama started after the main recording (negative: before).
    preset
        x264 preset: speed against size.

    Returns
    -------
    PipResult
        The output, how long encoding took and the output's duration, so speed relative to
        real time can be reported.
    """
    if shutil.which("ffmpeg") is None:
        raise PipError("FFmpeg is not installed (apt-get install ffmpeg)")
    main, inset, out = Path(main), Path(inset), Path(out)
    if out.resolve() in (main.resolve(), inset.resolve()):
        raise PipError("the output must not overwrite an original")
    width, height, duration, has_audio = _video_facts(main)
    _video_facts(inset)
    command = pip_command(
        main, inset, out, main_size=(width, height), duration=duration, has_audio=has_audio,
        inset_scale=inset_scale, corner=corner, inset_offset=inset_offset, preset=preset,
    )  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    encode_seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise PipError(f"ffmpeg failed: {done.stderr.strip()[-2000:]}")
    _, _, out_duration, _ = _video_facts(out)
    logger.info(
        "picture-in-picture %dx%d, %.2f s of video in %.2f s", width, height, out_duration,
        encode_seconds,
    )  # fmt: skip
    return PipResult(out, encode_seconds, out_duration, width, height)
