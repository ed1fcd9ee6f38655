"""mpr.reslice: planes, slabs, oblique and curved reformats of phantom volumes built here.

Expectations are computed independently: from the phantom's definition in patient mm, from
the display table of docs/viewer-contract.md, or with plain numpy on the voxel array.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import pytest
from scipy import ndimage

from mpr.reslice import (
    Reslice,
    SliceGeometry,
    curved,
    oblique,
    orthogonal,
    plane_geometry,
)
from mpr.volume import Volume

X, Y, Z = np.eye(3)


def make_volume(
    values: Callable[[np.ndarray], np.ndarray] | np.ndarray,
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    *,
    row: np.ndarray = X,
    column: np.ndarray = Y,
    normal: np.ndarray = Z,
    centre: tuple[float, float, float] = (0.0, 0.0, 0.0),
) -> Volume:
    """A volume centred on ``centre``; ``values`` is an array or a function of patient mm."""
    half = (np.array(shape) - 1) / 2 * np.array(spacing)
    origin = np.array(centre) - half[0] * normal - half[1] * column - half[2] * row
    if callable(values):
        i, j, k = np.indices(shape)
        xyz = (
            origin
            + (i * spacing[0])[..., None] * normal
            + (j * spacing[1])[..., None] * column
            + (k * spacing[2])[..., None] * row
        )
        values = values(xyz)
    return Volume(
        voxels=np.asarray(values),
        origin=origin,
        row_direction=np.asarray(row, dtype=float),
        column_direction=np.asarray(column, dtype=float),
        slice_direction=np.asarray(normal, dtype=float),
        spacing=spacing,
        modality="CT",
        frame_of_reference_uid="1.2.3",
        series_instance_uid="1.2.4",
        sop_instance_uids=(),
        default_window=None,
        photometric="MONOCHROME2",
    )


def rotation(about: np.ndarray, degrees: float) -> np.ndarray:
    """Rodrigues rotation matrix."""
    a = about / np.linalg.norm(about)
    t = math.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + math.sin(t) * k + (1 - math.cos(t)) * k @ k


# --- phantoms ----------------------------------------------------------------------------------

# Boxes of value 1000 in air (0): (centre, half sizes) in patient mm.
RIGHT_BOX = ((-30.0, 0.0, 0.0), (8.0, 5.0, 5.0))  # towards the patient's right (-X)
ANTERIOR_BOX = ((0.0, -30.0, 0.0), (5.0, 8.0, 5.0))  # anterior (-Y)
SUPERIOR_BOX = ((0.0, 0.0, 30.0), (5.0, 5.0, 8.0))  # towards the head (+Z)


def boxes(xyz: np.ndarray) -> np.ndarray:
    result = np.zeros(xyz.shape[:-1], dtype=np.int16)
    for centre, half in (RIGHT_BOX, ANTERIOR_BOX, SUPERIOR_BOX):
        inside = np.all(np.abs(xyz - centre) <= np.array(half) + 1e-9, axis=-1)
        result[inside] = 1000
    return result


def linear(xyz: np.ndarray) -> np.ndarray:
    """Linear in patient mm: trilinear interpolation reproduces it exactly."""
    return (2.0 * xyz[..., 0] - 3.0 * xyz[..., 1] + 0.5 * xyz[..., 2] + 7.0).astype(np.float32)


# Acquisitions of the same patient space: (row, column, slice) directions and spacing.
ACQUISITIONS = {
    "axial": (X, Y, Z, (51, 51, 51), (2.0, 2.0, 2.0)),
    "axial feet first prone": (-X, -Y, -Z, (51, 51, 51), (2.0, 2.0, 2.0)),
    "sagittal": (Y, -Z, -X, (26, 51, 51), (4.0, 2.0, 2.0)),
    "coronal thick": (X, -Z, Y, (21, 51, 51), (5.0, 2.0, 2.0)),
    "rotated": (
        rotation(np.array([1.0, 1.0, 0.3]), 25) @ X,
        rotation(np.array([1.0, 1.0, 0.3]), 25) @ Y,
        rotation(np.array([1.0, 1.0, 0.3]), 25) @ Z,
        (51, 51, 51),
        (2.0, 2.0, 2.0),
    ),
}


def acquired(name: str, values: Callable[[np.ndarray], np.ndarray]) -> Volume:
    row, column, normal, shape, spacing = ACQUISITIONS[name]
    return make_volume(values, shape, spacing, row=row, column=column, normal=normal)


def inside_volume(volume: Volume, xyz: np.ndarray) -> np.ndarray:
    """Points within the voxel-centre box, computed from the acquisition directions."""
    axes = np.stack([volume.slice_direction, volume.column_direction, volume.row_direction])
    ijk = (xyz - volume.origin) @ axes.T / np.array(volume.spacing)
    upper = np.array(volume.voxels.shape) - 1
    return np.all((ijk > -1e-6) & (ijk < upper + 1e-6), axis=-1)


def pixel_positions(geometry: SliceGeometry) -> np.ndarray:
    rows, cols = np.indices((geometry.rows, geometry.columns))
    step = geometry.pixel_spacing_mm
    return (
        np.array(geometry.top_left_mm)
        + (cols * step)[..., None] * np.array(geometry.row_direction)
        + (rows * step)[..., None] * np.array(geometry.column_direction)
    )


def blobs(reslice: Reslice) -> list[tuple[float, float, np.ndarray]]:
    """(row, col, patient mm) of the centroid of each bright region of the image."""
    labels, count = ndimage.label(reslice.pixels > 500)
    result = []
    for index in range(1, count + 1):
        if np.count_nonzero(labels == index) < 4:
            continue  # a corner clipped off a box by an oblique voxel grid
        row, col = ndimage.center_of_mass(labels == index)
        result.append((row, col, np.array(reslice.geometry.pixel_to_patient(row, col))))
    return result


def blob_at(found: list[tuple[float, float, np.ndarray]], where: tuple[float, ...]) -> tuple:
    distances = [np.linalg.norm(mm - np.array(where)) for _, _, mm in found]
    assert distances and min(distances) < 2.0, (where, [mm.round(1) for *_, mm in found])
    return found[int(np.argmin(distances))]


# --- display convention --------------------------------------------------------------------


@pytest.mark.parametrize("acquisition", list(ACQUISITIONS))
def test_axial_shows_patient_right_on_the_left_and_anterior_on_top(acquisition: str) -> None:
    reslice = orthogonal(acquired(acquisition, boxes), "axial", 0.0)
    rows, cols = reslice.pixels.shape
    found = blobs(reslice)

    right_row, right_col, _ = blob_at(found, RIGHT_BOX[0])
    front_row, front_col, _ = blob_at(found, ANTERIOR_BOX[0])

    assert len(found) == 2
    assert right_col < cols / 2 - 5 and abs(right_row - rows / 2) < 2
    assert front_row < rows / 2 - 5 and abs(front_col - cols / 2) < 2


@pytest.mark.parametrize("acquisition", list(ACQUISITIONS))
def test_coronal_shows_patient_right_on_the_left_and_head_up(acquisition: str) -> None:
    reslice = orthogonal(acquired(acquisition, boxes), "coronal", 0.0)
    rows, cols = reslice.pixels.shape
    found = blobs(reslice)

    right_row, right_col, _ = blob_at(found, RIGHT_BOX[0])
    head_row, head_col, _ = blob_at(found, SUPERIOR_BOX[0])

    assert len(found) == 2
    assert right_col < cols / 2 - 5 and abs(right_row - rows / 2) < 2
    assert head_row < rows / 2 - 5 and abs(head_col - cols / 2) < 2


@pytest.mark.parametrize("acquisition", list(ACQUISITIONS))
def test_sagittal_shows_anterior_on_the_left_and_head_up(acquisition: str) -> None:
    reslice = orthogonal(acquired(acquisition, boxes), "sagittal", 0.0)
    rows, cols = reslice.pixels.shape
    found = blobs(reslice)

    front_row, front_col, _ = blob_at(found, ANTERIOR_BOX[0])
    head_row, head_col, _ = blob_at(found, SUPERIOR_BOX[0])

    assert len(found) == 2
    assert front_col < cols / 2 - 5 and abs(front_row - rows / 2) < 2
    assert head_row < rows / 2 - 5 and abs(head_col - cols / 2) < 2


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_plane_geometry_follows_the_contract_table(plane: str) -> None:
    expected = {
        "axial": ((0, 0, 1), (1, 0, 0), (0, 1, 0)),
        "coronal": ((0, 1, 0), (1, 0, 0), (0, 0, -1)),
        "sagittal": ((1, 0, 0), (0, 1, 0), (0, 0, -1)),
    }[plane]
    volume = make_volume(boxes, (21, 31, 41), (3.0, 1.5, 1.0), centre=(5.0, -10.0, 100.0))

    geometry = orthogonal(volume, plane, plane_geometry(volume, plane).position_mm).geometry

    assert (geometry.normal, geometry.row_direction, geometry.column_direction) == expected
    assert geometry.pixel_spacing_mm == 1.0  # the smallest voxel spacing: square pixels
    extents = {"axial": (40, 45), "coronal": (40, 60), "sagittal": (45, 60)}[plane]
    assert (geometry.columns - 1, geometry.rows - 1) == extents  # mm / 1 mm
    lows = np.array([5.0 - 20, -10.0 - 22.5, 100.0 - 30])  # x, y, z of the lowest voxels
    highs = np.array([5.0 + 20, -10.0 + 22.5, 100.0 + 30])
    normal_axis = int(np.argmax(np.abs(geometry.normal)))
    assert geometry.position_range_mm == pytest.approx((lows[normal_axis], highs[normal_axis]))
    # Top-left pixel: the lowest x/y and the highest z the image shows.
    corner = np.where(np.array(expected[1]) + np.array(expected[2]) < 0, highs, lows)
    corner[normal_axis] = geometry.position_mm
    assert geometry.top_left_mm == pytest.approx(tuple(corner))


@pytest.mark.parametrize("acquisition", list(ACQUISITIONS))
@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("offset", [0.0, 1.3])
def test_every_pixel_shows_the_volume_at_its_patient_position(
    acquisition: str, plane: str, offset: float
) -> None:
    volume = acquired(acquisition, linear)
    reslice = orthogonal(volume, plane, 4.0 + offset)  # 1.3 mm: between slices
    xyz = pixel_positions(reslice.geometry)
    inside = inside_volume(volume, xyz)

    assert inside.mean() > 0.3
    np.testing.assert_allclose(reslice.pixels[inside], linear(xyz[inside]), atol=2e-3)
    assert np.all(reslice.pixels[~inside] == volume.minimum)
    assert reslice.pixels.dtype == np.float32


# --- slabs -----------------------------------------------------------------------------------

SHAPE = (91, 65, 73)  # slices of 2 mm (180 mm), rows and columns of 1 mm
RANDOM = np.random.default_rng(7).integers(-1000, 3000, SHAPE).astype(np.int16)
THICKNESSES = [0.1, 0.5, 1.0, 20.0, 40.0, 80.0, 160.0]


@pytest.fixture(scope="module")
def noise() -> Volume:
    return make_volume(RANDOM, SHAPE, (2.0, 1.0, 1.0))


def centres_along(volume: Volume, axis: int) -> np.ndarray:
    """Patient coordinate of each slice / row / column centre along its own axis."""
    start = volume.origin[[2, 1, 0][axis]]
    return start + np.arange(volume.voxels.shape[axis]) * volume.spacing[axis]


def expected_slab(volume: Volume, plane: str, position: float, mode: str, thickness: float):
    """The slab reduced with numpy, in display orientation at the voxel grid (no resampling)."""
    axis = {"axial": 0, "coronal": 1, "sagittal": 2}[plane]
    voxels = volume.voxels.astype(np.float64)
    centres = centres_along(volume, axis)
    if mode == "thin" or thickness < volume.spacing[axis]:
        index = np.interp(position, centres, np.arange(len(centres)))
        low = int(np.floor(index))
        high = min(low + 1, len(centres) - 1)
        weight = index - low
        plane_values = (1 - weight) * np.take(voxels, low, axis) + weight * np.take(
            voxels, high, axis
        )
    else:
        chosen = np.flatnonzero(np.abs(centres - position) <= thickness / 2 + 1e-9)
        block = np.take(voxels, chosen, axis)
        reduce = {"mip": np.max, "minip": np.min, "avgip": np.mean}[mode]
        plane_values = reduce(block, axis=axis)
    if plane == "axial":  # (rows=+Y, cols=+X) already
        return plane_values
    return plane_values[::-1]  # (slices, ...) with the head up: reverse the slices


def displayed_at_voxel_grid(reslice: Reslice, plane: str) -> np.ndarray:
    """Coronal/sagittal rows are resampled from 2 mm slices to 1 mm: keep every other row."""
    return reslice.pixels if plane == "axial" else reslice.pixels[::2]


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("mode", ["mip", "minip", "avgip"])
@pytest.mark.parametrize("thickness", THICKNESSES)
def test_slab_equals_numpy_reduction_over_the_slab(
    noise: Volume, plane: str, mode: str, thickness: float
) -> None:
    axis = {"axial": 0, "coronal": 1, "sagittal": 2}[plane]
    centres = centres_along(noise, axis)
    for position in (centres[len(centres) // 2], centres[10] + 0.5):  # on and between slices
        reslice = orthogonal(noise, plane, float(position), mode=mode, thickness_mm=thickness)

        expected = expected_slab(noise, plane, float(position), mode, thickness)

        np.testing.assert_allclose(
            displayed_at_voxel_grid(reslice, plane), expected, rtol=1e-6, atol=1e-3
        )
        assert reslice.geometry.mode == mode
        assert reslice.geometry.thickness_mm == thickness


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("thickness", [0.1, 0.5])
def test_a_slab_thinner_than_the_step_is_the_thin_plane(
    noise: Volume, plane: str, thickness: float
) -> None:
    position = float(centres_along(noise, {"axial": 0, "coronal": 1, "sagittal": 2}[plane])[5])
    thin = orthogonal(noise, plane, position + 0.25)
    for mode in ("mip", "minip", "avgip"):
        slab = orthogonal(noise, plane, position + 0.25, mode=mode, thickness_mm=thickness)
        np.testing.assert_array_equal(slab.pixels, thin.pixels)


def test_thin_plane_between_slices_is_linear(noise: Volume) -> None:
    z = centres_along(noise, 0)
    reslice = orthogonal(noise, "axial", float(z[30] + 0.5))  # a quarter of the 2 mm step
    expected = 0.75 * RANDOM[30].astype(float) + 0.25 * RANDOM[31]
    np.testing.assert_allclose(reslice.pixels, expected, rtol=1e-6)


def test_reslice_pixels_never_alias_the_volume() -> None:
    volume = make_volume(RANDOM.astype(np.float32), SHAPE, (2.0, 1.0, 1.0))
    reslice = orthogonal(volume, "axial", float(centres_along(volume, 0)[3]))
    reslice.pixels[:] = 0
    assert np.array_equal(volume.voxels, RANDOM)


def test_coronal_rows_between_slices_are_interpolated(noise: Volume) -> None:
    y = centres_along(noise, 1)
    reslice = orthogonal(noise, "coronal", float(y[20]))
    # Display row 1 lies halfway between the two top slices (2 mm apart, 1 mm pixels).
    expected = (RANDOM[-1, 20].astype(float) + RANDOM[-2, 20]) / 2
    np.testing.assert_allclose(reslice.pixels[1], expected)
    assert reslice.pixels.shape == ((SHAPE[0] - 1) * 2 + 1, SHAPE[2])


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_position_outside_the_range_is_refused_with_the_range(noise: Volume, plane: str) -> None:
    low, high = plane_geometry(noise, plane).position_range_mm
    assert orthogonal(noise, plane, high).geometry.position_mm == high
    with pytest.raises(ValueError, match=rf"valid positions are {low:.2f} to {high:.2f} mm"):
        orthogonal(noise, plane, high + 0.5)
    with pytest.raises(ValueError, match="outside the volume"):
        orthogonal(noise, plane, math.nan)


def test_bad_plane_mode_or_thickness_is_refused(noise: Volume) -> None:
    with pytest.raises(ValueError, match="unknown plane 'transverse'"):
        orthogonal(noise, "transverse", 0.0)
    with pytest.raises(ValueError, match="unknown mode 'max'"):
        orthogonal(noise, "axial", 0.0, mode="max")
    with pytest.raises(ValueError, match="thickness"):
        orthogonal(noise, "axial", 0.0, mode="mip", thickness_mm=-1)


def test_geometry_is_json_and_maps_pixels_to_patient_mm(noise: Volume) -> None:
    reslice = orthogonal(noise, "coronal", 3.0, mode="mip", thickness_mm=10)
    data = json.loads(json.dumps(reslice.geometry.to_dict()))

    assert set(data) == {
        "plane", "mode", "thickness_mm", "position_mm", "position_range_mm", "normal",
        "row_direction", "column_direction", "top_left_mm", "pixel_spacing_mm", "rows",
        "columns", "frame_of_reference_uid",
    }  # fmt: skip
    assert (data["rows"], data["columns"]) == reslice.pixels.shape
    assert data["position_mm"] == 3.0 and data["mode"] == "mip"
    top_left = np.array(data["top_left_mm"])
    assert reslice.geometry.pixel_to_patient(2, 3) == pytest.approx(
        tuple(top_left + np.array([3.0, 0, -2.0]))  # right = +X, down = -Z, 1 mm pixels
    )


# --- oblique ----------------------------------------------------------------------------------


def overlap(big: Reslice, small: Reslice) -> np.ndarray:
    """The part of ``big`` covering ``small`` (same directions and pixel grid)."""
    shift = np.array(small.geometry.top_left_mm) - np.array(big.geometry.top_left_mm)
    step = big.geometry.pixel_spacing_mm
    col = round(float(shift @ np.array(big.geometry.row_direction)) / step)
    row = round(float(shift @ np.array(big.geometry.column_direction)) / step)
    return big.pixels[row : row + small.pixels.shape[0], col : col + small.pixels.shape[1]]


@pytest.mark.parametrize(
    ("plane", "normal", "up"),
    [
        ("axial", (0, 0, 1), (0, -1, 0)),
        ("coronal", (0, 1, 0), (0, 0, 1)),
        ("sagittal", (-1, 0, 0), (0, 0, 1)),
    ],
)
@pytest.mark.parametrize(("mode", "thickness"), [("thin", 0.0), ("mip", 20.0), ("avgip", 8.0)])
def test_oblique_along_an_axis_equals_the_orthogonal_plane(
    noise: Volume,
    plane: str,
    normal: tuple[float, ...],
    up: tuple[float, ...],
    mode: str,
    thickness: float,
) -> None:
    position = 6.0  # on a slice centre for every plane
    straight = orthogonal(noise, plane, position, mode=mode, thickness_mm=thickness)
    centre = np.zeros(3)
    centre[np.argmax(np.abs(normal))] = position

    tilted = oblique(noise, centre, normal, up, mode=mode, thickness_mm=thickness)

    assert tilted.geometry.row_direction == pytest.approx(straight.geometry.row_direction)
    assert tilted.geometry.column_direction == pytest.approx(straight.geometry.column_direction)
    same = overlap(tilted, straight)
    if mode == "mip" and plane != "axial":
        # Rows between two 2 mm slices: the axis-aligned path interpolates the projection,
        # the sampling path projects the interpolation; compare the rows on slice centres.
        same, expected = same[::2], straight.pixels[::2]
    else:
        expected = straight.pixels
    np.testing.assert_allclose(same, expected, rtol=1e-5, atol=1e-2)


def test_oblique_plane_samples_the_volume_at_its_pixel_positions() -> None:
    volume = acquired("axial", linear)
    normal = rotation(np.array([1.0, 0.2, 0.0]), 35) @ Z

    reslice = oblique(volume, (3.0, -4.0, 5.0), normal, (0, 0, 1), size_mm=80)

    geometry = reslice.geometry
    assert geometry.rows == geometry.columns == 41  # 80 mm at 2 mm pixels
    assert geometry.pixel_to_patient(20, 20) == pytest.approx((3.0, -4.0, 5.0))
    axes = np.array([geometry.row_direction, geometry.column_direction, geometry.normal])
    np.testing.assert_allclose(axes @ axes.T, np.eye(3), atol=1e-12)
    assert float(np.array(geometry.column_direction) @ Z) < 0  # up is up on screen
    xyz = pixel_positions(geometry)
    inside = inside_volume(volume, xyz)
    np.testing.assert_allclose(reslice.pixels[inside], linear(xyz[inside]), atol=2e-3)
    assert np.all(reslice.pixels[~inside] == volume.minimum)


def test_oblique_slab_ignores_samples_outside_the_volume() -> None:
    volume = acquired("axial", linear)
    top = float(volume.origin[2] + 100)  # the last slice: half the slab lies outside
    thin = oblique(volume, (0, 0, top), (0, 0, 1), (0, -1, 0), size_mm=40)
    lowest = oblique(
        volume, (0, 0, top), (0, 0, 1), (0, -1, 0), mode="minip", thickness_mm=8, size_mm=40
    )
    # min of the linear phantom over z in [top - 4, top] is at top - 4: 0.5 * 4 = 2 lower.
    np.testing.assert_allclose(lowest.pixels, thin.pixels - 2.0, atol=2e-3)


def test_oblique_refuses_up_along_the_normal(noise: Volume) -> None:
    with pytest.raises(ValueError, match="parallel"):
        oblique(noise, (0, 0, 0), (0, 0, 1), (0, 0, -2))
    with pytest.raises(ValueError, match="outside the volume"):
        oblique(noise, (0, 0, 500), (0, 0, 1), (0, 1, 0))


# --- curved ----------------------------------------------------------------------------------


def test_curved_along_a_straight_line_equals_the_axial_plane(noise: Volume) -> None:
    z = float(centres_along(noise, 0)[40])
    y = float(centres_along(noise, 1)[30])
    x = centres_along(noise, 2)
    axial = orthogonal(noise, "axial", z)

    reslice = curved(noise, [(float(x[5]), y, z), (float(x[60]), y, z)], width_mm=20)

    assert reslice.pixels.shape == (21, 56)  # 20 mm across, 55 mm along at 1 mm pixels
    np.testing.assert_allclose(reslice.pixels, axial.pixels[20:41, 5:61], atol=1e-3)
    assert reslice.geometry.plane == "curved"
    assert reslice.geometry.row_direction == (1.0, 0.0, 0.0)
    assert reslice.geometry.column_direction == pytest.approx((0.0, 1.0, 0.0))


def test_curved_follows_a_bent_polyline() -> None:
    volume = acquired("axial", linear)
    corner = (-20.0, -10.0, 3.0)
    polyline = [(-40.0, -10.0, 3.0), corner, (-20.0, 15.0, 3.0)]  # +X for 20 mm, then +Y for 25

    reslice = curved(volume, polyline, width_mm=10)

    # Pixels of 2 mm (the voxel spacing): 45 mm of arc -> 23 columns, 10 mm across -> 5 rows.
    assert reslice.pixels.shape == (5, 23)
    across = (np.arange(5) - 2) * 2.0
    expected = np.empty((5, 23))
    for col in range(23):
        s = col * 2.0
        if s < 20:  # first leg: along +X, across = up x X = +Y
            points = np.stack([np.full(5, -40.0 + s), -10.0 + across, np.full(5, 3.0)], -1)
        else:  # second leg: along +Y, across = up x Y = -X
            points = np.stack([-20.0 - across, np.full(5, -10.0 + s - 20), np.full(5, 3.0)], -1)
        expected[:, col] = linear(points)
    np.testing.assert_allclose(reslice.pixels, expected, atol=2e-3)


def test_curved_refuses_degenerate_input(noise: Volume) -> None:
    with pytest.raises(ValueError, match="two distinct points"):
        curved(noise, [(0, 0, 0), (0, 0, 0)], width_mm=10)
    with pytest.raises(ValueError, match="runs along up"):
        curved(noise, [(0, 0, 0), (0, 0, 10)], width_mm=10)
    with pytest.raises(ValueError, match="width"):
        curved(noise, [(0, 0, 0), (10, 0, 0)], width_mm=-1)
