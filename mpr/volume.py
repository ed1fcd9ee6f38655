"""Stack the slices of a CT/MR/PT series into one 3-D volume in patient coordinates (LPS, mm).

Geometry is checked before any pixel is decoded, so a series that cannot form a volume is
refused cheaply, with a reason a user can act on (:class:`VolumeError`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels.processing import apply_modality_lut
from scipy import ndimage

from .grayscale import frame_transform_attributes
from .pixels import PixelDecodeError, frame_array, number_of_frames
from .window import Window

__all__ = [
    "MIN_MPR_IMAGES",
    "Volume",
    "VolumeError",
    "assemble_volume",
    "mpr_offered",
]

MIN_MPR_IMAGES = 50
_MPR_MODALITIES = frozenset({"CT", "MR", "PT"})

# Two slices closer than this along the normal are the same position (duplicates).
_DUPLICATE_MM = 0.01
# Slice steps may differ by 1 % or 0.01 mm (rounded Image Position values) and stay regular.
_SPACING_RELATIVE_TOLERANCE = 0.01
_SPACING_ABSOLUTE_TOLERANCE_MM = 0.01
# A stack whose slices drift in-plane by less than a quarter pixel is treated as straight.
_TILT_TOLERANCE_PIXELS = 0.25
# Image Orientation values (direction cosines) that differ by less than this are the same.
_ORIENTATION_TOLERANCE = 1e-3
_INT16 = np.iinfo(np.int16)


class VolumeError(ValueError):
    """The images cannot form a volume; the message is the reason, shown to users as is."""


@dataclass(frozen=True, eq=False)  # eq=False: ndarray fields make field-wise == meaningless
class Volume:
    """A regular 3-D grid of modality values (HU for CT) placed in patient coordinates.

    Attributes
    ----------
    voxels : numpy.ndarray
        ``(slices, rows, cols)`` modality values: int16 when the rescaled values are integers
        that fit, else float32.
    origin : numpy.ndarray
        ``(3,)`` patient mm of the centre of voxel ``[0, 0, 0]``.
    row_direction, column_direction, slice_direction : numpy.ndarray
        ``(3,)`` unit vectors: direction of increasing column, row and slice index.
    spacing : tuple of float
        ``(slice, row, col)`` spacing in mm; ``row`` is the distance between rows.
    modality, frame_of_reference_uid, series_instance_uid : str
        From the source images.
    sop_instance_uids : tuple of str
        The source instances sorted along the normal (one per frame for a multi-frame
        source); after resampling they are the sources, no longer one per slice.
    default_window : Window or None
        The middle slice's first Window Center/Width, if any.
    photometric : str
        ``"MONOCHROME1"`` or ``"MONOCHROME2"``.
    resampled_from : str or None
        Why the source was resampled onto this regular grid (e.g. its gantry tilt), or None
        when the voxels are the source pixels unchanged.
    """

    voxels: np.ndarray
    origin: np.ndarray
    row_direction: np.ndarray
    column_direction: np.ndarray
    slice_direction: np.ndarray
    spacing: tuple[float, float, float]
    modality: str
    frame_of_reference_uid: str
    series_instance_uid: str
    sop_instance_uids: tuple[str, ...]
    default_window: Window | None
    photometric: str
    resampled_from: str | None = None

    def __post_init__(self) -> None:
        if self.voxels.ndim != 3:
            raise ValueError(f"voxels must be 3-D (slices, rows, cols), got {self.voxels.shape}")
        if min(self.spacing) <= 0:
            raise ValueError(f"voxel spacing must be positive, got {self.spacing}")

    @cached_property
    def minimum(self) -> float:
        """The smallest voxel value: what samples outside the volume take."""
        return float(self.voxels.min())

    @cached_property
    def index_matrix(self) -> np.ndarray:
        """``(3, 3)`` matrix whose columns are the mm steps of one slice, row and column."""
        return np.column_stack(
            [
                self.slice_direction * self.spacing[0],
                self.column_direction * self.spacing[1],
                self.row_direction * self.spacing[2],
            ]
        ).astype(np.float64)

    @cached_property
    def _inverse_index_matrix(self) -> np.ndarray:
        return np.linalg.inv(self.index_matrix)

    def index_to_patient(self, ijk: np.ndarray) -> np.ndarray:
        """Convert ``(..., 3)`` (slice, row, col) indices to patient mm ``(..., 3)``."""
        result: np.ndarray = self.origin + np.asarray(ijk, dtype=np.float64) @ self.index_matrix.T
        return result

    def patient_to_index(self, xyz: np.ndarray) -> np.ndarray:
        """Convert ``(..., 3)`` patient mm to fractional (slice, row, col) indices."""
        offset = np.asarray(xyz, dtype=np.float64) - self.origin
        result: np.ndarray = offset @ self._inverse_index_matrix.T
        return result

    def value_at(self, xyz: Any) -> float:
        """Trilinear value at a patient point; :attr:`minimum` outside the volume."""
        ijk = self.patient_to_index(np.asarray(xyz, dtype=np.float64).reshape(3))
        coords = snap_to_bounds(ijk.reshape(3, 1), self.voxels.shape)
        sampled = ndimage.map_coordinates(
            self.voxels, coords, order=1, mode="constant", cval=self.minimum, output=np.float64
        )
        return float(sampled[0])


def snap_to_bounds(coords: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Pull index coordinates that miss the volume by rounding error back onto its edge.

    ``map_coordinates`` gives ``cval`` for 511.0000001 in a 512-voxel axis; a plane through
    the last slice computed in floating point must still show that slice.

    Parameters
    ----------
    coords : numpy.ndarray
        ``(3, ...)`` fractional indices.
    shape : tuple of int
        The volume shape.

    Returns
    -------
    numpy.ndarray
        The same coordinates, with those within 1e-4 of an edge moved onto it.
    """
    snapped = np.array(coords, dtype=np.float64)
    for axis, size in enumerate(shape):
        values = snapped[axis]
        clipped = np.clip(values, 0, size - 1)
        np.copyto(values, clipped, where=np.abs(values - clipped) < 1e-4)
    return snapped


def mpr_offered(modality: str, image_count: int) -> bool:
    """Whether the viewer offers MPR for a series.

    Parameters
    ----------
    modality : str
        The series' Modality, e.g. ``"CT"``.
    image_count : int
        Number of images (frames) in the series.

    Returns
    -------
    bool
        True for CT, MR and PT series of at least :data:`MIN_MPR_IMAGES` images.
    """
    return modality.strip().upper() in _MPR_MODALITIES and image_count >= MIN_MPR_IMAGES


@dataclass(frozen=True)
class _Frame:
    """One slice of the future volume: a single-frame image, or one frame of an enhanced one."""

    dataset: Dataset
    index: int
    position: np.ndarray
    orientation: np.ndarray
    pixel_spacing: tuple[float, float]
    sop_instance_uid: str


def _floats(value: Any, count: int, what: str, uid: str) -> np.ndarray:
    if value is None or value == "":
        raise VolumeError(f"image {uid} has no {what}")
    try:
        values = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise VolumeError(f"image {uid} has an invalid {what}: {value!r}") from None
    if values.shape != (count,) or not np.all(np.isfinite(values)):
        raise VolumeError(f"image {uid} has an invalid {what}: {value!r}")
    return values


def _functional_group_value(ds: Dataset, index: int, sequence: str, keyword: str) -> Any:
    """An attribute of an enhanced image's frame: per-frame group first, then shared."""
    for groups in (
        ds.get("PerFrameFunctionalGroupsSequence"),
        ds.get("SharedFunctionalGroupsSequence"),
    ):
        if not groups:
            continue
        group = groups[index] if len(groups) > 1 else groups[0]
        items = group.get(sequence)
        if items and keyword in items[0]:
            return items[0].get(keyword)
    return None


def _single_frame(ds: Dataset) -> _Frame:
    uid = str(ds.get("SOPInstanceUID", "?"))
    spacing = _floats(ds.get("PixelSpacing"), 2, "Pixel Spacing", uid)
    return _Frame(
        dataset=ds,
        index=0,
        position=_floats(ds.get("ImagePositionPatient"), 3, "Image Position (Patient)", uid),
        orientation=_floats(
            ds.get("ImageOrientationPatient"), 6, "Image Orientation (Patient)", uid
        ),
        pixel_spacing=(float(spacing[0]), float(spacing[1])),
        sop_instance_uid=uid,
    )


def _enhanced_frames(ds: Dataset, frames: int) -> list[_Frame]:
    uid = str(ds.get("SOPInstanceUID", "?"))
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame or len(per_frame) != frames:
        raise VolumeError(
            f"multi-frame image {uid} has no per-frame positions "
            "(Per-frame Functional Groups), so its frames cannot be placed in a volume"
        )
    result = []
    for index in range(frames):
        where = f"{uid} frame {index + 1}"

        def value(sequence: str, keyword: str, index: int = index) -> Any:
            return _functional_group_value(ds, index, sequence, keyword)

        spacing = _floats(value("PixelMeasuresSequence", "PixelSpacing"), 2, "Pixel Spacing", where)
        result.append(
            _Frame(
                dataset=ds,
                index=index,
                position=_floats(
                    value("PlanePositionSequence", "ImagePositionPatient"),
                    3,
                    "Image Position (Patient)",
                    where,
                ),
                orientation=_floats(
                    value("PlaneOrientationSequence", "ImageOrientationPatient"),
                    6,
                    "Image Orientation (Patient)",
                    where,
                ),
                pixel_spacing=(float(spacing[0]), float(spacing[1])),
                sop_instance_uid=uid,
            )
        )
    return result


def _frames(datasets: Sequence[Dataset]) -> list[_Frame]:
    """The slices of the series: single-frame images, or the frames of one enhanced image."""
    if not datasets:
        raise VolumeError("the series has no images")
    counts = []
    for ds in datasets:
        try:
            counts.append(number_of_frames(ds))
        except PixelDecodeError as exc:
            raise VolumeError(f"image {ds.get('SOPInstanceUID', '?')}: {exc}") from None
    if max(counts) == 1:
        return [_single_frame(ds) for ds in datasets]
    if len(datasets) == 1:
        return _enhanced_frames(datasets[0], counts[0])
    raise VolumeError(
        f"the series mixes {len(datasets)} images of which {sum(c > 1 for c in counts)} are "
        "multi-frame; a volume is built from single-frame slices or from one multi-frame image"
    )


def _mm(value: float) -> str:
    """Millimetres for messages: 2.5 -> '2.5', 1.08 -> '1.08', 5 -> '5.0'."""
    text = f"{value:.2f}"
    return text[:-1] if text.endswith("0") else text


def _distinct(values: Sequence[object]) -> str:
    return " and ".join(str(v) for v in dict.fromkeys(values))


def _check_same_attributes(frames: list[_Frame]) -> None:
    """Refuse a series whose slices do not share one grid, frame of reference and colour model."""
    orientations = np.array([f.orientation for f in frames])
    if np.abs(orientations - orientations[0]).max() > _ORIENTATION_TOLERANCE:
        shown = [tuple(round(float(v), 3) for v in o) for o in orientations]
        raise VolumeError(f"mixed image orientations: {_distinct(shown)}")
    spacings = np.array([f.pixel_spacing for f in frames])
    if np.abs(spacings - spacings[0]).max() > 1e-3 * spacings[0].max():
        raise VolumeError(
            "mixed pixel spacing: "
            + _distinct([f"{_mm(r)} x {_mm(c)} mm" for r, c in spacings.tolist()])
        )
    datasets = list({id(f.dataset): f.dataset for f in frames}.values())
    sizes = [(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) for ds in datasets]
    if len(set(sizes)) > 1:
        raise VolumeError("mixed image sizes: " + _distinct([f"{c}x{r}" for r, c in sizes]))
    references = [str(ds.get("FrameOfReferenceUID", "")) for ds in datasets]
    if len(set(references)) > 1:
        raise VolumeError(
            f"the images belong to {len(set(references))} different frames of reference "
            "(Frame of Reference UID), so their positions cannot be combined"
        )
    photometric = [str(ds.get("PhotometricInterpretation", "")) for ds in datasets]
    colour = [p for p in photometric if p not in ("MONOCHROME1", "MONOCHROME2")]
    if colour:
        raise VolumeError(f"{colour[0] or 'unknown'} images cannot form a grayscale volume")
    if len(set(photometric)) > 1:
        raise VolumeError(f"mixed photometric interpretations: {_distinct(photometric)}")


@dataclass(frozen=True)
class _Grid:
    """Directions of the stack (from Image Orientation) and where each sorted slice lies."""

    row_direction: np.ndarray
    column_direction: np.ndarray
    normal: np.ndarray
    distances: np.ndarray  # (n,) position of each slice along the normal, ascending
    in_plane: np.ndarray  # (n, 2) offset of each slice from the first along (column, row) dirs


def _directions(orientation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    row, column = orientation[:3], orientation[3:]
    if not (0.99 < np.linalg.norm(row) < 1.01 and 0.99 < np.linalg.norm(column) < 1.01):
        raise VolumeError(f"invalid Image Orientation (Patient) {orientation.tolist()}")
    if abs(float(row @ column)) > 0.01:
        raise VolumeError(
            f"Image Orientation (Patient) {orientation.tolist()}: rows and columns are not "
            "perpendicular"
        )
    row = row / np.linalg.norm(row)
    column = column - (column @ row) * row
    column = column / np.linalg.norm(column)
    return row, column, np.cross(row, column)


def _sorted_grid(frames: list[_Frame]) -> tuple[list[_Frame], _Grid]:
    row, column, normal = _directions(frames[0].orientation)
    positions = np.array([f.position for f in frames])
    distances = positions @ normal
    order = np.argsort(distances, kind="stable")
    ordered = [frames[i] for i in order]
    positions, distances = positions[order], distances[order]
    offsets = positions - positions[0]
    in_plane = np.column_stack([offsets @ column, offsets @ row])
    return ordered, _Grid(row, column, normal, distances, in_plane)


def _check_distinct_positions(grid: _Grid) -> None:
    steps = np.diff(grid.distances)
    duplicates = np.flatnonzero(steps < _DUPLICATE_MM)
    if duplicates.size:
        where = float(grid.distances[duplicates[0]])
        raise VolumeError(
            f"{duplicates.size} slice position(s) are used by more than one image (the first at "
            f"{_mm(where)} mm along the slice normal): duplicate images, or several stacks "
            "(echoes, phases) in one series"
        )


def _tilt_problem(grid: _Grid, pixel_spacing: tuple[float, float]) -> str | None:
    """Describe the in-plane drift of the slices (gantry tilt), or None for a straight stack."""
    drift = np.linalg.norm(grid.in_plane, axis=1)
    if drift.max() <= _TILT_TOLERANCE_PIXELS * min(pixel_spacing):
        return None
    along_columns, along_rows = np.abs(grid.in_plane[-1])
    if along_rows < 0.2 * along_columns:
        where = "along the columns"
    elif along_columns < 0.2 * along_rows:
        where = "along the rows"
    else:
        where = "along the rows and columns"
    extent = float(grid.distances[-1] - grid.distances[0])
    angle = math.degrees(math.atan2(float(np.hypot(along_columns, along_rows)), extent))
    if angle < 0.05:
        return f"the slices are offset in-plane by up to {_mm(float(drift.max()))} mm"
    return f"gantry tilt of {angle:.1f}° (slices are offset {where})"


def _spacing_problem(grid: _Grid) -> str | None:
    steps = np.diff(grid.distances)
    median = float(np.median(steps))
    tolerance = max(_SPACING_ABSOLUTE_TOLERANCE_MM, _SPACING_RELATIVE_TOLERANCE * median)
    if np.abs(steps - median).max() <= tolerance:
        return None
    return f"irregular slice spacing: {_mm(float(steps.min()))} mm to {_mm(float(steps.max()))} mm"


def _first_number(value: Any) -> float:
    if isinstance(value, MultiValue | list | tuple):
        value = value[0]
    return float(value)


def _default_window(attrs: Dataset) -> Window | None:
    """The first Window Center/Width of a slice; None if absent or unusable."""
    try:
        return Window(_first_number(attrs.WindowCenter), _first_number(attrs.WindowWidth))
    except (AttributeError, IndexError, TypeError, ValueError):
        return None


def _decode(frame: _Frame) -> np.ndarray:
    try:
        array = frame_array(frame.dataset, frame.index)
    except PixelDecodeError as exc:
        raise VolumeError(f"image {frame.sop_instance_uid}: {exc}") from None
    if array.ndim != 2:
        raise VolumeError(f"image {frame.sop_instance_uid} is not a single-sample grayscale image")
    return array


def _rescale_number(attrs: Dataset, keyword: str, default: float) -> float:
    value = attrs.get(keyword)
    return default if value is None or value == "" else float(value)


def _stored_stack(frames: list[_Frame]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decode every slice into one preallocated array; also each slice's min and max."""
    first = _decode(frames[0])
    stack = np.empty((len(frames), *first.shape), dtype=first.dtype)
    low = np.empty(len(frames), dtype=np.float64)
    high = np.empty(len(frames), dtype=np.float64)
    for i, frame in enumerate(frames):
        array = first if i == 0 else _decode(frame)
        if array.dtype != stack.dtype:
            # e.g. one slice stored signed and the next unsigned: widen, never wrap.
            stack = stack.astype(np.promote_types(stack.dtype, array.dtype))
        stack[i] = array
        # Per-slice extremes while the slice is in cache: they decide the output dtype.
        low[i], high[i] = array.min(), array.max()
    return stack, low, high


def _rescale_to_int16(stored: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """Apply integer slope/intercept in int16 arithmetic, in place where possible.

    The caller checked that every result fits int16. Integer arithmetic modulo 2**16 then
    gives the exact result even when the stored values (e.g. uint16 4095) or an intermediate
    product wrap, so uint16 data can be reinterpreted in place instead of copied.
    """
    if stored.dtype.kind in "iu" and stored.dtype.itemsize == 2:
        values = stored.view(np.int16)
    else:
        values = stored.astype(np.int16)
    for factors, operation in ((slopes, np.multiply), (intercepts, np.add)):
        neutral = 1 if operation is np.multiply else 0
        if np.all(factors == neutral):
            continue
        wrapped = factors.astype(np.int64).astype(np.int16)  # modulo 2**16, like the values
        operand = wrapped[0] if np.all(factors == factors[0]) else wrapped[:, None, None]
        operation(values, operand, out=values)
    return values


def _rescale_to_float32(
    stored: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray
) -> np.ndarray:
    values = stored.astype(np.float32)
    if np.all(slopes == slopes[0]) and np.all(intercepts == intercepts[0]):
        values *= np.float32(slopes[0])
        values += np.float32(intercepts[0])
    else:  # e.g. PET: a slope per slice
        values *= slopes.astype(np.float32)[:, None, None]
        values += intercepts.astype(np.float32)[:, None, None]
    return values


def _fits_int16(low: float, high: float) -> bool:
    return bool(_INT16.min <= low and high <= _INT16.max)


def _modality_values(frames: list[_Frame], attrs: list[Dataset]) -> np.ndarray:
    """The rescaled (modality) values of all slices, int16 when exact, else float32."""
    if any("ModalityLUTSequence" in a for a in attrs):
        return _lut_values(frames, attrs)
    slopes = np.array([_rescale_number(a, "RescaleSlope", 1.0) for a in attrs])
    intercepts = np.array([_rescale_number(a, "RescaleIntercept", 0.0) for a in attrs])
    stored, low, high = _stored_stack(frames)
    ends = np.concatenate([low * slopes + intercepts, high * slopes + intercepts])
    integral = (
        stored.dtype.kind in "iu"
        and np.all(slopes == np.round(slopes))
        and np.all(intercepts == np.round(intercepts))
    )
    if integral and _fits_int16(float(ends.min()), float(ends.max())):
        return _rescale_to_int16(stored, slopes, intercepts)
    return _rescale_to_float32(stored, slopes, intercepts)


def _lut_values(frames: list[_Frame], attrs: list[Dataset]) -> np.ndarray:
    """Modality LUT Sequence path (rare): pydicom maps each slice through its LUT."""
    first = apply_modality_lut(_decode(frames[0]), attrs[0])
    values = np.empty((len(frames), *first.shape), dtype=np.float32)
    for i, (frame, frame_attrs) in enumerate(zip(frames, attrs, strict=True)):
        values[i] = first if i == 0 else apply_modality_lut(_decode(frame), frame_attrs)
    if np.all(values == np.round(values)) and _fits_int16(float(values.min()), float(values.max())):
        return values.astype(np.int16)
    return values


def _resample_regular(
    voxels: np.ndarray, grid: _Grid, pixel_spacing: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a tilted or irregular stack onto a grid whose slice axis is the normal.

    Each slice is first shifted in-plane onto a common grid covering every slice's footprint
    (linear interpolation), then slices are interpolated linearly along the normal at the
    median step. This is trilinear interpolation in the stack's own (row, column, normal)
    frame, which is orthogonal even when the slices were acquired with a tilt.

    Returns
    -------
    tuple of numpy.ndarray
        The new voxels and the in-plane (column, row) mm offset of the new grid's first voxel
        from the first slice's first pixel.
    """
    fill = float(voxels.min())
    pixels = grid.in_plane / np.array(pixel_spacing)  # (n, 2) offsets in (row, col) pixels
    start = np.floor(pixels.min(axis=0) + 1e-6)
    extra = np.ceil(pixels.max(axis=0) - start - 1e-6).astype(int)
    shape = (voxels.shape[1] + int(extra[0]), voxels.shape[2] + int(extra[1]))
    shifted = np.empty((voxels.shape[0], *shape), dtype=np.float32)
    for i in range(voxels.shape[0]):
        # Target pixel p of the common grid is source pixel p + start - offset_i of slice i.
        ndimage.affine_transform(
            voxels[i],
            np.eye(2),
            offset=start - pixels[i],
            output_shape=shape,
            output=shifted[i],
            order=1,
            mode="constant",
            cval=fill,
        )
    distances = grid.distances - grid.distances[0]
    step = float(np.median(np.diff(distances)))
    count = math.floor(distances[-1] / step + 1e-6) + 1
    targets = np.arange(count) * step
    lower = np.clip(np.searchsorted(distances, targets, side="right") - 1, 0, len(distances) - 2)
    weights = ((targets - distances[lower]) / (distances[lower + 1] - distances[lower])).astype(
        np.float32
    )
    resampled = np.empty((count, *shape), dtype=np.float32)
    for k in range(count):
        below, above = shifted[lower[k]], shifted[lower[k] + 1]
        np.add(below, (above - below) * weights[k], out=resampled[k])
    if voxels.dtype == np.int16:
        # Keep CT in int16 (half the memory); rounding moves values by at most 0.5 HU.
        resampled = np.rint(resampled).astype(np.int16)
    return resampled, start * np.array(pixel_spacing)


def assemble_volume(datasets: Sequence[Dataset], *, resample: bool = False) -> Volume:
    """Assemble the images of one series into a :class:`Volume`.

    Slices are sorted along the slice normal (the cross product of the Image Orientation
    row and column directions) by the projection of their Image Position on it, whatever
    the input order. Pixels are decoded with :func:`mpr.pixels.frame_array` (every transfer
    syntax) and the Modality LUT (Rescale Slope/Intercept or Modality LUT Sequence) applied.

    Parameters
    ----------
    datasets : sequence of pydicom.dataset.Dataset
        The single-frame images of the series (with file meta), or one enhanced multi-frame
        image with per-frame positions.
    resample : bool
        If True, a series with gantry tilt or irregular slice spacing is resampled (linear
        interpolation) onto a regular grid whose slice axis is the slice normal and whose
        spacing is the median slice step; :attr:`Volume.resampled_from` then says why.

    Returns
    -------
    Volume
        The volume; ``voxels[0]`` is the slice furthest towards ``-normal``.

    Raises
    ------
    VolumeError
        With the reason: no or a single slice, mixed orientation, frame of reference, image
        size or pixel spacing, colour images, multi-frame images that cannot be placed,
        duplicate positions, undecodable pixels and, unless ``resample``, gantry tilt or
        irregular spacing.
    """
    frames = _frames(datasets)
    if len(frames) < 2:
        raise VolumeError(f"a volume needs at least 2 slices, the series has {len(frames)}")
    _check_same_attributes(frames)
    frames, grid = _sorted_grid(frames)
    _check_distinct_positions(grid)
    pixel_spacing = frames[0].pixel_spacing
    problems = [p for p in (_tilt_problem(grid, pixel_spacing), _spacing_problem(grid)) if p]
    if problems and not resample:
        raise VolumeError("; ".join(problems))

    attrs = [frame_transform_attributes(f.dataset, f.index) for f in frames]
    voxels = _modality_values(frames, attrs)
    origin = frames[0].position.copy()
    if problems:
        voxels, start_mm = _resample_regular(voxels, grid, pixel_spacing)
        origin += start_mm[0] * grid.column_direction + start_mm[1] * grid.row_direction
        slice_step = float(np.median(np.diff(grid.distances)))
    else:
        slice_step = float(grid.distances[-1] - grid.distances[0]) / (len(frames) - 1)

    first = frames[0].dataset
    return Volume(
        voxels=voxels,
        origin=origin,
        row_direction=grid.row_direction,
        column_direction=grid.column_direction,
        slice_direction=grid.normal,
        spacing=(slice_step, pixel_spacing[0], pixel_spacing[1]),
        modality=str(first.get("Modality", "")),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "")),
        series_instance_uid=str(first.get("SeriesInstanceUID", "")),
        sop_instance_uids=tuple(f.sop_instance_uid for f in frames),
        default_window=_default_window(attrs[len(attrs) // 2]),
        photometric=str(first.get("PhotometricInterpretation", "MONOCHROME2")),
        resampled_from="; ".join(problems) if problems else None,
    )
