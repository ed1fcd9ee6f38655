"""The path of a curved (straightened) reformat: a polyline sampled at equal arc length.

Only geometry lives here; :func:`mpr.reslice.curved` samples the volume along the path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CurvePath", "curve_path"]


@dataclass(frozen=True, eq=False)
class CurvePath:
    """Equally spaced samples along a polyline, with the direction across it at each sample.

    Attributes
    ----------
    points : numpy.ndarray
        ``(m, 3)`` patient mm, the first at the polyline's start, ``spacing_mm`` apart along it.
    tangents : numpy.ndarray
        ``(m, 3)`` unit direction of the segment each sample lies on.
    across : numpy.ndarray
        ``(m, 3)`` unit direction perpendicular to both the tangent and ``up``
        (``up x tangent``): for a polyline along +X with up = +Z it is +Y.
    length_mm : float
        The polyline's total length.
    """

    points: np.ndarray
    tangents: np.ndarray
    across: np.ndarray
    length_mm: float


def curve_path(
    polyline_mm: Sequence[Sequence[float]], spacing_mm: float, up: Sequence[float]
) -> CurvePath:
    """Sample a polyline every ``spacing_mm`` along its length.

    Parameters
    ----------
    polyline_mm : sequence of (x, y, z)
        At least two patient points; repeated consecutive points are ignored.
    spacing_mm : float
        Arc-length step between samples (> 0); the last sample is at or before the end.
    up : (x, y, z)
        A direction that no segment may be parallel to; the width of the reformat runs
        across the curve in the plane perpendicular to it.

    Returns
    -------
    CurvePath
        The samples.

    Raises
    ------
    ValueError
        If there are fewer than two distinct points, a coordinate is not finite, ``up`` is
        zero, or a segment runs along ``up``.
    """
    points = np.asarray(polyline_mm, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 3 or not np.all(np.isfinite(points)):
        raise ValueError("the polyline must be a list of finite (x, y, z) points in mm")
    if not (math.isfinite(spacing_mm) and spacing_mm > 0):
        raise ValueError(f"the sampling step must be positive, got {spacing_mm}")
    up_vector = np.asarray(up, dtype=np.float64).reshape(3)
    if not np.all(np.isfinite(up_vector)) or np.linalg.norm(up_vector) == 0:
        raise ValueError(f"up must be a non-zero direction, got {tuple(up_vector)}")
    up_vector = up_vector / np.linalg.norm(up_vector)

    segments = np.diff(points, axis=0)
    lengths = np.linalg.norm(segments, axis=1)
    keep = lengths > 1e-9
    if not keep.any():
        raise ValueError("the polyline needs at least two distinct points")
    starts, segments, lengths = points[:-1][keep], segments[keep], lengths[keep]
    directions = segments / lengths[:, None]
    across = np.cross(up_vector, directions)
    across_norms = np.linalg.norm(across, axis=1)
    if across_norms.min() < 1e-6:
        raise ValueError("a segment of the polyline runs along up; choose another up direction")
    across /= across_norms[:, None]

    cumulative = np.concatenate([[0.0], np.cumsum(lengths)])
    total = float(cumulative[-1])
    distances = np.arange(math.floor(total / spacing_mm + 1e-6) + 1) * spacing_mm
    # Segment of each sample; a sample exactly on a vertex belongs to the following segment.
    segment = np.clip(np.searchsorted(cumulative, distances, side="right") - 1, 0, len(lengths) - 1)
    along = distances - cumulative[segment]
    sampled = starts[segment] + directions[segment] * along[:, None]
    return CurvePath(
        points=sampled,
        tangents=directions[segment],
        across=across[segment],
        length_mm=total,
    )
