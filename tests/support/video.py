"""Test videos: small H.264/AAC MP4 files made by Debian's FFmpeg, and minimal DICOM video
objects around them.

Provenance: every file is generated here from FFmpeg's ``lavfi`` sources (``color``,
``testsrc2``, ``sine``); nothing is read from the network. `video_dataset` is a stand-in for
``collectors.video_wrap.wrap`` (built in parallel) and can be switched to it later: it puts the
MP4 bytes, unchanged, into one encapsulated Pixel Data fragment (PS3.5 A.4.13, MPEG-4 AVC/H.264
High Profile / Level 4.1, transfer syntax 1.2.840.10008.1.2.4.102).
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, generate_uid

from imaging_cloud.synthetic import to_part10

VIDEO_PHOTOGRAPHIC = "1.2.840.10008.5.1.4.1.1.77.1.4.1"
VIDEO_ENDOSCOPIC = "1.2.840.10008.5.1.4.1.1.77.1.1.1"
MPEG4_AVC_HP41 = "1.2.840.10008.1.2.4.102"


def make_mp4(
    path: Path,
    *,
    seconds: float = 2.0,
    size: tuple[int, int] = (320, 240),
    rate: int = 25,
    colour: str | None = "red",
    tone_hz: int = 440,
    audio: bool = True,
    gop: int | None = None,
) -> Path:
    """An H.264 (yuv420p) + AAC (48 kHz stereo) MP4 with ``moov`` first.

    ``colour=None`` draws FFmpeg's ``testsrc2`` pattern (moving content, for seeking) instead
    of a solid colour."""
    width, height = size
    picture = (
        f"color=c={colour}:size={width}x{height}:rate={rate}:duration={seconds}"
        if colour
        else f"testsrc2=size={width}x{height}:rate={rate}:duration={seconds}"
    )
    command = ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", picture]
    if audio:
        tone = f"sine=frequency={tone_hz}:sample_rate=48000:duration={seconds}"
        command += ["-f", "lavfi", "-i", tone]
    command += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    command += ["-g", str(gop or rate)]
    if audio:
        command += ["-c:a", "aac", "-b:a", "128k", "-ar", "48000", "-ac", "2"]
    command += ["-movflags", "+faststart", str(path)]
    subprocess.run(command, check=True, capture_output=True, timeout=120)
    return path


def probe(path: Path) -> tuple[int, int, int, float]:
    """Width, height, frame count and frame time (ms) of the first video stream (PyAV)."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = stream.frames or sum(1 for _ in container.demux(stream) if _.size)
        rate = float(stream.average_rate or 25)
        return stream.codec_context.width, stream.codec_context.height, frames, 1000.0 / rate


def video_dataset(
    mp4: Path,
    *,
    patient_id: str = "P-VIDEO",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    sop_class_uid: str = VIDEO_PHOTOGRAPHIC,
    department: str = "",
) -> Dataset:
    """A minimal Video Photographic (or Endoscopic) Image object holding ``mp4`` unchanged."""
    width, height, frames, frame_time = probe(mp4)
    now = datetime.now(UTC)
    ds = Dataset()
    ds.SOPClassUID = UID(sop_class_uid)
    ds.SOPInstanceUID = UID(sop_uid or generate_uid())
    ds.StudyInstanceUID = UID(study_uid or generate_uid())
    ds.SeriesInstanceUID = UID(series_uid or generate_uid())
    ds.PatientID = patient_id
    ds.PatientName = f"Video^{patient_id}"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = "VID1"
    ds.StudyID = "1"
    ds.ReferringPhysicianName = ""
    ds.Modality = "XC" if sop_class_uid == VIDEO_PHOTOGRAPHIC else "ES"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.InstitutionalDepartmentName = department
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Manufacturer = "imaging-cloud tests"
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "YBR_PARTIAL_420"
    ds.PlanarConfiguration = 0
    ds.Rows, ds.Columns = height, width
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = round(frame_time, 3)
    ds.CineRate = round(1000.0 / frame_time)
    ds.LossyImageCompression = "01"
    ds.PixelData = encapsulate([mp4.read_bytes()], has_bot=False)  # PS3.5 8.2.8: empty BOT
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def video_part10(mp4: Path, **fields: str) -> bytes:
    """`video_dataset` as Part-10 bytes in the MPEG-4 AVC transfer syntax."""
    return to_part10(video_dataset(mp4, **fields), MPEG4_AVC_HP41)
