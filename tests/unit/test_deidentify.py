"""De-identified export (cloud.deidentify): PS3.15 Basic Profile, options, retain-list, UIDs."""

from __future__ import annotations

import copy
import io
import re
import stat
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage

from cloud.deidentify import (
    DUMMY_BY_VR,
    PROFILE_FILE,
    TABLE,
    DeidentifyProfile,
    UidRemapper,
    deidentify,
    export_key,
    load_profile,
    pseudonym_for,
)
from imaging_cloud.synthetic import PatientSpec, StudySpec, ct_series, to_part10
from tests.support.samples import require_samples

UID_FORMAT = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")
KEY = b"k" * 32
PSEUDONYM = "ANON-0123456789"
CREATOR = "ACME PRIVATE 1.0"


def _identified_series() -> list[Dataset]:
    """Two CT slices of one series, full of identifiers; slice 2 references slice 1."""
    patient = PatientSpec(patient_id="MRN-778899", patient_name="Wang^Xiaoming", sex="M")
    study = StudySpec(patient=patient, accession_number="ACC-5566", study_id="S-42")
    slices = list(ct_series(study, slices=2, size=16))
    for ds in slices:
        ds.InstitutionName = "First People's Hospital"
        ds.InstitutionAddress = "1 Hospital Road"
        ds.StationName = "CT-ROOM-3"
        ds.DeviceSerialNumber = "SN-123456"
        ds.OperatorsName = "Li^Na"
        ds.PerformingPhysicianName = "Zhao^Wei"
        ds.OtherPatientIDs = "OLD-MRN-1"
        other = Dataset()
        other.PatientID = "INS-99"
        other.TypeOfPatientID = "TEXT"
        ds.OtherPatientIDsSequence = Sequence([other])
        request = Dataset()
        request.AccessionNumber = "ACC-5566"
        request.RequestedProcedureID = "RP-1"
        request.ScheduledProcedureStepID = "SPS-1"
        ds.RequestAttributesSequence = Sequence([request])
        patient_ref = Dataset()
        patient_ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.1.1"
        patient_ref.ReferencedSOPInstanceUID = "1.2.3.4.5.6"
        ds.ReferencedPatientSequence = Sequence([patient_ref])
        ds.PatientAddress = "2 Home Street"
        ds.PatientTelephoneNumbers = "555-0100"
        ds.PatientAge = "056Y"
        ds.PatientSize = 1.72
        ds.PatientWeight = 70
        ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = "20260101"
        ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "120501"
        ds.InstanceCreationDate = "20260102"  # not in the table: removed as a date by VR
        ds.StudyDescription = "CT head for Wang Xiaoming"
        ds.ImageComments = "called the patient on 555-0100"
        block = ds.private_block(0x0019, CREATOR, create=True)
        block.add_new(0x10, "LO", "Wang Xiaoming, bed 12")
        block.add_new(0x11, "DS", "1.5")
    source = Dataset()
    source.ReferencedSOPClassUID = CTImageStorage
    source.ReferencedSOPInstanceUID = slices[0].SOPInstanceUID
    slices[1].SourceImageSequence = Sequence([source])
    # As read from a file: File Meta and the transfer syntax come with it.
    return [pydicom.dcmread(io.BytesIO(to_part10(ds))) for ds in slices]


@pytest.fixture
def series() -> list[Dataset]:
    return _identified_series()


@pytest.fixture(scope="module")
def profile() -> DeidentifyProfile:
    return load_profile()


def _run(ds: Dataset, profile: DeidentifyProfile, key: bytes = KEY) -> Dataset:
    return deidentify(ds, profile, UidRemapper(key), patient_pseudonym=PSEUDONYM)


def _reread(out: Dataset) -> Dataset:
    buffer = io.BytesIO()
    meta = getattr(out, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta and "SOPInstanceUID" in out:
        pydicom.dcmwrite(buffer, out, enforce_file_format=True)
    else:  # broken samples without SOP UIDs or transfer syntax
        out = copy.copy(out)
        out.file_meta = pydicom.dataset.FileMetaDataset()
        pydicom.dcmwrite(buffer, out, implicit_vr=True, little_endian=True)
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()), force=True)


def _values(ds: Dataset, keyword: str) -> list[Any]:
    """Every value of ``keyword`` anywhere in ``ds``, sequences included."""
    return [e.value for e in ds.iterall() if e.keyword == keyword]


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, str | bytes | list | Sequence) and not value)


def _leaks(original: Dataset, out: Dataset, profile: DeidentifyProfile) -> list[str]:
    """Keywords the profile marks X/Z/D that still carry an original non-empty value."""
    leaks = []
    for elem in original.iterall():
        vr = elem.VR.split(" ")[0]
        if vr == "SQ" or _is_empty(elem.value) or profile.action(elem.keyword, vr) == "K":
            continue
        if TABLE.get(elem.keyword) not in ("X", "Z", "D") and vr not in ("DA", "DT", "PN"):
            continue
        if str(elem.value) in {str(DUMMY_BY_VR.get(vr)), PSEUDONYM}:
            continue
        kept = [v for v in _values(out, elem.keyword) if str(v) == str(elem.value)]
        leaks += [f"{elem.keyword}={elem.value!r}"] * len(kept)
    return leaks


# ------------------------------------------------------------------ Basic Profile


def test_identifiers_are_removed_or_replaced(series: list[Dataset], profile) -> None:
    original = series[1]
    out = _run(original, profile)

    assert _leaks(original, out, profile) == []
    assert out.PatientName == PSEUDONYM and out.PatientID == PSEUDONYM
    assert out.PatientBirthDate in ("", None)
    assert out.AccessionNumber in ("", None) and out.StudyID in ("", None)
    assert out.ReferringPhysicianName in ("", None)
    for gone in (
        "InstitutionName", "InstitutionAddress", "StationName", "OperatorsName",
        "PerformingPhysicianName", "OtherPatientIDs", "OtherPatientIDsSequence",
        "RequestAttributesSequence", "ReferencedPatientSequence", "PatientAddress",
        "PatientTelephoneNumbers", "SeriesDate", "AcquisitionDate", "InstanceCreationDate",
        "StudyDescription", "ImageComments",
    ):  # fmt: skip
        assert gone not in out, gone
    assert out.ContentDate == DUMMY_BY_VR["DA"]  # Type 1 in enhanced IODs: dummy, not empty
    assert out.DeviceSerialNumber == DUMMY_BY_VR["LO"]
    assert not any(e.tag.is_private for e in out.iterall())


def test_identity_removed_and_method_recorded(series: list[Dataset], profile) -> None:
    out = _run(series[0], profile)

    assert out.PatientIdentityRemoved == "YES"
    items = out.DeidentificationMethodCodeSequence
    assert [(i.CodeValue, i.CodingSchemeDesignator) for i in items] == [
        ("113100", "DCM"),
        ("113108", "DCM"),
    ]
    assert items[0].CodeMeaning == "Basic Application Confidentiality Profile"
    assert "Basic Application Confidentiality Profile" in out.DeidentificationMethod
    assert all(len(value) <= 64 for value in out.DeidentificationMethod)


def test_default_profile_keeps_patient_characteristics(series: list[Dataset], profile) -> None:
    out = _run(series[0], profile)
    assert (out.PatientSex, out.PatientAge) == ("M", "056Y")
    assert (float(out.PatientSize), float(out.PatientWeight)) == (1.72, 70.0)

    bare = _run(series[0], DeidentifyProfile())
    assert bare.PatientSex in ("", None)
    assert "PatientAge" not in bare and "PatientWeight" not in bare
    assert [i.CodeValue for i in bare.DeidentificationMethodCodeSequence] == ["113100"]


def test_input_dataset_is_unchanged(series: list[Dataset], profile) -> None:
    before = copy.deepcopy(series[1])
    meta_before = copy.deepcopy(series[1].file_meta)

    _run(series[1], profile)

    assert series[1] == before
    assert series[1].file_meta == meta_before
    assert series[1].PatientName == "Wang^Xiaoming"
    assert series[1].private_block(0x0019, CREATOR)[0x10].value == "Wang Xiaoming, bed 12"


def test_pixel_data_untouched_and_the_result_rereads(series: list[Dataset], profile) -> None:
    out = _run(series[0], profile)
    back = _reread(out)

    assert back.PixelData == series[0].PixelData
    assert back.file_meta.TransferSyntaxUID == series[0].file_meta.TransferSyntaxUID
    assert back.PatientName == PSEUDONYM
    assert back.DeidentificationMethodCodeSequence[0].CodeValue == "113100"


# ------------------------------------------------------------------ UIDs


def test_uids_are_remapped_consistently_across_a_series(series: list[Dataset], profile) -> None:
    remapper = UidRemapper(KEY)
    first, second = (
        deidentify(ds, profile, remapper, patient_pseudonym=PSEUDONYM) for ds in series
    )

    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert first[keyword].value == second[keyword].value, keyword
        assert first[keyword].value != series[0][keyword].value, keyword
    assert first.SOPInstanceUID != second.SOPInstanceUID
    reference = second.SourceImageSequence[0]
    assert reference.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert reference.ReferencedSOPClassUID == CTImageStorage  # well-known: never remapped
    assert first.SOPClassUID == CTImageStorage
    assert first.file_meta.MediaStorageSOPInstanceUID == first.SOPInstanceUID
    assert first.file_meta.TransferSyntaxUID == series[0].file_meta.TransferSyntaxUID
    for uid in (first.StudyInstanceUID, first.SeriesInstanceUID, first.SOPInstanceUID):
        assert UID_FORMAT.match(uid) and len(uid) <= 64


def test_remapping_is_deterministic_and_keyed() -> None:
    uid = "1.2.826.0.1.3680043.10.1370.42"
    assert UidRemapper(KEY).remap(uid) == UidRemapper(KEY).remap(uid)
    assert UidRemapper(KEY).remap(uid) != UidRemapper(b"other" * 8).remap(uid)
    assert UidRemapper(KEY).remap(uid) != UidRemapper(KEY).remap(uid + "3")
    assert UidRemapper(KEY).remap("1.2.840.10008.1.2.1") == "1.2.840.10008.1.2.1"


def test_projects_get_different_uids_and_pseudonyms(
    series: list[Dataset], profile, tmp_path: Path
) -> None:
    teaching, research = export_key(tmp_path, "teaching"), export_key(tmp_path, "research")
    a = _run(series[0], profile, teaching)
    b = _run(series[0], profile, research)
    again = _run(series[0], profile, export_key(tmp_path, "teaching"))

    assert a.StudyInstanceUID != b.StudyInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert again.StudyInstanceUID == a.StudyInstanceUID
    assert pseudonym_for("MRN-778899", teaching) != pseudonym_for("MRN-778899", research)


def test_export_key_secret_is_made_once_and_private(tmp_path: Path) -> None:
    key = export_key(tmp_path, "teaching")
    secret = tmp_path / "keys" / "deidentify.key"

    assert len(secret.read_bytes()) == 32
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert export_key(tmp_path, "teaching") == key
    assert len(key) == 32 and key != secret.read_bytes()
    assert list(secret.parent.iterdir()) == [secret]  # no temporary left behind


def test_pseudonym_is_stable_per_patient() -> None:
    name = pseudonym_for("MRN-778899", KEY)
    assert re.fullmatch(r"ANON-[0-9A-F]{10}", name)
    assert pseudonym_for("MRN-778899", KEY) == name
    assert pseudonym_for("MRN-778900", KEY) != name


# ------------------------------------------------------------------ options and retain-list


def test_retain_list_keeps_a_keyword(series: list[Dataset]) -> None:
    profile = DeidentifyProfile(retain=frozenset({"StudyDescription", "InstitutionName"}))
    out = _run(series[0], profile)

    assert out.StudyDescription == "CT head for Wang Xiaoming"
    assert out.InstitutionName == "First People's Hospital"
    assert "Retained StudyDescription" in out.DeidentificationMethod
    assert "InstitutionAddress" not in out


def test_options_keep_what_they_name(series: list[Dataset]) -> None:
    profile = DeidentifyProfile(
        retain_longitudinal_dates=True,
        retain_device_identity=True,
        retain_institution_identity=True,
    )
    out = _run(series[0], profile)

    assert (out.StudyDate, out.SeriesDate, out.ContentDate) == ("20260101",) * 3
    assert out.InstanceCreationDate == "20260102"
    assert out.PatientBirthDate in ("", None)  # not a longitudinal date
    assert (out.StationName, out.DeviceSerialNumber) == ("CT-ROOM-3", "SN-123456")
    assert out.InstitutionName == "First People's Hospital"
    codes = [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113106", "113109", "113112"]


def test_safe_private_attributes_only_with_the_option(series: list[Dataset]) -> None:
    safe = frozenset({(CREATOR, 0x0019, 0x11)})
    out = _run(series[0], DeidentifyProfile(retain_safe_private=True, safe_private=safe))

    block = out.private_block(0x0019, CREATOR)
    assert block[0x11].value == "1.5"
    assert block.get_tag(0x10) not in out
    assert "113111" in [i.CodeValue for i in out.DeidentificationMethodCodeSequence]
    without = _run(series[0], DeidentifyProfile(safe_private=safe))
    assert not any(e.tag.is_private for e in without)


def test_private_tags_can_be_kept_unreviewed(series: list[Dataset]) -> None:
    out = _run(series[0], DeidentifyProfile(remove_private_tags=False))
    assert out.private_block(0x0019, CREATOR)[0x10].value == "Wang Xiaoming, bed 12"
    assert "Private attributes retained unreviewed" in out.DeidentificationMethod


def test_shipped_profile_is_the_documented_default() -> None:
    profile = load_profile(PROFILE_FILE)
    assert profile.retain_patient_characteristics
    assert profile.remove_private_tags
    assert not profile.retain_longitudinal_dates
    assert not profile.retain_device_identity
    assert not profile.retain_institution_identity
    assert not profile.retain_safe_private
    for keyword in ("PatientSex", "PatientAge", "PatientSize", "PatientWeight"):
        assert profile.action(keyword, "CS") == "K"


@pytest.mark.parametrize(
    "text",
    [
        "retian = []",
        'retain = ["PatientsName"]',
        "retain_longitudinal_dates = 1",
        'safe_private = [{ creator = "X", tag = "0018,xx10" }]',
        'safe_private = [{ creator = "X", tag = "0019,1010" }]',
    ],
)
def test_profile_mistakes_are_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "deidentify.toml"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=str(path)):
        load_profile(path)


def test_profile_reads_safe_private_entries(tmp_path: Path) -> None:
    path = tmp_path / "deidentify.toml"
    path.write_text(
        'retain_safe_private = true\nretain = ["StudyDescription"]\n'
        'safe_private = [{ creator = "GEMS_PARM_01", tag = "0043,xx27" }]\n',
        encoding="utf-8",
    )
    profile = load_profile(path)
    assert profile.safe_private == frozenset({("GEMS_PARM_01", 0x0043, 0x27)})
    assert profile.retain == frozenset({"StudyDescription"})


# ------------------------------------------------------------------ real samples


def _readable_samples(root: Path) -> Iterator[tuple[Path, Dataset]]:
    for path in sorted(root.rglob("*.dcm")):
        try:
            yield path, pydicom.dcmread(path)
        except Exception:  # unreadable malformed samples are someone else's test
            continue


@pytest.mark.slow  # heavy: CI runs it, the quick local run leaves it out
@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom on the malformed samples
def test_every_readable_sample(profile) -> None:
    root = require_samples()
    remapper = UidRemapper(KEY)
    problems: list[str] = []
    new_study_by_old: dict[str, set[str]] = {}
    new_sop_uids: set[str] = set()
    count = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path, ds in _readable_samples(root):
            name = str(path.relative_to(root))
            before = copy.deepcopy(ds)
            out = deidentify(ds, profile, remapper, patient_pseudonym=PSEUDONYM)
            back = _reread(out)
            count += 1
            problems += [f"{name}: {leak}" for leak in _leaks(before, out, profile)]
            if any(e.tag.is_private for e in back.iterall()):
                problems.append(f"{name}: private attributes remain")
            if "PixelData" in ds and back.get("PixelData") != ds.PixelData:
                problems.append(f"{name}: pixel data changed")
            if ds != before:
                problems.append(f"{name}: input changed")
            if back.get("PatientIdentityRemoved") != "YES" or back.PatientName != PSEUDONYM:
                problems.append(f"{name}: not marked de-identified")
            if "StudyInstanceUID" in ds:
                old = ds.StudyInstanceUID
                new_study_by_old.setdefault(old, set()).add(out.StudyInstanceUID)
            if "SOPInstanceUID" in ds:
                new_sop_uids.add(out.SOPInstanceUID)
                if not UID_FORMAT.match(out.SOPInstanceUID):
                    problems.append(f"{name}: SOP Instance UID {out.SOPInstanceUID}")
    assert count >= 200, f"only {count} readable samples under {root}"
    assert problems == []
    # Every study keeps one identity: all 140 Philips slices still belong together.
    assert all(len(new) == 1 for new in new_study_by_old.values())
    assert len({next(iter(v)) for v in new_study_by_old.values()}) == len(new_study_by_old)
    assert len(new_sop_uids) >= 200
