"""dicomweb-client against the archive's DICOMweb, with surgical video.

A DICOM video object goes in by STOW-RS and comes back by WADO-RS unchanged: PS3.18 8.7.3.5.2
lets an origin server that holds pixel data only in lossy compressed form send it as stored
when the client names no transfer syntax, and an explicit request for Explicit VR Little
Endian (which would need the video decoded) is refused with 406 before any byte is sent.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.encaps import generate_fragments
from requests.exceptions import HTTPError

from imaging_cloud.node import Node
from tests.support.servers import auth_headers, http_base
from tests.support.video import make_mp4, video_dataset

pytestmark = pytest.mark.needs_ffmpeg


def test_a_video_goes_in_by_stow_and_comes_back_as_stored(
    sqlite_node: Node, tmp_path: Path
) -> None:
    mp4 = make_mp4(tmp_path / "clip.mp4", seconds=1.0)
    ds = video_dataset(mp4, patient_id="P-WEB", procedure="Appendectomy")
    web = DICOMwebClient(
        url=f"{http_base(sqlite_node)}/dicom-web", headers=auth_headers(sqlite_node)
    )
    response = web.store_instances(datasets=[ds])
    assert "FailedSOPSequence" not in response
    uids = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))

    back = web.retrieve_instance(*uids)  # default Accept: no transfer syntax named
    assert back.file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    [fragment] = list(generate_fragments(back.PixelData))[1:]
    assert fragment.rstrip(b"\x00") == mp4.read_bytes().rstrip(b"\x00")

    as_stored = web.retrieve_instance(*uids, media_types=(("application/dicom", "*"),))
    assert as_stored.SOPInstanceUID == ds.SOPInstanceUID

    with pytest.raises(HTTPError) as refused:
        web.retrieve_instance(*uids, media_types=(("application/dicom", "1.2.840.10008.1.2.1"),))
    assert refused.value.response.status_code == 406
    assert "cannot be decompressed" in refused.value.response.json()["detail"]

    [found] = web.search_for_instances(search_filters={"PatientID": "P-WEB"})
    assert found["00080016"]["Value"] == ["1.2.840.10008.5.1.4.1.1.77.1.4.1"]
