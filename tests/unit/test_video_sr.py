"""The annotation SR as other software reads it: pydicom round trip, DCMTK's dsrdump, and the
archive's report intake (which must not mistake it for a diagnostic report)."""

from __future__ import annotations

import io
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from cloud.report_fields import NotAReportError
from cloud.report_sr import read_sr
from cloud.video_sr import (
    COMPREHENSIVE_SR,
    AnnotationSr,
    VideoReference,
    build,
    part10,
    time_ranges,
)

VIDEO = VideoReference(
    study_instance_uid="1.2.826.0.1.3680043.10.1370.1",
    series_instance_uid="1.2.826.0.1.3680043.10.1370.2",
    sop_instance_uid="1.2.826.0.1.3680043.10.1370.3",
    sop_class_uid="1.2.840.10008.5.1.4.1.1.77.1.4.1",
)
ANNOTATIONS = [
    {
        "kind": "step",
        "start": 12.5,
        "end": 30.25,
        "label": "夹闭胆囊管",
        "tissue": "胆囊管",
        "instrument": "Hem-o-lok 夹",
        "action": "夹闭",
        "compliance": "符合规范",
        "note": "",
    },
    {
        "kind": "phase",
        "start": 0.0,
        "end": 95.0,
        "label": "分离胆囊三角 Calot triangle",
        "tissue": "",
        "instrument": "电钩",
        "action": "",
        "compliance": "",
        "note": "视野清晰\n无出血",
    },
]


def _document() -> AnnotationSr:
    study = Dataset()
    study.PatientName = "Zhang^San=张^三"
    study.PatientID = "OR-0001"
    study.PatientBirthDate = "19700101"
    study.PatientSex = "M"
    study.StudyDate = "20250304"
    study.StudyTime = "081500"
    study.AccessionNumber = "ACC42"
    study.StudyDescription = "腹腔镜胆囊切除术"
    return AnnotationSr(
        video=VIDEO,
        study_attributes=study,
        title_page={
            "procedure": "腹腔镜胆囊切除术",
            "applicant": "李医生",
            "hospital": "重庆医科大学附属第一医院",
            "surgeon": "Li^Ming",
            "diagnosis": "胆囊结石",
        },
        annotations=ANNOTATIONS,
        author="doc.a",
        created=datetime(2025, 3, 5, 9, 30, 0),
        institution_name="重庆医科大学附属第一医院",
    )


def _texts(item: Dataset) -> dict[str, str]:
    return {
        child.ConceptNameCodeSequence[0].CodeMeaning: child.TextValue
        for child in item.ContentSequence
        if child.ValueType == "TEXT"
    }


def test_the_sr_round_trips_with_title_page_texts_and_time_ranges() -> None:
    data = part10(build(_document()))
    ds = dcmread(io.BytesIO(data))
    assert ds.SOPClassUID == COMPREHENSIVE_SR
    assert ds.Modality == "SR"
    assert ds.StudyInstanceUID == VIDEO.study_instance_uid
    assert ds.PatientID == "OR-0001"
    assert ds.ConceptNameCodeSequence[0].CodeMeaning == "Surgical video annotation"
    assert ds.ConceptNameCodeSequence[0].CodingSchemeDesignator == "99IMGCLOUD"
    title = _texts(ds)
    assert title["Procedure"] == "腹腔镜胆囊切除术"
    assert title["Applicant"] == "李医生"
    assert title["Hospital"] == "重庆医科大学附属第一医院"
    # Annotations in time order: the phase (0 s) before the step (12.5 s).
    assert time_ranges(ds) == [
        ("Surgical phase", 0.0, 95.0, VIDEO.sop_instance_uid),
        ("Key step", 12.5, 30.25, VIDEO.sop_instance_uid),
    ]
    containers = [item for item in ds.ContentSequence if item.ValueType == "CONTAINER"]
    step = _texts(containers[1])
    assert step == {
        "Label": "夹闭胆囊管",
        "Tissue": "胆囊管",
        "Instrument": "Hem-o-lok 夹",
        "Action": "夹闭",
        "Compliance": "符合规范",
    }
    assert _texts(containers[0])["Note"] == "视野清晰\n无出血"
    tcoord = next(c for c in containers[1].ContentSequence if c.ValueType == "TCOORD")
    assert tcoord.TemporalRangeType == "SEGMENT"
    image = tcoord.ContentSequence[0]
    assert (image.RelationshipType, image.ValueType) == ("SELECTED FROM", "IMAGE")
    assert image.ReferencedSOPSequence[0].ReferencedSOPClassUID == VIDEO.sop_class_uid


def test_the_report_intake_does_not_take_the_annotation_sr_for_a_report() -> None:
    with pytest.raises(NotAReportError, match="not a diagnostic report"):
        read_sr(part10(build(_document())))


@pytest.mark.needs_dcmtk
@pytest.mark.skipif(shutil.which("dsrdump") is None, reason="DCMTK's dsrdump is not installed")
def test_dcmtk_reads_the_sr(tmp_path: Path) -> None:
    path = tmp_path / "annotation.dcm"
    path.write_bytes(part10(build(_document())))
    done = subprocess.run(
        # strict: content item errors and relationship constraints are not ignored
        ["dsrdump", "+Pl", "+Pu", "+U8", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "Comprehensive SR" in done.stdout
    assert "Surgical video annotation" in done.stdout
    assert "TCOORD" in done.stdout and "SEGMENT" in done.stdout
    assert "(SEGMENT,12.5,30.25)" in done.stdout and "(SEGMENT,0,95)" in done.stdout
    assert VIDEO.sop_instance_uid in done.stdout  # the IMAGE reference
    assert "腹腔镜胆囊切除术" in done.stdout
    # DCMTK's VR checker says it cannot check UTF-8 text; anything else would be a finding.
    problems = [
        line
        for line in done.stderr.splitlines()
        if line.startswith(("E:", "W:")) and "does not support this Specific Character" not in line
    ]
    assert not problems, done.stderr
