"""The standard-definition copy a recording is reduced to once its retention policy says so,
and the re-wrapping of a re-encoded stream under an existing DICOM header.

`downgrade_to_sd` re-encodes with FFmpeg: H.264 (yuv420p, High profile) scaled to 576 lines
with the aspect kept (an even width), about 1000 kbit/s, audio copied when it is already AAC
(re-encoded to AAC otherwise), ``moov`` first: still an MPEG-4 AVC stream that the DICOM
MPEG-4 transfer syntaxes hold as is. `rewrap_like` puts a new stream under an existing
object's header, with the Image Pixel and Cine attributes and the transfer syntax the new
stream calls for (the caller changes the identity: a new SOP Instance UID, derivation).
`header_like` and `write_part10` do the same without holding the stream in memory: the header
alone, then the file written with the MP4 streamed in after it (a multi-GB recording is never
read whole).
"""

from __future__ import annotations

import copy
import shutil
import struct
import subprocess
from pathlib import Path

from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite

from collectors.video_probe import VideoError, VideoFacts, probe
from collectors.video_wrap import wrap, wrap_header, wrap_plan

_CHUNK = 1024 * 1024

SD_HEIGHT = 576
SD_VIDEO_KBPS = 1000
# What the new stream decides; everything else of the old header stays.
STREAM_ATTRIBUTES = (
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "NumberOfFrames",
    "FrameIncrementPointer",
    "FrameTime",
    "CineRate",
    "RecommendedDisplayFrameRate",
    "ActualFrameDuration",
    "LossyImageCompression",
    "LossyImageCompressionMethod",
)


def sd_command(src: Path, dst: Path, has_audio: bool, audio_codec: str | None) -> list[str]:
    """The FFmpeg argument list (no shell) of the SD copy."""
    kbps = SD_VIDEO_KBPS
    command = ["ffmpeg", "-hide_banner", "-nostdin", "-loglevel", "error", "-y", "-i", str(src)]
    command += ["-map", "0:v:0", "-vf", f"scale=-2:{SD_HEIGHT},format=yuv420p"]
    command += ["-c:v", "libx264", "-preset", "veryfast", "-profile:v", "high"]
    command += ["-b:v", f"{kbps}k", "-maxrate", f"{kbps * 3 // 2}k", "-bufsize", f"{kbps * 2}k"]
    if has_audio:
        command += ["-map", "0:a:0"]
        command += ["-c:a", "copy"] if audio_codec == "aac" else ["-c:a", "aac", "-b:a", "128k"]
    command += ["-movflags", "+faststart", "-f", "mp4", str(dst)]
    return command


def downgrade_to_sd(src_mp4: str | Path, dst_mp4: str | Path) -> VideoFacts:
    """Write the standard-definition copy of ``src_mp4`` to ``dst_mp4``; its facts.

    Raises `VideoError` when the source cannot be read or FFmpeg fails. The source is only
    read.
    """
    source, target = Path(src_mp4), Path(dst_mp4)
    facts = probe(source)
    if target.resolve() == source.resolve():
        raise VideoError("the output must not overwrite the original")
    if shutil.which("ffmpeg") is None:
        raise VideoError("FFmpeg is not installed (apt-get install ffmpeg)")
    command = sd_command(source, target, facts.has_audio, facts.audio_codec)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise VideoError(f"ffmpeg failed: {done.stderr.strip()[-1500:]}")
    return probe(target)


def rewrap_like(header: Dataset, mp4_path: str | Path) -> Dataset:
    """A DICOM video object with ``header``'s attributes and ``mp4_path`` as its Pixel Data.

    The Image Pixel, Multi-frame and Cine attributes and the transfer syntax are the ones
    `collectors.video_wrap.wrap` derives from the new stream; the SOP Instance UID is still
    the old one (the caller gives the new object its identity). ``header`` is not changed.
    """
    fresh = wrap(mp4_path, {"patient_id": "rewrap"})
    out = Dataset()
    for element in header:
        if element.keyword != "PixelData" and element.keyword not in STREAM_ATTRIBUTES:
            out.add(copy.deepcopy(element))
    for keyword in STREAM_ATTRIBUTES:
        if keyword in fresh:
            setattr(out, keyword, fresh[keyword].value)
    out.PixelData = fresh.PixelData
    out["PixelData"].VR = "OB"
    out["PixelData"].is_undefined_length = True
    out.file_meta = copy.deepcopy(fresh.file_meta)
    out.file_meta.MediaStorageSOPClassUID = out.SOPClassUID
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    out.set_original_encoding(False, True)
    return out


def header_like(header: Dataset, mp4_path: str | Path) -> Dataset:
    """`rewrap_like` without Pixel Data: ``header``'s attributes with the stream attributes and
    File Meta (transfer syntax) of the MP4 at ``mp4_path``, which is only probed, not read."""
    facts, ts_uid, remux = wrap_plan(mp4_path)
    if remux:
        raise VideoError("the stream must be an MP4 to be re-wrapped (not MOV/MPEG-TS)")
    fresh = wrap_header(facts, {"patient_id": "rewrap"}, ts_uid)
    out = Dataset()
    for element in header:
        if element.keyword != "PixelData" and element.keyword not in STREAM_ATTRIBUTES:
            out.add(copy.deepcopy(element))
    for keyword in STREAM_ATTRIBUTES:
        if keyword in fresh:
            setattr(out, keyword, fresh[keyword].value)
    out.file_meta = copy.deepcopy(fresh.file_meta)
    out.file_meta.MediaStorageSOPClassUID = out.SOPClassUID
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    out.set_original_encoding(False, True)
    return out


def write_part10(header: Dataset, mp4_path: str | Path, out_path: str | Path) -> int:
    """Write ``header`` (no Pixel Data; its File Meta names the transfer syntax) and the MP4
    as its encapsulated Pixel Data (empty Basic Offset Table, one fragment) to ``out_path``,
    streaming the MP4 in chunks. Returns the bytes written."""
    source, target = Path(mp4_path), Path(out_path)
    size = source.stat().st_size
    padded = size + size % 2
    if padded > 0xFFFFFFFE:
        raise VideoError("recording larger than 4 GiB; a single fragment cannot hold it")
    if "PixelData" in header:
        raise ValueError("write_part10 takes a header without Pixel Data")
    with target.open("wb") as out, source.open("rb") as stream:
        dcmwrite(out, header, enforce_file_format=True)
        # (7FE0,0010) OB, undefined length; an empty Basic Offset Table item; one fragment.
        out.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, 0xFFFFFFFF))
        out.write(struct.pack("<HHI", 0xFFFE, 0xE000, 0))
        out.write(struct.pack("<HHI", 0xFFFE, 0xE000, padded))
        shutil.copyfileobj(stream, out, _CHUNK)
        if size % 2:
            out.write(b"\x00")
        out.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
        return out.tell()
