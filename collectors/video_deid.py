"""Clean the pixels and the sound of a surgical recording for teaching (Xuzhou spec).

`deidentify_mp4` writes a new MP4 where

* faces are hidden: OpenCV's bundled Haar cascades (frontal and profile, the profile one also
  on the mirrored picture) run on a downscaled grey copy of every k-th frame; each box is
  enlarged by a margin and applied to every frame from the detection before to the detection
  after it (frames are held back until the next detection), and kept for a few detections
  more, so a face the detector misses once or that moves between detections is never shown
  for a moment;
* burned-in text is blacked out: the regions the caller names (fractions of the picture) and
  the ones found automatically. OR recorders overlay patient name, ID and time in fixed
  places, so a region whose text-like edges (morphological gradient, threshold, closing) are
  in the same place in nearly every sampled frame while the scene itself changes is taken
  for an overlay. A recording whose picture never changes gives no detected region (an
  overlay cannot be told from the scene), which the report says;
* the sound is removed (default), disguised by a pitch shift (voices are identifying) or,
  only when asked, kept.

The video is re-encoded as H.264 (yuv420p) at the source's size and frame rate, with ``moov``
first and the container's metadata (titles, comments, creation times) dropped. The source
file is only read.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import numpy as np

from collectors.video_probe import VideoError, VideoFacts, probe

logger = logging.getLogger(__name__)

AudioAction = Literal["remove", "disguise", "keep"]
AUDIO_ACTIONS: tuple[AudioAction, ...] = ("remove", "disguise", "keep")
# The pitch factor of the disguise: asetrate lowers the pitch (and tempo) by this factor,
# atempo restores the tempo, so a 440 Hz tone comes out at 352 Hz and speech keeps its pace.
PITCH_FACTOR = 0.8
DETECTION_WIDTH = 480  # faces are looked for on a copy this wide (never wider than the source)
TEXT_WIDTH = 640  # burned-in text is looked for on a copy this wide
FACE_MARGIN = 0.35  # each face box grows by this fraction of its size on every side
HOLD_DETECTIONS = 3  # a face stays hidden for this many detections after it was last seen
TEXT_SAMPLES = 12
TEXT_STATIC_SHARE = 0.9  # text edges present in this share of the samples are an overlay
SCENE_CHANGE_MIN = 4.0  # mean temporal std (grey levels) for the scene to count as changing

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, end exclusive
Progress = Callable[[int, int | None], None]


@dataclass
class DeidReport:
    """What was cleaned, for the audit trail and the operator."""

    frames_processed: int = 0
    detection_interval: int = 1  # faces are looked for every this many frames
    detections_run: int = 0
    faces_per_detection: list[int] = field(default_factory=list)
    frames_with_faces_hidden: int = 0
    text_regions_configured: list[Box] = field(default_factory=list)
    text_regions_detected: list[Box] = field(default_factory=list)
    text_detection: str = "off"  # off | done | scene static: no overlay can be told apart
    audio: str = "remove"  # what was done: removed | disguised | kept | none (no audio track)
    width: int = 0
    height: int = 0
    frame_rate: float = 0.0

    @property
    def faces_found(self) -> int:
        return sum(self.faces_per_detection)

    @property
    def regions_masked(self) -> list[Box]:
        return self.text_regions_configured + self.text_regions_detected

    @property
    def text_cleaned(self) -> bool:
        """Whether burned-in text was looked for over the whole picture: regions were given,
        or detection ran on a changing scene. Only then may the copy claim clean pixels."""
        return bool(self.text_regions_configured) or self.text_detection == "done"

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "faces_found": self.faces_found,
            "text_cleaned": self.text_cleaned,
        }


# --- faces ------------------------------------------------------------------------------------


class FaceDetector:
    """OpenCV's bundled Haar cascades: frontal, and profile facing either way."""

    def __init__(self) -> None:
        import cv2

        folder = Path(cv2.data.haarcascades)  # type: ignore[attr-defined]
        self._frontal = cv2.CascadeClassifier(str(folder / "haarcascade_frontalface_default.xml"))
        self._profile = cv2.CascadeClassifier(str(folder / "haarcascade_profileface.xml"))
        if self._frontal.empty() or self._profile.empty():
            raise VideoError("OpenCV's Haar cascades are missing from this installation")

    def detect(self, rgb: np.ndarray) -> list[Box]:
        """Face boxes in ``rgb``'s pixels (not yet enlarged)."""
        import cv2

        height, width = rgb.shape[:2]
        scale = min(1.0, DETECTION_WIDTH / width)
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        if scale < 1.0:
            size = (round(width * scale), round(height * scale))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        grey = cv2.equalizeHist(grey)
        small_width = grey.shape[1]
        minimum = (20, 20)
        found: list[Box] = []
        for x, y, w, h in self._run(self._frontal, grey, minimum):
            found.append((x, y, x + w, y + h))
        for x, y, w, h in self._run(self._profile, grey, minimum):
            found.append((x, y, x + w, y + h))
        for x, y, w, h in self._run(self._profile, cv2.flip(grey, 1), minimum):
            found.append((small_width - x - w, y, small_width - x, y + h))
        return [
            (int(x0 / scale), int(y0 / scale), int(np.ceil(x1 / scale)), int(np.ceil(y1 / scale)))
            for x0, y0, x1, y1 in found
        ]

    @staticmethod
    def _run(cascade: Any, grey: np.ndarray, minimum: tuple[int, int]) -> Iterable[Any]:
        boxes = cascade.detectMultiScale(grey, scaleFactor=1.1, minNeighbors=4, minSize=minimum)
        return [] if len(boxes) == 0 else [tuple(int(v) for v in b) for b in boxes]


def enlarge(box: Box, margin: float, width: int, height: int) -> Box:
    """``box`` grown by ``margin`` of its size on every side, clipped to the picture."""
    x0, y0, x1, y1 = box
    dx, dy = round((x1 - x0) * margin), round((y1 - y0) * margin)
    return max(0, x0 - dx), max(0, y0 - dy), min(width, x1 + dx), min(height, y1 + dy)


def obscure(rgb: np.ndarray, box: Box) -> None:
    """Pixelate to a few blocks, then blur, in place: nothing of a face survives."""
    import cv2

    x0, y0, x1, y1 = box
    if x1 - x0 < 2 or y1 - y0 < 2:
        return
    patch = rgb[y0:y1, x0:x1]
    blocks = cv2.resize(patch, (6, 6), interpolation=cv2.INTER_AREA)
    coarse = cv2.resize(blocks, (x1 - x0, y1 - y0), interpolation=cv2.INTER_NEAREST)
    kernel = max(3, (min(x1 - x0, y1 - y0) // 4) | 1)
    rgb[y0:y1, x0:x1] = cv2.GaussianBlur(coarse, (kernel, kernel), 0)


# --- burned-in text ---------------------------------------------------------------------------


def text_edges(rgb: np.ndarray) -> np.ndarray:
    """A mask of text-like strokes: morphological gradient, Otsu threshold, horizontal close."""
    import cv2

    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    gradient = cv2.morphologyEx(grey, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    _, mask = cv2.threshold(gradient, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)
    mask[gradient < 40] = 0  # a flat picture's Otsu threshold would be noise
    closing = cv2.getStructuringElement(cv2.MORPH_RECT, (9, 3))
    closed: np.ndarray = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, closing)
    return closed


def static_text_regions(samples: Sequence[np.ndarray]) -> tuple[list[Box], bool]:
    """Regions whose text-like edges stay put while the scene changes, in the samples'
    pixels; and whether the scene changed at all (if not, no region can be told apart)."""
    import cv2

    if len(samples) < 3:
        return [], False
    height, width = samples[0].shape[:2]
    scale = min(1.0, TEXT_WIDTH / width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = [cv2.resize(s, size, interpolation=cv2.INTER_AREA) for s in samples]
    greys = np.stack([cv2.cvtColor(s, cv2.COLOR_RGB2GRAY).astype(np.float32) for s in small])
    if float(greys.std(axis=0).mean()) < SCENE_CHANGE_MIN:
        return [], False
    votes = np.sum([text_edges(s) > 0 for s in small], axis=0)
    steady = (votes >= TEXT_STATIC_SHARE * len(small)).astype(np.uint8) * 255
    joined = cv2.morphologyEx(
        steady, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_RECT, (15, 5))
    )
    contours, _ = cv2.findContours(joined, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    regions: list[Box] = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        if not (0.012 * size[1] <= h <= 0.2 * size[1]) or w < 1.5 * h:
            continue  # not a line of text: a dot, a column, or a slab
        if w * h > 0.25 * size[0] * size[1]:
            continue
        if cv2.countNonZero(steady[y : y + h, x : x + w]) < 0.15 * w * h:
            continue
        pad = max(2, h // 4)
        box = (x - pad, y - pad, x + w + pad, y + h + pad)
        regions.append(
            (
                max(0, int(box[0] / scale)),
                max(0, int(box[1] / scale)),
                min(width, int(np.ceil(box[2] / scale))),
                min(height, int(np.ceil(box[3] / scale))),
            )
        )
    return regions, True


def fraction_box(region: Sequence[float], width: int, height: int) -> Box:
    """(x0, y0, x1, y1) fractions of the picture as pixels; refuses anything outside 0..1."""
    if len(region) != 4:
        raise VideoError("a text region is x0,y0,x1,y1 (fractions of the picture)")
    x0, y0, x1, y1 = (float(v) for v in region)
    if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
        raise VideoError(f"text region {tuple(region)} is not inside 0..1 with x0<x1, y0<y1")
    return (
        int(x0 * width),
        int(y0 * height),
        int(np.ceil(x1 * width)),
        int(np.ceil(y1 * height)),
    )


def _sample_frames(src: Path, count: int, frames: int | None) -> list[np.ndarray]:
    """About ``count`` frames spread over the recording, decoded in one pass."""
    import av

    step = max(1, (frames or count) // count)
    picked: list[np.ndarray] = []
    with av.open(str(src)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if index % step == 0:
                picked.append(frame.to_ndarray(format="rgb24"))
                if len(picked) >= count:
                    break
    return picked


# --- the pass ---------------------------------------------------------------------------------


def _ffmpeg(arguments: list[str]) -> None:
    if shutil.which("ffmpeg") is None:
        raise VideoError("FFmpeg is not installed (apt-get install ffmpeg)")
    command = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise VideoError(f"ffmpeg failed: {done.stderr.strip()[-1500:]}")


def audio_arguments(action: AudioAction, sample_rate: int | None) -> list[str]:
    """FFmpeg output options for the sound (after ``-map``)."""
    if action == "keep":
        return ["-c:a", "copy"]
    rate = sample_rate or 48000
    shift = f"asetrate={round(rate * PITCH_FACTOR)},aresample={rate},atempo={1 / PITCH_FACTOR:.6g}"
    return ["-af", shift, "-c:a", "aac", "-b:a", "128k", "-ar", str(rate)]


def deidentify_mp4(
    src: str | Path,
    dst: str | Path,
    *,
    blur_faces: bool = True,
    audio: AudioAction = "remove",
    text_regions: Sequence[Sequence[float]] | None = None,
    detect_text: bool = True,
    progress: Progress | None = None,
) -> DeidReport:
    """Write a cleaned copy of the recording ``src`` to ``dst`` (an MP4).

    Parameters
    ----------
    src
        MP4/MOV/MPEG-TS; never modified.
    dst
        The MP4 to write; must not be ``src``.
    blur_faces
        Hide faces found by the Haar cascades.
    audio
        ``remove`` (no audio stream), ``disguise`` (pitch shifted, AAC) or ``keep``.
    text_regions
        Extra regions to black out, each (x0, y0, x1, y1) as fractions of the picture.
    detect_text
        Also black out overlays found automatically (static text over a changing scene).
    progress
        Called with (frames done, frames expected).

    Raises
    ------
    VideoError
        Unreadable input, a bad region or audio action, or an FFmpeg failure.
    """
    import av

    source, target = Path(src), Path(dst)
    if audio not in AUDIO_ACTIONS:
        raise VideoError(f"audio must be one of {', '.join(AUDIO_ACTIONS)}")
    facts = probe(source)
    if target.resolve() == source.resolve():
        raise VideoError("the output must not overwrite the original")
    width, height = facts.width, facts.height
    configured = [fraction_box(r, width, height) for r in (text_regions or [])]
    rate = Fraction(facts.frame_rate or 25).limit_denominator(1001)
    interval = max(1, round(float(rate) / 5)) if blur_faces else 0  # about 5 detections a second
    report = DeidReport(
        detection_interval=interval,
        text_regions_configured=configured,
        width=width,
        height=height,
        frame_rate=float(rate),
    )
    try:
        _clean_pixels(source, target, facts, report, blur_faces, detect_text, audio, progress)
    except (av.error.FFmpegError, OSError) as exc:
        # A damaged stream (or a failing encoder / full disk) is the input's or the
        # operator's problem, never an internal error.
        raise VideoError(f"the recording cannot be decoded or re-encoded: {exc}") from exc
    logger.info(
        "de-identified %s: %d frames, %d faces found, %d regions masked, audio %s",
        source.name,
        report.frames_processed,
        report.faces_found,
        len(report.regions_masked),
        report.audio,
    )
    return report


def _clean_pixels(
    source: Path,
    target: Path,
    facts: VideoFacts,
    report: DeidReport,
    blur_faces: bool,
    detect_text: bool,
    audio: AudioAction,
    progress: Progress | None,
) -> None:
    """The decode, mask and encode pass of `deidentify_mp4`, filling ``report``."""
    import av

    width, height = report.width, report.height
    rate = Fraction(report.frame_rate).limit_denominator(1001)
    interval = report.detection_interval
    if detect_text:
        samples = _sample_frames(source, TEXT_SAMPLES, facts.frame_count)
        found, changing = static_text_regions(samples)
        report.text_regions_detected = found
        report.text_detection = "done" if changing else "scene static: nothing detected"
    detector = FaceDetector() if blur_faces else None
    with tempfile.TemporaryDirectory(prefix="video-deid-") as tmp:
        silent = Path(tmp) / "video.mp4"
        with av.open(str(source)) as inp, av.open(str(silent), "w", format="mp4") as out:
            stream = inp.streams.video[0]
            stream.thread_type = "AUTO"
            encoder = out.add_stream("libx264", rate=rate)
            encoder.width, encoder.height = width - width % 2, height - height % 2
            encoder.pix_fmt = "yuv420p"
            encoder.options = {"preset": "veryfast", "crf": "20"}
            pending: list[np.ndarray] = []
            recent: deque[list[Box]] = deque(maxlen=HOLD_DETECTIONS)

            def emit(frames: list[np.ndarray], faces: list[Box]) -> None:
                for rgb in frames:
                    for box in faces:
                        obscure(rgb, box)
                    for x0, y0, x1, y1 in report.regions_masked:
                        rgb[y0:y1, x0:x1] = 0
                    if faces:
                        report.frames_with_faces_hidden += 1
                    picture = rgb[: encoder.height, : encoder.width]
                    video_frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
                    video_frame.pts = report.frames_processed
                    report.frames_processed += 1
                    for packet in encoder.encode(video_frame):
                        out.mux(packet)
                    if progress is not None:
                        progress(report.frames_processed, facts.frame_count)

            def hidden() -> list[Box]:
                return [box for boxes in recent for box in boxes]

            for index, frame in enumerate(inp.decode(stream)):
                rgb = np.ascontiguousarray(frame.to_ndarray(format="rgb24"))
                if detector is None:
                    emit([rgb], [])
                    continue
                if index % interval == 0:
                    boxes = [enlarge(b, FACE_MARGIN, width, height) for b in detector.detect(rgb)]
                    report.detections_run += 1
                    report.faces_per_detection.append(len(boxes))
                    recent.append(boxes)  # the frames before this one see it too
                    emit(pending, hidden())
                    pending = []
                pending.append(rgb)
            emit(pending, hidden())
            for packet in encoder.encode():
                out.mux(packet)
        _finish(source, silent, target, facts.has_audio, audio, facts.audio_sample_rate, report)


def _finish(
    source: Path,
    silent: Path,
    target: Path,
    has_audio: bool,
    audio: AudioAction,
    sample_rate: int | None,
    report: DeidReport,
) -> None:
    """The cleaned picture with the sound as asked, ``moov`` first, container metadata gone."""
    arguments = ["-i", str(silent)]
    if has_audio and audio != "remove":
        arguments += ["-i", str(source), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy"]
        arguments += audio_arguments(audio, sample_rate)
        report.audio = "disguised" if audio == "disguise" else "kept"
    else:
        arguments += ["-map", "0:v:0", "-c:v", "copy"]
        report.audio = "removed" if has_audio else "none"
    arguments += ["-map_metadata", "-1", "-map_chapters", "-1", "-shortest"]
    arguments += ["-movflags", "+faststart", "-f", "mp4", str(target)]
    _ffmpeg(arguments)
