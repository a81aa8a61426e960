"""The SSH side of the ``sftp`` destination: connecting, checking the host key, logging in,
SFTP channels, the stall watchdog, and commands run over SSH.

Host keys are checked against ``known_hosts`` (default: ``~/.ssh/known_hosts`` and
``/etc/ssh/ssh_known_hosts``) and/or ``host_key_fingerprint`` (``SHA256:…`` as ssh-keygen
prints it); an unknown or different key is refused, never added. Login is by ``key_file``
(tried first) or ``password_file``.

One SSH connection per destination, opened on first use and reopened after it fails. Short
operations share one SFTP channel under a lock (:meth:`SftpConnection.run`) and are retried
once on a fresh connection when the connection died; streams open channels of their own
(:meth:`SftpConnection.open_channel`). A stalled server is caught by channel timeouts and, as
a backstop for writes blocked in the socket (where paramiko waits forever), by a
:class:`Watchdog` that closes the connection when one operation takes longer than its limit.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shlex
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import paramiko

from backupd.config.model import SftpDestination
from backupd.config.secrets import read_secret
from backupd.errors import BackupdError, StorageError

# The adapter's logger: an administrator filters on one name per destination type.
log = logging.getLogger("backupd.storage.sftp")
T = TypeVar("T")

REMOTE_HASH_RATE = 20 * 1024 * 1024  # bytes/s assumed for the sha256sum time budget
DEFAULT_KNOWN_HOSTS = ("~/.ssh/known_hosts", "/etc/ssh/ssh_known_hosts")
DEAD = (EOFError, paramiko.SSHException, TimeoutError, ConnectionError)  # the connection is gone


class Watchdog:
    """Closes a transport when an operation on it stays blocked past its deadline."""

    def __init__(self, transport: paramiko.Transport) -> None:
        """Given a started transport, watch it until it closes."""
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


class SftpConnection:
    """The SSH connection of one destination, with its shared SFTP channel."""

    def __init__(self, name: str, cfg: SftpDestination) -> None:
        """Given the destination's name and config, prepare without connecting."""
        self.name, self.cfg = name, cfg
        self.where = f"{cfg.host}:{cfg.port}"
        self._lock = threading.RLock()
        self._transport: paramiko.Transport | None = None
        self._dog: Watchdog | None = None
        self._sftp: paramiko.SFTPClient | None = None

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

    # --- opening ---------------------------------------------------------------------------
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

    # --- using -----------------------------------------------------------------------------
    def connection(self) -> tuple[paramiko.Transport, Watchdog]:
        """Return the live SSH connection and its watchdog, connecting or reconnecting as
        needed; raise StorageError if that fails."""
        with self._lock:
            if self._transport is None or not self._transport.is_active():
                self.close()
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
        if isinstance(exc, DEAD) or dog.fired:
            with self._lock:
                if self._transport is dog.transport:
                    self.close()
            dog.transport.close()  # first: closing a channel on a stalled socket would block
        with contextlib.suppress(Exception):
            sftp.close()

    def close(self) -> None:
        """Close the shared channel and the connection (the next use reconnects)."""
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
                        self.close()
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
                    dead = isinstance(exc, DEAD) or not (self._transport and self._transport.is_active())
                    if dead:
                        self.close()
                    if not dead or attempt == 2:
                        raise self.fail(what, exc, dog) from exc
                    log.info("%s: connection lost during %s, reconnecting", self.name, what)
        raise AssertionError("unreachable")

    def sha256sum(self, path: str, size: int) -> str:
        """Given a remote path and its size, run ``sha256sum`` on it over SSH (given
        ``timeout`` plus time for the size) and return the hex digest; raise StorageError if
        the command fails or cannot be run."""
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
