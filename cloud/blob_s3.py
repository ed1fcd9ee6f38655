"""Blobs in an S3 bucket (AWS S3, MinIO, Ceph RGW, moto), behind the `BlobStore` calls.

A store is named by a URL::

    s3://bucket/prefix?endpoint_url=http://127.0.0.1:9000&region=us-east-1

Options in the query: ``endpoint_url`` (any S3-compatible service; default AWS), ``region``,
``profile`` (a named profile of ~/.aws/config), ``addressing_style`` (``path``, ``virtual`` or
``auto``) and ``checksum`` (``sha256``, the default, or ``md5`` for stores that predate the
flexible checksums). Credentials come from the standard AWS chain (environment, profile,
instance or container role), never from the URL, so the URL can be logged and shown.

Every upload carries a checksum the server verifies before it accepts the object (SHA-256, or
Content-MD5), and every read asks for the stored checksum back, so botocore checks what arrived
against what was stored (whole-object checksums; multipart objects carry per-part ones only).
The credentials need ``s3:ListBucket`` too: without it S3 answers "access denied" instead of
"no such key" for a missing blob.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    FlexibleChecksumError,
    NoCredentialsError,
    PartialCredentialsError,
)

from cloud.blobstore import BlobDamagedError, check_key
from cloud.errors import ArchiveError, BackendUnavailableError, InstanceNotFoundError

logger = logging.getLogger(__name__)

MULTIPART_THRESHOLD = 64 * 1024 * 1024  # above this, one object is uploaded in parts
PART_SIZE = 16 * 1024 * 1024
_MIN_PART_SIZE = 5 * 1024 * 1024  # S3's floor for every part but the last
_MAX_PARTS = 10_000
_OPTIONS = frozenset({"endpoint_url", "region", "profile", "addressing_style", "checksum"})
_DENIED = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "403"}
)


@dataclass(frozen=True)
class S3Location:
    """Where an `S3BlobStore` keeps its blobs, as parsed from its URL."""

    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    profile: str | None = None
    addressing_style: str | None = None
    checksum: str = "sha256"

    @classmethod
    def parse(cls, url: str) -> S3Location:
        """Read an ``s3://`` URL; refuse unknown options and credentials in it."""
        parts = urlsplit(url)
        if parts.scheme != "s3":
            raise ValueError(f"not an s3:// URL: {url!r}")
        if "@" in parts.netloc:
            raise ValueError(
                "S3 credentials do not belong in the blob URL: use the AWS environment "
                "(AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), a profile or an instance role"
            )
        if not parts.netloc or ":" in parts.netloc:
            raise ValueError(f"an s3:// URL names a bucket: s3://bucket/prefix, not {url!r}")
        prefix = parts.path.strip("/")
        if prefix:
            check_key(prefix)
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - _OPTIONS)
        if unknown:
            raise ValueError(f"unknown S3 option(s) {unknown} (known: {sorted(_OPTIONS)})")
        options = {name: values[-1] for name, values in query.items()}
        endpoint = options.get("endpoint_url") or None
        if endpoint is not None:
            endpoint_parts = urlsplit(endpoint)
            if endpoint_parts.scheme not in ("http", "https") or not endpoint_parts.hostname:
                raise ValueError(f"endpoint_url must be an http(s) URL, not {endpoint!r}")
            if endpoint_parts.username or endpoint_parts.password:
                raise ValueError("S3 credentials do not belong in endpoint_url")
        checksum = options.get("checksum") or "sha256"
        if checksum not in ("sha256", "md5"):
            raise ValueError(f"checksum must be sha256 or md5, not {checksum!r}")
        style = options.get("addressing_style") or None
        if style not in (None, "auto", "path", "virtual"):
            raise ValueError(f"addressing_style must be auto, path or virtual, not {style!r}")
        return cls(
            bucket=parts.netloc,
            prefix=prefix,
            endpoint_url=endpoint,
            region=options.get("region") or None,
            profile=options.get("profile") or None,
            addressing_style=style,
            checksum=checksum,
        )

    @property
    def display(self) -> str:
        """The URL without anything secret (there never is anything secret in it)."""
        url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        if self.endpoint_url:
            url += f"?endpoint_url={quote(self.endpoint_url, safe=':/')}"
        return url


class S3BlobStore:
    """Blobs as objects ``<prefix>/<key>`` in one bucket; safe to share between threads."""

    def __init__(
        self,
        location: S3Location,
        *,
        multipart_threshold: int = MULTIPART_THRESHOLD,
        part_size: int = PART_SIZE,
        max_attempts: int = 3,
        connect_timeout: float = 5.0,
        read_timeout: float = 60.0,
    ) -> None:
        if part_size < _MIN_PART_SIZE:
            raise ValueError(f"S3 parts are at least {_MIN_PART_SIZE} bytes")
        self.location = location
        self.url = location.display
        self.multipart_threshold = multipart_threshold
        self.part_size = part_size
        self._bucket_seen = False  # once an operation succeeded, a 404 means "no such key"
        try:
            session = boto3.session.Session(profile_name=location.profile)
            config = Config(
                region_name=location.region,
                retries={"mode": "standard", "max_attempts": max_attempts},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                max_pool_connections=32,  # API worker threads read concurrently
                # Only the checksums we send: botocore's automatic CRC32 (and aws-chunked
                # bodies) trip up S3-compatible servers that predate them.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3={"addressing_style": location.addressing_style or "auto"},
            )
            self.client: Any = session.client(
                "s3", endpoint_url=location.endpoint_url, config=config
            )
        except BotoCoreError as exc:
            raise BackendUnavailableError(f"cannot set up S3 client for {self.url}: {exc}") from exc

    @classmethod
    def from_url(cls, url: str, **options: Any) -> S3BlobStore:
        """The store an ``s3://`` URL names (see the module docstring for its options)."""
        return cls(S3Location.parse(url), **options)

    def close(self) -> None:
        self.client.close()

    def _object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.location.prefix}/{key}" if self.location.prefix else key

    def put(self, key: str, data: bytes) -> None:
        object_key = self._object_key(key)
        with self._translate(key):
            if len(data) > self.multipart_threshold:
                self._put_multipart(object_key, data)
            else:
                self.client.put_object(
                    Bucket=self.location.bucket,
                    Key=object_key,
                    Body=data,
                    **self._checksum_arguments(data),
                )
        self._bucket_seen = True

    def _checksum_arguments(self, data: bytes | memoryview) -> dict[str, str]:
        """Headers that make the server refuse bytes that differ from what we sent."""
        if self.location.checksum == "md5":
            return {"ContentMD5": _b64(hashlib.md5(data, usedforsecurity=False).digest())}
        return {
            "ChecksumAlgorithm": "SHA256",
            "ChecksumSHA256": _b64(hashlib.sha256(data).digest()),
        }

    def _put_multipart(self, object_key: str, data: bytes) -> None:
        bucket = self.location.bucket
        extra = {"ChecksumAlgorithm": "SHA256"} if self.location.checksum == "sha256" else {}
        upload = self.client.create_multipart_upload(Bucket=bucket, Key=object_key, **extra)
        upload_id: str = upload["UploadId"]
        part_size = max(self.part_size, math.ceil(len(data) / _MAX_PARTS))
        view = memoryview(data)
        try:
            parts = []
            for number, start in enumerate(range(0, len(data), part_size), start=1):
                chunk = view[start : start + part_size]
                checksum = self._checksum_arguments(chunk)
                answer = self.client.upload_part(
                    Bucket=bucket,
                    Key=object_key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=bytes(chunk),
                    **checksum,
                )
                part = {"PartNumber": number, "ETag": answer["ETag"]}
                if "ChecksumSHA256" in checksum:
                    part["ChecksumSHA256"] = checksum["ChecksumSHA256"]
                parts.append(part)
            self.client.complete_multipart_upload(
                Bucket=bucket,
                Key=object_key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
            )
        except BaseException:
            self._abort(object_key, upload_id)
            raise

    def _abort(self, object_key: str, upload_id: str) -> None:
        """Drop the parts of a failed upload (a lifecycle rule is the backstop if this fails)."""
        try:
            self.client.abort_multipart_upload(
                Bucket=self.location.bucket, Key=object_key, UploadId=upload_id
            )
        except (BotoCoreError, ClientError):
            logger.warning("could not abort multipart upload %s in %s", upload_id, self.url)

    def get(self, key: str) -> bytes:
        object_key = self._object_key(key)
        with self._translate(key):
            answer = self.client.get_object(
                Bucket=self.location.bucket, Key=object_key, ChecksumMode="ENABLED"
            )
            data: bytes = answer["Body"].read()
        self._bucket_seen = True
        return data

    def exists(self, key: str) -> bool:
        object_key = self._object_key(key)
        with self._translate(key):
            try:
                self.client.head_object(Bucket=self.location.bucket, Key=object_key)
            except ClientError as exc:
                if _error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
                    raise
                self._confirm_bucket()
                return False
        self._bucket_seen = True
        return True

    def _confirm_bucket(self) -> None:
        """HEAD answers a bare 404 for a missing bucket too: tell the two apart (once)."""
        if self._bucket_seen:
            return
        with self._translate(None):
            self.client.head_bucket(Bucket=self.location.bucket)
        self._bucket_seen = True

    def delete(self, key: str) -> None:
        object_key = self._object_key(key)
        with self._translate(key):
            # S3 answers 204 for a key that is not there: deleting twice is harmless.
            self.client.delete_object(Bucket=self.location.bucket, Key=object_key)

    def keys(self) -> Iterator[str]:
        start = f"{self.location.prefix}/" if self.location.prefix else ""
        paginator = self.client.get_paginator("list_objects_v2")
        with self._translate(None):
            for page in paginator.paginate(Bucket=self.location.bucket, Prefix=start):
                for item in page.get("Contents", ()):
                    key: str = item["Key"][len(start) :]
                    if key and not key.endswith("/"):  # skip "folder" markers of S3 consoles
                        yield key

    @contextmanager
    def _translate(self, key: str | None) -> Iterator[None]:
        """botocore's exceptions as the archive's: missing, damaged or unavailable."""
        try:
            yield
        except ClientError as exc:
            raise self._client_error(exc, key) from exc
        except FlexibleChecksumError as exc:
            raise BlobDamagedError(
                f"blob {key} in {self.url} does not match the checksum stored with it"
            ) from exc
        except (NoCredentialsError, PartialCredentialsError) as exc:
            raise BackendUnavailableError(
                f"no usable AWS credentials for {self.url}: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, a profile, or an instance role"
            ) from exc
        except BotoCoreError as exc:
            raise BackendUnavailableError(f"S3 blob store {self.url} unreachable: {exc}") from exc

    def _client_error(self, exc: ClientError, key: str | None) -> ArchiveError:
        code = _error_code(exc)
        if code == "NoSuchBucket" or (key is None and code in ("404", "NotFound")):
            return BackendUnavailableError(
                f"S3 bucket {self.location.bucket!r} does not exist ({self.url})"
            )
        if code == "NoSuchKey" and key is not None:
            return InstanceNotFoundError(f"blob {key} is missing from the store")
        if code in _DENIED:
            return BackendUnavailableError(
                f"S3 refused access to {self.url} ({code}): check the credentials and the "
                "bucket policy"
            )
        message = exc.response.get("Error", {}).get("Message", "")
        return BackendUnavailableError(f"S3 blob store {self.url} failed: {code} {message}")


def _error_code(exc: ClientError) -> str:
    code: str = exc.response.get("Error", {}).get("Code", "")
    return code


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")
