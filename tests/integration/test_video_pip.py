"""Picture-in-picture: main picture everywhere, the inset in its corner, main audio in sync."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import av
import numpy as np
import pytest

from collectors.video_pip import PipError, compose_pip
from imaging_cloud.video_pip_cli import add_pip_command
from tests.support.video import make_mp4

pytestmark = pytest.mark.needs_ffmpeg

SIZE = (640, 360)
RED, BLUE = (255, 0, 0), (0, 0, 255)
MAIN_TONE, INSET_TONE = 440, 1000


@pytest.fixture(scope="module")
def recordings(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("pip")
    main = make_mp4(folder / "field.mp4", seconds=2.0, size=SIZE, colour="red", tone_hz=MAIN_TONE)
    inset = make_mp4(
        folder / "panorama.mp4", seconds=2.0, size=SIZE, colour="blue", tone_hz=INSET_TONE
    )
    return main, inset


def _frames_at(path: Path, times: list[float]) -> dict[float, np.ndarray]:
    wanted, found = sorted(times), {}
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            while wanted and frame.time is not None and frame.time >= wanted[0] - 1e-3:
                found[wanted.pop(0)] = frame.to_ndarray(format="rgb24")
    assert not wanted, f"no frames at {wanted}"
    return found


def _is(pixel: np.ndarray, colour: tuple[int, int, int]) -> bool:
    return bool(np.all(np.abs(pixel.astype(int) - np.array(colour)) < 40))


def _region(corner: str) -> tuple[slice, slice]:
    """Rows and columns well inside the inset (30 % width, 2 % margin) for ``corner``."""
    width, height = SIZE
    inset_w, inset_h, margin = 192, 108, 12
    top = margin if corner.startswith("top") else height - margin - inset_h
    left = width - margin - inset_w if corner.endswith("right") else margin
    return slice(top + 10, top + inset_h - 10), slice(left + 10, left + inset_w - 10)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("corner", ["top-right", "bottom-left"])
def test_main_fills_the_picture_and_the_inset_sits_in_its_corner(
    recordings: tuple[Path, Path], tmp_path: Path, corner: str
) -> None:
    main, inset = recordings
    before = (_sha(main), _sha(inset))
    result = compose_pip(main, inset, tmp_path / "pip.mp4", corner=corner)
    assert (_sha(main), _sha(inset)) == before  # originals untouched
    assert (result.width, result.height) == SIZE
    rows, cols = _region(corner)
    opposite = "bottom-left" if corner == "top-right" else "top-right"
    other_rows, other_cols = _region(opposite)
    for moment, picture in _frames_at(result.output, [0.1, 1.0, 1.9]).items():
        assert picture.shape == (SIZE[1], SIZE[0], 3)
        assert _is(picture[rows, cols].mean(axis=(0, 1)), BLUE), (moment, corner)
        assert _is(picture[other_rows, other_cols].mean(axis=(0, 1)), RED), moment
        assert _is(picture[180, 320], RED), moment  # the centre is the main picture
        inset_share = np.mean([_is(p, BLUE) for p in picture[::8, ::8].reshape(-1, 3)])
        assert 0.05 < inset_share < 0.15, inset_share  # about 0.3 x 0.3 of the picture


def test_duration_and_audio_follow_the_main_recording(
    recordings: tuple[Path, Path], tmp_path: Path
) -> None:
    main, inset = recordings
    result = compose_pip(main, inset, tmp_path / "pip.mp4")
    with av.open(str(main)) as source:
        main_duration = float(source.duration or 0) / 1e6
    assert abs(result.duration_seconds - main_duration) <= 0.04  # within one frame at 25 fps
    with av.open(str(result.output)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
        assert audio.sample_rate == 48000 and audio.codec_context.channels == 2
        video_start = float((video.start_time or 0) * video.time_base)
        audio_start = float((audio.start_time or 0) * audio.time_base)
        assert abs(video_start - audio_start) < 0.040
        samples = np.concatenate(
            [f.to_ndarray()[0] for f in container.decode(audio=0)]
        )  # first channel
    seconds = len(samples) / 48000
    assert abs(seconds - main_duration) < 0.1
    middle = samples[4800:-4800]
    crossings = np.count_nonzero(np.diff(np.signbit(middle)))
    frequency = crossings / 2 / (len(middle) / 48000)
    assert abs(frequency - MAIN_TONE) < 20, frequency  # the main camera's sound, not the inset's


def test_offset_delays_the_inset(recordings: tuple[Path, Path], tmp_path: Path) -> None:
    main, inset = recordings
    result = compose_pip(main, inset, tmp_path / "late.mp4", inset_offset=1.0)
    rows, cols = _region("top-right")
    frames = _frames_at(result.output, [0.5, 1.5])
    assert _is(frames[0.5][rows, cols].mean(axis=(0, 1)), RED)  # panorama not started yet
    assert _is(frames[1.5][rows, cols].mean(axis=(0, 1)), BLUE)


def test_refuses_to_overwrite_an_original(recordings: tuple[Path, Path]) -> None:
    main, inset = recordings
    with pytest.raises(PipError):
        compose_pip(main, inset, main)


def test_command_line(
    recordings: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    add_pip_command(parser.add_subparsers(dest="video_command", required=True))
    out = tmp_path / "cli.mp4"
    args = parser.parse_args(["pip", *map(str, recordings), "-o", str(out), "--json"])
    assert args.handler(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["output"] == str(out) and out.stat().st_size > 0
    assert printed["speed_vs_real_time"] > 0
    missing = parser.parse_args(["pip", str(tmp_path / "none.mp4"), str(out), "-o", str(out)])
    assert missing.handler(missing) == 2
