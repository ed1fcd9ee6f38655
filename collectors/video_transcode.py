"""Make a recording storable as DICOM video with the least change: re-encode only what must be.

The rule: a stream that `dicom_encoding` can wrap as is, with AAC audio (or none), is never
touched; the wrapper keeps its bytes. Otherwise `plan_transcode` says what changes and why:

* the video is re-encoded to H.264 High (libx264, 8-bit 4:2:0, same size and frame rate,
  bitrate clamped into the spec's 1024-2500 kbps) only when no MPEG-4 AVC / HEVC transfer
  syntax takes it (MPEG-4 Part 2, VP9, ProRes, H.264 4:2:2 or 10-bit, a level too high) or its
  bitrate is above 2500 kbps; otherwise the video packets are copied;
* the audio is re-encoded to AAC 48 kHz stereo 128 kbps when it is not AAC.

The picture is never enlarged: a recording smaller than 1080p stays that size (its conformance
report says so). A picture larger than 1920x1080 is scaled down to fit, and a frame rate above
60 fps reduced to 60, since no H.264 transfer syntax takes more. Output is MP4 with ``moov``
first. Debian's ``ffmpeg`` binary is used when installed (argument list, no shell), PyAV
otherwise.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

from collectors.video_conformance import MAX_KBPS, MIN_KBPS, dicom_encoding
from collectors.video_probe import VideoError, VideoFacts

logger = logging.getLogger(__name__)

TARGET_KBPS = 2000  # the default aim inside the spec's 1024-2500 kbps
AUDIO_KBPS = 128
AUDIO_HZ = 48_000
MAX_WIDTH, MAX_HEIGHT, MAX_FPS = 1920, 1080, 60.0
MIN_TIMEOUT_S, TIMEOUT_PER_SECOND = 120.0, 10.0  # see `time_allowed`
STDERR_TAIL_BYTES = 4096  # what is kept of FFmpeg's messages for the error
MAX_DETAIL_CHARS = 500  # of that tail, in the VideoError (the whole tail is logged)

# FFmpeg's decoder names where they differ from the codec's (PyAV reports the decoder)
_CODEC_ALIASES = {"mp3float": "mp3", "mp2float": "mp2", "ac3_fixed": "ac3"}

Progress = Callable[[float], None]
"""Called with the fraction done (0.0-1.0) while transcoding."""


@dataclass(frozen=True)
class TranscodePlan:
    """What is to change in a recording, and why. Empty ``reasons``: nothing to do."""

    reencode_video: bool
    reencode_audio: bool
    width: int
    height: int
    frame_rate: float | None
    video_kbps: int | None  # target when the video is re-encoded
    level: str | None  # H.264 level of the output when the video is re-encoded
    reasons: list[str] = field(default_factory=list)
    source_video_codec: str = ""
    source_audio_codec: str | None = None

    @property
    def needed(self) -> bool:
        return self.reencode_video or self.reencode_audio

    @property
    def derivation(self) -> str:
        """A DerivationDescription (0008,2111): what was done, in at most 1024 characters."""
        done = []
        if self.reencode_video:
            done.append(f"video transcoded from {self.source_video_codec} to H.264 High")
        if self.reencode_audio:
            done.append(f"audio transcoded from {self.source_audio_codec} to AAC")
        return ("; ".join(done) + " by imaging-cloud")[:1024]

    def as_dict(self) -> dict[str, Any]:
        return {
            "reencode_video": self.reencode_video,
            "reencode_audio": self.reencode_audio,
            "video": (
                f"H.264 High level {self.level}, yuv420p, {self.width}x{self.height}, "
                f"{self.frame_rate or 0:.3g} fps, {self.video_kbps} kbps"
                if self.reencode_video
                else "copied unchanged"
            ),
            "audio": (
                f"AAC {AUDIO_HZ // 1000} kHz stereo {AUDIO_KBPS} kbps"
                if self.reencode_audio
                else ("copied unchanged" if self.source_audio_codec else "none")
            ),
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class TranscodeResult:
    plan: TranscodePlan
    output: Path
    command: list[str]  # the ffmpeg command run, or ["pyav", ...] when PyAV did it


def _even(value: float) -> int:
    return max(2, int(value) // 2 * 2)


def _output_size(facts: VideoFacts) -> tuple[int, int]:
    """The source size, or scaled down (never up) to fit 1920x1080 with the aspect kept."""
    scale = min(1.0, MAX_WIDTH / facts.width, MAX_HEIGHT / facts.height)
    if scale >= 1.0:
        return facts.width, facts.height
    return _even(facts.width * scale), _even(facts.height * scale)


def plan_transcode(facts: VideoFacts) -> TranscodePlan | None:
    """None when the recording can be wrapped as it is; otherwise what to change and why."""
    encoding = dicom_encoding(facts)
    audio_ok = facts.audio_codec in (None, "aac")
    if encoding.wrappable and audio_ok:
        return None
    reasons: list[str] = []
    kbps = (facts.video_bitrate or 0) / 1000
    reencode_video = not encoding.wrappable or kbps > MAX_KBPS
    if not encoding.wrappable:
        reasons.append(f"video cannot be stored as is: {encoding.reason}")
    elif kbps > MAX_KBPS:
        reasons.append(f"video bitrate {kbps:.0f} kbps is above {MAX_KBPS} kbps")
    audio_name = _CODEC_ALIASES.get(facts.audio_codec or "", facts.audio_codec)
    if not audio_ok:
        reasons.append(f"audio {audio_name} is not AAC")
    width, height = _output_size(facts) if reencode_video else (facts.width, facts.height)
    fps = facts.frame_rate
    if reencode_video and (width, height) != (facts.width, facts.height):
        reasons.append(f"{facts.width}x{facts.height} scaled down to {width}x{height}")
    if reencode_video and fps and fps > MAX_FPS + 0.01:
        reasons.append(f"{fps:.3g} fps reduced to {MAX_FPS:g} fps")
        fps = MAX_FPS
    target = min(max(round(kbps) if kbps else TARGET_KBPS, MIN_KBPS), TARGET_KBPS)
    level = "4.1" if (fps or 25.0) <= 30.01 else "4.2"
    return TranscodePlan(
        reencode_video=reencode_video,
        reencode_audio=not audio_ok,
        width=width,
        height=height,
        frame_rate=fps,
        video_kbps=target if reencode_video else None,
        level=level if reencode_video else None,
        reasons=reasons,
        source_video_codec=_codec_label(facts),
        source_audio_codec=audio_name,
    )


def _codec_label(facts: VideoFacts) -> str:
    label = facts.video_codec
    if facts.profile:
        label += f" {facts.profile}"
    if facts.pixel_format and facts.pixel_format not in ("yuv420p", "yuvj420p"):
        label += f" {facts.pixel_format}"
    return label


def ffmpeg_command(source: Path, target: Path, facts: VideoFacts, plan: TranscodePlan) -> list[str]:
    """The ``ffmpeg`` argument list doing ``plan`` (progress as key=value lines on stdout)."""
    command = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y"]
    command += ["-i", str(source), "-map", "0:v:0", "-map", "0:a:0?", "-sn", "-dn"]
    if plan.reencode_video:
        kbps = plan.video_kbps or TARGET_KBPS
        filters = []
        if (plan.width, plan.height) != (facts.width, facts.height):
            filters.append(f"scale={plan.width}:{plan.height}")
        if plan.frame_rate and facts.frame_rate and plan.frame_rate < facts.frame_rate - 0.01:
            filters.append(f"fps={plan.frame_rate:g}")
        if filters:
            command += ["-vf", ",".join(filters)]
        command += ["-c:v", "libx264", "-profile:v", "high", "-level:v", str(plan.level)]
        command += ["-pix_fmt", "yuv420p", "-preset", "veryfast"]
        command += ["-b:v", f"{kbps}k", "-maxrate", f"{min(kbps, MAX_KBPS)}k"]
        command += ["-bufsize", f"{2 * kbps}k"]
    else:
        command += ["-c:v", "copy"]
    if plan.reencode_audio:
        command += ["-c:a", "aac", "-b:a", f"{AUDIO_KBPS}k", "-ar", str(AUDIO_HZ), "-ac", "2"]
    else:
        command += ["-c:a", "copy"]
    command += ["-movflags", "+faststart", "-f", "mp4"]
    command += ["-progress", "pipe:1", "-nostats", str(target)]
    return command


def transcode(
    source: str | Path,
    target: str | Path,
    facts: VideoFacts,
    plan: TranscodePlan,
    progress: Progress | None = None,
    *,
    use_ffmpeg_binary: bool = True,
    timeout: float | None = None,
) -> TranscodeResult:
    """Carry out ``plan``: write ``target`` (MP4) from ``source``.

    ``timeout`` (seconds) bounds the ``ffmpeg`` run; the default, `time_allowed`, grows with
    the recording's duration.

    Raises
    ------
    VideoError
        FFmpeg (or PyAV) could not decode or encode the recording, or FFmpeg ran past its
        time and was stopped.
    """
    source, target = Path(source), Path(target)
    binary = shutil.which("ffmpeg") if use_ffmpeg_binary else None
    if binary is None:
        _transcode_with_pyav(source, target, facts, plan, progress)
        return TranscodeResult(plan, target, ["pyav", str(source), str(target)])
    command = ffmpeg_command(source, target, facts, plan)
    allowed = time_allowed(facts.duration_s) if timeout is None else timeout
    _run_ffmpeg([binary, *command[1:]], facts.duration_s, progress, allowed)
    logger.info("transcoded %s: %s", source.name, "; ".join(plan.reasons))
    return TranscodeResult(plan, target, command)


def time_allowed(duration: float | None) -> float:
    """How long FFmpeg may take: ten times the recording's duration, at least two minutes.

    ``veryfast`` libx264 runs several times faster than real time at 1080p on one core, so
    only a stuck or pathologically slow run reaches this.
    """
    return max(MIN_TIMEOUT_S, TIMEOUT_PER_SECOND * (duration or 0.0))


def _run_ffmpeg(
    command: list[str], duration: float | None, progress: Progress | None, timeout: float
) -> None:
    """Run FFmpeg, reading its progress lines; its stderr goes to a temporary file.

    A damaged recording makes the decoder print an error per broken macroblock: far more than
    a pipe holds (64 KiB), and FFmpeg blocks writing it while we wait for stdout to end. A file
    never fills up that way; only its last `STDERR_TAIL_BYTES` are read back, for the error
    message. A watchdog kills FFmpeg after ``timeout`` seconds, which also ends stdout.
    """
    with tempfile.TemporaryFile() as errors:
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL, text=True
        ) as process:
            expired = threading.Event()

            def stop() -> None:
                expired.set()
                process.kill()

            watchdog = threading.Timer(timeout, stop)
            watchdog.daemon = True
            watchdog.start()
            try:
                assert process.stdout is not None
                for line in process.stdout:
                    key, _, value = line.strip().partition("=")
                    if progress and duration and key == "out_time_us" and value.isdigit():
                        progress(min(1.0, int(value) / 1e6 / duration))
                code = process.wait()
            except BaseException:
                process.kill()
                raise
            finally:
                watchdog.cancel()
        tail = _tail(errors)
    if expired.is_set():
        raise VideoError(f"transcoding did not finish within {timeout:.0f} s and was stopped")
    if code != 0:
        logger.warning("ffmpeg exited with status %d; its last messages:\n%s", code, tail)
        last = " | ".join(tail.strip().splitlines()[-3:]) or f"exit status {code}"
        raise VideoError(f"transcoding failed: {last[-MAX_DETAIL_CHARS:]}")
    if progress:
        progress(1.0)


def _tail(stream: IO[bytes]) -> str:
    """The last `STDERR_TAIL_BYTES` of what FFmpeg wrote to ``stream``, as text."""
    size = stream.seek(0, os.SEEK_END)
    stream.seek(max(0, size - STDERR_TAIL_BYTES))
    return stream.read().decode("utf-8", "replace")


def _transcode_with_pyav(
    source: Path, target: Path, facts: VideoFacts, plan: TranscodePlan, progress: Progress | None
) -> None:
    """The same plan through PyAV, for machines without the ``ffmpeg`` binary."""
    import av

    try:
        with av.open(str(source)) as src, av.open(str(target), "w", format="mp4", options={
            "movflags": "+faststart"
        }) as dst:  # fmt: skip
            v_in = src.streams.video[0]
            a_in = src.streams.audio[0] if src.streams.audio else None
            rate = Fraction(plan.frame_rate or 25).limit_denominator(1001)
            frames_out = 0
            if plan.reencode_video:
                v_out: Any = dst.add_stream("libx264", rate=rate)
                v_out.width, v_out.height, v_out.pix_fmt = plan.width, plan.height, "yuv420p"
                v_out.bit_rate = (plan.video_kbps or TARGET_KBPS) * 1000
                v_out.options = {"profile": "high", "level": str(plan.level), "preset": "veryfast"}
            else:
                v_out = dst.add_stream_from_template(v_in)
            a_out: Any = None
            if a_in is not None:
                if plan.reencode_audio:
                    a_out = dst.add_stream("aac", rate=AUDIO_HZ)
                    a_out.layout, a_out.bit_rate = "stereo", AUDIO_KBPS * 1000
                else:
                    a_out = dst.add_stream_from_template(a_in)
            resampler = (
                av.AudioResampler("fltp", "stereo", AUDIO_HZ) if plan.reencode_audio else None
            )
            streams = [v_in] + ([a_in] if a_in is not None else [])
            duration = facts.duration_s or 0.0
            for packet in src.demux(streams):
                is_video = packet.stream.index == v_in.index
                reencode = plan.reencode_video if is_video else plan.reencode_audio
                out = v_out if is_video else a_out
                if not reencode:
                    if packet.dts is None:
                        continue
                    packet.stream = out
                    dst.mux(packet)
                    continue
                for frame in packet.decode():
                    if isinstance(frame, av.VideoFrame):
                        if progress and duration and frame.time is not None:
                            progress(min(1.0, frame.time / duration))
                        picture = frame.reformat(plan.width, plan.height, "yuv420p")
                        picture.pts, picture.time_base = frames_out, 1 / rate
                        frames_out += 1
                        dst.mux(out.encode(picture))
                    elif isinstance(frame, av.AudioFrame):
                        assert resampler is not None
                        for chunk in resampler.resample(frame):
                            chunk.pts = None
                            dst.mux(out.encode(chunk))
            for out, reencode in ((v_out, plan.reencode_video), (a_out, plan.reencode_audio)):
                if out is not None and reencode:
                    dst.mux(out.encode(None))
    except av.FFmpegError as exc:
        raise VideoError(f"transcoding failed: {exc}") from exc
    if progress:
        progress(1.0)
