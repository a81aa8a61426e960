"""Restore: pick a backup, check it, decrypt, decompress and hand the stream to the source.

A restore is an execution like a backup: it is queued, takes a slot of
``max_concurrent_jobs`` and the job's lock (so a backup and a restore of one job never
overlap), and has history, logs and ``--follow``.

Before a single byte reaches the database the stored object is verified against its sidecar
(the destination's own check: read back, or the store's checksum). The stream is hashed
again while it is restored; a mismatch at the end fails the stream, so the engine's restore
aborts (a single transaction for PostgreSQL, a temp file for SQLite).
"""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, BinaryIO

from backupd.domain.naming import sidecar_key
from backupd.domain.records import BackupRecord
from backupd.domain.sidecar import Sidecar, decode_sidecar
from backupd.domain.states import Status, Step
from backupd.errors import BackupNotFound, JobNotFound, RestoreRefused, VerifyFailed
from backupd.execlog import StoreJournal
from backupd.executions import build_destinations
from backupd.pipeline.context import CancelToken
from backupd.pipeline.streams import decompressor
from backupd.scheduler.queue import WorkItem
from backupd.sources.base import RestoreTarget
from backupd.sources.registry import build_source
from backupd.storage.base import get_bytes

if TYPE_CHECKING:
    from backupd.app import Application
    from backupd.service import ControlService

COMPATIBLE = {"mysql": {"mysql", "mariadb"}, "mariadb": {"mysql", "mariadb"}}


class HashCheckingReader(io.RawIOBase):
    """Reads ``src`` and raises VerifyFailed at EOF unless size and SHA-256 match."""

    def __init__(
        self, src: BinaryIO, key: str, size: int, sha256: str | None, cancel: CancelToken | None = None
    ) -> None:
        self._src, self._key, self._size, self._sha = src, key, size, sha256
        self._cancel = cancel
        self._hash = hashlib.sha256()
        self._n = 0
        self._checked = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._cancel is not None:
            self._cancel.check()  # a cancelled restore fails its stream, so the engine's restore aborts
        data = self._src.read(len(b))
        if not data:
            if not self._checked:
                self._checked = True
                if self._sha is not None and (self._n != self._size or self._hash.hexdigest() != self._sha):
                    raise VerifyFailed(
                        key=self._key, reason="the bytes read during restore differ from the sidecar"
                    )
            return 0
        self._hash.update(data)
        self._n += len(data)
        b[: len(data)] = data
        return len(data)


def open_plaintext(
    app: Application, storage: Any, rec: BackupRecord, sc: Sidecar, cancel: CancelToken | None = None
) -> BinaryIO:
    """Given a stored backup and its sidecar, return a stream of the dump's plaintext, hash
    checked at EOF (and failing once ``cancel`` is set)."""
    raw = storage.open_reader(rec.key)
    stream: BinaryIO = io.BufferedReader(
        HashCheckingReader(raw, rec.key, sc.size, sc.sha256, cancel), 1024 * 1024
    )
    if sc.encryption is not None:
        from backupd.crypto.bkd1 import DecryptReader

        stream = DecryptReader(stream, app.keyring())  # type: ignore[assignment]
    return decompressor(sc.compression, stream)


class RestoreService:
    def __init__(self, app: Application) -> None:
        self._app = app

    def choose(
        self,
        job: str | None,
        key: str | None,
        database: str | None,
        destination: str | None,
        at: str | None,
    ) -> BackupRecord:
        """Return the backup a restore request names; raise BackupNotFound saying why not."""
        store = self._app.store
        if key is not None:
            found = store.find_backup(key, destination)
            if not found:
                raise BackupNotFound(what=f"with key {key!r}")
            if job is not None and found[0].job != job:
                raise BackupNotFound(what=f"with key {key!r} in job {job!r}")
            return found[0]
        assert job is not None
        rows = store.backups(job=job, destination=destination)
        databases = sorted({r.database for r in rows})
        if database is None and len(databases) > 1:
            raise BackupNotFound(
                what=f"chosen: job {job} holds databases {', '.join(databases)}; add --database"
            )
        if database is not None:
            rows = [r for r in rows if r.database == database]
        if at is not None:
            try:
                limit = datetime.fromisoformat(at.replace("Z", "+00:00"))
            except ValueError:
                raise BackupNotFound(what=f"at {at!r}: not an ISO 8601 time") from None
            if limit.tzinfo is None:
                limit = limit.replace(tzinfo=UTC)
            rows = [r for r in rows if r.created_at <= limit.timestamp()]
        if not rows:
            raise BackupNotFound(
                what=f"for job {job}"
                + (f" database {database}" if database else "")
                + (f" at or before {at}" if at else "")
            )
        order = {name: i for i, name in enumerate(self._app.loaded.config.jobs[job].destinations)}
        return max(rows, key=lambda r: (r.created_at, -order.get(r.destination, 99)))

    def submit(self, service: ControlService, **kw: Any) -> dict[str, Any]:
        job, to = kw.get("job"), kw.get("to")
        rec = self.choose(job, kw.get("key"), kw.get("database"), kw.get("destination"), kw.get("at"))
        cfg = self._app.loaded.config
        if rec.job not in cfg.jobs:
            raise JobNotFound(job=rec.job)
        target_source = to or cfg.jobs[rec.job].source
        if target_source not in cfg.sources:
            raise RestoreRefused(reason=f"no source named {target_source!r}")
        details = {
            "key": rec.key,
            "destination": rec.destination,
            "source": target_source,
            "as_name": kw.get("as_name"),
            "force": bool(kw.get("force")),
        }
        res = service.submit(rec.job, "restore", "manual", details=details)
        return {**res, "key": rec.key, "destination": rec.destination, "source": target_source}

    def run(self, item: WorkItem) -> None:
        app, store, eid = self._app, self._app.store, item.execution_id
        store.mark_running(eid)
        journal = StoreJournal(store, app.bus, item.job, eid, item.progress)
        d = store.get_execution(eid).details
        step = Step.DOWNLOAD
        try:
            journal.step(step)
            cfg = app.loaded
            storage = build_destinations(cfg, [d["destination"]], app.actx)[d["destination"]]
            try:
                sc = decode_sidecar(get_bytes(storage, sidecar_key(d["key"])))
                rec = BackupRecord(
                    destination=d["destination"],
                    key=d["key"],
                    job=sc.job,
                    database=sc.database,
                    created_at=0,
                    size=sc.size,
                    sha256=sc.sha256 or "",
                )
                source_cfg = cfg.config.sources[d["source"]]
                source = build_source(d["source"], source_cfg, app.actx)
                if sc.source.type not in COMPATIBLE.get(source.engine, {source.engine}):
                    raise RestoreRefused(
                        reason=f"{d['key']} is a {sc.source.type} backup; source {d['source']} is {source.engine}"
                    )
                journal.log("info", step, f"verifying {d['key']} on {d['destination']} against its sidecar")
                if sc.sha256:
                    storage.verify(d["key"], sc.size, sc.sha256)
                    journal.log("info", step, f"verified: {sc.size} bytes, sha256 {sc.sha256[:16]}…")
                else:
                    journal.log(
                        "warning",
                        step,
                        "the sidecar has no checksum: restoring without verifying the stored bytes",
                    )
                step = Step.RESTORE
                journal.step(step)
                target = RestoreTarget(
                    database=d.get("as_name"), force=bool(d.get("force")), original_database=sc.database
                )
                journal.log(
                    "info",
                    step,
                    f"restoring {sc.database} into source {d['source']}"
                    + (f" as {d['as_name']}" if d.get("as_name") else ""),
                )
                with open_plaintext(app, storage, rec, sc, item.cancel) as plain:
                    source.restore(plain, target)
            finally:
                storage.close()
        except Exception as exc:
            journal.log("error", step, str(exc))
            store.finish_execution(
                eid, Status.FAILED, error=f"{step.value}: {exc}", details={"failed_step": step.value}
            )
            app.notify_event("restore.failed", item.job, eid, "failed", str(exc))
            app.bus.publish({"type": "status", "execution_id": eid, "job": item.job, "status": "failed"})
            return
        journal.log("info", Step.RESTORE, "restore succeeded")
        store.finish_execution(eid, Status.SUCCEEDED, size=sc.plaintext_size)
        app.notify_event("restore.succeeded", item.job, eid, "succeeded", f"restored {d['key']}")
        app.bus.publish({"type": "status", "execution_id": eid, "job": item.job, "status": "succeeded"})


def install(app: Application, ext: dict[str, Any]) -> None:
    service = RestoreService(app)
    ext["restore"] = service
    ext["run.restore"] = service.run
