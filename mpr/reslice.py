"""Reslices of a :class:`~mpr.volume.Volume`: orthogonal, oblique and curved planes and slabs.

Display follows the radiological convention of docs/viewer-contract.md:

========  ===================  =====================  =====================
plane     normal (position)    screen right (+col)    screen down (+row)
========  ===================  =====================  =====================
axial     +Z                   +X (patient's left)    +Y (posterior)
coronal   +Y                   +X (patient's left)    -Z (head up)
sagittal  +X                   +Y (posterior)         -Z (head up)
========  ===================  =====================  =====================

Pixels are square, at the volume's smallest voxel spacing. A volume whose axes run along
the patient axes (almost every CT) is resliced by array indexing and reductions; any other
volume or plane is sampled with trilinear interpolation (``scipy.ndimage.map_coordinates``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from scipy import ndimage

from .curved import curve_path
from .volume import Volume, snap_to_bounds

__all__ = [
    "Mode",
    "Plane",
    "Reslice",
    "SliceGeometry",
    "curved",
    "oblique",
    "orthogonal",
    "plane_geometry",
]

Plane = Literal["axial", "sagittal", "coronal"]
Mode = Literal["thin", "mip", "minip", "avgip"]
Vector = tuple[float, float, float]

# plane -> (normal, screen right, screen down), patient LPS unit vectors
_PLANE_AXES: dict[str, tuple[Vector, Vector, Vector]] = {
    "axial": ((0.0, 0.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}
# Positions this close outside the valid range are rounding, not a request for nothing.
_POSITION_TOLERANCE_MM = 1e-3
# A volume axis whose off-axis direction cosines stay below this runs along a patient axis
# (1e-4 rad over 500 mm is 0.05 mm, far below a pixel).
_ALIGNED_TOLERANCE = 1e-4


@dataclass(frozen=True)
class SliceGeometry:
    """Where a reslice lies in patient space; JSON-able with :meth:`to_dict`.

    Attributes
    ----------
    plane : str
        ``axial``, ``sagittal``, ``coronal``, ``oblique`` or ``curved``.
    mode : str
        ``thin``, ``mip``, ``minip`` or ``avgip``.
    thickness_mm : float
        Slab thickness, centred on the plane (0 for a thin plane).
    position_mm : float
        The plane centre's coordinate along ``normal``.
    position_range_mm : tuple of float
        The positions along ``normal`` at which the plane still cuts the volume.
    normal, row_direction, column_direction : tuple of float
        Unit vectors in patient coordinates: the plane normal, screen right (+column) and
        screen down (+row). For a curved reformat they are those at the polyline's start
        and ``normal`` is ``up``.
    top_left_mm : tuple of float
        Patient position of the centre of pixel (row 0, column 0).
    pixel_spacing_mm : float
        The side of the square pixels.
    rows, columns : int
        Image size.
    frame_of_reference_uid : str
        The volume's frame of reference.
    """

    plane: str
    mode: str
    thickness_mm: float
    position_mm: float
    position_range_mm: tuple[float, float]
    normal: Vector
    row_direction: Vector
    column_direction: Vector
    top_left_mm: Vector
    pixel_spacing_mm: float
    rows: int
    columns: int
    frame_of_reference_uid: str

    def to_dict(self) -> dict[str, object]:
        """The geometry as JSON-able values (tuples become lists), keyed by attribute name."""
        return {
            "plane": self.plane,
            "mode": self.mode,
            "thickness_mm": self.thickness_mm,
            "position_mm": self.position_mm,
            "position_range_mm": list(self.position_range_mm),
            "normal": list(self.normal),
            "row_direction": list(self.row_direction),
            "column_direction": list(self.column_direction),
            "top_left_mm": list(self.top_left_mm),
            "pixel_spacing_mm": self.pixel_spacing_mm,
            "rows": self.rows,
            "columns": self.columns,
            "frame_of_reference_uid": self.frame_of_reference_uid,
        }

    def pixel_to_patient(self, row: float, col: float) -> Vector:
        """Patient mm of a (fractional) pixel position; exact for planes (not curved)."""
        point = (
            np.array(self.top_left_mm)
            + col * self.pixel_spacing_mm * np.array(self.row_direction)
            + row * self.pixel_spacing_mm * np.array(self.column_direction)
        )
        return _vector(point)


@dataclass(frozen=True, eq=False)  # eq=False: comparing the pixel arrays with == is ambiguous
class Reslice:
    """A reslice image: ``(rows, columns)`` float32 modality values and its geometry."""

    pixels: np.ndarray
    geometry: SliceGeometry


def _vector(values: np.ndarray) -> Vector:
    return (float(values[0]), float(values[1]), float(values[2]))


def _unit(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    vector = np.asarray(values, dtype=np.float64).reshape(3)
    norm = float(np.linalg.norm(vector))
    if not (math.isfinite(norm) and norm > 0):
        raise ValueError(f"{what} must be a non-zero finite direction, got {tuple(vector)}")
    return vector / norm


def _corners(volume: Volume) -> np.ndarray:
    """``(8, 3)`` patient positions of the centres of the volume's corner voxels."""
    last = np.array(volume.voxels.shape) - 1
    ijk = np.array([[i, j, k] for i in (0, last[0]) for j in (0, last[1]) for k in (0, last[2])])
    return volume.index_to_patient(ijk)


def _extent(corners: np.ndarray, direction: np.ndarray) -> tuple[float, float]:
    along = corners @ direction
    return float(along.min()), float(along.max())


def _count(length_mm: float, spacing_mm: float) -> int:
    """Samples at ``spacing_mm`` that fit in ``length_mm`` (both ends included)."""
    return math.floor(length_mm / spacing_mm + 1e-6) + 1


def _check_mode(mode: str, thickness_mm: float) -> None:
    if mode not in get_args(Mode):
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(get_args(Mode))}")
    if not (math.isfinite(thickness_mm) and thickness_mm >= 0):
        raise ValueError(f"slab thickness must be a finite number >= 0 mm, got {thickness_mm}")


def _checked_position(position_mm: float, valid: tuple[float, float], plane: str) -> float:
    low, high = valid
    if not (
        math.isfinite(position_mm)
        and low - _POSITION_TOLERANCE_MM <= position_mm <= high + _POSITION_TOLERANCE_MM
    ):
        raise ValueError(
            f"{plane} position {position_mm:g} mm is outside the volume: "
            f"valid positions are {low:.2f} to {high:.2f} mm"
        )
    return min(max(position_mm, low), high)


def plane_geometry(
    volume: Volume,
    plane: Plane,
    position_mm: float | None = None,
    *,
    mode: Mode = "thin",
    thickness_mm: float = 0.0,
) -> SliceGeometry:
    """The geometry of an orthogonal reslice, without computing its pixels.

    Parameters
    ----------
    volume : Volume
        The volume.
    plane : {"axial", "sagittal", "coronal"}
        The plane.
    position_mm : float, optional
        Coordinate along the plane normal (z, y or x); None means the middle of the range.
    mode, thickness_mm
        Recorded in the geometry; see :func:`orthogonal`.

    Returns
    -------
    SliceGeometry
        The image covers the whole volume; its ``position_range_mm`` is the valid range.

    Raises
    ------
    ValueError
        For an unknown plane or mode, a negative thickness, or a position outside the range.
    """
    if plane not in _PLANE_AXES:
        raise ValueError(f"unknown plane {plane!r}; expected axial, sagittal or coronal")
    _check_mode(mode, thickness_mm)
    normal, right, down = (np.array(v) for v in _PLANE_AXES[plane])
    corners = _corners(volume)
    valid = _extent(corners, normal)
    if position_mm is None:
        position_mm = (valid[0] + valid[1]) / 2
    position_mm = _checked_position(position_mm, valid, plane)
    spacing = min(volume.spacing)
    left, right_end = _extent(corners, right)
    top, bottom = _extent(corners, down)
    top_left = position_mm * normal + left * right + top * down
    return SliceGeometry(
        plane=plane,
        mode=mode,
        thickness_mm=0.0 if mode == "thin" else float(thickness_mm),
        position_mm=float(position_mm),
        position_range_mm=valid,
        normal=_vector(normal),
        row_direction=_vector(right),
        column_direction=_vector(down),
        top_left_mm=_vector(top_left),
        pixel_spacing_mm=spacing,
        rows=_count(bottom - top, spacing),
        columns=_count(right_end - left, spacing),
        frame_of_reference_uid=volume.frame_of_reference_uid,
    )


def orthogonal(
    volume: Volume,
    plane: Plane,
    position_mm: float,
    *,
    mode: Mode = "thin",
    thickness_mm: float = 0.0,
) -> Reslice:
    """An axial, coronal or sagittal plane or slab through the whole volume.

    Parameters
    ----------
    volume : Volume
        The volume.
    plane : {"axial", "sagittal", "coronal"}
        Which plane; orientation on screen per the module table.
    position_mm : float
        The plane centre's patient coordinate along the normal: z (axial), y (coronal) or
        x (sagittal). Between two slices the plane is interpolated linearly.
    mode : {"thin", "mip", "minip", "avgip"}
        Thin plane, or maximum / minimum / mean intensity projection over the slab.
    thickness_mm : float
        Slab thickness centred on the position. A slab thinner than the slice step is the
        thin plane; slices whose centre lies inside the slab (edges included) are reduced.

    Returns
    -------
    Reslice
        float32 modality values (before any windowing) and the geometry.

    Raises
    ------
    ValueError
        For an unknown plane or mode, a negative thickness, or a position outside
        ``position_range_mm`` (the message gives the range).
    """
    geometry = plane_geometry(volume, plane, position_mm, mode=mode, thickness_mm=thickness_mm)
    axes = _aligned_axes(volume)
    if axes is not None:
        pixels = _aligned_pixels(volume, geometry, axes)
    else:
        pixels = _sampled_pixels(volume, geometry)
    return Reslice(pixels=pixels, geometry=geometry)


def oblique(
    volume: Volume,
    centre_mm: Sequence[float],
    normal: Sequence[float],
    up: Sequence[float],
    *,
    mode: Mode = "thin",
    thickness_mm: float = 0.0,
    size_mm: float | None = None,
) -> Reslice:
    """A square plane or slab of any orientation.

    Screen down is ``-up`` made perpendicular to the normal, and screen right is
    ``down x normal``: normal +Z with up -Y (anterior) gives the axial view, normal +Y with
    up +Z the coronal view, and normal -X with up +Z the sagittal view.

    Parameters
    ----------
    volume : Volume
        The volume.
    centre_mm : (x, y, z)
        Patient position of the image centre (the middle pixel).
    normal : (x, y, z)
        Plane normal (normalised here).
    up : (x, y, z)
        Direction shown upwards; must not be parallel to the normal.
    mode, thickness_mm
        As for :func:`orthogonal`; the slab is sampled along the normal one voxel step apart
        (at least 2 samples), symmetrically about the plane.
    size_mm : float, optional
        Side of the square image; None means the volume's diagonal (the whole volume fits).

    Returns
    -------
    Reslice
        float32 modality values; samples outside the volume take its minimum.

    Raises
    ------
    ValueError
        For a zero or parallel normal/up, a bad mode, thickness or size, or a plane that
        misses the volume.
    """
    _check_mode(mode, thickness_mm)
    unit_normal = _unit(normal, "normal")
    up_in_plane = _unit(up, "up")
    up_in_plane = up_in_plane - (up_in_plane @ unit_normal) * unit_normal
    if np.linalg.norm(up_in_plane) < 1e-6:
        raise ValueError("up must not be parallel to the normal")
    down = -up_in_plane / np.linalg.norm(up_in_plane)
    right = np.cross(down, unit_normal)
    centre = np.asarray(centre_mm, dtype=np.float64).reshape(3)
    corners = _corners(volume)
    if size_mm is None:
        size_mm = float(np.linalg.norm(corners.max(axis=0) - corners.min(axis=0)))
    if not (math.isfinite(size_mm) and size_mm >= 0):
        raise ValueError(f"size must be a finite number >= 0 mm, got {size_mm}")
    spacing = min(volume.spacing)
    valid = _extent(corners, unit_normal)
    position = _checked_position(float(centre @ unit_normal), valid, "oblique")
    half = math.floor(size_mm / 2 / spacing + 1e-6)
    geometry = SliceGeometry(
        plane="oblique",
        mode=mode,
        thickness_mm=0.0 if mode == "thin" else float(thickness_mm),
        position_mm=position,
        position_range_mm=valid,
        normal=_vector(unit_normal),
        row_direction=_vector(right),
        column_direction=_vector(down),
        top_left_mm=_vector(centre - half * spacing * (right + down)),
        pixel_spacing_mm=spacing,
        rows=2 * half + 1,
        columns=2 * half + 1,
        frame_of_reference_uid=volume.frame_of_reference_uid,
    )
    return Reslice(pixels=_sampled_pixels(volume, geometry), geometry=geometry)


def curved(
    volume: Volume,
    polyline_mm: Sequence[tuple[float, float, float]],
    *,
    width_mm: float,
    up: Sequence[float] = (0, 0, 1),
) -> Reslice:
    """A straightened curved reformat along a polyline.

    Columns follow the polyline, one per pixel spacing of arc length; rows run across it,
    centred on it, in the direction ``up x tangent`` (perpendicular to the tangent, in the
    plane perpendicular to ``up``). A straight polyline along +X with up +Z therefore gives
    the axial plane (screen down +Y) cropped to ``width_mm`` around the line.

    Parameters
    ----------
    volume : Volume
        The volume.
    polyline_mm : sequence of (x, y, z)
        At least two distinct patient points.
    width_mm : float
        Extent across the curve (>= 0).
    up : (x, y, z)
        See above; no polyline segment may be parallel to it.

    Returns
    -------
    Reslice
        float32 modality values; the geometry's directions and top-left are those at the
        polyline's start, so ``pixel_to_patient`` is exact only along the first segment.

    Raises
    ------
    ValueError
        For a degenerate polyline, a segment along ``up`` or a bad width.
    """
    if not (math.isfinite(width_mm) and width_mm >= 0):
        raise ValueError(f"width must be a finite number >= 0 mm, got {width_mm}")
    spacing = min(volume.spacing)
    path = curve_path(polyline_mm, spacing, up)
    half = math.floor(width_mm / 2 / spacing + 1e-6)
    offsets = (np.arange(2 * half + 1) - half) * spacing
    # (rows, columns, 3): point of column c, moved across the curve by the row's offset.
    points = path.points[None, :, :] + offsets[:, None, None] * path.across[None, :, :]
    indices = np.moveaxis(volume.patient_to_index(points), -1, 0)
    pixels = _fill_outside(volume, _sample(volume, indices))
    up_unit = _unit(up, "up")
    geometry = SliceGeometry(
        plane="curved",
        mode="thin",
        thickness_mm=0.0,
        position_mm=float(path.points[0] @ up_unit),
        position_range_mm=_extent(_corners(volume), up_unit),
        normal=_vector(up_unit),
        row_direction=_vector(path.tangents[0]),
        column_direction=_vector(path.across[0]),
        top_left_mm=_vector(points[0, 0]),
        pixel_spacing_mm=spacing,
        rows=pixels.shape[0],
        columns=pixels.shape[1],
        frame_of_reference_uid=volume.frame_of_reference_uid,
    )
    return Reslice(pixels=pixels, geometry=geometry)


# --- Fast path: volumes whose axes run along the patient axes -------------------------------


def _aligned_axes(volume: Volume) -> list[tuple[int, int]] | None:
    """For array axes 0, 1, 2: (patient axis 0/1/2 = X/Y/Z, +1 or -1), or None if oblique."""
    axes = []
    for direction in (volume.slice_direction, volume.column_direction, volume.row_direction):
        patient_axis = int(np.argmax(np.abs(direction)))
        if np.abs(np.delete(direction, patient_axis)).max() > _ALIGNED_TOLERANCE:
            return None
        axes.append((patient_axis, 1 if direction[patient_axis] > 0 else -1))
    if sorted(axis for axis, _ in axes) != [0, 1, 2]:
        return None
    return axes


def _array_axis(axes: list[tuple[int, int]], direction: Vector) -> tuple[int, int]:
    """The array axis along a signed patient axis, and +1/-1 if its index runs with/against it."""
    patient_axis = int(np.argmax(np.abs(direction)))
    sign = 1 if direction[patient_axis] > 0 else -1
    for array_axis, (axis, axis_sign) in enumerate(axes):
        if axis == patient_axis:
            return array_axis, sign * axis_sign
    raise AssertionError("axes is a permutation of the patient axes")


def _take(voxels: np.ndarray, axis: int, index: int | slice) -> np.ndarray:
    key: list[int | slice] = [slice(None)] * voxels.ndim
    key[axis] = index
    return voxels[tuple(key)]


def _interpolated_plane(voxels: np.ndarray, axis: int, index: float) -> np.ndarray:
    """The plane at a fractional index along ``axis``, linear between the two nearest."""
    index = min(max(index, 0.0), voxels.shape[axis] - 1.0)
    lower = math.floor(index)
    weight = index - lower
    if weight < 1e-6 or lower == voxels.shape[axis] - 1:
        return _take(voxels, axis, lower)
    if weight > 1 - 1e-6:
        return _take(voxels, axis, lower + 1)
    below = _take(voxels, axis, lower).astype(np.float32)
    above = _take(voxels, axis, lower + 1)
    return below + (above - below) * np.float32(weight)


def _reduce_slab(block: np.ndarray, axis: int, mode: str) -> np.ndarray:
    reduced: np.ndarray
    if mode == "mip":
        reduced = block.max(axis=axis)
        return reduced
    if mode == "minip":
        reduced = block.min(axis=axis)
        return reduced
    # int32 sums of int16 are exact and faster than numpy's float64 mean.
    total: np.ndarray = block.sum(
        axis=axis,
        dtype=np.int32 if block.dtype.itemsize <= 2 and block.dtype.kind in "iu" else None,
    )
    return total.astype(np.float32) / np.float32(block.shape[axis])


def _resample_axis(
    image: np.ndarray, axis: int, source_mm: float, target_mm: float, count: int
) -> np.ndarray:
    """Linear resampling of a 2-D image along one axis from ``source_mm`` to ``target_mm``."""
    size = image.shape[axis]
    if size == 1 or (size == count and abs(source_mm - target_mm) < 1e-9 * target_mm):
        return image
    positions = np.arange(count) * (target_mm / source_mm)
    lower = np.minimum(np.floor(positions).astype(np.intp), size - 2)
    weight = (positions - lower).astype(np.float32)
    weight = weight[:, None] if axis == 0 else weight[None, :]
    below = np.take(image, lower, axis=axis).astype(np.float32)
    above = np.take(image, lower + 1, axis=axis)
    resampled: np.ndarray = below + (above - below) * weight
    return resampled


def _aligned_pixels(
    volume: Volume, geometry: SliceGeometry, axes: list[tuple[int, int]]
) -> np.ndarray:
    """Reslice by indexing: pick or reduce along the normal's array axis, then orient."""
    voxels = volume.voxels
    normal_axis, normal_sign = _array_axis(axes, geometry.normal)
    right_axis, right_sign = _array_axis(axes, geometry.row_direction)
    down_axis, down_sign = _array_axis(axes, geometry.column_direction)
    step = volume.spacing[normal_axis]
    start = float(volume.origin @ np.array(geometry.normal))

    def index_of(position: float) -> float:
        return (position - start) / (step * normal_sign)

    thickness = geometry.thickness_mm
    if geometry.mode == "thin" or thickness < step:
        plane = _interpolated_plane(voxels, normal_axis, index_of(geometry.position_mm))
    else:
        ends = sorted(index_of(geometry.position_mm + s * thickness / 2) for s in (-1, 1))
        first = max(0, math.ceil(ends[0] - 1e-6))
        last = min(voxels.shape[normal_axis] - 1, math.floor(ends[1] + 1e-6))
        block = _take(voxels, normal_axis, slice(first, last + 1))
        plane = _reduce_slab(block, normal_axis, geometry.mode)

    if down_axis > right_axis:  # remaining axes keep their order: (right, down) -> transpose
        plane = plane.T
    plane = plane[::down_sign, ::right_sign]
    spacing = geometry.pixel_spacing_mm
    plane = _resample_axis(plane, 0, volume.spacing[down_axis], spacing, geometry.rows)
    plane = _resample_axis(plane, 1, volume.spacing[right_axis], spacing, geometry.columns)
    pixels = np.ascontiguousarray(plane, dtype=np.float32)
    if np.may_share_memory(pixels, voxels):
        # A float32 volume's own slice: callers may window in place, so never hand out a view.
        pixels = pixels.copy()
    return pixels


# --- General path: trilinear sampling --------------------------------------------------------


def _sample(volume: Volume, indices: np.ndarray) -> np.ndarray:
    """Trilinear samples at ``(3, ...)`` fractional indices; NaN outside the volume."""
    samples: np.ndarray = ndimage.map_coordinates(
        volume.voxels,
        snap_to_bounds(indices, volume.voxels.shape),
        order=1,
        mode="constant",
        cval=np.nan,
        output=np.float32,
        prefilter=False,
    )
    return samples


def _index_step(volume: Volume, displacement_mm: np.ndarray) -> np.ndarray:
    """The (slice, row, col) index change for a displacement in patient mm."""
    step: np.ndarray = volume.patient_to_index(displacement_mm) - volume.patient_to_index(
        np.zeros(3)
    )
    return step


def _fill_outside(volume: Volume, pixels: np.ndarray) -> np.ndarray:
    np.copyto(pixels, np.float32(volume.minimum), where=np.isnan(pixels))
    return pixels


def _slab_offsets(volume: Volume, geometry: SliceGeometry) -> np.ndarray:
    """Sample offsets along the normal: one voxel step apart, centred, within the slab.

    ``n`` steps fit in the thickness; the ``n + 1`` samples are symmetric about the plane, so
    an even ``n`` puts a sample on the plane itself (and, for a normal along a volume axis,
    every sample on a slice centre, as the axis-aligned path does).
    """
    # mm moved along the normal per unit of index-space distance: the voxel step along it.
    step = 1.0 / float(np.linalg.norm(_index_step(volume, np.array(geometry.normal))))
    thickness = geometry.thickness_mm
    if geometry.mode == "thin" or thickness < step:
        return np.zeros(1)
    steps = math.floor(thickness / step + 1e-6)
    return (np.arange(steps + 1) - steps / 2) * step


_ACCUMULATE: dict[str, Callable[..., np.ndarray]] = {"mip": np.fmax, "minip": np.fmin}


def _sampled_pixels(volume: Volume, geometry: SliceGeometry) -> np.ndarray:
    """Sample the plane (or each plane of the slab) trilinearly and reduce over the slab.

    Samples outside the volume are left out of the reduction; pixels with none inside take
    the volume's minimum.
    """
    rows, columns = np.arange(geometry.rows), np.arange(geometry.columns)
    origin = volume.patient_to_index(np.array(geometry.top_left_mm))
    spacing = geometry.pixel_spacing_mm
    per_row = _index_step(volume, spacing * np.array(geometry.column_direction))
    per_column = _index_step(volume, spacing * np.array(geometry.row_direction))
    per_mm_normal = _index_step(volume, np.array(geometry.normal))
    grid = (
        origin[:, None, None]
        + per_row[:, None, None] * rows[None, :, None]
        + per_column[:, None, None] * columns[None, None, :]
    )
    offsets = _slab_offsets(volume, geometry)
    result: np.ndarray | None = None
    counts: np.ndarray | None = None
    for offset in offsets:
        samples = _sample(volume, grid + offset * per_mm_normal[:, None, None])
        if result is None:
            result = samples
            if geometry.mode == "avgip" and len(offsets) > 1:
                counts = (~np.isnan(samples)).astype(np.float32)
                result = np.nan_to_num(samples, nan=0.0)
        elif counts is not None:  # mean: sum the samples inside, count them
            inside = ~np.isnan(samples)
            counts += inside
            result += np.where(inside, samples, np.float32(0))
        else:
            _ACCUMULATE[geometry.mode](result, samples, out=result)  # NaN-ignoring max/min
    assert result is not None
    if counts is not None:
        with np.errstate(invalid="ignore", divide="ignore"):
            result = result / counts  # 0/0 -> NaN where no sample was inside
    return _fill_outside(volume, result.astype(np.float32, copy=False))
