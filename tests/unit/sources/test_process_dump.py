"""ProcessDump around real child processes: the pipe it reads from, what finish() accepts,
and abort() reaching the whole process group."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest

from backupd.errors import Cancelled, DumpFailed
from backupd.sources.base import PIPE_SIZE, ProcessDump

pytestmark = pytest.mark.timeout(30)


def _dump(script: str, validate=lambda h, t, n: None) -> ProcessDump:  # type: ignore[no-untyped-def]
    return ProcessDump(["sh", "-c", script], "db", ".sql", "sh", "1", validate).start()


def _drain(d: ProcessDump) -> bytes:
    return b"".join(iter(d.read, b""))


def test_the_dump_pipe_is_enlarged() -> None:
    d = _dump("head -c 3000000 /dev/zero")
    assert d._proc is not None and d._proc.stdout is not None
    assert fcntl.fcntl(d._proc.stdout.fileno(), fcntl.F_GETPIPE_SZ) == PIPE_SIZE
    assert len(_drain(d)) == 3_000_000
    assert d.finish().exit_code == 0


def test_finish_names_what_went_wrong() -> None:
    bad_exit = _dump("printf data; echo 'pg_dump: error: connection lost' >&2; exit 3")
    _drain(bad_exit)
    with pytest.raises(DumpFailed, match="exited with status 3: pg_dump: error: connection lost"):
        bad_exit.finish()
    silent = _dump("exit 0")
    _drain(silent)
    with pytest.raises(DumpFailed, match="wrote nothing"):
        silent.finish()
    malformed = _dump("printf nope", validate=lambda h, t, n: None if h.startswith(b"PGDMP") else "no magic")
    _drain(malformed)
    with pytest.raises(DumpFailed, match="no magic"):
        malformed.finish()


def test_abort_kills_the_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    d = _dump(f"sleep 30 & echo $! > {pid_file}; printf x; wait")
    assert d.read(1) == b"x"
    child = int(pid_file.read_text())
    d.abort()
    with pytest.raises(Cancelled):
        d.read()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.01)
    else:
        pytest.fail("the dump's child survived abort()")
