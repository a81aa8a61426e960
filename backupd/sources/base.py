"""The source port: what the pipeline needs from a database engine, and a helper for dump
processes.

A source adapter is built from its config section (see :mod:`backupd.sources.registry`) and
offers ``test``, ``list_databases``, ``dump`` and ``restore``. A dump is a :class:`DumpHandle`:
the pipeline reads bytes from it until EOF, then calls ``finish()``, which succeeds only if
the tool exited 0, its stderr shows no fatal error and the bytes are well-formed. Only then
does the pipeline commit anything (DESIGN §5).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from backupd.errors import Cancelled, DumpFailed

READ_SIZE = 256 * 1024
HEAD_BYTES = 64
TAIL_BYTES = 4096
STDERR_LIMIT = 64 * 1024
# The dump's stdout pipe: Linux's default 64 KiB makes the tool (and a database backend
# behind it) stall whenever the job's thread is briefly busy; 1 MiB (the unprivileged limit,
# /proc/sys/fs/pipe-max-size) decouples them. Measured with pg_dump of a 647 MiB dump on
# 2 cores: the whole pipeline about 5 % faster.
PIPE_SIZE = 1024 * 1024


@dataclass(frozen=True)
class SourceInfo:
    """What ``test()`` learned about the server: engine name and version."""

    engine: str
    version: str


@dataclass(frozen=True)
class ToolResult:
    """The dump tool as recorded in the sidecar."""

    name: str
    version: str
    exit_code: int


@dataclass(frozen=True)
class RestoreTarget:
    """Where a restore goes: a database name on the source (or a path for SQLite)."""

    database: str | None
    force: bool = False
    original_database: str | None = None


class DumpHandle(Protocol):
    """A running dump. Read until EOF, then ``finish()``; ``abort()`` on any failure."""

    extension: str  # ".pgdump", ".sql", ".rdb", ".sqlite", ".archive" ...
    database: str

    def read(self, size: int = READ_SIZE) -> bytes: ...

    def finish(self) -> ToolResult:
        """Wait for the tool; raise DumpFailed unless it exited 0 with well-formed output."""
        ...

    def abort(self) -> None:
        """Kill the tool's whole process group and release resources. Idempotent."""
        ...


class SourceAdapter(Protocol):
    """The port every engine implements (one module each under ``backupd/sources``)."""

    name: str
    engine: str

    def test(self) -> SourceInfo:
        """Connect; return engine and version; raise SourceError with the reason if not."""
        ...

    def list_databases(self) -> list[str]:
        """Return all non-system databases (``["-"]`` for engines with no database names)."""
        ...

    def dump(self, database: str) -> DumpHandle:
        """Start dumping ``database`` (or one of ``extra_objects()``); return the handle whose
        bytes stream into the pipeline."""
        ...

    def extra_objects(self) -> list[str]:
        """Return names of objects stored besides the databases (PostgreSQL's ``_globals``);
        optional: the runner treats a source without this method as having none."""
        ...

    def restore(self, stream: BinaryIO, target: RestoreTarget) -> None:
        """Apply a dump read from ``stream`` to ``target``; raise RestoreFailed/RestoreRefused."""
        ...


Validator = Callable[[bytes, bytes, int], str | None]
"""(head, tail, size) → None if the dump is well-formed, else the reason it is not."""


@dataclass
class ProcessDump:
    """A DumpHandle around a subprocess whose stdout is the dump.

    The process runs in its own session so that ``abort()`` can kill the whole group
    (``pg_dump`` may start helpers). Secrets travel through ``env`` or files named in argv,
    never as argv values. stderr is collected on a thread (bounded) so that a chatty tool can
    never block on a full pipe.
    """

    argv: Sequence[str]
    database: str
    extension: str
    tool: str
    tool_version: str
    validate: Validator
    env: Mapping[str, str] | None = None
    fatal_stderr: Sequence[str] = ()
    cleanup: Callable[[], None] | None = None
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _head: bytearray = field(default_factory=bytearray, init=False)
    _tail: bytearray = field(default_factory=bytearray, init=False)
    _size: int = field(default=0, init=False)
    _stderr: bytearray = field(default_factory=bytearray, init=False)
    _stderr_thread: threading.Thread | None = field(default=None, init=False)
    _aborted: bool = field(default=False, init=False)

    def start(self) -> ProcessDump:
        env = dict(os.environ if self.env is None else self.env)
        try:
            self._proc = subprocess.Popen(
                list(self.argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            self._run_cleanup()
            raise DumpFailed(database=self.database, reason=f"cannot start {self.tool}: {exc}") from None
        assert self._proc.stdout is not None
        with contextlib.suppress(OSError):  # best effort: a lower pipe-max-size keeps the default
            fcntl.fcntl(self._proc.stdout.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        self._stderr_thread = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_thread.start()
        return self

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _drain_stderr(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for chunk in iter(lambda: self._proc.stderr.read(8192), b""):  # type: ignore[union-attr]
            # keep the tail: tools print the fatal error last
            self._stderr += chunk
            if len(self._stderr) > STDERR_LIMIT:
                del self._stderr[: len(self._stderr) - STDERR_LIMIT]

    def read(self, size: int = READ_SIZE) -> bytes:
        if self._aborted:
            raise Cancelled()
        assert self._proc is not None and self._proc.stdout is not None
        data = (
            self._proc.stdout.read1(size)
            if hasattr(self._proc.stdout, "read1")
            else self._proc.stdout.read(size)
        )
        if data:
            if len(self._head) < HEAD_BYTES:
                self._head += data[: HEAD_BYTES - len(self._head)]
            self._tail += data
            if len(self._tail) > TAIL_BYTES:
                del self._tail[: len(self._tail) - TAIL_BYTES]
            self._size += len(data)
        return data

    @property
    def stderr_text(self) -> str:
        return self._stderr.decode("utf-8", "replace").strip()

    def finish(self) -> ToolResult:
        assert self._proc is not None
        try:
            code = self._proc.wait()
            if self._stderr_thread:
                self._stderr_thread.join(timeout=5)
            if self._aborted:
                raise Cancelled()
            err = self.stderr_text
            if code != 0:
                how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
                raise DumpFailed(database=self.database, reason=f"{self.tool} {how}: {_last_line(err)}")
            for marker in self.fatal_stderr:
                if marker in err:
                    raise DumpFailed(
                        database=self.database, reason=f"{self.tool} reported: {_last_line(err)}"
                    )
            if self._size == 0:
                raise DumpFailed(database=self.database, reason=f"{self.tool} exited 0 but wrote nothing")
            problem = self.validate(bytes(self._head), bytes(self._tail), self._size)
            if problem:
                raise DumpFailed(database=self.database, reason=problem)
            return ToolResult(self.tool, self.tool_version, code)
        finally:
            self._run_cleanup()

    def abort(self) -> None:
        self._aborted = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self._run_cleanup()

    def _run_cleanup(self) -> None:
        if self.cleanup is not None:
            cb, self.cleanup = self.cleanup, None
            cb()


def _last_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1][:500] if lines else "(no message)"


def private_file(directory: Path, prefix: str, content: str) -> Path:
    """Write ``content`` to a new 0600 file in ``directory``; return its path.

    For secrets handed to tools through a file (PGPASSFILE, --defaults-extra-file): the file
    is created with O_EXCL and mode 0600 before any byte is written.
    """
    import tempfile

    fd, name = tempfile.mkstemp(prefix=prefix, dir=directory)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, content.encode("utf-8"))
    finally:
        os.close(fd)
    return Path(name)
