"""Test videos: small H.264/AAC MP4 files made by Debian's FFmpeg, and minimal DICOM video
objects around them.

Provenance: every file is generated here from FFmpeg's ``lavfi`` sources (``color``,
``testsrc2``, ``sine``); nothing is read from the network. `video_dataset` wraps them with the
product's own ``collectors.video_wrap.wrap``: the MP4 bytes, unchanged, in one encapsulated
Pixel Data fragment (PS3.5 8.2.8), in the MPEG-4 AVC/HEVC transfer syntax the stream fits.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.uid import UID

from collectors.video_wrap import wrap
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
    **sidecar: str,
) -> Dataset:
    """``mp4`` wrapped by `collectors.video_wrap.wrap` (unchanged bytes, one fragment), with
    the identifiers a test asks for. Further keyword arguments go into the sidecar
    (procedure, diagnosis, surgeon, applicant, hospital, video_class, operation_start, ...)."""
    role = "endoscope" if sop_class_uid == VIDEO_ENDOSCOPIC else sidecar.pop("camera_role", "field")
    fields = {
        "patient_id": patient_id,
        "patient_name": f"Video^{patient_id}",
        "birth_date": "19700101",
        "sex": "O",
        "accession_number": "VID1",
        "camera_role": role,
        **sidecar,
    }
    if study_uid:
        fields["study_instance_uid"] = study_uid
    ds = wrap(mp4, fields)
    if series_uid:
        ds.SeriesInstanceUID = UID(series_uid)
    if sop_uid:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    ds.InstitutionalDepartmentName = department
    return ds


def video_part10(mp4: Path, **fields: str) -> bytes:
    """`video_dataset` as Part-10 bytes (the transfer syntax the wrapper chose)."""
    ds = video_dataset(mp4, **fields)
    return to_part10(ds, str(ds.file_meta.TransferSyntaxUID))
