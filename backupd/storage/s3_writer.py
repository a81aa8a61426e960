"""The streamed upload of the ``s3`` destination, and the checksums it sends and records.

A stream smaller than one part becomes a single PutObject at commit. A larger one becomes a
multipart upload: each part is sent as soon as it is full, at most ``upload_concurrency``
parts in flight, the part size growing by the schedule of :mod:`backupd.storage.parts`.
Every part and every single-part object carries its SHA-256 (``ChecksumSHA256``), which the
store checks on arrival.

For a multipart object the store keeps a checksum of the part checksums, which cannot be
compared with the whole-object SHA-256; the writer computes both from the same bytes,
hands the pair to the adapter (for verification in this process) and stores it as object
tags ``backupd-sha256`` and ``backupd-parts-sha256`` (for later checks).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from backupd.errors import StorageError
from backupd.storage.base import ObjectInfo
from backupd.storage.parts import part_size_for

if TYPE_CHECKING:
    from backupd.storage.s3 import S3Storage

# The adapter's logger: an administrator filters on one name per destination type.
log = logging.getLogger("backupd.storage.s3")

TAG_SHA256 = "backupd-sha256"
TAG_PARTS = "backupd-parts-sha256"
META_DESTINATION = "backupd-destination"


def b64(digest: bytes) -> str:
    """Given a raw digest, return it base64-encoded, as S3's checksum headers carry it."""
    return base64.b64encode(digest).decode("ascii")


def composite_checksum(part_digests: list[bytes]) -> str:
    """Given the raw SHA-256 digests of the parts in order, return S3's composite checksum
    of a multipart object: ``base64(sha256(d1 ‖ d2 ‖ …))-N``."""
    return f"{b64(hashlib.sha256(b''.join(part_digests)).digest())}-{len(part_digests)}"


class S3Writer:
    """One streamed upload. Not thread-safe: one thread writes, then commits or aborts."""

    def __init__(self, storage: S3Storage, key: str, full: str) -> None:
        """Given the adapter, the object key and the key under the prefix, prepare an upload
        that sends nothing until the first part is full (or the commit)."""
        self.key = key
        self._s = storage
        self._full = full
        self._buf = bytearray()
        self._parts: dict[int, dict[str, Any]] = {}
        self._digests: dict[int, bytes] = {}
        self._submitted = 0
        self._upload_id: str | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future[None]] = []
        self._slots = threading.Semaphore(storage.cfg.upload_concurrency)
        self._failure: BaseException | None = None
        self._hash = hashlib.sha256()
        self._size = 0
        self._state = "open"
        self._next_size = storage.cfg.part_size

    @property
    def upload_id(self) -> str | None:
        """The multipart upload's id once the first part has been sent, else None."""
        return self._upload_id

    def _extra(self) -> dict[str, Any]:
        extra: dict[str, Any] = {"Metadata": {META_DESTINATION: self._s.name}}
        if self._s.cfg.storage_class:
            extra["StorageClass"] = self._s.cfg.storage_class
        return extra

    def _check(self) -> None:
        if self._state != "open":
            raise StorageError(destination=self._s.name, reason=f"writer for {self.key} is {self._state}")
        if self._failure is not None:
            raise self._s.fail(f"upload {self._full}", self._failure) from self._failure

    def write(self, data: bytes) -> None:
        """Given bytes, append them, sending each part as it fills (blocking while
        ``upload_concurrency`` parts are in flight); raise StorageError if a part failed or
        the stream outgrows the part schedule."""
        self._check()
        self._hash.update(data)
        self._size += len(data)
        view = memoryview(data)
        while view:
            room = self._next_size - len(self._buf)
            self._buf += view[:room]
            view = view[room:]
            if len(self._buf) >= self._next_size:
                self._send_part()

    def _send_part(self) -> None:
        s = self._s
        if self._submitted >= s.cfg.max_parts:
            raise StorageError(
                destination=s.name,
                reason=f"{self.key} is larger than the part schedule allows ({s.max_size} bytes)",
            )
        if self._upload_id is None:
            try:
                up = s.client.create_multipart_upload(
                    Bucket=s.bucket, Key=self._full, ChecksumAlgorithm="SHA256", **self._extra()
                )
            except (BotoCoreError, ClientError) as exc:
                raise s.fail(f"start upload of {self._full}", exc) from exc
            self._upload_id = up["UploadId"]
            s.open_uploads.add(up["UploadId"])
            self._pool = ThreadPoolExecutor(s.cfg.upload_concurrency, thread_name_prefix=f"s3-{s.name}")
        self._slots.acquire()  # back-pressure: at most upload_concurrency parts in flight
        if self._failure is not None:
            self._slots.release()
            self._check()
        self._submitted += 1
        number, body, self._buf = self._submitted, self._buf, bytearray()
        if self._submitted < s.cfg.max_parts:
            self._next_size = part_size_for(
                self._submitted + 1, s.cfg.part_size, s.cfg.max_parts, s.grow_every
            )
        assert self._pool is not None
        future = self._pool.submit(self._upload_part, number, body)
        self._futures = [f for f in self._futures if not f.done()]
        self._futures.append(future)
        future.add_done_callback(self._part_done)

    def _upload_part(self, number: int, body: bytearray) -> None:
        digest = hashlib.sha256(body).digest()
        s = self._s
        resp = s.client.upload_part(
            Bucket=s.bucket, Key=self._full, UploadId=self._upload_id, PartNumber=number,
            Body=body, ChecksumSHA256=b64(digest),
        )  # fmt: skip
        self._digests[number] = digest
        self._parts[number] = {"PartNumber": number, "ETag": resp["ETag"], "ChecksumSHA256": b64(digest)}

    def _part_done(self, future: Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None and self._failure is None:
            self._failure = future.exception()
        self._slots.release()

    def _drain(self, cancel: bool = False) -> None:
        if cancel:
            for future in self._futures:
                future.cancel()
        wait(self._futures)
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    def commit(self) -> ObjectInfo:
        """Send what is buffered and complete the upload (or PutObject a small stream), so the
        object appears whole; return its info; on failure abort and raise StorageError."""
        s = self._s
        sha_hex = self._hash.hexdigest()
        try:
            self._check()
            if self._upload_id is None:
                digest = hashlib.sha256(self._buf).digest()
                s.client.put_object(
                    Bucket=s.bucket,
                    Key=self._full,
                    Body=self._buf,
                    ChecksumSHA256=b64(digest),
                    **self._extra(),
                )
                s.remember(self._full, sha_hex, b64(digest))
            else:
                if self._buf:
                    self._send_part()
                self._drain()
                self._check()
                if sorted(self._parts) != list(range(1, self._submitted + 1)):
                    raise StorageError(
                        destination=s.name, reason=f"{self.key}: parts missing before completion"
                    )
                parts = [self._parts[n] for n in sorted(self._parts)]
                s.client.complete_multipart_upload(
                    Bucket=s.bucket,
                    Key=self._full,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": parts},
                )
                s.open_uploads.discard(self._upload_id)
                composite = composite_checksum([self._digests[n] for n in sorted(self._digests)])
                s.remember(self._full, sha_hex, composite)
                self._tag(sha_hex, composite)
        except Exception as exc:
            self.abort()
            raise s.fail(f"upload {self._full}", exc) from exc
        except BaseException:
            self.abort()
            raise
        self._state = "committed"
        self._buf = bytearray()
        return ObjectInfo(key=self.key, size=self._size, modified=datetime.now(UTC))

    def _tag(self, sha_hex: str, composite: str) -> None:
        s = self._s
        tags = [{"Key": TAG_SHA256, "Value": sha_hex}, {"Key": TAG_PARTS, "Value": composite}]
        try:
            s.client.put_object_tagging(Bucket=s.bucket, Key=self._full, Tagging={"TagSet": tags})
        except (BotoCoreError, ClientError) as exc:
            # Only later checksum verification needs the tags; it reads back without them.
            log.warning("%s: cannot tag %s (%s); later checks will read it back", s.name, self._full, exc)

    def abort(self) -> None:
        """Stop sending parts and abort the multipart upload; idempotent. If the store cannot
        be reached the upload stays open (logged) for ``abort_stale_uploads`` to remove."""
        if self._state in ("aborted", "committed"):
            return
        self._state = "aborting"
        self._buf = bytearray()
        self._drain(cancel=True)
        if self._upload_id is not None:
            s = self._s
            try:
                s.client.abort_multipart_upload(Bucket=s.bucket, Key=self._full, UploadId=self._upload_id)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("NoSuchUpload", "404"):
                    log.warning("%s: %s", s.name, s.fail(f"abort upload of {self._full}", exc))
                    return
            except BotoCoreError as exc:
                log.warning("%s: %s", s.name, s.fail(f"abort upload of {self._full}", exc))
                return
            s.open_uploads.discard(self._upload_id)
        self._state = "aborted"
