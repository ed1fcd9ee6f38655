"""PET/CT fusion (mpr.fusion) and measurements in patient coordinates (mpr.measure)."""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence

import numpy as np
import pytest
from pydicom.pixels.processing import apply_color_lut

from mpr.fusion import COLOUR_MAPS, colour_lut, fuse, resample_onto
from mpr.measure import angle_deg, distance_mm, region_statistics
from mpr.volume import Volume
from mpr.window import Window

FRAME = "1.2.826.0.1.3680043.8.498.1"
Vector = tuple[float, float, float]
Directions = tuple[Vector, Vector, Vector]  # row, column, slice directions
AXIAL: Directions = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
# Feet-first PET: slices run towards the feet and rows towards anterior.
FLIPPED: Directions = ((1.0, 0.0, 0.0), (0.0, -1.0, 0.0), (0.0, 0.0, -1.0))
# Rows and columns swapped (a permutation, not a diagonal, index -> index map).
TRANSPOSED: Directions = ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, -1.0))


def make_volume(
    voxels: np.ndarray,
    origin: Sequence[float] | np.ndarray,
    spacing: tuple[float, float, float],
    *,
    directions: Directions = AXIAL,
    modality: str = "CT",
    frame: str = FRAME,
    series: str = "1.2.3",
) -> Volume:
    row, column, slice_ = (np.asarray(d, dtype=np.float64) for d in directions)
    return Volume(
        voxels=voxels,
        origin=np.asarray(origin, dtype=np.float64),
        row_direction=row,
        column_direction=column,
        slice_direction=slice_,
        spacing=spacing,
        modality=modality,
        frame_of_reference_uid=frame,
        series_instance_uid=series,
        sop_instance_uids=tuple(f"{series}.{i + 1}" for i in range(voxels.shape[0])),
        default_window=None,
        photometric="MONOCHROME2",
        resampled_from=None,
    )


def patient_grid(volume: Volume) -> np.ndarray:
    """(slices, rows, cols, 3) patient coordinates of every voxel centre."""
    ijk = np.moveaxis(np.indices(volume.voxels.shape, dtype=np.float64), 0, -1)
    return np.asarray(volume.index_to_patient(ijk))


# ---------------------------------------------------------------- resample_onto

HOT_SPOT = np.array([6.0, -4.0, 10.0])  # mm
SIGMA_MM = 7.0


def pet_volume(directions: Directions, origin: Vector) -> Volume:
    """A coarse PET with a Gaussian hot spot of peak 1000 at HOT_SPOT."""
    empty = np.zeros((24, 32, 32), np.float32)
    pet = make_volume(empty, origin, (4.0, 4.0, 4.0), directions=directions, modality="PT")
    r2 = ((patient_grid(pet) - HOT_SPOT) ** 2).sum(axis=-1)
    voxels = (1000.0 * np.exp(-r2 / (2 * SIGMA_MM**2))).astype(np.float32)
    return make_volume(
        voxels, origin, (4.0, 4.0, 4.0), directions=directions, modality="PT", series="9.9"
    )


def ct_volume() -> Volume:
    """A finer CT grid with a different origin and anisotropic spacing."""
    return make_volume(np.zeros((44, 60, 84), np.int16), (-30.0, -33.0, -20.0), (1.5, 1.0, 0.8))


def centroid_mm(volume: Volume) -> np.ndarray:
    weights = volume.voxels.astype(np.float64)
    total: np.ndarray = (patient_grid(volume) * weights[..., None]).sum(axis=(0, 1, 2))
    return total / float(weights.sum())


@pytest.mark.parametrize(
    ("directions", "origin"),
    [
        (AXIAL, (-60.0, -62.0, -40.0)),
        (FLIPPED, (-60.0, 62.0, 52.0)),
        (TRANSPOSED, (-60.0, -62.0, 52.0)),
    ],
    ids=["same-orientation", "flipped", "transposed"],
)
def test_hot_spot_lands_at_the_same_mm_on_the_ct_grid(
    directions: Directions, origin: Vector
) -> None:
    pet = pet_volume(directions, origin)
    ct = ct_volume()
    fused = resample_onto(pet, ct)
    assert fused.voxels.shape == ct.voxels.shape and fused.voxels.dtype == np.float32
    np.testing.assert_allclose(centroid_mm(fused), HOT_SPOT, atol=0.3)
    # Every PET here has nodes on the lattice -60 + 4i, -62 + 4j, -40 + 4k mm, so every CT
    # voxel must hold the trilinear blend of the Gaussian at its 8 surrounding nodes.
    np.testing.assert_allclose(fused.voxels, lattice_trilinear(patient_grid(ct)), atol=0.05)
    hot_voxel = (20, 29, 45)  # a CT voxel centre exactly at HOT_SPOT
    np.testing.assert_allclose(ct.index_to_patient(np.asarray(hot_voxel, float)), HOT_SPOT)
    # Midway between PET nodes in x, y and z: the mean of 8 corners 2*sqrt(3) mm away.
    assert fused.voxels[hot_voxel] == pytest.approx(1000 * math.exp(-12 / (2 * SIGMA_MM**2)))


def lattice_trilinear(points: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of the PET Gaussian on its 4 mm node lattice (0 outside)."""
    base = np.array([-60.0, -62.0, -40.0])
    cell = (points - base) / 4.0
    low = np.floor(cell)
    frac = cell - low
    total = np.zeros(points.shape[:-1])
    for corner in np.ndindex(2, 2, 2):
        node = base + (low + corner) * 4.0
        weight = np.prod(np.where(np.array(corner, bool), frac, 1 - frac), axis=-1)
        value = 1000.0 * np.exp(-((node - HOT_SPOT) ** 2).sum(axis=-1) / (2 * SIGMA_MM**2))
        total += weight * value
    return total


def test_resampled_volume_takes_ct_geometry_and_pet_identity() -> None:
    pet, ct = pet_volume(AXIAL, (-60.0, -62.0, -40.0)), ct_volume()
    fused = resample_onto(pet, ct)
    np.testing.assert_array_equal(fused.origin, ct.origin)
    assert fused.spacing == ct.spacing
    np.testing.assert_array_equal(fused.slice_direction, ct.slice_direction)
    assert fused.modality == "PT" and fused.series_instance_uid == pet.series_instance_uid
    assert fused.frame_of_reference_uid == ct.frame_of_reference_uid
    assert fused.resampled_from and "9.9" in fused.resampled_from


def test_outside_the_moving_volume_is_zero() -> None:
    pet = make_volume(np.full((4, 4, 4), 7.0, np.float32), (0.0, 0.0, 0.0), (2.0, 2.0, 2.0))
    ct = make_volume(np.zeros((10, 10, 10), np.int16), (-6.0, -6.0, -6.0), (2.0, 2.0, 2.0))
    fused = resample_onto(pet, ct).voxels
    # PET covers 0..6 mm = CT indices 3..6 on each axis.
    assert (fused[3:7, 3:7, 3:7] == 7.0).all()
    fused[3:7, 3:7, 3:7] = 0
    assert (fused == 0).all()


def test_different_frames_of_reference_are_refused() -> None:
    pet = make_volume(np.zeros((2, 2, 2), np.float32), (0, 0, 0), (1, 1, 1), frame="1.2.9")
    with pytest.raises(ValueError, match="different frames of reference"):
        resample_onto(pet, ct_volume())
    no_frame = make_volume(np.zeros((2, 2, 2), np.float32), (0, 0, 0), (1, 1, 1), frame="")
    with pytest.raises(ValueError, match="no frame of reference"):
        resample_onto(no_frame, ct_volume())


# ---------------------------------------------------------------- fuse and colour maps


def test_colour_map_endpoints() -> None:
    assert colour_lut("hot")[0].tolist() == [0, 0, 0]
    assert colour_lut("hot")[255].tolist() == [255, 255, 255]
    assert colour_lut("hot")[80].tolist()[1:] == [0, 0]  # the red part of the ramp
    assert colour_lut("rainbow")[0].tolist() == [0, 0, 255]
    assert colour_lut("rainbow")[255].tolist() == [255, 0, 0]
    assert colour_lut("pet")[0].tolist() == [0, 0, 0]
    assert colour_lut("pet")[255].tolist() == [255, 255, 255]
    for name in COLOUR_MAPS:
        assert colour_lut(name).shape == (256, 3) and colour_lut(name).dtype == np.uint8


def test_pet_map_matches_the_dicom_well_known_palette() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns that 'PET' is not a UID
        reference = apply_color_lut(np.arange(256, dtype=np.uint8), palette="PET")
    assert np.abs(colour_lut("pet").astype(int) - reference.astype(int)).max() <= 3


def test_unknown_colour_map() -> None:
    with pytest.raises(ValueError, match="unknown colour map 'jet'"):
        colour_lut("jet")


def fusion_inputs() -> tuple[np.ndarray, np.ndarray, Window]:
    base = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (8, 1))  # (8, 64) gray ramp
    overlay = np.tile(np.linspace(0.0, 10.0, 64, dtype=np.float32), (8, 1))
    return base, overlay, Window(5.0, 10.0, "linear_exact")


def test_opacity_zero_gives_the_base_image() -> None:
    base, overlay, window = fusion_inputs()
    out = fuse(base, overlay, window, opacity=0.0)
    assert out.shape == (8, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(base[..., None], 3, axis=2))
    rgb = np.stack([base, 255 - base, base // 2], axis=-1)
    np.testing.assert_array_equal(fuse(rgb, overlay, window, opacity=0.0), rgb)


@pytest.mark.parametrize("name", COLOUR_MAPS)
def test_opacity_one_gives_the_colour_map(name: str) -> None:
    base, overlay, window = fusion_inputs()
    out = fuse(base, overlay, window, colour_map=name, opacity=1.0)
    index = np.rint((overlay / 10.0) * 255).astype(int)
    np.testing.assert_array_equal(out, colour_lut(name)[index])
    assert out[0, 0].tolist() == colour_lut(name)[0].tolist()
    assert out[0, -1].tolist() == colour_lut(name)[255].tolist()


def test_half_opacity_is_the_mean() -> None:
    base = np.full((2, 2), 100, np.uint8)
    overlay = np.full((2, 2), 1000.0, np.float32)  # above the window: white in "hot"
    out = fuse(base, overlay, Window(0, 100), opacity=0.5)
    assert (out == 178).all()  # (100 + 255) / 2 = 177.5, rounded half up


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"opacity": 1.5}, "opacity"),
        ({"opacity": float("nan")}, "opacity"),
        ({"colour_map": "jet"}, "colour map"),
    ],
)
def test_fuse_rejects_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    base, overlay, window = fusion_inputs()
    with pytest.raises(ValueError, match=message):
        fuse(base, overlay, window, **kwargs)  # type: ignore[arg-type]


def test_fuse_rejects_mismatched_shapes() -> None:
    base, overlay, window = fusion_inputs()
    with pytest.raises(ValueError, match="does not match"):
        fuse(base, overlay[:, :10], window)
    with pytest.raises(ValueError, match="uint8"):
        fuse(base.astype(np.int16), overlay, window)


# ---------------------------------------------------------------- measurements


def test_distance_of_a_known_diagonal() -> None:
    assert distance_mm((0, 0, 0), (3, 4, 12)) == pytest.approx(13.0)
    # Corner-to-corner of an anisotropic volume: the diagonal of its physical box.
    volume = make_volume(np.zeros((11, 21, 31), np.int16), (-5.0, 7.0, 2.0), (2.5, 0.5, 0.7))
    first = np.asarray(volume.index_to_patient(np.zeros(3)))
    last = np.asarray(volume.index_to_patient(np.array([10.0, 20.0, 30.0])))
    expected = math.sqrt(25.0**2 + 10.0**2 + 21.0**2)
    assert distance_mm(first, last) == pytest.approx(expected)


def test_angles() -> None:
    vertex = (10.0, -5.0, 3.0)
    assert angle_deg(vertex, (11.0, -5.0, 3.0), (10.0, -3.0, 3.0)) == pytest.approx(90.0)
    assert angle_deg(vertex, (12.0, -5.0, 3.0), (11.0, -4.0, 3.0)) == pytest.approx(45.0)
    assert angle_deg(vertex, (12.0, -5.0, 3.0), (8.0, -5.0, 3.0)) == pytest.approx(180.0)
    assert angle_deg(vertex, (12.0, -5.0, 3.0), (15.0, -5.0, 3.0)) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="away from the vertex"):
        angle_deg(vertex, vertex, (0.0, 0.0, 0.0))


@pytest.mark.parametrize("bad", [(1.0, 2.0), (1.0, float("inf"), 2.0), "abc"])
def test_malformed_points_are_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="three"):
        distance_mm(bad, (0, 0, 0))  # type: ignore[arg-type]


CYLINDER_AXIS = np.array([4.0, -6.0])  # (x, y) mm of an axial cylinder
CYLINDER_RADIUS = 25.0


def cylinder_volume(noise: float = 0.0) -> Volume:
    """60 HU cylinder along z in -1000 HU air, int16, anisotropic spacing."""
    volume = make_volume(np.zeros((20, 90, 100), np.int16), (-35.0, -40.0, -30.0), (3.0, 0.8, 0.7))
    xy = patient_grid(volume)[..., :2]
    inside = ((xy - CYLINDER_AXIS) ** 2).sum(axis=-1) <= CYLINDER_RADIUS**2
    hu = np.where(inside, 60.0, -1000.0)
    hu += np.random.default_rng(5).normal(0.0, noise, hu.shape)
    return make_volume(np.rint(hu).astype(np.int16), volume.origin, volume.spacing)


def test_region_statistics_of_a_known_cylinder() -> None:
    volume = cylinder_volume(noise=10.0)
    centre = (*CYLINDER_AXIS, 0.0)
    stats = region_statistics(volume, centre, 10.0, (0, 0, 1))
    assert abs(stats["mean"] - 60.0) < 0.5
    assert 0 < stats["std"] < 10.0  # interpolation averages some of the noise away
    assert stats["min"] < 60 < stats["max"]
    assert stats["count"] == int(stats["count"]) > 500  # 0.7 mm grid on a 10 mm disc
    assert stats["area_mm2"] == pytest.approx(math.pi * 10.0**2, rel=0.03)


def test_region_statistics_on_an_oblique_plane() -> None:
    volume = cylinder_volume()
    tilted = (0.0, math.sin(math.radians(30)), math.cos(math.radians(30)))
    stats = region_statistics(volume, (*CYLINDER_AXIS, 2.0), 12.0, tilted)
    assert stats["mean"] == pytest.approx(60.0, abs=0.5)
    assert stats["min"] == pytest.approx(60.0) and stats["max"] == pytest.approx(60.0)
    assert stats["area_mm2"] == pytest.approx(math.pi * 12.0**2, rel=0.03)


def test_region_statistics_across_the_edge_of_the_cylinder() -> None:
    volume = cylinder_volume()
    edge = (CYLINDER_AXIS[0] + CYLINDER_RADIUS, CYLINDER_AXIS[1], 0.0)
    stats = region_statistics(volume, edge, 5.0, (0, 0, 1))
    assert stats["min"] == -1000.0 and stats["max"] == 60.0
    assert -1000.0 < stats["mean"] < 60.0


def test_region_statistics_counts_only_samples_inside_the_volume() -> None:
    volume = cylinder_volume()
    corner = np.asarray(volume.index_to_patient(np.zeros(3)))  # (-35, -40, -30)
    whole = region_statistics(volume, corner + np.array([20.0, 20.0, 10.0]), 5.0, (0, 0, 1))
    quarter = region_statistics(volume, corner, 5.0, (0, 0, 1))
    assert quarter["count"] < 0.35 * whole["count"]
    with pytest.raises(ValueError, match="outside the volume"):
        region_statistics(volume, corner - 100, 5.0, (0, 0, 1))


def test_huge_radius_or_distant_centre_stays_cheap() -> None:
    volume = cylinder_volume()
    start = time.perf_counter()
    whole = region_statistics(volume, (0.0, 0.0, 0.0), 1e7, (0, 0, 1))
    # The whole axial cross-section: 90 rows x 100 columns of 0.8 x 0.7 mm.
    assert whole["area_mm2"] == pytest.approx(89 * 0.8 * 99 * 0.7, rel=0.03)
    with pytest.raises(ValueError, match="outside the volume"):
        region_statistics(volume, (1e9, 0.0, 0.0), 1e7, (0, 0, 1))
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize(
    ("radius", "normal", "message"),
    [(0.0, (0, 0, 1), "radius"), (-1.0, (0, 0, 1), "radius"), (5.0, (0, 0, 0), "zero vector")],
)
def test_region_statistics_rejects_bad_arguments(
    radius: float, normal: tuple[float, float, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        region_statistics(cylinder_volume(), (0, 0, 0), radius, normal)
