"""The S3 blob store over the real S3 protocol (moto's server on loopback, via boto3 and HTTP):
the `BlobStore` contract on every implementation, S3's own cases, and an archive and a node
that keep their blobs in S3."""

from __future__ import annotations

import base64
import hashlib
import io
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from email import message_from_bytes
from pathlib import Path
from typing import Any

import pydicom
import pytest

pytest.importorskip("moto", reason="moto[server] is a dev dependency")

from cloud.archive import Archive
from cloud.blob_replicas import ReplicaState, ReplicatedBlobStore
from cloud.blob_s3 import S3BlobStore, S3Location
from cloud.blobstore import BlobDamagedError, BlobStore, LocalBlobStore, open_blob_store
from cloud.database import create_index_engine, migrate, sqlite_url
from cloud.errors import BackendUnavailableError, InstanceNotFoundError
from cloud.ingest import blob_key_for
from collectors.multipart import stream_parts
from tests.support.ports import free_port
from tests.support.s3 import S3Server, s3_server
from tests.support.servers import client, running_node

pytestmark = pytest.mark.needs_s3

DICOM_ALL = 'multipart/related; type="application/dicom"; transfer-syntax=*'
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture
def bucket(s3: S3Server) -> str:
    return s3.new_bucket()


@pytest.fixture
def store(s3: S3Server, bucket: str) -> S3BlobStore:
    return S3BlobStore.from_url(s3.url(bucket))


def addressed(data: bytes) -> str:
    return blob_key_for(hashlib.sha256(data).hexdigest())


def down_url() -> str:
    """An S3 URL whose endpoint nothing listens on."""
    return f"s3://bucket-x/p?endpoint_url=http://127.0.0.1:{free_port()}&region=us-east-1"


# -- the contract, on every implementation -------------------------------------------------


@pytest.fixture(params=["local", "s3", "local+local", "s3+local"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path, s3: S3Server) -> BlobStore:
    urls = {
        "local": [f"file://{tmp_path / 'a'}"],
        "s3": [s3.url(s3.new_bucket())],
        "local+local": [f"file://{tmp_path / 'a'}", f"file://{tmp_path / 'b'}"],
        "s3+local": [s3.url(s3.new_bucket()), f"file://{tmp_path / 'a'}"],
    }[request.param]
    return open_blob_store(urls[0], replicas=urls[1:])


@pytest.mark.parametrize("size", [0, 1, 3 * MiB + 7])
def test_contract_round_trip_is_byte_exact(any_store: BlobStore, size: int) -> None:
    data = os.urandom(size)
    key = addressed(data)
    assert not any_store.exists(key)
    any_store.put(key, data)
    any_store.put(key, data)  # content-addressed: storing twice is harmless
    assert any_store.get(key) == data
    assert any_store.exists(key)
    assert list(any_store.keys()) == [key]
    any_store.delete(key)
    any_store.delete(key)  # idempotent
    assert not any_store.exists(key)
    assert list(any_store.keys()) == []


def test_contract_missing_blob_is_not_found(any_store: BlobStore) -> None:
    with pytest.raises(InstanceNotFoundError, match="missing"):
        any_store.get(addressed(b"never stored"))


@pytest.mark.parametrize("key", ["../escape", "a//b", "/abs", "", ".hidden"])
def test_contract_malformed_keys_are_refused(any_store: BlobStore, key: str) -> None:
    with pytest.raises(ValueError):
        any_store.put(key, b"x")


# -- S3 ------------------------------------------------------------------------------------


def test_multipart_above_the_threshold(s3: S3Server, bucket: str) -> None:
    store = S3BlobStore.from_url(s3.url(bucket), multipart_threshold=6 * MiB, part_size=5 * MiB)
    data = os.urandom(12 * MiB + 3)
    store.put("objects/big", data)
    assert store.get("objects/big") == data
    etag = s3.client().head_object(Bucket=bucket, Key="blobs/objects/big")["ETag"]
    assert etag.strip('"').endswith("-3")  # three parts


def test_100_mb_object_round_trips_in_parts(store: S3BlobStore, s3: S3Server, bucket: str):
    data = os.urandom(100 * 1000 * 1000)
    key = addressed(data)
    store.put(key, data)
    assert store.get(key) == data
    etag = s3.client().head_object(Bucket=bucket, Key=f"blobs/{key}")["ETag"]
    assert etag.strip('"').endswith("-6")  # 16 MiB parts above the 64 MiB threshold


def test_uploads_carry_a_checksum_the_server_checks(s3: S3Server, bucket: str) -> None:
    sent: list[dict[str, Any]] = []
    for checksum in ("sha256", "md5"):
        store = S3BlobStore.from_url(f"{s3.url(bucket)}&checksum={checksum}")
        store.client.meta.events.register(
            "before-send.s3.PutObject", lambda request, **_: sent.append(dict(request.headers))
        )
        store.put("objects/x", b"payload")
        assert store.get("objects/x") == b"payload"
    sha256 = base64.b64encode(hashlib.sha256(b"payload").digest())
    md5 = base64.b64encode(hashlib.md5(b"payload").digest())
    assert sent[0]["x-amz-checksum-sha256"] == sha256
    assert sent[1]["Content-MD5"] == md5
    assert not any("crc32" in name.lower() for headers in sent for name in headers)


def test_an_object_that_differs_from_its_stored_checksum_is_damaged(
    store: S3BlobStore, s3: S3Server, bucket: str
) -> None:
    wrong = base64.b64encode(hashlib.sha256(b"what was meant").digest()).decode()
    s3.client().put_object(
        Bucket=bucket,
        Key="blobs/objects/x",
        Body=b"what arrived",
        ChecksumAlgorithm="SHA256",
        ChecksumSHA256=wrong,
    )
    with pytest.raises(BlobDamagedError, match="objects/x"):
        store.get("objects/x")


def test_keys_are_listed_across_pages_and_only_below_the_prefix(
    store: S3BlobStore, s3: S3Server, bucket: str
) -> None:
    keys = [f"objects/{i:02x}/k{i}" for i in range(1001)]
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: store.put(key, key.encode()), keys))
    s3.client().put_object(Bucket=bucket, Key="elsewhere/objects/other", Body=b"x")
    s3.client().put_object(Bucket=bucket, Key="blobs/folder/", Body=b"")  # a console "folder"
    pages: list[object] = []
    store.client.meta.events.register("before-call.s3.ListObjectsV2", lambda **_: pages.append(1))
    assert sorted(store.keys()) == sorted(keys)
    assert len(pages) == 2  # S3 answers at most 1,000 keys a page


def test_missing_key(store: S3BlobStore) -> None:
    with pytest.raises(InstanceNotFoundError, match="objects/nope is missing"):
        store.get("objects/nope")
    assert not store.exists("objects/nope")
    store.delete("objects/nope")


def test_endpoint_down_is_backend_unavailable_and_names_the_store() -> None:
    url = down_url()
    store = S3BlobStore.from_url(url, max_attempts=1, connect_timeout=1)
    endpoint = S3Location.parse(url).endpoint_url
    assert endpoint is not None
    for operation in (
        lambda: store.put("objects/k", b"x"),
        lambda: store.get("objects/k"),
        lambda: store.exists("objects/k"),
        lambda: store.delete("objects/k"),
        lambda: list(store.keys()),
    ):
        with pytest.raises(BackendUnavailableError) as caught:
            operation()
        assert endpoint in caught.value.detail
        assert "testing" not in caught.value.detail  # the secret key never shows


def test_missing_bucket_is_a_clear_error(s3: S3Server) -> None:
    store = S3BlobStore.from_url(s3.url("no-such-bucket"))
    for operation in (
        lambda: store.put("objects/k", b"x"),
        lambda: store.get("objects/k"),
        lambda: store.exists("objects/k"),
        lambda: store.delete("objects/k"),
        lambda: list(store.keys()),
    ):
        with pytest.raises(BackendUnavailableError, match="bucket 'no-such-bucket' does not exist"):
            operation()


def test_no_credentials_is_a_clear_error(s3: S3Server, bucket: str, monkeypatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    store = S3BlobStore.from_url(s3.url(bucket))
    with pytest.raises(BackendUnavailableError, match="no usable AWS credentials"):
        store.get("objects/k")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("s3://key:secret@bucket/p", "credentials do not belong"),
        ("s3://bucket/p?endpoint_url=http://k:s@127.0.0.1:9000", "credentials do not belong"),
        ("s3://bucket/p?endpont_url=http://127.0.0.1:9000", "unknown S3 option"),
        ("s3://bucket/p?checksum=crc32", "checksum must be"),
        ("s3:///p", "names a bucket"),
        ("s3://bucket/../p", "invalid blob key"),
        ("s3://bucket/p?endpoint_url=ftp://host", "http"),
    ],
)
def test_bad_urls_are_refused(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        open_blob_store(url)


def test_url_options_are_read() -> None:
    location = S3Location.parse(
        "s3://archive/hot/v1?endpoint_url=https://s3.example:9000&region=eu-west-1"
        "&addressing_style=path&checksum=md5&profile=ops"
    )
    assert (location.bucket, location.prefix, location.region) == ("archive", "hot/v1", "eu-west-1")
    assert (location.addressing_style, location.checksum, location.profile) == (
        "path",
        "md5",
        "ops",
    )
    assert location.display == "s3://archive/hot/v1?endpoint_url=https://s3.example:9000"


# -- replicas across local and S3 ----------------------------------------------------------


def test_damaged_s3_copy_is_served_from_the_local_replica_and_repaired(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    store = open_blob_store(s3.url(bucket), replicas=[f"file://{tmp_path}"])
    assert isinstance(store, ReplicatedBlobStore)
    data = b"\0" * 128 + b"DICM" + os.urandom(1000)  # Part-10 shaped, so it can be verified
    key = addressed(data)
    store.put(key, data)
    assert LocalBlobStore(tmp_path).get(key) == data
    s3.client().put_object(Bucket=bucket, Key=f"blobs/{key}", Body=data[:-1] + b"!")  # rot
    assert store.get(key) == data
    s3_name = store.names[0]
    assert store.inspect(key)[s3_name] is ReplicaState.DAMAGED
    assert store.repair(key) == [s3_name]
    assert s3.client().get_object(Bucket=bucket, Key=f"blobs/{key}")["Body"].read() == data


def test_put_fails_cleanly_when_the_s3_replica_is_down(tmp_path: Path) -> None:
    local = LocalBlobStore(tmp_path)
    store = ReplicatedBlobStore([local, S3BlobStore.from_url(down_url(), max_attempts=1)])
    with pytest.raises(BackendUnavailableError, match="not stored"):
        store.put("objects/k", b"x")
    assert list(local.keys()) == []


# -- an archive and a node on S3 -----------------------------------------------------------


def test_archive_on_s3_stores_and_reads_back_byte_exact(
    s3: S3Server, bucket: str, tmp_path: Path, ct_files: list[bytes]
) -> None:
    archive = Archive.open(tmp_path / "data", "", s3.url(bucket))
    try:
        outcomes = [archive.store(data, source="test") for data in ct_files]
        assert not any(outcome.already_stored for outcome in outcomes)
        located = archive.locate(outcomes[0].study_instance_uid)
        assert sorted(archive.read(stored) for stored in located) == sorted(ct_files)
        listed = s3.client().list_objects_v2(Bucket=bucket, Prefix="blobs/")["Contents"]
        assert sorted(item["Key"] for item in listed) == sorted(
            f"blobs/{stored.blob_key}" for stored in located
        )
        assert not (tmp_path / "data" / "blobs").exists()  # nothing went to the local disk
    finally:
        archive.close()


def test_archive_on_local_and_s3_replicas(
    s3: S3Server, bucket: str, tmp_path: Path, ct_files: list[bytes]
) -> None:
    engine = create_index_engine(sqlite_url(tmp_path))
    migrate(engine)
    blobs = open_blob_store(f"file://{tmp_path / 'blobs'}", replicas=[s3.url(bucket)])
    archive = Archive(engine, blobs)
    try:
        outcome = archive.store(ct_files[0], source="test")
        stored = archive.locate(outcome.study_instance_uid)[0]
        assert LocalBlobStore(tmp_path / "blobs").get(stored.blob_key) == ct_files[0]
        assert S3BlobStore.from_url(s3.url(bucket)).get(stored.blob_key) == ct_files[0]
        (tmp_path / "blobs" / stored.blob_key).unlink()
        assert archive.read(stored) == ct_files[0]
    finally:
        archive.close()


def test_node_serves_wado_rs_from_s3(
    s3: S3Server, bucket: str, tmp_path: Path, ct_files: list[bytes]
) -> None:
    with running_node(tmp_path / "node", blob_url=s3.url(bucket)) as node, client(node) as http:
        body = b"".join(stream_parts((("application/dicom", f) for f in ct_files), "xyz"))
        stored = http.post(
            "/dicom-web/studies",
            content=body,
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=xyz'},
        )
        assert stored.status_code == 200, stored.text
        study_uid = pydicom.dcmread(io.BytesIO(ct_files[0])).StudyInstanceUID
        retrieved = http.get(f"/dicom-web/studies/{study_uid}", headers={"Accept": DICOM_ALL})
        assert retrieved.status_code == 200
        head = f"Content-Type: {retrieved.headers['content-type']}\r\n\r\n".encode()
        parts = message_from_bytes(head + retrieved.content).get_payload()
        assert sorted(part.get_payload(decode=True) for part in parts) == sorted(ct_files)
        assert len(list(S3BlobStore.from_url(s3.url(bucket)).keys())) == len(ct_files)
