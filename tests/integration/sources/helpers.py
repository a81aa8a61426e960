"""Helpers for the source adapter tests: draining a dump, watching every process's argv for
a secret while something runs, fake tools for fault injection, adapter contexts."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from backupd.adapters import AdapterContext
from backupd.sources.base import DumpHandle, ToolResult


def make_ctx(tmp_path: Path) -> AdapterContext:
    return AdapterContext(state_dir=tmp_path / "state", work_dir=tmp_path / "work").ensure()


def drain(handle: DumpHandle, size: int = 256 * 1024) -> bytes:
    """Read a dump handle to EOF and return the bytes (finish() is the caller's)."""
    chunks = []
    while data := handle.read(size):
        chunks.append(data)
    return b"".join(chunks)


def dump_all(handle: DumpHandle) -> tuple[bytes, ToolResult]:
    data = drain(handle)
    return data, handle.finish()


def fake_tool(directory: Path, name: str, body: str) -> Path:
    """Write an executable shell script ``directory/name`` (for fault injection only)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


class ArgvWatch:
    """Sample /proc/*/cmdline of every process on a thread until stopped; record any
    process whose argv contains ``secret`` and the program names seen (to prove that the
    sampling overlapped the tool's lifetime)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret.encode()
        self.hits: list[tuple[int, str]] = []
        self.seen: set[str] = set()
        self.passes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = str(os.getpid())
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit() or pid == me:
                    continue
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        raw = f.read()
                except OSError:
                    continue
                if not raw:
                    continue
                argv = raw.split(b"\0")
                self.seen.update(os.path.basename(a.decode(errors="replace")) for a in argv[:2] if a)
                if self.secret in raw:
                    self.hits.append((int(pid), raw.replace(b"\0", b" ").decode(errors="replace")))
            self.passes += 1
            time.sleep(0.001)

    def wait_seen(self, name: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while name not in self.seen:
            if time.monotonic() > deadline:
                raise AssertionError(f"{name} never showed up in /proc during the watch")
            time.sleep(0.005)

    def __enter__(self) -> ArgvWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def watched_dump(handle: DumpHandle, watch: ArgvWatch, tool: str) -> tuple[bytes, ToolResult]:
    """Read the first chunk, hold the (then blocked) tool alive until the watcher has seen
    it, then drain and finish."""
    first = handle.read()
    watch.wait_seen(tool)
    rest = drain(handle)
    return first + rest, handle.finish()


class FailingStream:
    """A restore stream that yields ``data[:limit]`` and then raises, like a decryption
    failure in the middle of a backup."""

    def __init__(self, data: bytes, limit: int, error: BaseException | None = None) -> None:
        self._data = data
        self._pos = 0
        self._limit = limit
        self._error = error or OSError("simulated read failure in the backup stream")

    def read(self, size: int = -1) -> bytes:
        if self._pos >= self._limit:
            raise self._error
        end = self._limit if size < 0 else min(self._limit, self._pos + size)
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk


def check_watch_detects(secret: str) -> None:
    """Prove that an ArgvWatch finds ``secret`` when it *is* on an argv, so that a test
    asserting "no hits" can fail."""
    with ArgvWatch(secret) as probe:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(20)", secret])
        try:
            deadline = time.monotonic() + 10
            while not probe.hits and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            proc.kill()
            proc.wait()
    assert any(pid == proc.pid for pid, _ in probe.hits), "the argv watcher missed a planted secret"
