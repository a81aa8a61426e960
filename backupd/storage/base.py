"""The storage port: what the pipeline, retention, restore and integrity need from a
destination. One adapter per destination type under ``backupd/storage``.

Contract (DESIGN §5, §6):
- ``open_writer(key)`` returns an :class:`ObjectWriter`. Bytes written are invisible under
  ``key`` until ``commit()``; ``abort()`` leaves nothing behind (temp file deleted, multipart
  upload aborted). ``commit()`` is atomic: the object appears whole or not at all.
- ``verify(key, size, sha256)`` checks the committed bytes (read back, or the store's own
  checksum) and raises VerifyFailed on mismatch.
- ``list(prefix)`` yields committed objects only, never temp names.
- Keys use ``/`` separators and never start with ``/`` or contain ``..``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import BinaryIO, Protocol

from backupd.errors import KeyEscapesRoot, VerifyFailed

READ_SIZE = 1024 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime | None = None


class ObjectWriter(Protocol):
    key: str

    def write(self, data: bytes) -> None:
        """Append ``data``; may block (back-pressure); raise StorageError on failure."""
        ...

    def commit(self) -> ObjectInfo:
        """Make the object visible under its key atomically; return what was stored."""
        ...

    def abort(self) -> None:
        """Discard everything written; idempotent and safe after a failed write."""
        ...


class StorageAdapter(Protocol):
    name: str
    kind: str  # "local" | "s3" | "sftp"

    def test(self) -> None:
        """Check reachability and write permission without leaving anything behind."""
        ...

    def open_writer(self, key: str) -> ObjectWriter: ...

    def open_reader(self, key: str) -> BinaryIO: ...

    def stat(self, key: str) -> ObjectInfo | None: ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def delete(self, key: str) -> None:
        """Delete ``key``; a missing key is not an error."""
        ...

    def verify(self, key: str, size: int, sha256: str) -> None: ...

    def describe(self) -> str:
        """A one-line, secret-free description for logs (``s3://bucket/prefix``)."""
        ...

    def abort_stale_uploads(self, older_than: timedelta = ...) -> int:
        """Remove what writers that died left unfinished (temp files, open multipart
        uploads) older than ``older_than``; return how many."""
        ...

    def close(self) -> None: ...


def check_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key; raise KeyEscapesRoot otherwise."""
    parts = key.split("/")
    if (
        not key
        or key.startswith("/")
        or "\\" in key
        or "\0" in key
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise KeyEscapesRoot(key=key)
    return key


def readback_verify(storage: StorageAdapter, key: str, size: int, sha256: str) -> None:
    """Read ``key`` back in full; raise VerifyFailed unless size and SHA-256 match."""
    h = hashlib.sha256()
    n = 0
    with storage.open_reader(key) as f:
        while chunk := f.read(READ_SIZE):
            h.update(chunk)
            n += len(chunk)
    if n != size:
        raise VerifyFailed(key=key, reason=f"size {n}, expected {size}")
    if h.hexdigest() != sha256:
        raise VerifyFailed(key=key, reason=f"sha256 {h.hexdigest()}, expected {sha256}")


def put_bytes(storage: StorageAdapter, key: str, data: bytes) -> ObjectInfo:
    """Write a small object (a sidecar) atomically through the normal writer."""
    w = storage.open_writer(key)
    try:
        w.write(data)
        return w.commit()
    except BaseException:
        w.abort()
        raise


def get_bytes(storage: StorageAdapter, key: str, limit: int = 16 * 1024 * 1024) -> bytes:
    with storage.open_reader(key) as f:
        return f.read(limit)
