"""mpr.volume: slices -> Volume, checked against geometry and values computed here."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.processing import apply_modality_lut
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mpr.volume import (
    MIN_MPR_IMAGES,
    Volume,
    VolumeError,
    assemble_volume,
    mpr_offered,
)
from tests.support.samples import require_samples

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # rows along +Y, columns down (-Z): normal -X
FRAME_OF_REFERENCE = "1.2.826.0.1.3680043.10.1370.99"
SERIES = "1.2.826.0.1.3680043.10.1370.98"


def _pixel_attributes(ds: Dataset, pixels: np.ndarray) -> None:
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PixelData = pixels.tobytes()


def make_slice(
    pixels: np.ndarray,
    position: Sequence[float],
    *,
    orientation: Sequence[float] = AXIAL,
    pixel_spacing: Sequence[float] = (0.5, 0.75),
    slope: float | None = None,
    intercept: float | None = None,
) -> Dataset:
    """A single-frame CT slice (with file meta) holding exactly ``pixels`` as stored values."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = SERIES
    ds.FrameOfReferenceUID = FRAME_OF_REFERENCE
    ds.Modality = "CT"
    ds.ImagePositionPatient = [float(v) for v in position]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in pixel_spacing]
    if slope is not None:
        ds.RescaleSlope = slope
    if intercept is not None:
        ds.RescaleIntercept = intercept
    _pixel_attributes(ds, pixels)
    return ds


def stored_slices(
    count: int, shape: tuple[int, int] = (12, 10), dtype: str = "int16"
) -> list[np.ndarray]:
    """Distinct, recognisable stored pixels per slice: value = 100 * slice + row + col."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    return [(100 * i + rows + cols).astype(dtype) for i in range(count)]


def axial_series(zs: Sequence[float]) -> tuple[list[Dataset], list[np.ndarray]]:
    """Axial slices at the given z, their stored pixels in the same order."""
    pixels = stored_slices(len(zs))
    datasets = [make_slice(p, (-20.0, -30.0, z)) for p, z in zip(pixels, zs, strict=True)]
    return datasets, pixels


# --- assembly and geometry -----------------------------------------------------------------


def test_stack_is_sorted_along_the_normal_with_its_geometry() -> None:
    zs = [10.0, 12.5, 15.0, 17.5, 20.0, 22.5]
    datasets, pixels = axial_series(zs)
    for i, ds in enumerate(datasets):
        ds.WindowCenter = [40 + i, 50]
        ds.WindowWidth = [400, 500]
    shuffled = [datasets[i] for i in (3, 0, 5, 1, 4, 2)]

    volume = assemble_volume(shuffled)

    assert volume.voxels.dtype == np.int16
    np.testing.assert_array_equal(volume.voxels, np.stack(pixels))
    np.testing.assert_allclose(volume.origin, [-20.0, -30.0, 10.0])
    np.testing.assert_allclose(volume.row_direction, [1, 0, 0])
    np.testing.assert_allclose(volume.column_direction, [0, 1, 0])
    np.testing.assert_allclose(volume.slice_direction, [0, 0, 1])
    assert volume.spacing == pytest.approx((2.5, 0.5, 0.75))
    assert volume.sop_instance_uids == tuple(ds.SOPInstanceUID for ds in datasets)
    assert (volume.modality, volume.frame_of_reference_uid) == ("CT", FRAME_OF_REFERENCE)
    assert volume.series_instance_uid == SERIES
    assert volume.photometric == "MONOCHROME2"
    assert volume.resampled_from is None
    middle = 3  # the middle of 6 sorted slices
    assert volume.default_window is not None
    assert (volume.default_window.center, volume.default_window.width) == (40 + middle, 400)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_any_input_order_gives_the_same_volume(seed: int) -> None:
    datasets, _ = axial_series([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    reference = assemble_volume(datasets)
    order = np.random.default_rng(seed).permutation(len(datasets))

    volume = assemble_volume([datasets[i] for i in order])

    np.testing.assert_array_equal(volume.voxels, reference.voxels)
    np.testing.assert_array_equal(volume.origin, reference.origin)
    assert volume.sop_instance_uids == reference.sop_instance_uids


def test_sagittal_stack_sorts_along_its_own_normal() -> None:
    # Normal = row x column = (+Y) x (-Z) = -X: slice 0 is the one at the largest x.
    xs = [-10.0, -5.0, 0.0, 5.0]
    pixels = stored_slices(len(xs))
    datasets = [
        make_slice(p, (x, -100.0, 80.0), orientation=SAGITTAL)
        for p, x in zip(pixels, xs, strict=True)
    ]

    volume = assemble_volume(datasets)

    np.testing.assert_allclose(volume.slice_direction, [-1, 0, 0])
    np.testing.assert_array_equal(volume.voxels, np.stack(pixels[::-1]))
    np.testing.assert_allclose(volume.origin, [5.0, -100.0, 80.0])
    assert volume.spacing[0] == pytest.approx(5.0)


def test_index_and_patient_coordinates_are_inverse() -> None:
    datasets, _ = axial_series([0.0, 2.0, 4.0])
    volume = assemble_volume(datasets)
    ijk = np.array([[0, 0, 0], [2, 11, 9], [1.5, 3.25, 0.5]])

    xyz = volume.index_to_patient(ijk)

    np.testing.assert_allclose(xyz[1], [-20.0 + 9 * 0.75, -30.0 + 11 * 0.5, 4.0])
    np.testing.assert_allclose(volume.patient_to_index(xyz), ijk, atol=1e-12)


def test_value_at_is_trilinear_and_the_minimum_outside() -> None:
    datasets, _ = axial_series([0.0, 2.0, 4.0])
    volume = assemble_volume(datasets)
    v = volume.voxels.astype(float)
    between = volume.index_to_patient(np.array([0.5, 2.0, 3.5]))

    assert volume.value_at(volume.index_to_patient(np.array([2, 11, 9]))) == v[2, 11, 9]
    assert volume.value_at(between) == pytest.approx(
        (v[0, 2, 3] + v[0, 2, 4] + v[1, 2, 3] + v[1, 2, 4]) / 4
    )
    assert volume.value_at((500.0, 0.0, 0.0)) == v.min()


def test_mpr_is_offered_for_ct_mr_pt_with_enough_images() -> None:
    assert MIN_MPR_IMAGES == 50
    assert mpr_offered("CT", 50) and mpr_offered("MR", 200) and mpr_offered("pt", 60)
    assert not mpr_offered("CT", 49)
    assert not mpr_offered("US", 500)
    assert not mpr_offered("CR", 1)


# --- modality values -------------------------------------------------------------------------


def test_unsigned_stored_values_with_intercept_become_int16_hounsfield() -> None:
    stored = [np.array([[0, 1024], [4095, 2000]], dtype=np.uint16) + i for i in range(3)]
    datasets = [make_slice(p, (0, 0, z), slope=1, intercept=-1024) for z, p in enumerate(stored)]
    raw_before = [ds.PixelData for ds in datasets]

    volume = assemble_volume(datasets)

    assert volume.voxels.dtype == np.int16
    np.testing.assert_array_equal(volume.voxels, np.stack(stored).astype(np.int32) - 1024)
    assert [ds.PixelData for ds in datasets] == raw_before  # sources untouched


def test_integer_slope_is_applied_exactly() -> None:
    stored = [np.array([[0, 100], [-50, 7]], dtype=np.int16) * (i + 1) for i in range(2)]
    datasets = [make_slice(p, (0, 0, z), slope=3, intercept=-10) for z, p in enumerate(stored)]

    volume = assemble_volume(datasets)

    assert volume.voxels.dtype == np.int16
    np.testing.assert_array_equal(volume.voxels, np.stack(stored) * 3 - 10)


def test_fractional_slope_gives_float32() -> None:
    stored = [np.array([[0, 1], [3, 1001]], dtype=np.uint16) for _ in range(2)]
    datasets = [make_slice(p, (0, 0, z), slope=0.5, intercept=1) for z, p in enumerate(stored)]

    volume = assemble_volume(datasets)

    assert volume.voxels.dtype == np.float32
    np.testing.assert_array_equal(volume.voxels[0], [[1.0, 1.5], [2.5, 501.5]])


def test_integers_that_do_not_fit_int16_give_float32() -> None:
    stored = [np.array([[0, 60000]], dtype=np.uint16) for _ in range(2)]
    datasets = [make_slice(p, (0, 0, z)) for z, p in enumerate(stored)]

    volume = assemble_volume(datasets)

    assert volume.voxels.dtype == np.float32
    assert volume.voxels.max() == 60000


def test_slope_per_slice_is_applied_per_slice() -> None:
    stored = [np.full((2, 2), 10, dtype=np.uint16) for _ in range(3)]
    datasets = [
        make_slice(p, (0, 0, z), slope=s, intercept=0)
        for z, (p, s) in enumerate(zip(stored, (0.5, 1.25, 2.0), strict=True))
    ]

    volume = assemble_volume(datasets)

    np.testing.assert_array_equal(volume.voxels[:, 0, 0], [5.0, 12.5, 20.0])


def test_modality_lut_sequence_is_applied() -> None:
    datasets = [make_slice(np.array([[0, 1], [2, 3]], dtype=np.uint16), (0, 0, z)) for z in (0, 1)]
    for ds in datasets:
        item = Dataset()
        item.LUTDescriptor = [4, 0, 16]
        item.ModalityLUTType = "HU"
        item.LUTData = [7, 70, 700, 7000]
        ds.ModalityLUTSequence = DicomSequence([item])

    volume = assemble_volume(datasets)

    np.testing.assert_array_equal(volume.voxels[1], [[7, 70], [700, 7000]])


# --- refusals -------------------------------------------------------------------------------


def _series(count: int = 4) -> list[Dataset]:
    return axial_series([float(2 * i) for i in range(count)])[0]


def _mixed_orientation(ds: list[Dataset]) -> None:
    ds[2].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]


def _mixed_frame_of_reference(ds: list[Dataset]) -> None:
    ds[1].FrameOfReferenceUID = "1.2.3.999"


def _mixed_size(ds: list[Dataset]) -> None:
    _pixel_attributes(ds[1], np.zeros((8, 8), dtype=np.int16))


def _mixed_pixel_spacing(ds: list[Dataset]) -> None:
    ds[3].PixelSpacing = [0.6, 0.75]


def _duplicate_position(ds: list[Dataset]) -> None:
    ds[3].ImagePositionPatient = list(ds[1].ImagePositionPatient)


def _colour(ds: list[Dataset]) -> None:
    for item in ds:
        item.PhotometricInterpretation = "RGB"


def _no_position(ds: list[Dataset]) -> None:
    del ds[0].ImagePositionPatient


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (_mixed_orientation, r"mixed image orientations"),
        (_mixed_frame_of_reference, r"2 different frames of reference"),
        (_mixed_size, r"mixed image sizes: 10x12 and 8x8"),
        (_mixed_pixel_spacing, r"mixed pixel spacing: 0\.5 x 0\.75 mm and 0\.6 x 0\.75 mm"),
        (_duplicate_position, r"1 slice position\(s\) are used by more than one image"),
        (_colour, r"RGB images cannot form a grayscale volume"),
        (_no_position, r"has no Image Position \(Patient\)"),
    ],
    ids=lambda v: getattr(v, "__name__", "reason"),
)
def test_inconsistent_series_is_refused_with_the_reason(
    spoil: Callable[[list[Dataset]], None], reason: str
) -> None:
    datasets = _series()
    spoil(datasets)
    with pytest.raises(VolumeError, match=reason):
        assemble_volume(datasets)


def test_too_few_slices_are_refused() -> None:
    with pytest.raises(VolumeError, match="no images"):
        assemble_volume([])
    with pytest.raises(VolumeError, match="at least 2 slices, the series has 1"):
        assemble_volume(_series(1))


def test_volume_error_is_a_value_error() -> None:
    assert issubclass(VolumeError, ValueError)


def _multi_frame(frames: int, positions: Sequence[Sequence[float]] | None) -> Dataset:
    """An enhanced-CT-like image; per-frame positions only when ``positions`` is given."""
    pixels = np.stack(stored_slices(frames))
    ds = make_slice(pixels[0], (0, 0, 0))
    for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
        delattr(ds, keyword)
    ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    shared = Dataset()
    orientation, measures, rescale = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = list(AXIAL)
    measures.PixelSpacing = [0.5, 0.75]
    rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = 1, -1000, "HU"
    shared.PlaneOrientationSequence = DicomSequence([orientation])
    shared.PixelMeasuresSequence = DicomSequence([measures])
    shared.PixelValueTransformationSequence = DicomSequence([rescale])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    if positions is not None:
        groups = []
        for position in positions:
            group, plane = Dataset(), Dataset()
            plane.ImagePositionPatient = list(position)
            group.PlanePositionSequence = DicomSequence([plane])
            groups.append(group)
        ds.PerFrameFunctionalGroupsSequence = DicomSequence(groups)
    return ds


def test_one_enhanced_multi_frame_image_with_frame_positions_assembles() -> None:
    # Frames stored top-down: the volume still runs along +Z.
    image = _multi_frame(3, [(0, 0, 4.0), (0, 0, 2.0), (0, 0, 0.0)])

    volume = assemble_volume([image])

    expected = np.stack(stored_slices(3)[::-1]).astype(np.int32) - 1000
    np.testing.assert_array_equal(volume.voxels, expected)
    assert volume.spacing == pytest.approx((2.0, 0.5, 0.75))
    assert volume.sop_instance_uids == (image.SOPInstanceUID,) * 3


def test_multi_frame_images_that_cannot_be_placed_are_refused() -> None:
    with pytest.raises(VolumeError, match="no per-frame positions"):
        assemble_volume([_multi_frame(3, None)])
    with pytest.raises(VolumeError, match="multi-frame"):
        assemble_volume([_multi_frame(2, [(0, 0, 0), (0, 0, 1)]), *_series(2)])


# --- gantry tilt and irregular spacing ----------------------------------------------------------


def _tilted(angle_deg: float, count: int = 6, step: float = 2.0, along: int = 1) -> list[Dataset]:
    """Axial slices whose positions move along Z and sideways (gantry tilt)."""
    shift = step * math.tan(math.radians(angle_deg))
    positions = [[0.0, 0.0, i * step] for i in range(count)]
    for i, position in enumerate(positions):
        position[along - 1] += i * shift
    pixels = stored_slices(count)
    return [make_slice(p, pos) for p, pos in zip(pixels, positions, strict=True)]


def test_gantry_tilt_is_refused_with_its_angle() -> None:
    with pytest.raises(
        VolumeError, match=r"^gantry tilt of 15\.0° \(slices are offset along the columns\)$"
    ):
        assemble_volume(_tilted(15.0, along=2))  # moves along Y = the column direction
    with pytest.raises(
        VolumeError, match=r"gantry tilt of 7\.5° \(slices are offset along the rows\)"
    ):
        assemble_volume(_tilted(7.5, along=1))


def test_rounded_positions_are_not_a_tilt() -> None:
    datasets = _series(6)
    noise = np.random.default_rng(0).uniform(-0.004, 0.004, (6, 3))
    for ds, jitter in zip(datasets, noise, strict=True):
        ds.ImagePositionPatient = [float(v) for v in np.array(ds.ImagePositionPatient) + jitter]
    assert assemble_volume(datasets).resampled_from is None


def test_irregular_spacing_is_refused_with_min_and_max() -> None:
    datasets, _ = axial_series([0.0, 2.5, 5.0, 10.0])
    with pytest.raises(VolumeError, match=r"^irregular slice spacing: 2\.5 mm to 5\.0 mm$"):
        assemble_volume(datasets)


def _linear_phantom(xyz: np.ndarray) -> np.ndarray:
    """Linear in patient mm, so linear interpolation must reproduce it exactly."""
    return 3.0 * xyz[..., 0] - 2.0 * xyz[..., 1] + 5.0 * xyz[..., 2] + 100.0


def _phantom_slice(position: np.ndarray, shape: tuple[int, int], spacing: float) -> np.ndarray:
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    xyz = position + np.stack([cols * spacing, rows * spacing, 0 * rows], axis=-1)
    return np.rint(_linear_phantom(xyz) * 100).astype(np.int32)  # stored = value * 100


def test_resample_puts_a_tilted_series_on_a_regular_grid_along_the_normal() -> None:
    # Axial orientation, slices drifting along Y by tan(20°) per mm of Z.
    tilt = math.tan(math.radians(20))
    positions = [np.array([-8.0, -6.0 + 1.5 * i * tilt, 1.5 * i]) for i in range(9)]
    datasets = [
        make_slice(_phantom_slice(p, (24, 20), 1.0), p, pixel_spacing=(1, 1), slope=0.01)
        for p in positions
    ]
    with pytest.raises(VolumeError, match=r"gantry tilt of 20\.0°"):
        assemble_volume(datasets)

    volume = assemble_volume(datasets, resample=True)

    assert volume.resampled_from is not None and "gantry tilt of 20.0°" in volume.resampled_from
    np.testing.assert_allclose(volume.slice_direction, [0, 0, 1], atol=1e-12)
    assert volume.spacing == pytest.approx((1.5, 1.0, 1.0))
    # The grid grows to hold every slice's footprint: 8 slices x 0.546 mm of drift.
    assert volume.voxels.shape == (9, 24 + 5, 20)
    # Inside every slice's footprint, the resampled values are the phantom's.
    points = np.random.default_rng(0).uniform([-7, 0, 0.5], [10, 16, 11.5], (200, 3))
    values = [volume.value_at(p) for p in points]
    # Stored values are the phantom x 100 rounded: 0.005 of quantisation.
    np.testing.assert_allclose(values, _linear_phantom(points), atol=0.006)


def test_resample_regularises_irregular_spacing_at_the_median_step() -> None:
    zs = [0.0, 2.0, 4.0, 6.0, 10.0, 12.0]
    datasets = [
        make_slice(
            _phantom_slice(np.array([0.0, 0.0, z]), (6, 5), 1.0), (0, 0, z), pixel_spacing=(1, 1)
        )
        for z in zs
    ]

    volume = assemble_volume(datasets, resample=True)

    assert volume.resampled_from == "irregular slice spacing: 2.0 mm to 4.0 mm"
    assert volume.voxels.shape == (7, 6, 5)
    assert volume.spacing == pytest.approx((2.0, 1.0, 1.0))
    assert volume.voxels.dtype == np.int16  # integer values stay int16 (rounded)
    centres = volume.index_to_patient(np.moveaxis(np.indices(volume.voxels.shape), 0, -1))
    np.testing.assert_allclose(volume.voxels, _linear_phantom(centres) * 100, atol=0.5)


def test_resample_leaves_a_regular_series_alone() -> None:
    datasets = _series(4)
    volume = assemble_volume(datasets, resample=True)
    assert volume.resampled_from is None
    np.testing.assert_array_equal(volume.voxels, assemble_volume(datasets).voxels)


def test_volume_can_be_built_directly() -> None:
    fields: dict[str, object] = {
        "voxels": np.arange(24, dtype=np.int16).reshape(2, 3, 4) - 5,
        "origin": np.zeros(3),
        "row_direction": np.array([1.0, 0, 0]),
        "column_direction": np.array([0, 1.0, 0]),
        "slice_direction": np.array([0, 0, 1.0]),
        "spacing": (1.0, 1.0, 1.0),
        "modality": "CT",
        "frame_of_reference_uid": "1.2",
        "series_instance_uid": "1.3",
        "sop_instance_uids": ("a", "b"),
        "default_window": None,
        "photometric": "MONOCHROME2",
    }
    volume = Volume(**fields)  # type: ignore[arg-type]
    assert volume.resampled_from is None
    assert volume.minimum == -5.0
    with pytest.raises(ValueError, match="3-D"):
        Volume(**{**fields, "voxels": np.zeros((2, 3))})  # type: ignore[arg-type]


# --- real series ------------------------------------------------------------------------------


def _read_series(folder: str) -> list[Dataset]:
    root: Path = require_samples()
    files = sorted((root / folder).glob("*.dcm"))
    if not files:
        pytest.skip(f"{folder} is not in the samples")
    return [pydicom.dcmread(path) for path in files]


@pytest.fixture(scope="module")
def philips_ct() -> list[Dataset]:
    return _read_series("ct/philips_ingenuity_head_phantom_axial_1mm")


def test_real_philips_ct_assembles_140_slices_at_1_mm(philips_ct: list[Dataset]) -> None:
    volume = assemble_volume(philips_ct[::-1])

    assert volume.voxels.shape == (140, 512, 512)
    assert volume.voxels.dtype == np.int16
    assert volume.spacing == pytest.approx((1.0, 0.451171875, 0.451171875))
    np.testing.assert_allclose(volume.origin, [-115.5, -1.85, 694.21])
    np.testing.assert_allclose(volume.slice_direction, [0, 0, 1])
    assert volume.default_window is not None
    assert (volume.default_window.center, volume.default_window.width) == (40, 80)
    first = min(philips_ct, key=lambda ds: float(ds.ImagePositionPatient[2]))
    np.testing.assert_array_equal(
        volume.voxels[0], apply_modality_lut(first.pixel_array, first).astype(np.int16)
    )
    assert volume.voxels.min() == -1024  # air outside the phantom, in HU


def test_real_gantry_tilt_series_is_refused_then_resampled() -> None:
    datasets = _read_series("ct/ge_hispeed_head_gantry_tilt_variable_spacing")
    with pytest.raises(VolumeError) as refused:
        assemble_volume(datasets)
    assert "gantry tilt of 18.5°" in str(refused.value)
    assert "irregular slice spacing" in str(refused.value)

    volume = assemble_volume(datasets, resample=True)

    assert volume.resampled_from == str(refused.value)
    np.testing.assert_allclose(volume.slice_direction, [0, 0.3173, 0.9483], atol=1e-4)
    assert volume.spacing[1:] == pytest.approx((0.4882812, 0.4882812))


def test_real_sagittal_mr_assembles() -> None:
    volume = assemble_volume(_read_series("mr/siemens_prisma_t1_fl2d_sag"))
    assert volume.voxels.shape == (35, 256, 256)
    assert volume.spacing[0] == pytest.approx(4.8, abs=1e-5)
    np.testing.assert_allclose(volume.slice_direction, [-1, 0, 0])
    assert not mpr_offered(volume.modality, volume.voxels.shape[0])


def test_real_enhanced_ct_frames_assemble() -> None:
    root = require_samples()
    image = pydicom.dcmread(root / "multiframe/enhanced_ct__nema_2frames.dcm")
    volume = assemble_volume([image])
    assert volume.voxels.shape == (2, 512, 512)
    assert volume.spacing[0] == pytest.approx(10.0)
