"""Online expansion: a volume added through the CLI while a node serves takes the new objects
within the refresh interval, and every object, old and new, is still served over WADO-RS."""

from __future__ import annotations

import io
import json
import time
from email import message_from_bytes
from pathlib import Path

import httpx
import pydicom
import pytest

from cloud.volumes import VolumeSet
from collectors.multipart import stream_parts
from imaging_cloud.volume_cli import main as volume_cli
from tests.support.servers import client, running_node

DICOM_ALL = 'multipart/related; type="application/dicom"; transfer-syntax=*'
REFRESH_SECONDS = 0.3


def stow(http: httpx.Client, files: list[bytes]) -> None:
    body = b"".join(stream_parts((("application/dicom", f) for f in files), "xyz"))
    content_type = 'multipart/related; type="application/dicom"; boundary=xyz'
    response = http.post("/dicom-web/studies", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 200, response.text


def retrieve(http: httpx.Client, study_uid: str) -> list[bytes]:
    response = http.get(f"/dicom-web/studies/{study_uid}", headers={"Accept": DICOM_ALL})
    assert response.status_code == 200, response.text
    head = f"Content-Type: {response.headers['content-type']}\r\n\r\n".encode()
    return [
        p.get_payload(decode=True)
        for p in message_from_bytes(head + response.content).get_payload()
    ]


def test_a_volume_added_while_serving_takes_new_objects(
    tmp_path: Path,
    database_url: str,
    ct_files: list[bytes],
    capsys: pytest.CaptureFixture[str],
) -> None:
    data_dir = tmp_path / "node"
    new_disk = tmp_path / "disk2"
    new_disk.mkdir()  # the operator mounts it and makes the directory
    options = ["--data-dir", str(data_dir), "--database-url", database_url]
    study_uid = pydicom.dcmread(io.BytesIO(ct_files[0])).StudyInstanceUID
    with (
        running_node(data_dir, database_url, volume_refresh_seconds=REFRESH_SECONDS) as node,
        client(node) as http,
    ):
        blobs = node.archive.blobs
        assert isinstance(blobs, VolumeSet), "Archive.open wraps the hot store in a VolumeSet"
        stow(http, ct_files[:2])
        old_keys = {s.blob_key for s in node.archive.locate(study_uid)}
        assert all((data_dir / "blobs" / key).is_file() for key in old_keys)

        # another process (the CLI) adds the volume; the node is not told
        assert volume_cli(["add-volume", f"file://{new_disk}", "--by", "ops", *options]) == 0
        assert "added to the hot tier" in capsys.readouterr().out
        deadline = time.monotonic() + 10
        while blobs.writing_to != f"file://{new_disk}":
            assert time.monotonic() < deadline, "the node never picked the new volume up"
            time.sleep(0.05)

        stow(http, ct_files[2:])
        new_keys = {s.blob_key for s in node.archive.locate(study_uid)} - old_keys
        assert len(new_keys) == len(ct_files) - 2
        assert all((new_disk / key).is_file() for key in new_keys)
        assert not any((data_dir / "blobs" / key).exists() for key in new_keys)
        assert sorted(retrieve(http, study_uid)) == sorted(ct_files)

        assert volume_cli(["volumes", "--json", "--count", *options]) == 0
        listed = {row["url"]: row for row in json.loads(capsys.readouterr().out)}
        added = listed[f"file://{new_disk}"]
        assert (added["writing"], added["objects"], added["added_by"]) == (True, 3, "ops")
        assert added["free_bytes"] > 0

        # retired: writes go back to the older volume, its objects stay readable
        assert volume_cli(["retire-volume", f"file://{new_disk}", *options]) == 0
        deadline = time.monotonic() + 10
        while blobs.writing_to == f"file://{new_disk}":
            assert time.monotonic() < deadline, "the node kept writing to a retired volume"
            time.sleep(0.05)
        assert sorted(retrieve(http, study_uid)) == sorted(ct_files)
