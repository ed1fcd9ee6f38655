"""Measurements in patient coordinates (LPS mm): lengths, angles and disc ROIs.

The value at a single point is :meth:`mpr.volume.Volume.value_at`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from .volume import Volume

__all__ = ["angle_deg", "distance_mm", "region_statistics"]

Point = Sequence[float] | np.ndarray

# Index-space slack for "inside the volume": points on the outer voxel centres must
# not be lost to rounding in the patient -> index transform (as Volume.value_at does).
_INSIDE_TOLERANCE = 1e-4


def _point(value: Point, name: str) -> np.ndarray:
    try:
        point = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three numbers (x, y, z), got {value!r}") from None
    if point.shape != (3,) or not np.isfinite(point).all():
        raise ValueError(f"{name} must be three finite numbers (x, y, z), got {value!r}")
    return point


def distance_mm(a: Point, b: Point) -> float:
    """Euclidean distance between two patient points.

    Parameters
    ----------
    a, b : sequence of float
        ``(x, y, z)`` in patient mm.

    Returns
    -------
    float
        The distance in mm.

    Raises
    ------
    ValueError
        If a point is not three finite numbers.
    """
    return float(np.linalg.norm(_point(b, "b") - _point(a, "a")))


def angle_deg(vertex: Point, a: Point, b: Point) -> float:
    """Angle at ``vertex`` between the rays towards ``a`` and ``b``.

    Parameters
    ----------
    vertex, a, b : sequence of float
        ``(x, y, z)`` in patient mm.

    Returns
    -------
    float
        The angle in degrees, 0..180.

    Raises
    ------
    ValueError
        If a point is malformed or ``a`` or ``b`` coincides with the vertex.
    """
    centre = _point(vertex, "vertex")
    u, v = _point(a, "a") - centre, _point(b, "b") - centre
    if not (np.linalg.norm(u) > 0 and np.linalg.norm(v) > 0):
        raise ValueError("an angle needs both end points away from the vertex")
    # atan2 of |u x v| and u . v stays accurate near 0 and 180 degrees, where acos does not.
    return math.degrees(math.atan2(float(np.linalg.norm(np.cross(u, v))), float(np.dot(u, v))))


def _sample(volume: Volume, points_mm: np.ndarray) -> np.ndarray:
    """Trilinear values at those of the ``(n, 3)`` points that lie inside the volume."""
    index = np.asarray(volume.patient_to_index(points_mm), dtype=np.float64).reshape(-1, 3)
    upper = np.asarray(volume.voxels.shape, dtype=np.float64) - 1.0
    inside = np.all((index >= -_INSIDE_TOLERANCE) & (index <= upper + _INSIDE_TOLERANCE), axis=1)
    values: np.ndarray = ndimage.map_coordinates(
        volume.voxels,
        index[inside].T,
        output=np.float64,
        order=1,
        mode="nearest",  # only ever used within the tolerance at the faces
        prefilter=False,
    )
    return values


def _grid_range(centre: float, half_width: float, radius: float, step: float) -> range:
    """Grid steps k (offset k * step) within the disc and within the volume's shadow."""
    low, high = max(-radius, centre - half_width), min(radius, centre + half_width)
    return range(math.ceil(low / step), math.floor(high / step) + 1)


def _plane_axes(normal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two orthonormal in-plane directions for a unit normal."""
    # Cross with the coordinate axis least aligned with the normal: never degenerate.
    helper = np.eye(3)[int(np.argmin(np.abs(normal)))]
    u = np.cross(normal, helper)
    u /= np.linalg.norm(u)
    return u, np.cross(normal, u)


def region_statistics(
    volume: Volume, centre_mm: Point, radius_mm: float, normal: Point
) -> dict[str, float]:
    """Statistics of the values on a disc (a circular ROI on any plane).

    The disc is sampled on a square grid in its plane with the volume's finest voxel
    spacing as the step (so no finer than the data), keeping grid points within the
    radius that lie inside the volume; values are interpolated trilinearly.

    Parameters
    ----------
    volume : Volume
        The volume.
    centre_mm : sequence of float
        Disc centre ``(x, y, z)`` in patient mm.
    radius_mm : float
        Disc radius in mm, > 0.
    normal : sequence of float
        Normal of the disc's plane (any length but zero), e.g. ``(0, 0, 1)`` on an axial
        image.

    Returns
    -------
    dict
        ``mean``, ``std`` (population, ddof 0), ``min``, ``max`` of the values,
        ``area_mm2`` (``count`` times the grid cell area: the area actually measured)
        and ``count`` (number of samples, an int).

    Raises
    ------
    ValueError
        For a malformed centre or normal, a non-positive radius, or a disc entirely
        outside the volume.
    """
    centre = _point(centre_mm, "centre")
    direction = _point(normal, "normal")
    length = float(np.linalg.norm(direction))
    if length == 0:
        raise ValueError("normal must not be the zero vector")
    if isinstance(radius_mm, bool) or not (math.isfinite(radius_mm) and radius_mm > 0):
        raise ValueError(f"radius_mm must be a positive number, got {radius_mm!r}")
    u, v = _plane_axes(direction / length)
    step = float(min(volume.spacing))
    # Only sample where the volume can be: the square around the shadow of its bounding
    # sphere on the plane. This keeps the work bounded by the volume's size whatever the
    # radius a client sends, and drops only points that would be outside anyway.
    last = np.asarray(volume.voxels.shape, dtype=np.float64) - 1.0
    first_mm, last_mm = volume.index_to_patient(np.zeros(3)), volume.index_to_patient(last)
    half_width = float(np.linalg.norm(last_mm - first_mm)) / 2 + step
    towards_volume = (first_mm + last_mm) / 2 - centre
    rows = _grid_range(float(towards_volume @ u), half_width, radius_mm, step)
    cols = _grid_range(float(towards_volume @ v), half_width, radius_mm, step)
    a, b = np.meshgrid(
        np.asarray(rows, dtype=np.float64) * step,
        np.asarray(cols, dtype=np.float64) * step,
        indexing="ij",
    )
    # Tiny relative slack so grid points exactly on the circle count.
    on_disc = a**2 + b**2 <= radius_mm**2 * (1 + 1e-9)
    points = centre + a[on_disc, np.newaxis] * u + b[on_disc, np.newaxis] * v
    values = _sample(volume, points)
    if values.size == 0:
        raise ValueError("the region lies outside the volume")
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "area_mm2": values.size * step * step,
        "count": int(values.size),
    }
