"""The teaching de-identification of recordings: faces, burned-in text, sound.

The face is scikit-image's ``astronaut`` photograph (public domain, NASA), panned with FFmpeg
so the scene changes, with a name and ID burned in at a fixed place like an OR recorder's
overlay, and a 440 Hz tone as the sound track.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from collectors.video_deid import (
    FaceDetector,
    deidentify_mp4,
    static_text_regions,
)
from collectors.video_probe import VideoError, probe

pytestmark = pytest.mark.needs_ffmpeg

FONT = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"
SIZE = (320, 240)
OVERLAY = (10, 212, 160, 234)  # where the burned-in name/ID is drawn: x0, y0, x1, y1 (pixels)


def make_face_video(path: Path, *, seconds: float = 2.0, tone_hz: int = 440) -> Path:
    """A 320x240 25 fps H.264 + AAC clip: the astronaut's face panning, with ``张三 ID 123456``
    burned in at the bottom left, and a sine tone."""
    from PIL import Image
    from skimage import data

    still = path.with_suffix(".png")
    Image.fromarray(data.astronaut()).save(still)  # type: ignore[no-untyped-call]
    picture = (
        "[0:v]scale=480:480,crop=320:240:x='40+40*t':y='20+10*t',"
        f"drawtext=fontfile={FONT}:text='张三 ID 123456':x={OVERLAY[0]}:y={OVERLAY[1] + 2}:"
        "fontsize=16:fontcolor=white,format=yuv420p[v]"
    )
    command = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-loop", "1", "-i", str(still)]
    command += ["-f", "lavfi", "-i", f"sine=frequency={tone_hz}:sample_rate=48000"]
    command += ["-filter_complex", picture, "-map", "[v]", "-map", "1:a", "-t", str(seconds)]
    command += ["-r", "25", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac"]
    command += ["-ar", "48000", "-movflags", "+faststart", str(path)]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return path


def frames_of(path: Path) -> list[np.ndarray]:
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def frontal_faces(rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
    """An independent look for a face: OpenCV's frontal cascade alone, on the full frame."""
    import cv2

    folder = cv2.data.haarcascades  # type: ignore[attr-defined]
    cascade = cv2.CascadeClassifier(folder + "haarcascade_frontalface_default.xml")
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    found = cascade.detectMultiScale(grey, 1.1, 4, minSize=(30, 30))
    return [(int(x), int(y), int(w), int(h)) for x, y, w, h in found]


def overlap(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    """Intersection over union of two (x, y, w, h) boxes."""
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / float(a[2] * a[3] + b[2] * b[3] - inter)


def dominant_hz(path: Path) -> float | None:
    """The strongest frequency of the first audio track, or None without one."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        chunks = [f.to_ndarray()[0] for f in container.decode(stream)]
        rate = stream.codec_context.sample_rate
    signal = np.concatenate(chunks).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal))))
    return float(np.fft.rfftfreq(len(signal), 1 / rate)[int(np.argmax(spectrum[1:])) + 1])


@pytest.fixture(scope="module")
def face_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_face_video(tmp_path_factory.mktemp("face") / "face.mp4")


def test_the_face_is_found_in_the_recording_and_not_in_the_cleaned_copy(
    face_clip: Path, tmp_path: Path
) -> None:
    before = frames_of(face_clip)
    assert sum(1 for f in before if frontal_faces(f)) >= len(before) * 0.8
    assert FaceDetector().detect(before[0])  # the product's detector sees it too
    out = tmp_path / "clean.mp4"
    report = deidentify_mp4(face_clip, out, audio="remove")
    after = frames_of(out)
    assert report.frames_processed == len(before) == len(after)
    assert report.faces_found >= report.detections_run * 0.8
    assert report.frames_with_faces_hidden == len(after)
    # nothing face-like is left where the face was (a blurred blob elsewhere may still fool
    # a Haar cascade now and then; it shows nobody)
    for was, now in zip(before, after, strict=True):
        for face in frontal_faces(was):
            assert all(overlap(face, seen) < 0.2 for seen in frontal_faces(now))
    facts = probe(out)
    assert (facts.width, facts.height) == SIZE
    assert facts.video_codec == "h264" and facts.pixel_format == "yuv420p"
    assert facts.frame_rate == pytest.approx(25.0)
    assert not facts.has_audio


def test_the_burned_in_overlay_is_found_and_blacked_out(face_clip: Path, tmp_path: Path) -> None:
    found, changing = static_text_regions(frames_of(face_clip)[::4])
    assert changing
    x0, y0, x1, y1 = OVERLAY
    assert any(
        r[0] <= x0 + 2 and r[1] <= y0 + 4 and r[2] >= x1 - 30 and r[3] >= y1 - 4 for r in found
    ), found
    out = tmp_path / "clean.mp4"
    deidentify_mp4(face_clip, out, blur_faces=False, audio="remove")
    for frame in frames_of(out)[::10]:
        text = frame[y0 + 4 : y1 - 4, x0 + 2 : x0 + 100]
        assert text.max() < 40 and float(text.std()) < 5  # uniform black, no letters


def test_a_configured_region_is_uniform_in_the_output(face_clip: Path, tmp_path: Path) -> None:
    out = tmp_path / "clean.mp4"
    report = deidentify_mp4(
        face_clip, out, blur_faces=False, detect_text=False, text_regions=[(0.5, 0.0, 1.0, 0.25)]
    )
    assert report.text_regions_configured == [(160, 0, 320, 60)]
    assert report.text_detection == "off"
    assert report.text_cleaned  # the caller named where the text is
    for frame in frames_of(out)[::10]:
        region = frame[4:56, 164:316]
        assert float(region.std()) < 3 and region.max() < 40


def test_the_voice_is_pitch_shifted_or_removed_and_the_source_is_untouched(
    face_clip: Path, tmp_path: Path
) -> None:
    original = face_clip.read_bytes()
    assert dominant_hz(face_clip) == pytest.approx(440, abs=5)
    disguised = tmp_path / "disguised.mp4"
    report = deidentify_mp4(face_clip, disguised, audio="disguise", blur_faces=False)
    assert report.audio == "disguised"
    assert dominant_hz(disguised) == pytest.approx(440 * 0.8, abs=6)
    kept = tmp_path / "kept.mp4"
    assert deidentify_mp4(face_clip, kept, audio="keep", blur_faces=False).audio == "kept"
    assert dominant_hz(kept) == pytest.approx(440, abs=5)
    assert face_clip.read_bytes() == original


def test_bad_arguments_are_refused(face_clip: Path, tmp_path: Path) -> None:
    with pytest.raises(VideoError):
        deidentify_mp4(face_clip, face_clip)
    with pytest.raises(VideoError):
        deidentify_mp4(face_clip, tmp_path / "x.mp4", text_regions=[(0.5, 0.5, 0.2, 0.9)])
    with pytest.raises(VideoError):
        deidentify_mp4(face_clip, tmp_path / "x.mp4", audio="shout")  # type: ignore[arg-type]


def test_text_cleaning_is_claimed_only_when_it_could_run(face_clip: Path, tmp_path: Path) -> None:
    """A changing scene with detection, or named regions: cleaned. A picture that never
    changes (an overlay cannot be told from the scene), or no detection and no regions: not."""
    from tests.support.video import make_mp4

    panning = deidentify_mp4(face_clip, tmp_path / "a.mp4", blur_faces=False)
    assert panning.text_detection == "done" and panning.text_cleaned
    assert panning.as_dict()["text_cleaned"] is True
    off = deidentify_mp4(face_clip, tmp_path / "b.mp4", blur_faces=False, detect_text=False)
    assert not off.text_cleaned
    still = make_mp4(tmp_path / "still.mp4", seconds=1.0, size=SIZE, colour="red", audio=False)
    static = deidentify_mp4(still, tmp_path / "c.mp4", blur_faces=False)
    assert static.text_detection.startswith("scene static") and not static.text_cleaned


def test_a_damaged_stream_is_a_video_error(tmp_path: Path) -> None:
    """PyAV's decoding errors on a broken stream are the input's fault, never a crash."""
    from tests.support.video import make_mp4

    data = bytearray(make_mp4(tmp_path / "ok.mp4", seconds=1.0, size=SIZE).read_bytes())
    start = data.find(b"mdat") + 8
    for offset in range(start, len(data) - 40, 50):
        data[offset : offset + 20] = b"\x00\x00\x01" + b"\xff" * 17
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    assert probe(damaged).video_codec == "h264"  # the headers still look fine
    with pytest.raises(VideoError, match="cannot be decoded"):
        deidentify_mp4(damaged, tmp_path / "out.mp4", blur_faces=False)
