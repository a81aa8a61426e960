"""Redis source: RDB snapshots streamed with ``redis-cli --rdb -``; restore by replacing the
server's RDB file while it is stopped.

Dump: redis-cli asks the server for a replication snapshot and writes it to stdout; the
password is in ``REDISCLI_AUTH``, an ACL user name in ``--user``. One RDB holds every logical
database, so ``list_databases`` is ``["all"]``. When the server sends the snapshot diskless
(``repl-diskless-sync yes``, the default since Redis 7), redis-cli 7.0 also writes the 40-byte
end-of-transfer mark to stdout (it can only trim it from a regular file); the handle holds the
last bytes back and drops the mark, so the stored object is a plain RDB. The server waits
``repl-diskless-sync-delay`` seconds (default 5) before it starts sending.

Restore needs the server's ``data_dir`` on this machine and a way to start Redis again:
``service`` (systemctl stop/start) or ``start_command`` (after ``SHUTDOWN NOSAVE``). The
stream is first written to a temporary file in ``data_dir`` and checked (magic, EOF opcode);
only then is Redis stopped, the file renamed over the RDB (the old one kept as
``<file>.before-restore-<time>``) and Redis started and awaited. Without a way to start it,
the checked file is left as ``<file>.restored`` and RestoreRefused lists the manual steps.
Redis with ``appendonly yes`` loads its AOF, not the RDB, so restore refuses it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import BinaryIO

from backupd.adapters import AdapterContext
from backupd.config.model import RedisSource
from backupd.config.secrets import read_secret
from backupd.errors import Cancelled, RestoreFailed, RestoreRefused, SourceError
from backupd.sources.base import READ_SIZE, RestoreTarget, SourceInfo, ToolResult
from backupd.sources.tools import (
    RunResult,
    ToolDump,
    child_env,
    find_tool,
    last_line,
    parse_version,
    run,
    tool_version,
)

ALL = "all"
MAGIC = b"REDIS"
EOF_OPCODE = 0xFF
MARK_SIZE = 40
HOLD = MARK_SIZE + 9  # the mark, plus the EOF opcode and CRC64 in front of it
HEX = frozenset(b"0123456789abcdef")
STOP_TIMEOUT = 60.0
START_TIMEOUT = 600.0  # loading a large RDB takes a while
START_GRACE = 60.0  # how long the port may stay closed after the start


def rdb_end(data: bytes) -> tuple[int, str | None]:
    """Given the last bytes of an RDB transfer, return (bytes to drop at the end, problem).

    A plain RDB ends with the EOF opcode and an 8-byte checksum; a diskless transfer written
    by redis-cli to stdout has 40 hex characters more. The two cannot be confused: a plain
    RDB's 9th byte from the end is 0xFF, which is not a hex character.
    """
    if len(data) >= 9 and data[-9] == EOF_OPCODE:
        return 0, None
    if len(data) >= HOLD and data[-HOLD] == EOF_OPCODE and set(data[-MARK_SIZE:]) <= HEX:
        return MARK_SIZE, None
    return 0, "RDB does not end with the EOF opcode (truncated?)"


def _valid_rdb(head: bytes, tail: bytes, size: int) -> str | None:
    if not head.startswith(MAGIC):
        return "output does not start with the REDIS magic"
    return rdb_end(tail)[1]


class RdbDump:
    """A DumpHandle around redis-cli that withholds the last bytes until EOF so that a
    trailing end-of-transfer mark never reaches the pipeline."""

    extension = ".rdb"

    def __init__(self, inner: ToolDump) -> None:
        self._inner = inner
        self.database = inner.database
        self._held = bytearray()
        self._eof = False

    def read(self, size: int = READ_SIZE) -> bytes:
        while not self._eof:
            data = self._inner.read(size)
            if not data:
                self._eof = True
                drop, _ = rdb_end(bytes(self._held))
                out = bytes(self._held[: len(self._held) - drop])
                self._held.clear()
                return out
            self._held += data
            if len(self._held) > HOLD:
                out = bytes(self._held[:-HOLD])
                del self._held[:-HOLD]
                return out
        return b""

    def finish(self) -> ToolResult:
        return self._inner.finish()

    def abort(self) -> None:
        self._inner.abort()

    @property
    def pid(self) -> int | None:
        return self._inner.pid


class RedisAdapter:
    """Source adapter for ``type = "redis"``."""

    engine = "redis"

    def __init__(self, name: str, config: RedisSource, ctx: AdapterContext) -> None:
        self.name = name
        self.config = config
        self._ctx = ctx

    # --- plumbing ---------------------------------------------------------------------------
    def _cli_path(self) -> str:
        path = find_tool(["redis-cli"])
        if path is None:
            raise SourceError(source=self.name, reason="redis-cli not found on $PATH (install redis-tools)")
        return path

    def _argv(self, *args: str) -> list[str]:
        argv = [self._cli_path(), "-h", self.config.host, "-p", str(self.config.port)]
        if self.config.username:
            argv += ["--user", self.config.username]
        return [*argv, *args]

    def _env(self) -> dict[str, str]:
        password = read_secret(
            self.config.password_file, self.config.credential, f"sources.{self.name}.password"
        )
        extra = {"REDISCLI_AUTH": password} if password is not None else {}
        return child_env(extra, drop=("REDISCLI_AUTH",))

    def _call(self, *args: str, timeout: float = 30.0) -> RunResult:
        return run(self._argv(*args), self._env(), timeout=timeout)

    def _checked(self, *args: str) -> str:
        """Given a command, run it and return its reply; raise SourceError if the server is
        unreachable, authentication fails or the reply is an error."""
        result = self._call(*args)
        reply = result.text.strip()
        if "Could not connect" in result.stderr or (not result.ok and not reply):
            raise SourceError(source=self.name, reason=f"cannot connect: {last_line(result.stderr)}")
        if "AUTH failed" in result.stderr or reply.startswith(("NOAUTH", "WRONGPASS")):
            raise SourceError(
                source=self.name, reason=f"authentication failed: {last_line(result.stderr or reply)}"
            )
        if reply.startswith(("ERR", "NOPERM", "WRONGTYPE")):
            raise SourceError(source=self.name, reason=f"{args[0]}: {last_line(reply)}")
        return reply

    def _reachable(self) -> bool:
        result = self._call("PING", timeout=10)
        return "Could not connect" not in result.stderr and bool(result.text.strip())

    def _config_get(self, key: str) -> str | None:
        try:
            lines = self._checked("CONFIG", "GET", key).splitlines()
        except SourceError:
            return None  # CONFIG may be renamed away or denied by ACL
        return lines[1] if len(lines) >= 2 else None

    # --- the port ---------------------------------------------------------------------------
    def test(self) -> SourceInfo:
        """Connect and return the server version; raise SourceError if unreachable or the
        credentials are refused."""
        info = self._checked("INFO", "server")
        for line in info.splitlines():
            if line.startswith("redis_version:"):
                return SourceInfo(self.engine, line.split(":", 1)[1].strip())
        raise SourceError(source=self.name, reason=f"unexpected INFO reply: {last_line(info)}")

    def list_databases(self) -> list[str]:
        return [ALL]

    def dump(self, database: str) -> RdbDump:
        """Given ``"all"``, start ``redis-cli --rdb -`` and return its handle; raise
        SourceError for any other name (an RDB always holds every logical database)."""
        if database != ALL:
            raise SourceError(source=self.name, reason=f"Redis dumps everything; use database {ALL!r}")
        cli = self._cli_path()
        version = parse_version(tool_version(cli))
        env = self._env()
        inner = ToolDump(
            argv=self._argv("--rdb", "-"),
            database=database,
            extension=".rdb",
            tool="redis-cli",
            tool_version=".".join(map(str, version)) if version else "",
            validate=_valid_rdb,
            env=env,
            fatal_stderr=("I/O error", "Transfer failed", "AUTH failed"),
            secrets=(env.get("REDISCLI_AUTH"),),
        ).start()
        return RdbDump(inner)

    def restore(self, stream: BinaryIO, target: RestoreTarget) -> None:
        """Given an RDB stream, replace the server's dataset with it (see the module notes);
        raise RestoreRefused when it cannot be done safely, RestoreFailed when it failed."""
        if target.database not in (None, ALL):
            raise RestoreRefused(
                reason="a Redis RDB restores the whole server; no other database name applies"
            )
        if not self.config.data_dir:
            raise RestoreRefused(reason="set data_dir (the Redis server's dir, on this machine) to restore")
        data_dir = Path(self.config.data_dir)
        reachable = self._reachable()
        dbfilename = "dump.rdb"
        if reachable:
            keys = sum(
                int(line.split("keys=")[1].split(",")[0])
                for line in self._checked("INFO", "keyspace").splitlines()
                if "keys=" in line
            )
            if keys and not target.force:
                raise RestoreRefused(reason=f"Redis holds {keys} keys; use force to replace them all")
            if self._config_get("appendonly") == "yes":
                raise RestoreRefused(
                    reason="Redis runs with appendonly yes and would load its AOF, not the RDB; "
                    "turn AOF off (and remove the appendonly dir) before restoring"
                )
            server_dir = self._config_get("dir")
            if server_dir and Path(server_dir).resolve() != data_dir.resolve():
                raise RestoreRefused(reason=f"the server's dir is {server_dir}, not data_dir {data_dir}")
            dbfilename = self._config_get("dbfilename") or dbfilename
        elif not target.force:
            raise RestoreRefused(reason="Redis is not reachable, so it cannot be checked for data; use force")
        live = data_dir / dbfilename
        tmp = self._receive(stream, data_dir, live)
        try:
            if not (self.config.service or self.config.start_command):
                kept = data_dir / f"{dbfilename}.restored"
                os.replace(tmp, kept)
                _fsync_dir(data_dir)
                raise RestoreRefused(
                    reason=f"backupd cannot start this Redis again (set service or start_command); "
                    f"the backup is at {kept}: stop Redis, move it to {live}, start Redis"
                )
            if reachable or self.config.service:
                self._stop()
            if live.exists():
                os.replace(
                    live, live.with_name(f"{dbfilename}.before-restore-{time.strftime('%Y%m%dT%H%M%S')}")
                )
            os.replace(tmp, live)
            _fsync_dir(data_dir)
            self._start()
        finally:
            tmp.unlink(missing_ok=True)

    # --- restore steps ----------------------------------------------------------------------
    def _receive(self, stream: BinaryIO, data_dir: Path, live: Path) -> Path:
        """Write the stream to a temp file beside the live RDB, check and fsync it, give it
        the live file's owner; return its path. Raise RestoreFailed if it is not an RDB."""
        fd, name = tempfile.mkstemp(prefix=".restore-", suffix=".rdb", dir=data_dir)
        tmp = Path(name)
        try:
            head, tail = b"", b""
            with os.fdopen(fd, "wb") as f:
                while chunk := stream.read(READ_SIZE):
                    if len(head) < len(MAGIC):
                        head += chunk[: len(MAGIC) - len(head)]
                    tail = (tail + chunk)[-HOLD:]
                    f.write(chunk)
                if not head.startswith(MAGIC):
                    raise RestoreFailed(reason="the backup is not an RDB file (no REDIS magic)")
                drop, problem = rdb_end(tail)
                if problem:
                    raise RestoreFailed(reason=problem)
                if drop:
                    f.truncate(f.tell() - drop)
                f.flush()
                os.fsync(f.fileno())
            owner = live if live.exists() else data_dir
            st = owner.stat()
            with contextlib.suppress(PermissionError):
                os.chown(tmp, st.st_uid, st.st_gid)
            os.chmod(tmp, (st.st_mode & 0o660) if owner is live else 0o600)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, (RestoreFailed, Cancelled, KeyboardInterrupt)):
                raise
            raise RestoreFailed(reason=f"receiving the backup failed: {exc}") from exc
        return tmp

    def _stop(self) -> None:
        if self.config.service:
            result = run(["systemctl", "stop", self.config.service], child_env({}), timeout=STOP_TIMEOUT)
            if not result.ok:
                raise RestoreFailed(
                    reason=f"systemctl stop {self.config.service}: {last_line(result.stderr)}"
                )
            return
        result = self._call("SHUTDOWN", "NOSAVE")
        if result.text.strip().startswith(("ERR", "NOPERM")):
            raise RestoreFailed(reason=f"SHUTDOWN NOSAVE refused: {last_line(result.text)}")
        deadline = time.monotonic() + STOP_TIMEOUT
        while self._reachable():
            if time.monotonic() > deadline:
                raise RestoreFailed(reason="Redis did not stop after SHUTDOWN NOSAVE")
            time.sleep(0.1)

    def _start(self) -> None:
        proc: subprocess.Popen[bytes] | None = None
        if self.config.service:
            result = run(["systemctl", "start", self.config.service], child_env({}), timeout=START_TIMEOUT)
            if not result.ok:
                raise RestoreFailed(
                    reason=f"systemctl start {self.config.service}: {last_line(result.stderr)}"
                )
        else:
            assert self.config.start_command
            try:
                proc = subprocess.Popen(
                    self.config.start_command,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            except OSError as exc:
                raise RestoreFailed(reason=f"start_command failed: {exc.strerror}") from None
            # A start_command that stays in the foreground must still be reaped some day.
            threading.Thread(target=proc.wait, daemon=True).start()
        # Redis listens before it loads the RDB (answering LOADING meanwhile), so a port that
        # stays closed means it died at start, e.g. on an RDB it could not read.
        started = time.monotonic()
        last_seen = started
        while True:
            result = self._call("PING", timeout=10)
            reply = result.text.strip()
            if reply == "PONG":
                return
            now = time.monotonic()
            if "Could not connect" not in result.stderr:
                last_seen = now
            if proc is not None and proc.poll() not in (None, 0):
                raise RestoreFailed(reason=f"start_command exited with status {proc.returncode}")
            if now - last_seen > START_GRACE or now - started > START_TIMEOUT:
                raise RestoreFailed(reason="Redis did not come back after the restore; see its log")
            time.sleep(0.1)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
