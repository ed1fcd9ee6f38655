"""Sample surgical video for `make demo`: a recording through the gateway, annotated, in review.

FFmpeg (Debian) makes a 12-second 1080p25 H.264/AAC recording of its ``testsrc2`` pattern with
a tone; the video intake the gateway's watched folder uses (probe, conformance report, wrap
without re-encoding) turns it into a DICOM Video Photographic object, which the demo gateway
spools and forwards to the cloud like any study. Two phases and a key step are annotated, and
a review task gives ``demo.expert`` something to score at ``/video-review/``. A demo started
again on the same data directory keeps the video it has; without FFmpeg there is none.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from sqlalchemy import select

from cloud.access import AccessPolicy
from cloud.archive import Archive
from cloud.models import SurgicalVideo
from cloud.video_annotations import AnnotationFields, VideoAnnotations
from cloud.video_review import TaskSpec, VideoReviews
from collectors.video_intake import prepare
from gateway.service import Gateway
from imaging_cloud.demo import DEMO_HOSPITAL, DEMO_PASSWORD

EXPERT = "demo.expert"
SIDECAR = {
    "patient_id": "DEMO001",
    "patient_name": "Zhang^San=张^三=",
    "birth_date": "1968-05-04",
    "sex": "M",
    "accession_number": "DEMOOR01",
    "procedure": "腹腔镜胆囊切除术 Laparoscopic cholecystectomy",
    "diagnosis": "胆囊结石 Cholecystolithiasis",
    "surgeon": "Li^Wei",
    "applicant": "Li^Wei",
    "hospital": "Demo People's Hospital",
    "camera_role": "field",
    "operation_start": "2026-11-20T09:00:00",
    "operation_end": "2026-11-20T10:25:00",
    "start": "2026-11-20T09:05:00",
}
ANNOTATIONS = (
    AnnotationFields("phase", 0.0, 5.0, "建立气腹 Pneumoperitoneum", instrument="Veress needle"),
    AnnotationFields(
        "phase", 5.0, 12.0, "解剖胆囊三角 Calot's triangle", tissue="cystic duct", action="dissect"
    ),
    AnnotationFields(
        "step",
        7.0,
        8.5,
        "夹闭胆囊管 Clip the cystic duct",
        tissue="cystic duct",
        instrument="clip applier",
        action="clip",
        compliance="critical view of safety shown first 符合规范",
    ),
)


def _record(path: Path, seconds: int = 12) -> None:
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc2=size=1920x1080:rate=25:duration={seconds}",
         "-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=48000:duration={seconds}",
         "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "2000k", "-maxrate", "2400k",
         "-bufsize", "4000k", "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "160k", "-ac", "2",
         "-movflags", "+faststart", str(path)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip


def load_demo_video(archive: Archive, gateway: Gateway) -> tuple[str, str] | None:
    """Record, wrap (through the gateway), annotate and put in review one surgical video.

    Returns (study UID, label) for the demo's listing, or None without FFmpeg."""
    label = f"surgical video, 12 s 1080p H.264/AAC ({DEMO_HOSPITAL}), annotated, in review"
    with archive.sessions() as session:
        held = session.scalar(
            select(SurgicalVideo.study_instance_uid).where(
                SurgicalVideo.patient_id == SIDECAR["patient_id"]
            )
        )
    if held is not None:
        return held, label
    if shutil.which("ffmpeg") is None:
        return None
    with tempfile.TemporaryDirectory(prefix="demo-video-") as tmp:
        work = Path(tmp)
        recording = work / "DEMOOR01.mp4"
        _record(recording)
        prepared = prepare(recording, SIDECAR, work / "out")
        # What the gateway's watched folder does with a recording and its sidecar.
        gateway.accept(prepared.read_bytes(), origin="video_folder:demo")
    deadline = time.monotonic() + 120
    while gateway.spool.status().queued and time.monotonic() < deadline:
        time.sleep(0.2)
    sop = str(prepared.header.SOPInstanceUID)
    annotations = VideoAnnotations(archive.sessions, archive.blobs)
    video = annotations.video(sop)
    if not annotations.list(video):
        for fields in ANNOTATIONS:
            annotations.create(video, fields, author="demo.clinician")
    if archive.users.by_username(EXPERT) is None:
        archive.users.create_user(EXPERT, DEMO_PASSWORD, "video_expert")
    admin = archive.users.by_username("demo.admin")
    assert admin is not None
    reviews = VideoReviews(archive.sessions, archive.access, archive.users)
    task = TaskSpec(
        title="主治医师职称评审 Attending title review: laparoscopic cholecystectomy",
        applicant="Li^Wei",
        videos=[sop],
        reviewers=[EXPERT],
    )
    reviews.create_task(AccessPolicy.for_user(admin), task)
    return str(prepared.header.StudyInstanceUID), label
