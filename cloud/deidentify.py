"""De-identified export: DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile.

``deidentify`` returns a new dataset with the actions of Table E.1-1 applied (recursively into
sequences), the options of ``config/deidentify.toml`` and its retain-list honoured, UIDs remapped
with a keyed HMAC so that references keep resolving, and private attributes removed. Pixel data
is copied untouched: burned-in annotations are a matter for the exporter (Clean Pixel Data is
not claimed).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import os
import secrets
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from pydicom.datadict import dictionary_VR, keyword_dict
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID

__all__ = [
    "DUMMY_BY_VR",
    "PROFILE_FILE",
    "TABLE",
    "DeidentifyProfile",
    "UidRemapper",
    "deidentify",
    "export_key",
    "load_profile",
    "pseudonym_for",
]

PROFILE_FILE = Path(__file__).resolve().parents[1] / "config" / "deidentify.toml"
KEY_FILE = Path("keys") / "deidentify.key"

Action = Literal["D", "Z", "X", "K", "U"]

# PS3.15 Table E.1-1, Basic Profile column, for the attributes we handle. The standard's
# conditional codes are resolved to one action, towards keeping common image IODs (CT, MR,
# enhanced multi-frame, SC, SR) valid: D where some such IOD makes the attribute Type 1, Z where
# Type 2, X otherwise; X/Z/U* -> U (the reference sequence stays, its UIDs are remapped).
# D on a sequence keeps its items and applies this table inside them.
# fmt: off
TABLE: dict[str, Action] = {
    # patient identity
    "PatientName": "Z", "PatientID": "Z", "IssuerOfPatientID": "X",
    "OtherPatientIDs": "X", "OtherPatientIDsSequence": "X", "OtherPatientNames": "X",
    "PatientBirthName": "X", "PatientMotherBirthName": "X", "MedicalRecordLocator": "X",
    "PatientBirthDate": "Z", "PatientBirthTime": "X", "PatientAddress": "X",
    "PatientTelephoneNumbers": "X", "PatientTelecomInformation": "X",
    "CountryOfResidence": "X", "RegionOfResidence": "X", "MilitaryRank": "X",
    "BranchOfService": "X", "Occupation": "X", "PatientReligiousPreference": "X",
    "PatientInsurancePlanCodeSequence": "X", "PatientPrimaryLanguageCodeSequence": "X",
    "PatientPrimaryLanguageModifierCodeSequence": "X", "ResponsiblePerson": "X",
    "ResponsibleOrganization": "X", "ReferencedPatientSequence": "X",
    "ReferencedPatientAliasSequence": "X", "ReferencedPatientPhotoSequence": "X",
    "PatientComments": "X", "AdditionalPatientHistory": "X", "MedicalAlerts": "X",
    "Allergies": "X", "PatientState": "X", "SpecialNeeds": "X", "PreMedication": "X",
    # patient characteristics (kept by the Retain Patient Characteristics Option)
    "PatientSex": "Z", "PatientAge": "X", "PatientSize": "X", "PatientWeight": "X",
    "EthnicGroup": "X", "SmokingStatus": "X", "PregnancyStatus": "X",
    "PatientSexNeutered": "Z", "LastMenstrualDate": "X",
    # visit and order
    "AdmissionID": "X", "IssuerOfAdmissionID": "X", "AdmittingDate": "X", "AdmittingTime": "X",
    "AdmittingDiagnosesDescription": "X", "AdmittingDiagnosesCodeSequence": "X",
    "DischargeDiagnosisDescription": "X", "ServiceEpisodeID": "X",
    "IssuerOfServiceEpisodeID": "X", "ServiceEpisodeDescription": "X", "VisitComments": "X",
    "CurrentPatientLocation": "X", "PatientInstitutionResidence": "X",
    "ScheduledPatientInstitutionResidence": "X", "AccessionNumber": "Z", "StudyID": "Z",
    "StudyIDIssuer": "X", "RequestAttributesSequence": "X", "RequestedProcedureID": "X",
    "RequestedProcedureDescription": "X", "RequestedProcedureLocation": "X",
    "RequestedProcedureComments": "X", "ReasonForStudy": "X",
    "ReasonForTheRequestedProcedure": "X", "RequestingPhysician": "X",
    "RequestingService": "X", "RequestedContrastAgent": "X",
    "PlacerOrderNumberImagingServiceRequest": "Z", "FillerOrderNumberImagingServiceRequest": "Z",
    "ImagingServiceRequestComments": "X", "OrderEnteredBy": "X", "OrderEntererLocation": "X",
    "OrderCallbackPhoneNumber": "X", "OrderCallbackTelecomInformation": "X",
    "ScheduledProcedureStepDescription": "X", "ScheduledPerformingPhysicianName": "X",
    "ScheduledPerformingPhysicianIdentificationSequence": "X",
    "PerformedProcedureStepID": "X", "PerformedProcedureStepDescription": "X",
    "PerformedLocation": "X", "ReferencedPerformedProcedureStepSequence": "X",
    "ReferencedStudySequence": "X", "NamesOfIntendedRecipientsOfResults": "X",
    "IntendedRecipientsOfResultsIdentificationSequence": "X",
    # people
    "ReferringPhysicianName": "Z", "ReferringPhysicianAddress": "X",
    "ReferringPhysicianTelephoneNumbers": "X", "ReferringPhysicianIdentificationSequence": "X",
    "ConsultingPhysicianName": "Z", "ConsultingPhysicianIdentificationSequence": "X",
    "PhysiciansOfRecord": "X", "PhysiciansOfRecordIdentificationSequence": "X",
    "PerformingPhysicianName": "X", "PerformingPhysicianIdentificationSequence": "X",
    "NameOfPhysiciansReadingStudy": "X", "PhysiciansReadingStudyIdentificationSequence": "X",
    "OperatorsName": "X", "OperatorIdentificationSequence": "X",
    "ContentCreatorName": "Z", "ContentCreatorIdentificationCodeSequence": "X",
    "PersonName": "D", "PersonIdentificationCodeSequence": "D", "PersonAddress": "X",
    "PersonTelephoneNumbers": "X", "PersonTelecomInformation": "X",
    "VerifyingObserverSequence": "D", "VerifyingObserverName": "D",
    "VerifyingObserverIdentificationCodeSequence": "Z", "VerifyingOrganization": "X",
    "AuthorObserverSequence": "X", "ParticipantSequence": "X",
    "CustodialOrganizationSequence": "X", "ActualHumanPerformersSequence": "X",
    "HumanPerformerName": "X", "HumanPerformerOrganization": "X",
    # institution (kept by the Retain Institution Identity Option)
    "InstitutionName": "X", "InstitutionAddress": "X", "InstitutionCodeSequence": "X",
    "InstitutionalDepartmentName": "X", "InstitutionalDepartmentTypeCodeSequence": "X",
    # device (kept by the Retain Device Identity Option)
    "StationName": "X", "DeviceSerialNumber": "D", "DeviceUID": "U", "DetectorID": "X",
    "GantryID": "X", "GeneratorID": "X", "PlateID": "X", "CassetteID": "X",
    "SourceSerialNumber": "X", "PerformedStationAETitle": "X", "PerformedStationName": "X",
    "PerformedStationNameCodeSequence": "X",
    "PerformedStationGeographicLocationCodeSequence": "X", "ScheduledStationAETitle": "X",
    "ScheduledStationName": "X", "ScheduledStationNameCodeSequence": "X",
    "ScheduledStationGeographicLocationCodeSequence": "X",
    "ScheduledProcedureStepLocation": "X", "ScheduledStudyLocation": "X",
    "ScheduledStudyLocationAETitle": "X", "ModifyingDeviceID": "X",
    "ModifyingDeviceManufacturer": "X",
    # dates and times (kept by the Retain Longitudinal Temporal Information Options)
    "StudyDate": "Z", "StudyTime": "Z", "SeriesDate": "X", "SeriesTime": "X",
    "AcquisitionDate": "X", "AcquisitionTime": "X", "AcquisitionDateTime": "D",
    "ContentDate": "D", "ContentTime": "D", "OverlayDate": "X", "OverlayTime": "X",
    "CurveDate": "X", "CurveTime": "X", "InstanceCoercionDateTime": "X",
    "StartAcquisitionDateTime": "X", "EndAcquisitionDateTime": "X",
    "PerformedProcedureStepStartDate": "X", "PerformedProcedureStepStartTime": "X",
    "PerformedProcedureStepEndDate": "X", "PerformedProcedureStepEndTime": "X",
    "PerformedProcedureStepStartDateTime": "X", "PerformedProcedureStepEndDateTime": "X",
    "ScheduledProcedureStepStartDate": "X", "ScheduledProcedureStepStartTime": "X",
    "ScheduledProcedureStepEndDate": "X", "ScheduledProcedureStepEndTime": "X",
    "ScheduledProcedureStepStartDateTime": "X", "ExpectedCompletionDateTime": "X",
    "ScheduledProcedureStepModificationDateTime": "X",
    "ProcedureStepCancellationDateTime": "X", "TimezoneOffsetFromUTC": "X",
    # descriptions and free text
    "StudyDescription": "X", "SeriesDescription": "X", "ProtocolName": "X",
    "ImageComments": "X", "FrameComments": "X", "StudyComments": "X",
    "AcquisitionComments": "X", "AcquisitionProtocolDescription": "X",
    "AcquisitionDeviceProcessingDescription": "X", "DerivationDescription": "X",
    "ImagePresentationComments": "X", "ModifiedImageDescription": "X",
    "ContrastBolusAgent": "Z", "TextString": "X", "TextComments": "X", "Arbitrary": "X",
    "AcquisitionContextSequence": "X", "ContentSequence": "X", "GraphicAnnotationSequence": "D",
    "IconImageSequence": "X", "InterpretationAuthor": "X", "InterpretationRecorder": "X",
    "InterpretationTranscriber": "X", "InterpretationText": "X",
    "InterpretationApproverSequence": "X", "InterpretationDiagnosisDescription": "X",
    "ResultsComments": "X",
    "DistributionName": "X", "DistributionAddress": "X",
    # integrity and provenance that may hold copies of identifiers
    "OriginalAttributesSequence": "X", "ModifiedAttributesSequence": "X",
    "DigitalSignaturesSequence": "X", "DigitalSignatureUID": "X",
    "ReferencedDigitalSignatureSequence": "X", "ReferencedSOPInstanceMACSequence": "X",
    "MAC": "X", "DataSetTrailingPadding": "X", "AffectedSOPInstanceUID": "X",
    # UIDs, remapped consistently
    "StudyInstanceUID": "U", "SeriesInstanceUID": "U", "SOPInstanceUID": "U",
    "FrameOfReferenceUID": "U", "SynchronizationFrameOfReferenceUID": "U",
    "ReferencedSOPInstanceUID": "U", "ReferencedSOPInstanceUIDInFile": "U",
    "ReferencedFrameOfReferenceUID": "U", "RelatedFrameOfReferenceUID": "U",
    "MediaStorageSOPInstanceUID": "U", "InstanceCreatorUID": "U", "IrradiationEventUID": "U",
    "ConcatenationUID": "U", "DimensionOrganizationUID": "U", "StorageMediaFileSetUID": "U",
    "TargetUID": "U", "UID": "U", "TrackingUID": "U", "TransactionUID": "U",
    "SpecimenUID": "U", "DoseReferenceUID": "U", "FiducialUID": "U",
    "FailedSOPInstanceUIDList": "U", "RequestedSOPInstanceUID": "U",
    "PaletteColorLookupTableUID": "U", "LargePaletteColorLookupTableUID": "U",
    "ObservationUID": "U", "ReferencedObservationUIDTrial": "U",
    "ObservationSubjectUIDTrial": "U", "TemplateExtensionOrganizationUID": "U",
    "TemplateExtensionCreatorUID": "U", "PresentationDisplayCollectionUID": "U",
    "PresentationSequenceCollectionUID": "U",
    "ReferencedGeneralPurposeScheduledProcedureStepTransactionUID": "U",
    "ReferencedImageSequence": "U", "SourceImageSequence": "U",
}
# fmt: on

# What each Annex E option keeps (the option columns of Table E.1-1 that say K; where the
# option says C (clean) we have no cleaner, so the Basic Profile action stands).
_OPTION_KEEPS: dict[str, frozenset[str]] = {
    "retain_patient_characteristics": frozenset(
        {"PatientSex", "PatientAge", "PatientSize", "PatientWeight", "EthnicGroup"}
        | {"SmokingStatus", "PregnancyStatus", "PatientSexNeutered"}
    ),
    "retain_device_identity": frozenset(
        {"StationName", "DeviceSerialNumber", "DeviceUID", "DetectorID", "GantryID"}
        | {"GeneratorID", "PlateID", "CassetteID", "SourceSerialNumber"}
        | {"PerformedStationAETitle", "PerformedStationName", "PerformedStationNameCodeSequence"}
        | {"PerformedStationGeographicLocationCodeSequence", "ScheduledStationAETitle"}
        | {"ScheduledStationName", "ScheduledStationNameCodeSequence"}
        | {"ScheduledStationGeographicLocationCodeSequence", "ScheduledProcedureStepLocation"}
        | {"ScheduledStudyLocation", "ScheduledStudyLocationAETitle"}
    ),
    "retain_institution_identity": frozenset(
        {"InstitutionName", "InstitutionAddress", "InstitutionCodeSequence"}
        | {"InstitutionalDepartmentName", "InstitutionalDepartmentTypeCodeSequence"}
    ),
    "retain_longitudinal_dates": frozenset(
        k for k in TABLE if dictionary_VR(keyword_dict[k]) in {"DA", "DT", "TM"}
    )
    - {"PatientBirthDate", "PatientBirthTime"}
    | {"TimezoneOffsetFromUTC"},
}
# CID 7050 codes, in the order they are written.
_OPTION_CODES = {
    "retain_longitudinal_dates": (
        "113106",
        "Retain Longitudinal Temporal Information Full Dates Option",
    ),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}
_BASIC_PROFILE = ("113100", "Basic Application Confidentiality Profile")

# Note 4 of E.1: attributes the table does not list yet are judged by VR. Dates and person
# names not listed are removed (unless retained); times alone are left.
_SWEPT_VRS = {"DA", "DT", "PN"}

DUMMY_BY_VR: dict[str, Any] = {
    "AE": "ANONYMOUS", "AS": "000Y", "CS": "ANONYMOUS", "DA": "19000101",
    "DT": "19000101000000", "TM": "000000", "DS": "0", "IS": "0", "LO": "ANONYMOUS",
    "LT": "ANONYMOUS", "PN": "ANONYMOUS", "SH": "ANONYMOUS", "ST": "ANONYMOUS",
    "UC": "ANONYMOUS", "UT": "ANONYMOUS", "UR": "", "SS": 0, "US": 0, "SL": 0, "UL": 0,
    "SV": 0, "UV": 0, "FL": 0.0, "FD": 0.0,
}  # fmt: skip


@dataclass(frozen=True)
class DeidentifyProfile:
    """What to keep beyond the Basic Profile. The defaults are the bare Basic Profile.

    Attributes
    ----------
    retain : frozenset of str
        DICOM keywords kept unchanged although the profile would remove or replace them.
    retain_longitudinal_dates, retain_patient_characteristics, retain_device_identity,
    retain_institution_identity, retain_safe_private : bool
        The PS3.15 Annex E options of those names.
    remove_private_tags : bool
        Remove private attributes (all, or all but ``safe_private`` with that option).
        False keeps them unreviewed, which no longer conforms to the profile.
    safe_private : frozenset of (creator, group, element) tuples
        Private attributes known not to identify, by private creator, group and the low
        byte of the element (``"0019,xx0c"`` in the TOML is ``(creator, 0x0019, 0x0C)``).
    """

    retain: frozenset[str] = frozenset()
    retain_longitudinal_dates: bool = False
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    retain_safe_private: bool = False
    remove_private_tags: bool = True
    safe_private: frozenset[tuple[str, int, int]] = frozenset()

    def options(self) -> list[str]:
        """The Annex E options this profile applies, by field name."""
        return [name for name in _OPTION_CODES if getattr(self, name)]

    def action(self, keyword: str, vr: str) -> Action:
        """The action for an attribute: retain-list, then options, then the table."""
        if keyword in self.retain:
            return "K"
        if any(keyword in _OPTION_KEEPS.get(o, ()) for o in self.options()):
            return "K"
        action = TABLE.get(keyword)
        if action is not None:
            return action
        if vr in _SWEPT_VRS and not (vr != "PN" and self.retain_longitudinal_dates):
            return "X"
        return "K"

    def is_safe_private(self, creator: str | None, tag: BaseTag) -> bool:
        if not self.retain_safe_private or creator is None:
            return False
        return (creator, tag.group, tag.element & 0xFF) in self.safe_private


_OPTION_FIELDS = {f.name for f in fields(DeidentifyProfile) if f.type == "bool"}


def load_profile(path: Path = PROFILE_FILE) -> DeidentifyProfile:
    """Read a profile from TOML; unknown keys or keywords are errors naming the file."""
    document = tomllib.loads(path.read_text(encoding="utf-8"))
    unknown = set(document) - _OPTION_FIELDS - {"retain", "safe_private"}
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}")
    options: dict[str, bool] = {}
    for name in _OPTION_FIELDS & set(document):
        if not isinstance(document[name], bool):
            raise ValueError(f"{path}: {name} must be true or false")
        options[name] = document[name]
    retain = document.get("retain", [])
    if not isinstance(retain, list) or not all(isinstance(k, str) for k in retain):
        raise ValueError(f"{path}: retain must be a list of DICOM keywords")
    bad = sorted(k for k in retain if k not in keyword_dict)
    if bad:
        raise ValueError(f"{path}: retain names unknown DICOM keywords {bad}")
    safe = frozenset(_safe_private_entry(e, path) for e in document.get("safe_private", []))
    return DeidentifyProfile(retain=frozenset(retain), safe_private=safe, **options)


def _safe_private_entry(entry: Any, path: Path) -> tuple[str, int, int]:
    try:
        group, element = str(entry["tag"]).lower().split(",")
        if not element.startswith("xx"):
            raise ValueError
        creator, number, low = str(entry["creator"]), int(group, 16), int(element[2:], 16)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(
            f'{path}: safe_private entries look like {{ creator = "...", tag = "0019,xx0c" }}'
        ) from exc
    if number % 2 == 0 or not 0 <= low <= 0xFF:
        raise ValueError(f"{path}: {entry['tag']} is not a private element")
    return creator, number, low


class UidRemapper:
    """Replaces UIDs deterministically under a key: ``2.25.<128 bits of HMAC-SHA256>``.

    Well-known DICOM UIDs (under ``1.2.840.10008``: SOP classes, transfer syntaxes, coding
    schemes) are never replaced.
    """

    def __init__(self, key: bytes) -> None:
        if not key:
            raise ValueError("the remapping key must not be empty")
        self._key = key
        self._cache: dict[str, str] = {}

    def remap(self, uid: str) -> str:
        uid = uid.strip("\x00 ")
        if not uid or not UID(uid).is_private:  # under the DICOM root: a well-known UID
            return uid
        new = self._cache.get(uid)
        if new is None:
            digest = hmac.new(self._key, uid.encode("ascii", "replace"), hashlib.sha256).digest()
            new = self._cache[uid] = "2.25." + str(int.from_bytes(digest[:16], "big"))
        return new


def pseudonym_for(patient_id: str, key: bytes) -> str:
    """The same pseudonym for the same patient under the same (project) key."""
    digest = hmac.new(key, b"patient-id\x00" + patient_id.encode(), hashlib.sha256)
    return "ANON-" + digest.hexdigest()[:10].upper()


def export_key(data_dir: Path, project: str) -> bytes:
    """The project's remapping key: HMAC(secret, project), the secret made once (0600)."""
    key_file = data_dir / KEY_FILE
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        # Written aside and linked into place: a racing process never reads a half-written key.
        temporary = key_file.with_name(f".{key_file.name}.{secrets.token_hex(8)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                handle.write(secrets.token_bytes(32))
                handle.flush()
                os.fsync(handle.fileno())
            os.link(temporary, key_file)
        except FileExistsError:
            pass
        finally:
            temporary.unlink(missing_ok=True)
    secret = key_file.read_bytes()
    if len(secret) < 32:
        raise ValueError(f"{key_file} holds fewer than 32 bytes; restore it or remove it")
    return hmac.new(secret, project.encode("utf-8"), hashlib.sha256).digest()


def deidentify(
    ds: Dataset,
    profile: DeidentifyProfile,
    remapper: UidRemapper,
    *,
    patient_pseudonym: str,
) -> Dataset:
    """A de-identified copy of ``ds``; ``ds`` itself is left unchanged.

    Parameters
    ----------
    ds : Dataset
        The instance, as read (a ``FileDataset`` keeps its transfer syntax).
    profile : DeidentifyProfile
        Options and retain-list on top of the Basic Profile.
    remapper : UidRemapper
        Shared by every instance of one export, so references stay consistent.
    patient_pseudonym : str
        Becomes Patient's Name and Patient ID (see ``pseudonym_for``).

    Returns
    -------
    Dataset
        With Patient Identity Removed, the De-identification Method (Code Sequence) and, if
        ``ds`` had File Meta Information, new File Meta naming the remapped instance.
    """
    out = _clean(ds, profile, remapper)
    out.PatientName = patient_pseudonym
    out.PatientID = patient_pseudonym
    out.PatientIdentityRemoved = "YES"
    codes = [_BASIC_PROFILE] + [_OPTION_CODES[o] for o in profile.options()]
    method = [meaning for _, meaning in codes]
    extra = sorted(
        profile.retain - {k for o in profile.options() for k in _OPTION_KEEPS.get(o, ())}
    )
    method += [f"Retained {keyword}"[:64] for keyword in extra]
    if not profile.remove_private_tags:
        method.append("Private attributes retained unreviewed")
    out.DeidentificationMethod = method
    out.DeidentificationMethodCodeSequence = Sequence(_code_item(*code) for code in codes)
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        out.file_meta = _file_meta(out, meta.TransferSyntaxUID)
    return out


def _clean(ds: Dataset, profile: DeidentifyProfile, remapper: UidRemapper) -> Dataset:
    out = Dataset()
    creators = _private_creators(ds)
    for elem in ds:
        tag = elem.tag
        # Group lengths are stale after editing; File Meta is rebuilt, never copied.
        if tag.element == 0 or tag.group == 0x0002:
            continue
        if tag.is_private:
            if tag.is_private_creator or _keep_private(profile, creators, tag):
                out.add(_copy(elem, profile, remapper))
            continue
        if _is_overlay_or_curve(tag):
            continue
        vr = elem.VR.split(" ")[0]
        action = profile.action(elem.keyword, vr)
        if action == "X":
            continue
        if vr == "SQ":
            items = [] if action == "Z" else [_clean(i, profile, remapper) for i in elem.value]
            out.add(_element_like(elem, Sequence(items)))
        elif action == "Z":
            out.add(_element_like(elem, None))
        elif action == "D":
            out.add(_element_like(elem, DUMMY_BY_VR.get(vr, b"\x00\x00")))
        elif action == "U":
            out.add(_element_like(elem, _remap(elem.value, remapper)))
        else:
            out.add(_copy(elem, profile, remapper))
    _drop_orphan_creators(out)
    return out


def _copy(elem: DataElement, profile: DeidentifyProfile, remapper: UidRemapper) -> DataElement:
    if elem.VR == "SQ":  # kept sequences are still cleaned (K on a sequence)
        return _element_like(elem, Sequence(_clean(i, profile, remapper) for i in elem.value))
    return copy.deepcopy(elem)


def _element_like(elem: DataElement, value: Any) -> DataElement:
    new = DataElement(elem.tag, elem.VR.split(" ")[0], value)
    new.is_undefined_length = elem.is_undefined_length
    return new


def _remap(value: Any, remapper: UidRemapper) -> Any:
    if isinstance(value, bytes):  # UN-encoded UIDs
        value = value.decode("ascii", "replace")
    if isinstance(value, str):
        return remapper.remap(value)
    if isinstance(value, Iterable):
        return [remapper.remap(str(v)) for v in value]
    return value


def _private_creators(ds: Dataset) -> dict[tuple[int, int], str]:
    found: dict[tuple[int, int], str] = {}
    for elem in ds:
        if elem.tag.is_private_creator and isinstance(elem.value, str | bytes):
            value = elem.value.decode("latin-1") if isinstance(elem.value, bytes) else elem.value
            found[(elem.tag.group, elem.tag.element)] = value.strip("\x00 ")
    return found


def _keep_private(
    profile: DeidentifyProfile, creators: dict[tuple[int, int], str], tag: BaseTag
) -> bool:
    if not profile.remove_private_tags:
        return True
    return profile.is_safe_private(creators.get((tag.group, tag.element >> 8)), tag)


def _drop_orphan_creators(out: Dataset) -> None:
    blocks = {(t.group, t.element >> 8) for t in out.keys() if t.is_private and t.element > 0xFF}
    for tag in [t for t in out.keys() if t.is_private_creator]:
        if (tag.group, tag.element) not in blocks:
            del out[tag]


def _is_overlay_or_curve(tag: BaseTag) -> bool:
    # Overlay Data/Comments (60xx,3000/4000) and all curve groups (50xx): X in Table E.1-1.
    if 0x6000 <= tag.group <= 0x601E and tag.element in (0x3000, 0x4000):
        return True
    return 0x5000 <= tag.group <= 0x501E


def _code_item(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = "DCM"
    item.CodeMeaning = meaning
    return item


def _file_meta(out: Dataset, transfer_syntax: str) -> FileMetaDataset:
    # PS3.15 E.1.1 step 7: File Meta is replaced, so nothing leaks through source AE titles.
    meta = FileMetaDataset()
    if "SOPClassUID" in out:
        meta.MediaStorageSOPClassUID = out.SOPClassUID
    if "SOPInstanceUID" in out:
        meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "IMGCLOUD_DEID"
    return meta
