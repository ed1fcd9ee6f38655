"""Surgical video over DIMSE with DCMTK: C-STORE in, C-MOVE back, unchanged.

A wrapped video (MPEG-4 AVC) is sent by DCMTK's storescu, proposing its own transfer syntax,
as the hospital's registered AE; movescu of that AE, receiving on its registered port and
accepting MPEG-4 (``+xn``), gets it back bit for bit. A getscu that proposes only
uncompressed syntaxes cannot be sent a video (nothing decodes it): its C-GET ends with the
sub-operation counted as failed, not an association abort.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest

from tests.support.ports import free_ports
from tests.support.servers import client, running_node
from tests.support.video import make_mp4, video_dataset

pytestmark = [
    pytest.mark.needs_dcmtk,
    pytest.mark.needs_ffmpeg,
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in ("storescu", "getscu", "movescu")),
        reason="DCMTK command-line tools (storescu, getscu, movescu) are not installed",
    ),
]
CALLING_AE = "H1GW"


def test_a_video_goes_in_by_storescu_and_comes_back_by_movescu(tmp_path: Path) -> None:
    mp4 = make_mp4(tmp_path / "clip.mp4", seconds=1.0)
    ds = video_dataset(mp4, patient_id="P-DIMSE", procedure="Appendectomy")
    sent = tmp_path / "video.dcm"
    ds.save_as(sent, enforce_file_format=True)
    syntax, sop_class = str(ds.file_meta.TransferSyntaxUID), str(ds.SOPClassUID)
    config = tmp_path / "own.cfg"
    config.write_text(
        "[[TransferSyntaxes]]\n[Own]\nTransferSyntax1 = " + syntax + "\n"
        "[[PresentationContexts]]\n[Ctx]\nPresentationContext1 = " + sop_class + "\\Own\n"
        "[[Profiles]]\n[Video]\nPresentationContexts = Ctx\n"
    )
    with running_node(tmp_path / "node") as node:
        [receive_port] = free_ports(1)
        node.archive.hospitals.add_hospital(
            "H1", "Hospital 1", ae_title=CALLING_AE, dicom_host="127.0.0.1",
            dicom_port=receive_port,
        )  # fmt: skip
        port = str(node.scp.port)
        base = ["-aet", CALLING_AE, "-aec", node.settings.ae_title]
        stored = subprocess.run(
            ["storescu", *base, "-xf", str(config), "Video", "127.0.0.1", port, str(sent)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert stored.returncode == 0, stored.stderr
        with client(node) as http:
            found = http.get("/dicom-web/instances", params={"PatientID": "P-DIMSE"}).json()
        assert len(found) == 1

        keys = ["-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={ds.StudyInstanceUID}"]
        plain = tmp_path / "plain"
        plain.mkdir()
        refused = subprocess.run(
            ["getscu", "-v", *base, "-od", str(plain), *keys, "127.0.0.1", port],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert list(plain.iterdir()) == []
        assert "Number of Failed Suboperations    : 1" in refused.stderr, refused.stderr

        got = tmp_path / "got"
        got.mkdir()
        moved = subprocess.run(
            ["movescu", "-v", *base, "-aem", CALLING_AE, "+P", str(receive_port), "+xn",
             "-od", str(got), *keys, "127.0.0.1", port],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert moved.returncode == 0, moved.stderr
        [back] = list(got.iterdir())
        again = pydicom.dcmread(back)
        assert again.file_meta.TransferSyntaxUID == syntax
        assert again.PixelData == ds.PixelData  # the MP4, byte for byte
