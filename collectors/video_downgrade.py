"""The standard-definition copy a recording is reduced to once its retention policy says so,
and the re-wrapping of a re-encoded stream under an existing DICOM header.

`downgrade_to_sd` re-encodes with FFmpeg: H.264 (yuv420p, High profile) scaled to 576 lines
with the aspect kept (an even width), about 1000 kbit/s, audio copied when it is already AAC
(re-encoded to AAC otherwise), ``moov`` first: still an MPEG-4 AVC stream that the DICOM
MPEG-4 transfer syntaxes hold as is. `rewrap_like` puts a new stream under an existing
object's header, with the Image Pixel and Cine attributes and the transfer syntax the new
stream calls for (the caller changes the identity: a new SOP Instance UID, derivation).
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

from pydicom.dataset import Dataset

from collectors.video_probe import VideoError, VideoFacts, probe
from collectors.video_wrap import wrap

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
