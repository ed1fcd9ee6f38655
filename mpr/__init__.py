"""Pure imaging helpers for imaging-cloud: frame access and rendered images.

Depends only on numpy, pydicom (with the pylibjpeg plugins) and Pillow, so that the
archive, the DICOMweb API and offline tools can share it.
"""

from .pixels import (
    PixelDecodeError,
    encapsulated_frame,
    frame_array,
    native_frame_bytes,
    number_of_frames,
)
from .render import SUPPORTED_MEDIA_TYPES, render_frame, thumbnail
from .window import Window

__all__ = [
    "SUPPORTED_MEDIA_TYPES",
    "PixelDecodeError",
    "Window",
    "encapsulated_frame",
    "frame_array",
    "native_frame_bytes",
    "number_of_frames",
    "render_frame",
    "thumbnail",
]
