"""The ``sftp`` destination: any OpenSSH-compatible SFTP server, through paramiko.

Host keys are checked against ``known_hosts`` (default: ``~/.ssh/known_hosts`` and
``/etc/ssh/ssh_known_hosts``) and/or ``host_key_fingerprint`` (``SHA256:…`` as ssh-keygen
prints it); an unknown or different key is refused, never added. Login is by ``key_file``
(tried first) or ``password_file``.

Connections: one SSH connection per adapter, opened on first use and reopened after it
fails. On it, each writer and each reader gets an SFTP channel of its own, so a long upload
from the pipeline thread never waits for (or blocks) a listing from the retention thread;
short operations share one channel under a lock and are retried once on a fresh connection
when the connection died. A stalled server is caught by channel timeouts and, as a backstop
for writes blocked in the socket (where paramiko waits forever), by a watchdog that closes the
connection when one operation takes longer than ``timeout``.

Writes go to ``KEY.part-<16 hex>`` and are renamed over ``KEY`` with ``posix-rename@openssh.com``
after ``fsync@openssh.com`` (when the server has it) and a size check; ``list`` never shows
those temporary names. ``verify`` checks the size by stat and the SHA-256 by reading back, or
with ``sha256sum`` run over SSH when ``remote_hash = true`` (needs a shell login).
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import posixpath
import re
import secrets
import shlex
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, BinaryIO, TypeVar

import paramiko
from paramiko.sftp import CMD_EXTENDED

from backupd.adapters import AdapterContext
from backupd.config.model import SftpDestination
from backupd.config.secrets import read_secret
from backupd.errors import BackupdError, StorageError, VerifyFailed
from backupd.storage.base import READ_SIZE, ObjectInfo, check_key, readback_verify

log = logging.getLogger(__name__)
T = TypeVar("T")

TEMP_MARK = ".part-"
TEMP_RE = re.compile(r"\.part-[0-9a-f]{16}$")
PROBE_NAME = ".backupd-probe-"
WINDOW = 8 * 1024 * 1024  # bytes requested ahead by a reader
PIECE = 32 * 1024  # paramiko's largest SFTP read request
REMOTE_HASH_RATE = 20 * 1024 * 1024  # bytes/s assumed for the sha256sum time budget
DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts")
_DEAD = (EOFError, paramiko.SSHException, TimeoutError, ConnectionError)


class Watchdog:
    """Closes a transport when an operation on it stays blocked past its deadline."""

    def __init__(self, transport: paramiko.Transport) -> None:
        self.transport = transport
        self.fired = False
        self._deadlines: dict[int, float] = {}
        self._tokens = itertools.count()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="sftp-watchdog", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def guard(self, limit: float) -> Iterator[None]:
        """Given a time limit in seconds, run the block under it (the connection is closed,
        making the block fail, if it overruns)."""
        token = next(self._tokens)
        with self._lock:
            self._deadlines[token] = time.monotonic() + limit
        try:
            yield
        finally:
            with self._lock:
                del self._deadlines[token]

    def _run(self) -> None:
        while self.transport.is_active():
            time.sleep(0.2)
            with self._lock:
                late = any(d < time.monotonic() for d in self._deadlines.values())
            if late:
                self.fired = True
                log.warning("sftp: no progress within the timeout, closing the connection")
                self.transport.close()


class SftpStorage:
    """A destination under one directory of one SFTP account."""

    kind = "sftp"

    def __init__(self, name: str, cfg: SftpDestination, ctx: AdapterContext) -> None:
        """Given the destination's name, config and context, prepare without connecting."""
        self.name, self.cfg, self.ctx = name, cfg, ctx
        self.root = cfg.path if cfg.path in ("", "/") else cfg.path.rstrip("/")
        self.where = f"{cfg.host}:{cfg.port}"
        self._lock = threading.RLock()
        self._transport: paramiko.Transport | None = None
        self._dog: Watchdog | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._open_temps: set[str] = set()

    # --- connection -----------------------------------------------------------------------
    def fail(self, what: str, exc: BaseException, dog: Watchdog | None = None) -> StorageError:
        """Given what was being done and the exception, return a StorageError naming this
        destination (a stall caught by the watchdog is reported as such)."""
        if isinstance(exc, StorageError):
            return exc
        if (dog and dog.fired) or isinstance(exc, TimeoutError):
            reason = f"{what}: {self.where} did not answer within {self.cfg.timeout:g}s"
        elif isinstance(exc, BackupdError):
            reason = f"{what}: {exc}"
        else:
            reason = f"{what}: {type(exc).__name__}: {exc}".rstrip(": ")
        return StorageError(destination=self.name, reason=reason)

    def _refuse(self, reason: str) -> StorageError:
        return StorageError(destination=self.name, reason=f"{reason}; refusing to connect")

    def _known_hosts(self) -> tuple[Any, list[str]]:
        files = [self.cfg.known_hosts] if self.cfg.known_hosts else []
        if not files and not self.cfg.host_key_fingerprint:
            files = [os.path.expanduser(f) for f in DEFAULT_KNOWN_HOSTS]
        keys = paramiko.HostKeys()
        for path in files:
            if os.path.exists(path):
                try:
                    keys.load(path)
                except (OSError, paramiko.SSHException) as exc:
                    raise self.fail(f"known_hosts {path}", exc) from exc
            elif self.cfg.known_hosts:
                raise StorageError(destination=self.name, reason=f"known_hosts {path} does not exist")
        name = self.cfg.host if self.cfg.port == 22 else f"[{self.cfg.host}]:{self.cfg.port}"
        return keys.lookup(name), files

    def _check_host_key(self, key: paramiko.PKey, known: Any, files: list[str]) -> None:
        offered = f"{key.get_name()} {key.fingerprint}"
        want = (self.cfg.host_key_fingerprint or "").strip().rstrip("=")
        if want and key.fingerprint != (want if want.startswith("SHA256:") else f"SHA256:{want}"):
            raise self._refuse(f"host key of {self.where} is {offered}, not host_key_fingerprint {want}")
        if want and not self.cfg.known_hosts:
            return
        if known is None or key.get_name() not in known:
            raise self._refuse(
                f"unknown host key: {self.where} offered {offered}, which is not in {', '.join(files)}"
                " (check it, then add it with ssh-keyscan or set host_key_fingerprint)"
            )
        if known[key.get_name()] != key:
            raise self._refuse(
                f"HOST KEY MISMATCH: {self.where} offered {offered}, "
                f"known_hosts has {known[key.get_name()].fingerprint}"
            )

    def _authenticate(self, t: paramiko.Transport) -> None:
        cfg = self.cfg
        if cfg.key_file:
            try:
                pkey = paramiko.PKey.from_path(cfg.key_file)
            except paramiko.PasswordRequiredException:
                raise self._refuse(f"key_file {cfg.key_file} has a passphrase") from None
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise self.fail(f"key_file {cfg.key_file}", exc) from exc
            with contextlib.suppress(paramiko.AuthenticationException):
                t.auth_publickey(cfg.user, pkey)
        if not t.is_authenticated() and cfg.password_file:
            password = read_secret(cfg.password_file, None, f"destination {self.name} password")
            with contextlib.suppress(paramiko.AuthenticationException):
                t.auth_password(cfg.user, password or "")
        if not t.is_authenticated():
            tried = " and ".join(
                n for n, v in (("key_file", cfg.key_file), ("password_file", cfg.password_file)) if v
            )
            raise StorageError(
                destination=self.name,
                reason=f"{self.where} refused login as {cfg.user!r} with {tried or 'no key_file or password_file'}",
            )

    def _connect(self) -> tuple[paramiko.Transport, Watchdog]:
        cfg = self.cfg
        try:
            sock = socket.create_connection((cfg.host, cfg.port), timeout=cfg.timeout)
        except OSError as exc:
            raise self.fail(f"connect to {self.where}", exc) from exc
        t = paramiko.Transport(sock)
        t.banner_timeout = t.handshake_timeout = t.auth_timeout = t.channel_timeout = cfg.timeout
        try:
            known, files = self._known_hosts()
            if known:  # ask for a key type we can check, as OpenSSH does
                opts = t.get_security_options()
                family = {n: "ssh-rsa" if n.startswith("rsa-sha2") else n for n in opts.key_types}
                opts.key_types = sorted(opts.key_types, key=lambda n: family[n] not in known)
            t.start_client(timeout=cfg.timeout)
            self._check_host_key(t.get_remote_server_key(), known, files)
            self._authenticate(t)
        except BaseException as exc:
            t.close()
            if isinstance(exc, Exception):
                raise self.fail(f"connect to {self.where}", exc) from exc
            raise
        t.set_keepalive(max(1, int(cfg.timeout / 3)))
        return t, Watchdog(t)

    def connection(self) -> tuple[paramiko.Transport, Watchdog]:
        """Return the live SSH connection and its watchdog, connecting or reconnecting as
        needed; raise StorageError if that fails."""
        with self._lock:
            if self._transport is None or not self._transport.is_active():
                self._drop()
                self._transport, self._dog = self._connect()
            assert self._dog is not None
            return self._transport, self._dog

    def open_channel(self) -> tuple[paramiko.SFTPClient, Watchdog]:
        """Return a new SFTP channel (with the channel timeout set) and the watchdog."""
        t, dog = self.connection()
        try:
            with dog.guard(self.cfg.timeout):
                chan = t.open_session(timeout=self.cfg.timeout)
                chan.settimeout(self.cfg.timeout)
                chan.invoke_subsystem("sftp")
                return paramiko.SFTPClient(chan), dog
        except Exception as exc:
            raise self.fail("open SFTP channel", exc, dog) from exc

    def broken(self, sftp: paramiko.SFTPClient, dog: Watchdog, exc: BaseException) -> None:
        """Given a channel whose operation failed and the failure, close the channel (its
        stream may hold half a request) and, if the connection died or stalled, the connection."""
        if isinstance(exc, _DEAD) or dog.fired:
            with self._lock:
                if self._transport is dog.transport:
                    self._drop()
            dog.transport.close()  # first: closing a channel on a stalled socket would block
        with contextlib.suppress(Exception):
            sftp.close()

    def _drop(self) -> None:
        with self._lock:
            for thing in (self._sftp, self._transport):
                if thing is not None:
                    with contextlib.suppress(Exception):
                        thing.close()
            self._sftp = self._transport = self._dog = None

    def run(self, what: str, op: Callable[[paramiko.SFTPClient], T]) -> T:
        """Given a description and an operation on an SFTP channel, run it on the shared
        channel, once more on a fresh connection if the connection died; return its result;
        raise StorageError on failure."""
        for attempt in (1, 2):
            with self._lock:
                dog = None
                try:
                    if self._transport is not None and not self._transport.is_active():
                        self._drop()
                    if self._sftp is None:
                        self._sftp, dog = self.open_channel()
                    dog = self._dog
                    assert dog is not None
                    # Channel timeouts catch a silent server per request; the watchdog here
                    # only ends a socket write that never returns, so a long walk is allowed.
                    with dog.guard(max(4 * self.cfg.timeout, 120.0)):
                        return op(self._sftp)
                except StorageError:
                    raise
                except Exception as exc:
                    dead = isinstance(exc, _DEAD) or not (self._transport and self._transport.is_active())
                    if dead:
                        self._drop()
                    if not dead or attempt == 2:
                        raise self.fail(what, exc, dog) from exc
                    log.info("%s: connection lost during %s, reconnecting", self.name, what)
        raise AssertionError("unreachable")

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

        self.run(f"test of {self.describe()}", probe_op)

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

        attr = self.run(f"stat {path}", op)
        if attr is None:
            return None
        return ObjectInfo(key=key, size=int(attr.st_size or 0), modified=_mtime(attr))

    def list(self, prefix: str = "", include_temp: bool = False) -> Iterator[ObjectInfo]:
        """Given a key prefix, yield the committed files under it, and the ``.part-`` temp
        files too if ``include_temp`` (for cleanup)."""
        if prefix.startswith("/") or ".." in prefix.split("/"):
            raise StorageError(destination=self.name, reason=f"bad list prefix {prefix!r}")
        base = prefix.rpartition("/")[0]
        for rel, attr in self.run(f"list {prefix or '/'}", lambda sftp: self._walk(sftp, base)):
            if rel.startswith(prefix) and (include_temp or not TEMP_RE.search(rel)):
                yield ObjectInfo(key=rel, size=int(attr.st_size or 0), modified=_mtime(attr))

    def delete(self, key: str) -> None:
        """Given a key, remove the file; a missing file is not an error."""
        path = self.remote(key)

        def op(sftp: paramiko.SFTPClient) -> None:
            with contextlib.suppress(FileNotFoundError):
                sftp.remove(path)

        self.run(f"delete {path}", op)

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
        digest = self._remote_sha256(self.remote(key), size)
        if digest != sha256:
            raise VerifyFailed(
                key=key, reason=f"remote sha256 {digest}, expected {sha256}", destination=self.name
            )
        return None

    def _remote_sha256(self, path: str, size: int) -> str:
        t, dog = self.connection()
        budget = self.cfg.timeout + size / REMOTE_HASH_RATE
        try:
            with dog.guard(budget), t.open_session(timeout=self.cfg.timeout) as chan:
                chan.settimeout(budget)
                chan.exec_command(f"sha256sum -- {shlex.quote(path)}")
                out = b""
                while chunk := chan.recv(4096):
                    out += chunk
                status = chan.recv_exit_status()
        except Exception as exc:
            raise self.fail(f"sha256sum {path}", exc, dog) from exc
        fields = out.decode(errors="replace").split()
        if status != 0 or not fields:
            raise StorageError(destination=self.name, reason=f"sha256sum {path} exited with {status}")
        return fields[0].lstrip("\\")

    def describe(self) -> str:
        """Return ``sftp://user@host:port/abs/path`` or ``…/~/rel/path`` (no secrets)."""
        path = self.root if self.root.startswith("/") else f"/~/{self.root}".rstrip("/")
        return f"sftp://{self.cfg.user}@{self.where}{path}"

    def close(self) -> None:
        """Close the shared channel and the connection."""
        self._drop()

    # --- beyond the port ------------------------------------------------------------------
    def abort_stale_uploads(self, older_than: timedelta = timedelta(0)) -> int:
        """Given an age, remove temp files (``.part-…``) under the root older than that,
        except this adapter's open writers'; return how many; raise StorageError on failure."""
        cutoff = (datetime.now(UTC) - older_than).timestamp()

        def op(sftp: paramiko.SFTPClient) -> int:
            removed = 0
            for rel, attr in self._walk(sftp, ""):
                path = self.remote(rel)
                if TEMP_RE.search(rel) and path not in self._open_temps and (attr.st_mtime or 0) <= cutoff:
                    with contextlib.suppress(FileNotFoundError):
                        sftp.remove(path)
                    removed += 1
            return removed

        return self.run("remove stale temp files", op)


def _mtime(attr: Any) -> datetime | None:
    return datetime.fromtimestamp(attr.st_mtime, UTC) if attr.st_mtime is not None else None


class _Reader(io.RawIOBase):
    """Reads a remote file on its own channel, ``WINDOW`` bytes requested ahead at a time."""

    def __init__(self, storage: SftpStorage, key: str) -> None:
        self._s, self._path = storage, storage.remote(key)
        self._sftp, self._dog = storage.open_channel()
        try:
            with self._dog.guard(storage.cfg.timeout):
                self._file = self._sftp.open(self._path, "rb")
                self._size = int(self._file.stat().st_size or 0)
        except Exception as exc:
            self._sftp.close()
            raise storage.fail(f"open {self._path}", exc, self._dog) from exc
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
                self._s.broken(self._sftp, self._dog, exc)
                raise self._s.fail(f"read {self._path}", exc, self._dog) from exc
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
            raise storage.fail(f"create {self.temp_path}", exc, self._dog) from exc
        self._file.set_pipelined(True)  # do not wait for each write's reply; errors surface at close
        storage._open_temps.add(self.temp_path)

    def write(self, data: bytes) -> None:
        """Given bytes, append them to the temp file; raise StorageError on failure."""
        if self._state != "open":
            raise StorageError(destination=self._s.name, reason=f"writer for {self.key} is {self._state}")
        try:
            with self._dog.guard(self._s.cfg.timeout):
                self._file.write(data)
        except Exception as exc:
            self._state = "failed"
            self._s.broken(self._sftp, self._dog, exc)
            raise self._s.fail(f"write {self.temp_path}", exc, self._dog) from exc
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
            self._s.broken(self._sftp, self._dog, exc)
            self.abort()
            raise self._s.fail(f"commit {self._path}", exc, self._dog) from exc
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
            self._s.run(f"remove {path}", remove)
        except StorageError as exc:
            log.warning("%s: %s", self._s.name, exc)
            return
        self._state = "aborted"
        self._finish()

    def _finish(self) -> None:
        self._s._open_temps.discard(self.temp_path)
        with contextlib.suppress(Exception):
            self._sftp.close()
