"""PET/CT (or any two-series) fusion: resample one volume onto another's grid, blend colours.

Both series must share a frame of reference: their patient coordinates then describe the
same physical space (the scanner did the registration), so resampling is a pure change of
grid with no registration step.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from .display import to_display
from .volume import Volume
from .window import Window

__all__ = ["COLOUR_MAPS", "colour_lut", "fuse", "resample_onto"]

COLOUR_MAPS = ("hot", "rainbow", "pet")

# Piecewise-linear control points (position 0..1, value 0..1) per channel.
_ANCHORS: dict[str, tuple[tuple[tuple[float, ...], tuple[float, ...]], ...]] = {
    # Black -> red -> yellow -> white, with breakpoints close to the classic "hot" map.
    "hot": (
        ((0.0, 0.375, 1.0), (0.0, 1.0, 1.0)),
        ((0.0, 0.375, 0.75, 1.0), (0.0, 0.0, 1.0, 1.0)),
        ((0.0, 0.75, 1.0), (0.0, 0.0, 1.0)),
    ),
    # Blue -> cyan -> green -> yellow -> red.
    "rainbow": (
        ((0.0, 0.5, 0.75, 1.0), (0.0, 0.0, 1.0, 1.0)),
        ((0.0, 0.25, 0.75, 1.0), (0.0, 1.0, 1.0, 0.0)),
        ((0.0, 0.25, 0.5, 1.0), (1.0, 1.0, 0.0, 0.0)),
    ),
    # The DICOM well-known "PET" colour palette (PS3.6 Annex B, UID 1.2.840.10008.1.5.2):
    # black -> teal -> blue/purple -> orange -> white; break points at entries 63/128/192.
    "pet": (
        ((0.0, 63 / 255, 128 / 255, 192 / 255, 1.0), (0.0, 0.0, 128 / 255, 1.0, 1.0)),
        ((0.0, 63 / 255, 128 / 255, 1.0), (0.0, 128 / 255, 0.0, 1.0)),
        ((0.0, 128 / 255, 192 / 255, 1.0), (0.0, 1.0, 0.0, 1.0)),
    ),
}


@functools.cache
def colour_lut(name: str) -> np.ndarray:
    """The 256-entry RGB lookup table of a colour map.

    Parameters
    ----------
    name : str
        One of :data:`COLOUR_MAPS`.

    Returns
    -------
    numpy.ndarray
        Read-only ``(256, 3)`` uint8; entry 0 is the colour of the window's low end.

    Raises
    ------
    ValueError
        For an unknown colour map.
    """
    if name not in _ANCHORS:
        raise ValueError(f"unknown colour map {name!r}; expected one of {', '.join(COLOUR_MAPS)}")
    x = np.arange(256) / 255.0
    channels = [np.interp(x, xp, fp) for xp, fp in _ANCHORS[name]]
    lut = np.rint(np.stack(channels, axis=-1) * 255.0).astype(np.uint8)
    lut.flags.writeable = False  # shared through the cache
    return lut


def _affine(transform: Callable[[np.ndarray], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(matrix, offset) of an affine point map, recovered from the map itself.

    Probing the Volume's own index<->patient methods keeps one source of truth for the
    geometry conventions instead of re-deriving them here.
    """
    probes = np.vstack([np.zeros(3), np.eye(3)])
    mapped = np.asarray(transform(probes), dtype=np.float64)
    offset = mapped[0]
    return (mapped[1:] - offset).T, offset


def resample_onto(moving: Volume, fixed: Volume) -> Volume:
    """Resample ``moving`` (e.g. PET) onto the voxel grid of ``fixed`` (e.g. CT).

    Each fixed voxel centre is mapped to patient coordinates and then into the moving
    volume, where the value is interpolated trilinearly; centres outside the moving
    volume get 0.

    Parameters
    ----------
    moving : Volume
        The volume whose values are wanted.
    fixed : Volume
        The volume whose grid (shape, origin, directions, spacing) the result takes.

    Returns
    -------
    Volume
        ``float32`` voxels of ``fixed``'s shape; geometry and frame of reference from
        ``fixed``, everything else (modality, series and instance UIDs, window,
        photometric) from ``moving``; ``resampled_from`` says what was done.

    Raises
    ------
    ValueError
        If the volumes do not share a (non-empty) frame of reference, so that their
        patient coordinates cannot be compared.
    """
    for volume, role in ((moving, "moving"), (fixed, "fixed")):
        if not volume.frame_of_reference_uid:
            raise ValueError(
                f"the {role} series {volume.series_instance_uid} has no frame of reference; "
                "cannot place it relative to the other series"
            )
    if moving.frame_of_reference_uid != fixed.frame_of_reference_uid:
        # Different frames need a registration, which this does not attempt.
        raise ValueError(
            f"series {moving.series_instance_uid} and {fixed.series_instance_uid} have "
            f"different frames of reference ({moving.frame_of_reference_uid} vs "
            f"{fixed.frame_of_reference_uid}); fusion needs images registered by the "
            "scanner (same frame of reference)"
        )
    to_patient, to_patient_offset = _affine(fixed.index_to_patient)
    to_moving, to_moving_offset = _affine(moving.patient_to_index)
    matrix = to_moving @ to_patient
    offset = to_moving @ to_patient_offset + to_moving_offset
    diagonal = np.diag(np.diag(matrix))
    if np.allclose(matrix, diagonal, atol=1e-9):
        # Same orientation (the usual PET/CT case): scipy's zoom-and-shift fast path.
        matrix = np.diag(matrix).copy()
    voxels = ndimage.affine_transform(
        moving.voxels,
        matrix,
        offset=offset,
        output_shape=fixed.voxels.shape,
        output=np.float32,
        order=1,  # trilinear: no overshoot, and PET voxels are large anyway
        mode="constant",
        cval=0.0,
        prefilter=False,
    )
    return dataclasses.replace(
        moving,
        voxels=voxels,
        origin=np.array(fixed.origin, dtype=np.float64),
        row_direction=np.array(fixed.row_direction, dtype=np.float64),
        column_direction=np.array(fixed.column_direction, dtype=np.float64),
        slice_direction=np.array(fixed.slice_direction, dtype=np.float64),
        spacing=fixed.spacing,
        frame_of_reference_uid=fixed.frame_of_reference_uid,
        resampled_from="; ".join(
            reason
            for reason in (
                moving.resampled_from,
                f"{moving.modality} series {moving.series_instance_uid} resampled onto the "
                f"grid of {fixed.modality} series {fixed.series_instance_uid}",
            )
            if reason
        ),
    )


def fuse(
    base_rgb_or_gray: np.ndarray,
    overlay_values: np.ndarray,
    window: Window,
    *,
    colour_map: str = "hot",
    opacity: float = 0.5,
) -> np.ndarray:
    """Blend a colour-mapped overlay (e.g. PET uptake) over a display image (e.g. CT).

    Parameters
    ----------
    base_rgb_or_gray : numpy.ndarray
        ``uint8`` display image, ``(H, W)`` gray or ``(H, W, 3)`` RGB.
    overlay_values : numpy.ndarray
        ``(H, W)`` modality values of the overlay on the same pixels.
    window : Window
        Maps overlay values to colour-map positions: the window's low end gets the
        map's first colour, the high end its last.
    colour_map : str, optional
        One of :data:`COLOUR_MAPS`.
    opacity : float, optional
        0 gives the base image, 1 the colour-mapped overlay; plain alpha blending in
        between (everywhere, also where the overlay is at the window's low end).

    Returns
    -------
    numpy.ndarray
        ``(H, W, 3)`` uint8 RGB.

    Raises
    ------
    ValueError
        For mismatched shapes, a base that is not uint8 gray/RGB, an unknown colour
        map or an opacity outside 0..1.
    """
    base = base_rgb_or_gray
    if base.dtype != np.uint8 or not (base.ndim == 2 or (base.ndim == 3 and base.shape[2] == 3)):
        raise ValueError(
            f"base image must be uint8 (H, W) or (H, W, 3), got {base.dtype} {base.shape}"
        )
    if overlay_values.shape != base.shape[:2]:
        raise ValueError(
            f"overlay shape {overlay_values.shape} does not match the base image {base.shape[:2]}"
        )
    if isinstance(opacity, bool) or not (math.isfinite(opacity) and 0.0 <= opacity <= 1.0):
        raise ValueError(f"opacity must be between 0 and 1, got {opacity!r}")
    lut = colour_lut(colour_map)
    colours = np.take(lut, to_display(overlay_values, window), axis=0)
    if base.ndim == 2:
        base = base[:, :, np.newaxis]  # broadcasts against the 3 colour channels
    # Fixed-point blend in uint16: alpha in 1/256 steps, so opacity 0 and 1 give the
    # base and the colours exactly, and +128 rounds to nearest.
    alpha = round(opacity * 256)
    blended = colours.astype(np.uint16) * np.uint16(alpha)
    blended += base.astype(np.uint16) * np.uint16(256 - alpha)
    blended += np.uint16(128)
    blended >>= np.uint16(8)
    return blended.astype(np.uint8)
