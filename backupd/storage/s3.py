"""The ``s3`` destination: AWS S3 and S3-compatible stores (SeaweedFS, MinIO, Ceph RGW …).

Writes stream through a multipart upload (:mod:`backupd.storage.s3_writer`) with a growing
part size (:mod:`backupd.storage.parts`), at most ``upload_concurrency`` parts in flight, so
memory stays below ``part_size x (upload_concurrency + 1)`` for the part sizes in use. A
stream smaller than one part becomes a single PutObject. Every part and every single-part
object carries a SHA-256 checksum (``ChecksumSHA256``) that the store checks on arrival.

Verification (``verify`` in the config), see docs/DESTINATIONS.md:

* ``size``: HEAD, compare the length.
* ``checksum``: HEAD with checksums. A single-part object's checksum is the SHA-256 of the whole
  object and is compared directly. A multipart object's is a checksum of the part checksums
  (``base64(sha256(d1‖d2‖…))-N``); the writer computed that composite and the whole-object
  SHA-256 from the same bytes, kept both in memory and stored them as object tags
  (``backupd-sha256``, ``backupd-parts-sha256``), so a later check compares the store's
  composite with the recorded one. Without a stored checksum or record, it reads back.
* ``readback``: read the object in full and hash it.

Uploads are marked with the metadata ``backupd-destination``; ``abort_stale_uploads`` treats
every unfinished upload under the prefix as backupd's own (the prefix belongs to backupd).
"""

from __future__ import annotations

import binascii
import hashlib
import io
import logging
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from backupd.adapters import AdapterContext
from backupd.config.model import S3Destination
from backupd.config.secrets import read_secret
from backupd.errors import SecretError, StorageError, VerifyFailed
from backupd.storage.base import READ_SIZE, ObjectInfo, check_key, readback_verify
from backupd.storage.parts import default_grow_every, max_object_size
from backupd.storage.s3_writer import TAG_PARTS, TAG_SHA256, S3Writer, b64

log = logging.getLogger(__name__)

PROBE_NAME = ".backupd-probe-"
_CREDENTIAL_NAMES = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
_RECENT = 256  # commits remembered for checksum verification in this process
_HINTS = {
    "403": "access denied: check the credentials and the bucket policy",
    "AccessDenied": "access denied: check the credentials and the bucket policy",
    "InvalidAccessKeyId": "the access key id is not known to the store",
    "SignatureDoesNotMatch": "the secret access key is wrong",
    "404": "not found",
    "NoSuchBucket": "the bucket does not exist",
}


def parse_credential(text: str) -> dict[str, str]:
    """Given the text of a systemd credential holding S3 keys as ``NAME=VALUE`` lines
    (``aws_access_key_id``, ``aws_secret_access_key``, optional ``aws_session_token``; names
    case-insensitive; blank lines and ``#`` comments ignored), return them as boto3 keyword
    arguments; raise SecretError naming the line (never its value) if it is malformed."""
    found: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip().lower()
        if not sep or name not in _CREDENTIAL_NAMES or not value.strip():
            raise SecretError(
                name="s3 credential", reason=f"line {number} is not NAME=VALUE with a known NAME"
            )
        found[name] = value.strip()
    missing = [n for n in _CREDENTIAL_NAMES[:2] if n not in found]
    if missing:
        raise SecretError(name="s3 credential", reason=f"missing {', '.join(missing)}")
    return found


class S3Storage:
    """A destination in one bucket under one key prefix; the client is built on first use."""

    kind = "s3"

    def __init__(
        self, name: str, cfg: S3Destination, ctx: AdapterContext, *, part_growth_every: int | None = None
    ) -> None:
        """Given the destination's name, config and context (and, for tests, a doubling
        interval for the part size), prepare the adapter without connecting."""
        self.name = name
        self.cfg = cfg
        self.ctx = ctx
        self.bucket = cfg.bucket
        prefix = cfg.prefix.lstrip("/")
        self.prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
        try:
            self.grow_every = part_growth_every or default_grow_every(cfg.part_size, cfg.max_parts)
            self.max_size = max_object_size(cfg.part_size, cfg.max_parts, self.grow_every)
        except ValueError as exc:
            raise StorageError(destination=name, reason=str(exc)) from None
        self._client: Any = None
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, tuple[str, str]] = OrderedDict()  # full key -> (sha256 hex, checksum)
        # Ids of this adapter's unfinished multipart uploads: never stale, whatever their age.
        self.open_uploads: set[str] = set()

    # --- plumbing -------------------------------------------------------------------------
    def fail(self, what: str, exc: BaseException) -> StorageError:
        """Given what was being done and the exception, return a StorageError that names this
        destination and a reason a person can act on (never a secret)."""
        if isinstance(exc, StorageError):
            return exc
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", "?"))
            hint = _HINTS.get(code, err.get("Message", ""))
            reason = f"{what}: {code} {hint}".rstrip()
        elif isinstance(exc, ReadTimeoutError | ConnectTimeoutError):
            reason = f"{what}: no answer within {self.cfg.timeout:g}s ({type(exc).__name__})"
        elif isinstance(exc, EndpointConnectionError):
            reason = f"{what}: cannot connect to {exc.kwargs.get('endpoint_url', 'the endpoint')}"
        elif isinstance(exc, NoCredentialsError):
            reason = (
                "no credentials: set access_key_id_file and secret_access_key_file, a credential, or AWS_*"
            )
        elif isinstance(exc, SecretError):
            reason = str(exc)
        else:
            reason = f"{what}: {type(exc).__name__}: {exc}"
        return StorageError(destination=self.name, reason=reason)

    def _credentials(self) -> dict[str, str]:
        cfg = self.cfg
        files = (cfg.access_key_id_file, cfg.secret_access_key_file)
        if cfg.credential and any(files):
            raise SecretError(name=self.name, reason="give key files or a credential, not both")
        if cfg.credential:
            text = read_secret(None, cfg.credential, f"destination {self.name} credential")
            return parse_credential(text or "")
        if any(files):
            if not all(files):
                raise SecretError(name=self.name, reason="access_key_id_file needs secret_access_key_file")
            key_id = read_secret(cfg.access_key_id_file, None, f"destination {self.name} access key id")
            secret = read_secret(cfg.secret_access_key_file, None, f"destination {self.name} secret key")
            return {
                "aws_access_key_id": (key_id or "").strip(),
                "aws_secret_access_key": (secret or "").strip(),
            }
        return {}  # the standard AWS chain: environment, shared files, instance roles

    @property
    def client(self) -> Any:
        """Return the boto3 S3 client, building it (and reading the secrets) on first use;
        raise StorageError if the secrets cannot be read."""
        with self._lock:
            if self._client is None:
                try:
                    session = boto3.session.Session(**self._credentials())
                except SecretError as exc:
                    raise self.fail("credentials", exc) from exc
                config = Config(
                    region_name=self.cfg.region,
                    connect_timeout=self.cfg.timeout,
                    read_timeout=self.cfg.timeout,
                    # botocore's "max_attempts" counts retries only; the config counts the first try too.
                    retries={"mode": "standard", "total_max_attempts": self.cfg.max_attempts},
                    s3={"addressing_style": "path" if self.cfg.path_style else "auto"},
                    max_pool_connections=max(10, self.cfg.upload_concurrency + 4),
                    # We send SHA-256 ourselves; botocore's default CRC32 trailers break some stores.
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                    user_agent_extra="backupd",
                )
                self._client = session.client("s3", endpoint_url=self.cfg.endpoint_url, config=config)
            return self._client

    def full_key(self, key: str) -> str:
        """Given an object key, return it under the prefix; raise KeyEscapesRoot if unsafe."""
        return self.prefix + check_key(key)

    def remember(self, full: str, sha256_hex: str, checksum: str) -> None:
        """Given a committed object's full key, its SHA-256 (hex) and the store's checksum of
        it, keep the pair for ``verify`` in this process (the most recent commits only)."""
        with self._lock:
            self._recent[full] = (sha256_hex, checksum)
            self._recent.move_to_end(full)
            while len(self._recent) > _RECENT:
                self._recent.popitem(last=False)

    # --- the port -------------------------------------------------------------------------
    def test(self) -> None:
        """Check the bucket answers and a probe object can be written and deleted, leaving
        nothing behind; raise StorageError with the reason otherwise."""
        probe = f"{self.prefix}{PROBE_NAME}{secrets.token_hex(8)}"
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            # a HEAD answer has no body, so the store's own message is lost: say it here
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket"):
                raise StorageError(
                    destination=self.name, reason=f"bucket {self.bucket!r} does not exist"
                ) from exc
            raise self.fail(f"test of s3://{self.bucket}/{self.prefix}", exc) from exc
        except BotoCoreError as exc:
            raise self.fail(f"test of s3://{self.bucket}/{self.prefix}", exc) from exc
        try:
            body = b"backupd probe\n"
            self.client.put_object(
                Bucket=self.bucket, Key=probe, Body=body, ChecksumSHA256=b64(hashlib.sha256(body).digest())
            )
            self.client.delete_object(Bucket=self.bucket, Key=probe)
        except (BotoCoreError, ClientError) as exc:
            raise self.fail(f"test of s3://{self.bucket}/{self.prefix}", exc) from exc

    def open_writer(self, key: str) -> S3Writer:
        """Given a key, return a writer whose bytes appear under it only on commit."""
        return S3Writer(self, key, self.full_key(key))

    def open_reader(self, key: str) -> BinaryIO:
        """Given a key, return a buffered stream of its bytes; raise StorageError if missing."""
        full = self.full_key(key)
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=full)["Body"]
        except (BotoCoreError, ClientError) as exc:
            raise self.fail(f"read {full}", exc) from exc
        return io.BufferedReader(_Body(self, full, body), buffer_size=READ_SIZE)  # type: ignore[return-value]

    def _head(self, full: str, checksums: bool = False) -> dict[str, Any] | None:
        try:
            extra = {"ChecksumMode": "ENABLED"} if checksums else {}
            head: dict[str, Any] = self.client.head_object(Bucket=self.bucket, Key=full, **extra)
            return head
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise self.fail(f"stat {full}", exc) from exc
        except BotoCoreError as exc:
            raise self.fail(f"stat {full}", exc) from exc

    def stat(self, key: str) -> ObjectInfo | None:
        """Given a key, return its size and time, or None if there is no such object."""
        head = self._head(self.full_key(key))
        if head is None:
            return None
        return ObjectInfo(key=key, size=int(head["ContentLength"]), modified=head.get("LastModified"))

    def list(self, prefix: str = "", include_temp: bool = False) -> Iterator[ObjectInfo]:
        """Given a key prefix, yield the committed objects under it (folder markers ending in
        ``/`` skipped). There are no temp objects: unfinished uploads are invisible in S3, so
        ``include_temp`` (accepted as for the other destinations) changes nothing."""
        if prefix.startswith("/") or ".." in prefix.split("/"):
            raise self.fail("list", ValueError(f"bad prefix {prefix!r}"))
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        try:
            for page in pages:
                for item in page.get("Contents", []):
                    if not item["Key"].endswith("/"):
                        key = item["Key"][len(self.prefix) :]
                        yield ObjectInfo(key=key, size=int(item["Size"]), modified=item.get("LastModified"))
        except (BotoCoreError, ClientError) as exc:
            raise self.fail(f"list {self.prefix}{prefix}", exc) from exc

    def delete(self, key: str) -> None:
        """Given a key, delete the object; a missing object is not an error."""
        full = self.full_key(key)
        try:
            self.client.delete_object(Bucket=self.bucket, Key=full)
        except (BotoCoreError, ClientError) as exc:
            raise self.fail(f"delete {full}", exc) from exc
        with self._lock:
            self._recent.pop(full, None)

    def verify(self, key: str, size: int, sha256: str) -> None:
        """Given a key and the expected size and SHA-256 (hex), check the stored object per
        ``cfg.verify``; raise VerifyFailed on a mismatch, StorageError if it cannot check."""
        full = self.full_key(key)
        if self.cfg.verify == "readback":
            return readback_verify(self, key, size, sha256)
        head = self._head(full, checksums=self.cfg.verify == "checksum")
        if head is None:
            raise VerifyFailed(key=key, reason="object is missing", destination=self.name)
        if int(head["ContentLength"]) != size:
            reason = f"size {head['ContentLength']}, expected {size}"
            raise VerifyFailed(key=key, reason=reason, destination=self.name)
        if self.cfg.verify == "size":
            return None
        stored = head.get("ChecksumSHA256")
        expected = self._expected_checksum(key, full, sha256, stored)
        if expected is None:
            log.info("%s: no usable store checksum for %s, reading it back", self.name, full)
            return readback_verify(self, key, size, sha256)
        if stored != expected:
            reason = f"store checksum {stored}, expected {expected}"
            raise VerifyFailed(key=key, reason=reason, destination=self.name)
        return None

    def _expected_checksum(self, key: str, full: str, sha256: str, stored: str | None) -> str | None:
        if not stored:
            return None
        if "-" not in stored:
            try:
                return b64(binascii.unhexlify(sha256))
            except binascii.Error:
                raise VerifyFailed(key=key, reason=f"expected sha256 {sha256!r} is not hex") from None
        with self._lock:
            record = self._recent.get(full)
        if record is None:
            try:
                tags = self.client.get_object_tagging(Bucket=self.bucket, Key=full)["TagSet"]
            except (BotoCoreError, ClientError):
                return None  # tagging unsupported or denied: fall back to reading back
            found = {t["Key"]: t["Value"] for t in tags}
            if TAG_SHA256 not in found or TAG_PARTS not in found:
                return None
            record = (found[TAG_SHA256], found[TAG_PARTS])
        if record[0] != sha256:
            raise VerifyFailed(key=key, reason=f"uploaded bytes had sha256 {record[0]}, expected {sha256}")
        return record[1]

    def describe(self) -> str:
        """Return ``s3://bucket/prefix (endpoint)`` without credentials."""
        where = self.cfg.endpoint_url or f"AWS {self.cfg.region}"
        if "@" in where:  # never echo user:password@ from an endpoint URL
            scheme, _, rest = where.partition("://")
            where = f"{scheme}://{rest.rpartition('@')[2]}"
        return f"s3://{self.bucket}/{self.prefix} ({where})"

    def close(self) -> None:
        """Release the client's connections."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    # --- beyond the port ------------------------------------------------------------------
    def abort_stale_uploads(
        self, older_than: timedelta = timedelta(0), match: Callable[[str], bool] | None = None
    ) -> int:
        """Given an age and optionally a predicate on keys (relative to the prefix), abort the
        unfinished multipart uploads under the prefix started longer ago than that, except
        this adapter's own open writers; return how many were aborted; raise StorageError if
        they cannot be listed or aborted."""
        cutoff = datetime.now(UTC) - older_than
        aborted = 0
        try:
            pages = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            for page in pages:
                for up in page.get("Uploads", []):
                    started = up.get("Initiated")
                    if started is not None and started.tzinfo is None:
                        started = started.replace(tzinfo=UTC)
                    if up["UploadId"] in self.open_uploads or (started is not None and started > cutoff):
                        continue
                    if match is not None and not match(up["Key"][len(self.prefix) :]):
                        continue
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]
                    )
                    log.info("%s: aborted stale upload of %s started %s", self.name, up["Key"], started)
                    aborted += 1
        except (BotoCoreError, ClientError) as exc:
            raise self.fail("abort stale uploads", exc) from exc
        return aborted


class _Body(io.RawIOBase):
    """A GetObject body that reports transport failures as StorageError."""

    def __init__(self, storage: S3Storage, full: str, body: Any) -> None:
        self._storage, self._full, self._body = storage, full, body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            data = self._body.read(len(buffer))
        except (BotoCoreError, OSError) as exc:
            raise self._storage.fail(f"read {self._full}", exc) from exc
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._body.close()
        super().close()
