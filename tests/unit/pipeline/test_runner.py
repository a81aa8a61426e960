"""The runner with real dump processes and a real local destination; fakes only inject
faults (a dump tool that misbehaves, a writer that hits ENOSPC)."""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import zstandard

from backupd.adapters import AdapterContext
from backupd.config.model import JobConfig, LocalDestination
from backupd.domain.states import Status, Step
from backupd.errors import StorageError
from backupd.pipeline.context import CancelToken, RunnerContext
from backupd.pipeline.runner import Runner
from backupd.sources.base import ProcessDump, SourceInfo
from backupd.storage.local import LocalStorage

pytestmark = pytest.mark.timeout(60)


class Journal:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str | None, str]] = []
        self.steps: list[str] = []

    def log(self, level: str, step: str | None, message: str, **fields: Any) -> None:
        self.lines.append((level, step, message))

    def step(self, step: str) -> None:
        self.steps.append(str(step))

    def progress(self, step: str, done: int, total: int | None) -> None:
        pass


class ShellSource:
    """A source whose dump is a shell command: the real subprocess machinery, with the
    command chosen to misbehave."""

    engine = "test"
    name = "shell"

    def __init__(self, script: str, validate=lambda h, t, n: None) -> None:
        self.script = script
        self.validate = validate
        self.dumps: list[ProcessDump] = []

    def test(self) -> SourceInfo:
        return SourceInfo("test", "1")

    def list_databases(self) -> list[str]:
        return ["db"]

    def dump(self, database: str) -> ProcessDump:
        d = ProcessDump(["sh", "-c", self.script], database, ".sql", "sh", "1", self.validate).start()
        self.dumps.append(d)
        return d

    def restore(self, stream, target) -> None:  # pragma: no cover - not used here
        raise NotImplementedError


def _ctx(
    tmp_path: Path, source: Any, dests: dict[str, Any] | None = None, compression: str = "zstd", **kw: Any
) -> RunnerContext:
    dests = dests or {"disk": LocalStorage("disk", LocalDestination(path=str(tmp_path / "disk")))}
    job = JobConfig(source="shell", destinations=list(dests), compression=compression)  # type: ignore[arg-type]
    return RunnerContext(
        job_name="job",
        job=job,
        execution_id=7,
        source=source,
        destinations=dests,
        journal=Journal(),
        cancel=CancelToken(),
        **kw,
    )


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_good_dump_streams_to_every_destination(tmp_path: Path) -> None:
    payload = b"-- some sql\n" * 50_000
    (tmp_path / "in.sql").write_bytes(payload)
    disks = {n: LocalStorage(n, LocalDestination(path=str(tmp_path / n))) for n in ("a", "b")}
    ctx = _ctx(tmp_path, ShellSource(f"cat {tmp_path / 'in.sql'}"), disks)
    assert Runner().run(ctx) == Status.SUCCEEDED
    for n in ("a", "b"):
        files = _files(tmp_path / n)
        assert len(files) == 2 and files[1].endswith(".meta.json")
        data = (tmp_path / n / files[0]).read_bytes()
        assert zstandard.ZstdDecompressor().decompressobj().decompress(data) == payload
        meta = json.loads((tmp_path / n / files[1]).read_text())
        assert meta["sha256"] == hashlib.sha256(data).hexdigest() and meta["size"] == len(data)
        assert meta["plaintext_sha256"] == hashlib.sha256(payload).hexdigest()
        assert meta["tool"] == {"name": "sh", "version": "1", "exit_code": 0}


@pytest.mark.parametrize(
    ("script", "reason"),
    [
        ("head -c 300000 /dev/urandom; exit 3", "exited with status 3"),
        ("head -c 300000 /dev/urandom; kill -KILL $$", "killed by signal 9"),
        ("exit 0", "wrote nothing"),
    ],
)
def test_bad_dumps_fail_at_dump_and_commit_nothing(tmp_path: Path, script: str, reason: str) -> None:
    disk = tmp_path / "disk"
    ctx = _ctx(tmp_path, ShellSource(script))
    # an earlier good backup must survive
    disk.mkdir()
    (disk / "job").mkdir()
    (disk / "job" / "old.sql.zst").write_bytes(b"old")
    (disk / "job" / "old.sql.zst.meta.json").write_bytes(b"{}")
    assert Runner().run(ctx) == Status.FAILED
    assert ctx.failed_step == Step.DUMP
    assert reason in (ctx.error or "")
    assert _files(disk) == ["job/old.sql.zst", "job/old.sql.zst.meta.json"]


def test_validator_rejects_malformed_output(tmp_path: Path) -> None:
    src = ShellSource(
        "printf 'not a dump'", validate=lambda h, t, n: None if h.startswith(b"PGDMP") else "no PGDMP magic"
    )
    ctx = _ctx(tmp_path, src)
    assert Runner().run(ctx) == Status.FAILED
    assert "no PGDMP magic" in (ctx.error or "") and _files(tmp_path / "disk") == []


class FullDiskStorage(LocalStorage):
    """Fault injection: the writer raises ENOSPC after ``limit`` bytes, like a full disk."""

    def __init__(self, name: str, root: Path, limit: int) -> None:
        super().__init__(name, LocalDestination(path=str(root)))
        self.limit = limit

    def open_writer(self, key: str):  # type: ignore[override]
        writer = super().open_writer(key)
        original = writer.write
        written = [0]

        def write(data: bytes) -> None:
            written[0] += len(data)
            if written[0] > self.limit:
                writer.abort()
                raise StorageError(destination=self.name, reason=os.strerror(errno.ENOSPC))
            original(data)

        writer.write = write  # type: ignore[method-assign]
        return writer


def test_enospc_on_only_destination_fails_and_frees_temp(tmp_path: Path) -> None:
    src = ShellSource("head -c 3000000 /dev/urandom")
    ctx = _ctx(
        tmp_path, src, {"full": FullDiskStorage("full", tmp_path / "full", 100_000)}, compression="none"
    )
    assert Runner().run(ctx) == Status.FAILED
    assert ctx.failed_step == Step.DUMP and "No space left" in (ctx.error or "")
    assert _files(tmp_path / "full") == []
    # the dump process was stopped, not left writing into a closed pipe
    assert all(d._proc is not None and d._proc.poll() is not None for d in src.dumps)


def test_one_failing_destination_makes_partial(tmp_path: Path) -> None:
    src = ShellSource("head -c 1000000 /dev/urandom")
    dests = {
        "good": LocalStorage("good", LocalDestination(path=str(tmp_path / "good"))),
        "full": FullDiskStorage("full", tmp_path / "full", 50_000),
    }
    ctx = _ctx(tmp_path, src, dests, compression="gzip")
    assert Runner().run(ctx) == Status.PARTIAL
    assert len(_files(tmp_path / "good")) == 2 and _files(tmp_path / "full") == []
    data = next((tmp_path / "good").rglob("*.gz")).read_bytes()
    assert len(gzip.decompress(data)) == 1_000_000
    assert "full" in ctx.results[0].failed_destinations


def test_cancel_kills_the_dump_process_group(tmp_path: Path) -> None:
    src = ShellSource("sleep 30 & wait; echo never")
    ctx = _ctx(tmp_path, src)
    import threading

    t = threading.Thread(target=Runner().run, args=(ctx,))
    started = time.monotonic()
    t.start()
    while not src.dumps:
        time.sleep(0.05)
    time.sleep(0.3)
    ctx.cancel.cancel("cancelled by test")
    t.join(10)
    assert not t.is_alive() and time.monotonic() - started < 10
    assert ctx.status == Status.CANCELLED
    pgid = src.dumps[0].pid
    time.sleep(0.2)
    assert _live_members(pgid) == []  # the whole group, the background sleep included, is gone
    assert _files(tmp_path / "disk") == []


def _live_members(pgid: int | None) -> list[int]:
    """PIDs in process group ``pgid`` that are not zombies (a container's PID 1 may leave
    killed orphans unreaped)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            live.append(int(stat.parent.name))
    return live


def test_adapter_context_is_private(tmp_path: Path) -> None:
    ctx = AdapterContext(tmp_path, tmp_path / "work").ensure()
    assert oct(ctx.work_dir.stat().st_mode & 0o777) == "0o700"
