"""The ``sftp`` destination: any OpenSSH-compatible SFTP server, through paramiko.

The SSH side (host-key checks, login, channels, the stall watchdog) is
:mod:`backupd.storage.sftp_connection`. On the destination's one connection, each writer and
each reader gets an SFTP channel of its own, so a long upload from the pipeline thread never
waits for (or blocks) a listing from the retention thread; short operations share one
channel and are retried once on a fresh connection when the connection died.

Writes go to ``KEY.part-<16 hex>`` and are renamed over ``KEY`` with ``posix-rename@openssh.com``
after ``fsync@openssh.com`` (when the server has it) and a size check; ``list`` never shows
those temporary names. ``verify`` checks the size by stat and the SHA-256 by reading back, or
with ``sha256sum`` run over SSH when ``remote_hash = true`` (needs a shell login).
"""

from __future__ import annotations

import contextlib
import io
import logging
import posixpath
import re
import secrets
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO

import paramiko
from paramiko.sftp import CMD_EXTENDED

from backupd.adapters import AdapterContext
from backupd.config.model import SftpDestination
from backupd.errors import StorageError, VerifyFailed
from backupd.storage.base import READ_SIZE, ObjectInfo, check_key, readback_verify
from backupd.storage.sftp_connection import SftpConnection, Watchdog

log = logging.getLogger(__name__)

TEMP_MARK = ".part-"
TEMP_RE = re.compile(r"\.part-[0-9a-f]{16}$")
PROBE_NAME = ".backupd-probe-"
WINDOW = 8 * 1024 * 1024  # bytes requested ahead by a reader
PIECE = 32 * 1024  # paramiko's largest SFTP read request


class SftpStorage:
    """A destination under one directory of one SFTP account."""

    kind = "sftp"

    def __init__(self, name: str, cfg: SftpDestination, ctx: AdapterContext) -> None:
        """Given the destination's name, config and context, prepare without connecting."""
        self.name, self.cfg, self.ctx = name, cfg, ctx
        self.root = cfg.path if cfg.path in ("", "/") else cfg.path.rstrip("/")
        self.conn = SftpConnection(name, cfg)
        # Temp files of this adapter's open writers: never stale, whatever their age.
        self.open_temps: set[str] = set()

    def open_channel(self) -> tuple[paramiko.SFTPClient, Watchdog]:
        """Return a new SFTP channel of its own on the destination's connection, and the
        connection's watchdog; raise StorageError if it cannot be opened."""
        return self.conn.open_channel()

    # --- paths ----------------------------------------------------------------------------
    def remote(self, key: str) -> str:
        """Given an object key (or "" for the root), return its remote path; raise
        KeyEscapesRoot if the key is unsafe."""
        if not key:
            return self.root or "."
        return posixpath.join(self.root, check_key(key)) if self.root else check_key(key)

    def makedirs(self, sftp: paramiko.SFTPClient, path: str) -> None:
        """Given a channel and a remote directory, create it and its missing parents."""
        if path in ("", ".", "/"):
            return
        try:
            sftp.stat(path)
            return
        except FileNotFoundError:
            pass
        self.makedirs(sftp, posixpath.dirname(path))
        try:
            sftp.mkdir(path)
        except OSError:
            sftp.stat(path)  # raced with another writer: fine if it exists now

    def _walk(self, sftp: paramiko.SFTPClient, rel: str) -> list[tuple[str, Any]]:
        try:
            entries = sftp.listdir_attr(self.remote(rel))
        except FileNotFoundError:
            return []
        found: list[tuple[str, Any]] = []
        for attr in entries:
            child = f"{rel}/{attr.filename}" if rel else attr.filename
            if stat.S_ISDIR(attr.st_mode or 0):
                found += self._walk(sftp, child)
            elif stat.S_ISREG(attr.st_mode or 0):
                found.append((child, attr))
        return found

    # --- the port -------------------------------------------------------------------------
    def test(self) -> None:
        """Connect, create the root if needed, write, check and remove a probe file; raise
        StorageError with the reason otherwise."""
        probe = posixpath.join(self.root, f"{PROBE_NAME}{secrets.token_hex(8)}")

        def probe_op(sftp: paramiko.SFTPClient) -> None:
            self.makedirs(sftp, self.root)
            with sftp.open(probe, "wb") as f:
                f.write(b"backupd probe\n")
            try:
                if sftp.stat(probe).st_size != 14:
                    raise StorageError(destination=self.name, reason=f"probe {probe} has the wrong size")
            finally:
                sftp.remove(probe)

        self.conn.run(f"test of {self.describe()}", probe_op)

    def open_writer(self, key: str) -> SftpWriter:
        """Given a key, return a writer that writes a temp file renamed over it on commit."""
        return SftpWriter(self, key)

    def open_reader(self, key: str) -> BinaryIO:
        """Given a key, return a buffered stream of its bytes; raise StorageError if missing."""
        return io.BufferedReader(_Reader(self, key), buffer_size=READ_SIZE)  # type: ignore[return-value]

    def stat(self, key: str) -> ObjectInfo | None:
        """Given a key, return its size and mtime, or None if there is no such file."""
        path = self.remote(key)

        def op(sftp: paramiko.SFTPClient) -> Any:
            try:
                return sftp.stat(path)
            except FileNotFoundError:
                return None

        attr = self.conn.run(f"stat {path}", op)
        if attr is None:
            return None
        return ObjectInfo(key=key, size=int(attr.st_size or 0), modified=_mtime(attr))

    def list(self, prefix: str = "", include_temp: bool = False) -> Iterator[ObjectInfo]:
        """Given a key prefix, yield the committed files under it, and the ``.part-`` temp
        files too if ``include_temp`` (for cleanup)."""
        if prefix.startswith("/") or ".." in prefix.split("/"):
            raise StorageError(destination=self.name, reason=f"bad list prefix {prefix!r}")
        base = prefix.rpartition("/")[0]
        for rel, attr in self.conn.run(f"list {prefix or '/'}", lambda sftp: self._walk(sftp, base)):
            if rel.startswith(prefix) and (include_temp or not TEMP_RE.search(rel)):
                yield ObjectInfo(key=rel, size=int(attr.st_size or 0), modified=_mtime(attr))

    def delete(self, key: str) -> None:
        """Given a key, remove the file; a missing file is not an error."""
        path = self.remote(key)

        def op(sftp: paramiko.SFTPClient) -> None:
            with contextlib.suppress(FileNotFoundError):
                sftp.remove(path)

        self.conn.run(f"delete {path}", op)

    def verify(self, key: str, size: int, sha256: str) -> None:
        """Given a key and the expected size and SHA-256, check the size by stat and the hash
        by reading back (or by remote sha256sum); raise VerifyFailed on a mismatch."""
        info = self.stat(key)
        if info is None:
            raise VerifyFailed(key=key, reason="file is missing", destination=self.name)
        if info.size != size:
            raise VerifyFailed(key=key, reason=f"size {info.size}, expected {size}", destination=self.name)
        if not self.cfg.remote_hash:
            return readback_verify(self, key, size, sha256)
        digest = self.conn.sha256sum(self.remote(key), size)
        if digest != sha256:
            raise VerifyFailed(
                key=key, reason=f"remote sha256 {digest}, expected {sha256}", destination=self.name
            )
        return None

    def describe(self) -> str:
        """Return ``sftp://user@host:port/abs/path`` or ``…/~/rel/path`` (no secrets)."""
        path = self.root if self.root.startswith("/") else f"/~/{self.root}".rstrip("/")
        return f"sftp://{self.cfg.user}@{self.conn.where}{path}"

    def close(self) -> None:
        """Close the shared channel and the connection."""
        self.conn.close()

    # --- beyond the port ------------------------------------------------------------------
    def abort_stale_uploads(self, older_than: timedelta = timedelta(0)) -> int:
        """Given an age, remove temp files (``.part-…``) under the root older than that,
        except this adapter's open writers'; return how many; raise StorageError on failure."""
        cutoff = (datetime.now(UTC) - older_than).timestamp()

        def op(sftp: paramiko.SFTPClient) -> int:
            removed = 0
            for rel, attr in self._walk(sftp, ""):
                path = self.remote(rel)
                if TEMP_RE.search(rel) and path not in self.open_temps and (attr.st_mtime or 0) <= cutoff:
                    with contextlib.suppress(FileNotFoundError):
                        sftp.remove(path)
                    removed += 1
            return removed

        return self.conn.run("remove stale temp files", op)


def _mtime(attr: Any) -> datetime | None:
    return datetime.fromtimestamp(attr.st_mtime, UTC) if attr.st_mtime is not None else None


class _Reader(io.RawIOBase):
    """Reads a remote file on its own channel, ``WINDOW`` bytes requested ahead at a time."""

    def __init__(self, storage: SftpStorage, key: str) -> None:
        """Given the adapter and a key, open the file on a new channel; raise StorageError if
        it cannot be opened (a missing file included)."""
        self._s, self._path = storage, storage.remote(key)
        self._sftp, self._dog = storage.open_channel()
        try:
            with self._dog.guard(storage.cfg.timeout):
                self._file = self._sftp.open(self._path, "rb")
                self._size = int(self._file.stat().st_size or 0)
        except Exception as exc:
            self._sftp.close()
            raise storage.conn.fail(f"open {self._path}", exc, self._dog) from exc
        self._offset = 0
        self._pending = memoryview(b"")
        self._pieces: Iterator[bytes] = iter(())
        self._failed = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if not self._pending:
            try:
                with self._dog.guard(self._s.cfg.timeout):
                    data = next(self._pieces, b"")
                    if not data and self._offset < self._size:
                        self._pieces = self._window()
                        data = next(self._pieces, b"")
            except Exception as exc:
                self._failed = True
                self._s.conn.broken(self._sftp, self._dog, exc)
                raise self._s.conn.fail(f"read {self._path}", exc, self._dog) from exc
            if not data and self._offset < self._size:
                raise StorageError(destination=self._s.name, reason=f"{self._path} shrank while reading")
            self._pending = memoryview(data)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def _window(self) -> Iterator[bytes]:
        # Request-sized pieces: paramiko joins a larger read from its pieces quadratically.
        end = min(self._offset + WINDOW, self._size)
        pieces = [(o, min(PIECE, end - o)) for o in range(self._offset, end, PIECE)]
        self._offset = end
        return iter(self._file.readv(pieces))

    def close(self) -> None:
        if not self.closed and not self._failed:
            with contextlib.suppress(Exception), self._dog.guard(self._s.cfg.timeout):
                self._file.close()
            with contextlib.suppress(Exception):
                self._sftp.close()
        super().close()


class SftpWriter:
    """One upload to a temp name on its own channel. One thread writes, commits or aborts."""

    def __init__(self, storage: SftpStorage, key: str) -> None:
        """Given the adapter and a key, create the key's directories and its temp file on a
        new channel; raise StorageError if that fails."""
        self.key = key
        self._s = storage
        self._path = storage.remote(key)
        self.temp_path = f"{self._path}{TEMP_MARK}{secrets.token_hex(8)}"
        self._size = 0
        self._state = "open"
        self._sftp, self._dog = storage.open_channel()
        try:
            with self._dog.guard(storage.cfg.timeout):
                storage.makedirs(self._sftp, posixpath.dirname(self._path))
                self._file = self._sftp.open(self.temp_path, "wb")
        except Exception as exc:
            self._sftp.close()
            raise storage.conn.fail(f"create {self.temp_path}", exc, self._dog) from exc
        self._file.set_pipelined(True)  # do not wait for each write's reply; errors surface at close
        storage.open_temps.add(self.temp_path)

    def write(self, data: bytes) -> None:
        """Given bytes, append them to the temp file; raise StorageError on failure."""
        if self._state != "open":
            raise StorageError(destination=self._s.name, reason=f"writer for {self.key} is {self._state}")
        try:
            with self._dog.guard(self._s.cfg.timeout):
                self._file.write(data)
        except Exception as exc:
            self._state = "failed"
            self._s.conn.broken(self._sftp, self._dog, exc)
            raise self._s.conn.fail(f"write {self.temp_path}", exc, self._dog) from exc
        self._size += len(data)

    def commit(self) -> ObjectInfo:
        """Flush, fsync, check the size and rename the temp file over the key; return its
        info; on failure remove the temp file and raise StorageError."""
        if self._state != "open":
            self.abort()
            raise StorageError(destination=self._s.name, reason=f"writer for {self.key} is {self._state}")
        try:
            with self._dog.guard(self._s.cfg.timeout):
                self._file.flush()
                self._fsync()
                self._file.close()  # collects the pipelined write replies
                attr = self._sftp.stat(self.temp_path)
                if attr.st_size != self._size:
                    raise StorageError(
                        destination=self._s.name,
                        reason=f"{self.temp_path} has {attr.st_size} bytes, {self._size} were written",
                    )
                self._sftp.posix_rename(self.temp_path, self._path)
        except Exception as exc:
            self._state = "failed"
            self._s.conn.broken(self._sftp, self._dog, exc)
            self.abort()
            raise self._s.conn.fail(f"commit {self._path}", exc, self._dog) from exc
        self._state = "committed"
        self._finish()
        return ObjectInfo(key=self.key, size=self._size, modified=_mtime(attr))

    def _fsync(self) -> None:
        # paramiko has no public fsync; the OpenSSH extension makes the rename durable.
        try:
            self._sftp._request(CMD_EXTENDED, "fsync@openssh.com", self._file.handle)
        except OSError as exc:
            log.debug("%s: server cannot fsync (%s)", self._s.name, exc)

    def abort(self) -> None:
        """Close and remove the temp file; idempotent. If the server cannot be reached the
        file stays (logged) for ``abort_stale_uploads`` to remove."""
        if self._state in ("committed", "aborted"):
            return
        if self._state == "open":
            with contextlib.suppress(Exception), self._dog.guard(self._s.cfg.timeout):
                self._file.close()
        path = self.temp_path

        def remove(sftp: paramiko.SFTPClient) -> None:
            with contextlib.suppress(FileNotFoundError):
                sftp.remove(path)

        try:
            self._s.conn.run(f"remove {path}", remove)
        except StorageError as exc:
            log.warning("%s: %s", self._s.name, exc)
            return
        self._state = "aborted"
        self._finish()

    def _finish(self) -> None:
        self._s.open_temps.discard(self.temp_path)
        with contextlib.suppress(Exception):
            self._sftp.close()
