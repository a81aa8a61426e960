"""Integrity checks of what is stored (``backupctl verify``, and the weekly system task).

Level ``quick``: the data object and its sidecar are both there, and the stored bytes match
the sidecar's size and SHA-256 (the destination's own check: read back, or the store's
checksum). Level ``full``: also decrypt, decompress and check the dump's own structure
(``pg_restore --list``, SQLite ``integrity_check`` on a temporary copy, the RDB magic, the
MySQL trailer, the MongoDB archive magic). Least recently verified first, within a time
budget. Results go to the state DB (``backupctl backups`` shows them); a failure is logged
with its MESSAGE_ID and notified.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from backupd import catalog
from backupd.domain.naming import sidecar_key
from backupd.domain.records import BackupRecord
from backupd.domain.sidecar import decode_sidecar
from backupd.domain.states import Status, Step
from backupd.errors import BackupNotFound
from backupd.execlog import StoreJournal
from backupd.executions import build_destinations
from backupd.restore import open_plaintext
from backupd.scheduler.queue import WorkItem
from backupd.storage.base import get_bytes

if TYPE_CHECKING:
    from backupd.app import Application
    from backupd.service import ControlService

SYSTEM_TASK = "@integrity"
TAIL = 4096


def _tail_and_head(stream: BinaryIO) -> tuple[bytes, bytes]:
    head = stream.read(64) or b""
    tail = bytearray(head)
    while chunk := stream.read(1024 * 1024):
        tail += chunk
        del tail[:-TAIL]
    return head, bytes(tail)


def check_dump(engine: str, stream: BinaryIO, work_dir: Path) -> str | None:
    """Given a dump's plaintext stream, return None if its structure is sound, else why not."""
    if engine == "sqlite":
        fd, name = tempfile.mkstemp(prefix="verify-", suffix=".sqlite", dir=work_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(stream, out, 1024 * 1024)
            conn = sqlite3.connect(f"file:{name}?mode=ro", uri=True)
            try:
                (res,) = conn.execute("PRAGMA integrity_check").fetchone()
            finally:
                conn.close()
            return None if res == "ok" else f"integrity_check: {res}"
        except sqlite3.Error as exc:
            return f"not a valid SQLite database: {exc}"
        finally:
            os.unlink(name)
    if engine == "postgresql":
        head = stream.read(5) or b""
        if head != b"PGDMP":
            return None if head else "empty dump"  # the globals object is plain SQL
        tool = shutil.which("pg_restore") or "pg_restore"
        proc = subprocess.Popen(
            [tool, "--list"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        assert proc.stdin is not None and proc.stderr is not None
        try:
            proc.stdin.write(head)
            shutil.copyfileobj(stream, proc.stdin, 1024 * 1024)
            proc.stdin.close()
        except BrokenPipeError:
            pass
        err = proc.stderr.read().decode(errors="replace")
        return None if proc.wait() == 0 else f"pg_restore --list failed: {err.strip()[:300]}"
    head, tail = _tail_and_head(stream)
    if engine in ("mysql", "mariadb"):
        return None if b"-- Dump completed" in tail else "the '-- Dump completed' trailer is missing"
    if engine == "redis":
        return None if head.startswith(b"REDIS") else "the RDB magic is missing"
    if engine == "mongodb":
        return None if head[:4] == bytes.fromhex("6de29981") else "the archive magic is missing"
    return None


class IntegrityService:
    def __init__(self, app: Application) -> None:
        self._app = app

    def submit(self, service: ControlService, job: str | None, key: str | None, full: bool) -> dict[str, Any]:
        if key is not None and not self._app.store.find_backup(key):
            raise BackupNotFound(what=f"with key {key!r}")
        name = job if job is not None else SYSTEM_TASK
        return service.submit(name, "verify", "manual", details={"key": key, "full": full, "job": job})

    def _targets(self, job: str | None, key: str | None) -> list[BackupRecord]:
        rows = self._app.store.backups(job=job)
        if key is not None:
            rows = [r for r in rows if r.key == key]
        return sorted(rows, key=lambda r: (r.last_verified_at or 0.0, r.created_at))

    def run(self, item: WorkItem) -> None:
        app, store, eid = self._app, self._app.store, item.execution_id
        store.mark_running(eid)
        journal = StoreJournal(store, app.bus, item.job, eid, item.progress)
        journal.step(Step.VERIFY)
        d = store.get_execution(eid).details
        full = bool(d.get("full")) or (
            d.get("scheduled") and app.loaded.config.daemon.integrity_level == "full"
        )
        budget = app.loaded.config.daemon.integrity_budget
        deadline = time.monotonic() + budget
        targets = self._targets(d.get("job"), d.get("key"))
        failures, checked = [], 0
        storages: dict[str, Any] = {}
        try:
            for rec in targets:
                if item.cancel.cancelled:
                    break
                if time.monotonic() > deadline:
                    journal.log(
                        "warning",
                        "verify",
                        f"time budget of {budget:g} s used; {len(targets) - checked} left for next time",
                    )
                    break
                if rec.destination not in app.loaded.config.destinations:
                    continue
                if rec.destination not in storages:
                    storages[rec.destination] = build_destinations(app.loaded, [rec.destination], app.actx)[
                        rec.destination
                    ]
                problem = self.check_one(storages[rec.destination], rec, full)
                checked += 1
                result = "ok" if problem is None else f"failed: {problem}"
                store.record_verification(rec.destination, rec.key, result)
                if problem is None:
                    journal.log(
                        "info", "verify", f"{rec.destination}: {rec.key}: ok", DESTINATION=rec.destination
                    )
                else:
                    failures.append(f"{rec.destination}:{rec.key}: {problem}")
                    journal.log(
                        "error",
                        "verify",
                        f"{rec.destination}: {rec.key}: {problem}",
                        DESTINATION=rec.destination,
                        MESSAGE_ID=catalog.INTEGRITY_FAILED,
                    )
                    app.notify_event(
                        "integrity.failed", rec.job, eid, "failed", f"{rec.destination}: {rec.key}: {problem}"
                    )
        finally:
            for s in storages.values():
                s.close()
        status = Status.FAILED if failures else Status.SUCCEEDED
        journal.log(
            "info" if not failures else "error",
            "verify",
            f"checked {checked} backups ({'full' if full else 'quick'}), {len(failures)} failed",
        )
        store.finish_execution(
            eid,
            status,
            error="; ".join(failures)[:2000] or None,
            details={"checked": checked, "failed": failures},
        )
        app.bus.publish({"type": "status", "execution_id": eid, "job": item.job, "status": status.value})

    def check_one(self, storage: Any, rec: BackupRecord, full: bool) -> str | None:
        """Return None if ``rec`` is sound on ``storage``, else a reason naming what is wrong."""
        if storage.stat(rec.key) is None:
            return "missing object (the data is gone)"
        if storage.stat(sidecar_key(rec.key)) is None:
            return "missing sidecar (the commit marker is gone)"
        try:
            sc = decode_sidecar(get_bytes(storage, sidecar_key(rec.key)))
        except Exception as exc:
            return f"unreadable sidecar: {exc}"
        if not sc.sha256:
            return "the sidecar has no checksum: the stored bytes cannot be checked"
        if sc.sha256 != rec.sha256 or sc.size != rec.size:
            return "the sidecar differs from the catalog"
        try:
            storage.verify(rec.key, sc.size, sc.sha256)
        except Exception as exc:
            return f"checksum mismatch: {exc}"
        if not full:
            return None
        try:
            with open_plaintext(self._app, storage, rec, sc) as plain:
                return check_dump(sc.source.type, plain, self._app.actx.work_dir)
        except Exception as exc:
            return f"cannot read back the dump: {exc}"


def install(app: Application, ext: dict[str, Any]) -> None:
    service = IntegrityService(app)
    ext["integrity"] = service
    ext["run.verify"] = service.run
