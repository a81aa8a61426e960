"""The local destination: a directory on this machine.

Commit is temp name in the same directory + fsync(file) + rename + fsync(directory), so a
crash leaves either the whole object or a ``.tmp-`` file that ``list`` never reports (and
that is cleaned up later). Files are created 0600; keys that would leave the root are
refused.
"""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from backupd.adapters import AdapterContext
from backupd.config.model import LocalDestination
from backupd.errors import StorageError
from backupd.storage.base import ObjectInfo, check_key, readback_verify

TEMP_MARK = ".tmp-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalWriter:
    """Writes to ``<dir>/.tmp-<random>-<name>`` and renames on commit."""

    def __init__(self, storage: LocalStorage, key: str) -> None:
        self.key = key
        self._storage = storage
        self._final = storage.path_of(key)
        self._temp = self._final.parent / f"{TEMP_MARK}{secrets.token_hex(6)}-{self._final.name}"
        self._size = 0
        self._done = False
        try:
            self._final.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise storage.error(exc, key) from None
        self._file = os.fdopen(fd, "wb", buffering=1024 * 1024)

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            self.abort()
            raise self._storage.error(exc, self.key) from None
        self._size += len(data)

    def commit(self) -> ObjectInfo:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.rename(self._temp, self._final)
            _fsync_dir(self._final.parent)
        except OSError as exc:
            self.abort()
            raise self._storage.error(exc, self.key) from None
        self._done = True
        return ObjectInfo(self.key, self._size, datetime.now(UTC))

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        try:
            self._file.close()
        except OSError:
            pass  # the disk may be full; the unlink below is what matters
        try:
            self._temp.unlink()
        except FileNotFoundError:
            pass


class LocalStorage:
    kind = "local"

    def __init__(self, name: str, config: LocalDestination, ctx: AdapterContext | None = None) -> None:
        self.name = name
        self.root = Path(config.path)

    def describe(self) -> str:
        return f"local:{self.root}"

    def error(self, exc: OSError, key: str) -> StorageError:
        reason = {
            errno.ENOSPC: "no space left on device",
            errno.EACCES: "permission denied",
            errno.EROFS: "read-only file system",
        }.get(exc.errno or 0, exc.strerror or str(exc))
        where = exc.filename or self.root / key
        return StorageError(destination=self.name, reason=f"{where}: {reason}")

    def path_of(self, key: str) -> Path:
        return self.root / check_key(key)

    def test(self) -> None:
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            probe = self.root / f"{TEMP_MARK}probe-{secrets.token_hex(4)}"
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.close(fd)
            probe.unlink()
        except OSError as exc:
            raise self.error(exc, "") from None

    def open_writer(self, key: str) -> LocalWriter:
        return LocalWriter(self, key)

    def open_reader(self, key: str) -> BinaryIO:
        try:
            return open(self.path_of(key), "rb")
        except OSError as exc:
            raise self.error(exc, key) from None

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            st = self.path_of(key).stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self.error(exc, key) from None
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def list(self, prefix: str = "", include_temp: bool = False) -> Iterator[ObjectInfo]:
        if not self.root.is_dir():
            return
        for dirpath, _dirs, files in os.walk(self.root):
            for fname in sorted(files):
                if fname.startswith(TEMP_MARK) and not include_temp:
                    continue
                full = Path(dirpath) / fname
                key = full.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    st = full.stat()
                except FileNotFoundError:
                    continue
                yield ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def abort_stale_uploads(self, older_than: timedelta = timedelta(0)) -> int:
        """Remove temp files (``.tmp-…``) older than ``older_than``, left by a writer that
        died; return how many."""
        cutoff = datetime.now(UTC) - older_than
        removed = 0
        for info in self.list("", include_temp=True):
            if info.key.rsplit("/", 1)[-1].startswith(TEMP_MARK) and info.modified and info.modified < cutoff:
                self.path_of(info.key).unlink(missing_ok=True)
                removed += 1
        return removed

    def delete(self, key: str) -> None:
        try:
            self.path_of(key).unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self.error(exc, key) from None

    def verify(self, key: str, size: int, sha256: str) -> None:
        readback_verify(self, key, size, sha256)

    def close(self) -> None:
        pass
