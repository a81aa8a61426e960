"""Helpers shared by the engine adapters: finding client binaries, reading their versions,
running short commands, feeding a restore stream into a tool, and short-lived secret files.

Every subprocess here runs in its own session so that a timeout or a failed restore can kill
the whole process group. Secrets never appear in argv: callers hand them over through a
0600 file in the adapter's work directory (:class:`SecretFile`) or the environment.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dc_field
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

from backupd.errors import Cancelled, DumpFailed
from backupd.sources.base import READ_SIZE, STDERR_LIMIT, ProcessDump, ToolResult, private_file

VERSION_RE = re.compile(r"(\d+(?:\.\d+)+|\d+)")
DEFAULT_TIMEOUT = 60.0


def find_tool(names: Sequence[str], bin_dir: str | Path | None = None) -> str | None:
    """Given candidate executable names in order of preference and an optional directory,
    return the path of the first one found, or None.

    With ``bin_dir`` only that directory is searched (an explicit choice must not silently
    fall back to some other installation); without it, ``$PATH``.
    """
    for name in names:
        if bin_dir is not None:
            candidate = Path(bin_dir) / name
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
        else:
            found = shutil.which(name)
            if found:
                return found
    return None


def parse_version(text: str) -> tuple[int, ...] | None:
    """Given a tool's version text, return the first dotted number in it as a tuple."""
    match = VERSION_RE.search(text)
    return tuple(int(p) for p in match.group(1).split(".")) if match else None


def tool_version(path: str) -> str:
    """Given an executable, return the first line of its ``--version`` output ("" if it has
    none). Cached per file identity, so an upgraded binary is asked again."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return _tool_version(path, st.st_ino, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _tool_version(path: str, _ino: int, _mtime: int) -> str:
    try:
        out = subprocess.run(
            [path, "--version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=15,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (out.stdout or out.stderr).decode("utf-8", "replace").strip()
    return text.splitlines()[0].strip() if text else ""


def child_env(
    overrides: Mapping[str, str], drop_prefixes: Iterable[str] = (), drop: Iterable[str] = ()
) -> dict[str, str]:
    """Given variables to set and inherited ones to drop (by prefix or name), return an
    environment for a tool. Messages are forced to English because errors are matched on."""
    prefixes = tuple(drop_prefixes)
    names = set(drop) | {"LC_ALL", "LANGUAGE"}
    env = {
        k: v for k, v in os.environ.items() if k not in names and not (prefixes and k.startswith(prefixes))
    }
    env["LC_MESSAGES"] = "C"
    env.update(overrides)
    return env


@dataclass(frozen=True)
class RunResult:
    """How a short command ended."""

    code: int
    stdout: bytes
    stderr: str

    @property
    def ok(self) -> bool:
        return self.code == 0

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")


def run(
    argv: Sequence[str], env: Mapping[str, str], stdin: bytes | None = None, timeout: float = DEFAULT_TIMEOUT
) -> RunResult:
    """Given argv, environment and optional input, run the command to completion and return
    its result; on timeout kill its process group and return code -9 with a note in stderr.
    A missing executable is reported as code 127, like a shell would."""
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            start_new_session=True,
        )
    except OSError as exc:
        return RunResult(127, b"", f"cannot run {argv[0]}: {exc.strerror}")
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, err = proc.communicate()
        return RunResult(-9, out, f"{Path(argv[0]).name} timed out after {timeout:.0f}s")
    return RunResult(proc.returncode, out, err.decode("utf-8", "replace").strip())


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Given a process started in its own session, SIGKILL its whole group and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def last_line(
    text: str, prefer: Sequence[str] = ("FATAL:", "ERROR:", "error:", "Failed:"), limit: int = 400
) -> str:
    """Given a tool's stderr, return the line that says why it failed: the last one holding
    one of the ``prefer`` markers (tools add context lines after it), else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    marked = [ln for ln in lines if any(m in ln for m in prefer)]
    pick = marked or lines
    return pick[-1][:limit] if pick else "(no message)"


def scrub(text: str, *secrets: str | None) -> str:
    """Given a message and the secrets in play, return the message with each secret masked.

    Tools do not echo passwords, but a message that reaches logs and replies must not depend
    on that.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


@dataclass
class ToolDump(ProcessDump):
    """A ProcessDump whose failure message quotes the stderr line that says why (libpq and
    others print context lines after the error) and never a secret."""

    secrets: tuple[str | None, ...] = dc_field(default=(), repr=False)

    def finish(self) -> ToolResult:
        try:
            return super().finish()
        except DumpFailed as exc:
            err = self.stderr_text
            reason = str(exc.details.get("reason", ""))
            lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
            if lines and reason.endswith(lines[-1][:500]):
                reason = reason[: len(reason) - len(lines[-1][:500])] + last_line(err)
            raise DumpFailed(database=self.database, reason=scrub(reason, *self.secrets)) from None


class SecretFile:
    """A 0600 file in the work directory holding a secret for one tool run; removed by
    :meth:`remove` (idempotent) or on leaving a ``with`` block. With ``content`` None there
    is no secret and no file (``path`` is None)."""

    def __init__(self, directory: Path, prefix: str, content: str | None) -> None:
        self.path: Path | None = None
        if content is not None:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.path = private_file(directory, prefix, content)

    def remove(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None

    def __enter__(self) -> SecretFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


class StreamFailed(Exception):
    """The restore stream itself raised while being fed to a tool (e.g. a failed decryption)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def feed_process(
    argv: Sequence[str], stream: BinaryIO, env: Mapping[str, str], prefix: bytes = b""
) -> RunResult:
    """Given a tool that reads its input on stdin, pump ``prefix`` then ``stream`` into it and
    return how it ended (stdout is kept up to a bound, stderr likewise).

    The pump runs on a thread in bounded chunks, so a slow tool throttles the reader. If
    reading the stream raises, the tool's process group is killed *before* its stdin is
    closed (so it never sees a clean EOF and commits half an input) and StreamFailed is
    raised with the original error (Cancelled is raised as it is). If the tool exits early, the pump stops at the broken pipe.
    """
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            start_new_session=True,
        )
    except OSError as exc:
        return RunResult(127, b"", f"cannot run {argv[0]}: {exc.strerror}")
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out = _Collector(proc.stdout)
    err = _Collector(proc.stderr)
    failure: list[BaseException] = []

    def pump() -> None:
        assert proc.stdin is not None
        try:
            if prefix:
                proc.stdin.write(prefix)
            while True:
                try:
                    chunk = stream.read(READ_SIZE)
                except BaseException as exc:
                    failure.append(exc)
                    kill_group(proc)
                    return
                if not chunk:
                    break
                proc.stdin.write(chunk)
        except (BrokenPipeError, ValueError, OSError):
            return  # the tool exited; its exit status tells why
        finally:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.close()

    feeder = threading.Thread(target=pump, name="restore-feed", daemon=True)
    feeder.start()
    code = proc.wait()
    feeder.join()
    out.join()
    err.join()
    if failure:
        if isinstance(failure[0], (Cancelled, KeyboardInterrupt)):
            raise failure[0]
        raise StreamFailed(failure[0])
    return RunResult(code, bytes(out.data), err.data.decode("utf-8", "replace").strip())


class _Collector:
    """Drain a pipe on a thread, keeping the last STDERR_LIMIT bytes (a tool's reason for
    failing comes last; the mysql client, for one, first echoes the whole failed statement)."""

    def __init__(self, pipe: BinaryIO) -> None:
        self.data = bytearray()
        self._pipe = pipe
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for chunk in iter(lambda: self._pipe.read(8192), b""):
            self.data += chunk
            if len(self.data) > STDERR_LIMIT:
                del self.data[: len(self.data) - STDERR_LIMIT]

    def join(self) -> None:
        self._thread.join(timeout=10)
