"""ControlService: the one facade that control-socket handlers call (DESIGN §9).

Every public method is an operation of the protocol; it returns plain data (or msgspec
Structs) and raises a :class:`~backupd.errors.BackupdError` subclass, whose ``code`` is the
stable fault code the client sees. Streaming operations take an ``emit`` callback.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from backupd import __version__
from backupd.bus import EventBus
from backupd.config.load import LoadedConfig
from backupd.domain.records import BackupRecord, ExecutionRecord, LogLine
from backupd.domain.states import FINAL_STATUSES, Status
from backupd.errors import (
    BackupNotFound,
    JobNotFound,
    NotCancellable,
    SettingInvalid,
    SettingUnknown,
)
from backupd.ipc.protocol import PROTOCOL_VERSION
from backupd.scheduler.queue import QueueManager, WorkItem
from backupd.store.state import StateStore

Emit = Callable[[dict[str, Any]], None]
SETTINGS: dict[str, Callable[[str], Any]] = {"max_concurrent_jobs": int}
WAIT_SLICE = 0.5


class ControlService:
    def __init__(
        self,
        loaded: LoadedConfig,
        store: StateStore,
        bus: EventBus,
        queue: QueueManager,
        run_work: Callable[[str, WorkItem], None],
    ) -> None:
        self._loaded = loaded
        self.store = store
        self.bus = bus
        self.queue = queue
        self._run_work = run_work
        self.started_at = time.time()
        self.reloader: Callable[[], str] | None = None
        self.next_run: Callable[[str], datetime | None] = lambda job: None
        self.extensions: dict[str, Any] = {}  # restore, integrity, retention, notify, metrics

    # --- config ----------------------------------------------------------------------------
    @property
    def loaded(self) -> LoadedConfig:
        return self._loaded

    def swap_config(self, loaded: LoadedConfig) -> None:
        self._loaded = loaded

    def admins(self) -> list[str]:
        return list(self._loaded.config.daemon.admins)

    def _job(self, job: str) -> Any:
        cfg = self._loaded.config.jobs.get(job)
        if cfg is None:
            raise JobNotFound(job=job)
        return cfg

    def _ext(self, name: str) -> Any:
        return self.extensions[name]

    # --- basics ----------------------------------------------------------------------------
    def hello(self, protocol: int, client: str | None = None) -> dict[str, Any]:
        return {"protocol": PROTOCOL_VERSION, "version": __version__, "pid": os.getpid()}

    def status(self) -> dict[str, Any]:
        snap = self.queue.snapshot()
        return {
            "version": __version__,
            "pid": os.getpid(),
            "uptime": time.time() - self.started_at,
            "config": [str(f) for f in self._loaded.files],
            "state_dir": str(self._loaded.state_dir),
            "max_concurrent_jobs": self.queue.limit,
            "running": snap["running"],
            "queued": snap["queued"],
            "jobs": len(self._loaded.config.jobs),
        }

    def jobs(self) -> list[dict[str, Any]]:
        out = []
        for name, job in sorted(self._loaded.config.jobs.items()):
            last = self.store.last_execution(name)
            last_ok = self.store.last_execution(name, Status.SUCCEEDED)
            nxt = self.next_run(name)
            out.append(
                {
                    "name": name,
                    "source": job.source,
                    "destinations": list(job.destinations),
                    "schedule": job.schedule,
                    "next_run": nxt.timestamp() if nxt else None,
                    "last_status": last.status if last else None,
                    "last_execution": last.id if last else None,
                    "last_success": last_ok.finished_at if last_ok else None,
                    "encryption": job.encryption,
                    "compression": job.compression,
                }
            )
        return out

    # --- executions ------------------------------------------------------------------------
    def submit(
        self, job: str, kind: str, trigger: str, coalesce: bool = False, details: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Queue ``kind`` ("backup", "restore", "verify") for ``job``; return execution id and
        whether it was coalesced into a pending run. Names starting with ``@`` are system tasks
        (``@integrity``), which no configured job can be called."""
        if not job.startswith("@"):
            self._job(job)

        def create() -> int:
            return self.store.create_execution(job, trigger, kind, details)

        def drop(item: WorkItem, reason: str) -> None:
            self.store.finish_execution(item.execution_id, Status.CANCELLED, error=reason)
            self.bus.publish(
                {"type": "status", "execution_id": item.execution_id, "job": job, "status": "cancelled"}
            )

        def work(item: WorkItem) -> None:
            try:
                self._run_work(kind, item)
            except Exception as exc:
                # whatever escaped the runner is still recorded: no execution stays "running"
                if self.store.get_execution(item.execution_id).status not in FINAL_STATUSES:
                    self.store.finish_execution(
                        item.execution_id, Status.FAILED, error=f"internal error: {exc}"
                    )
                    self.bus.publish(
                        {"type": "status", "execution_id": item.execution_id, "job": job, "status": "failed"}
                    )
                raise

        submitted = self.queue.submit(job, kind, trigger, create, work, drop, coalesce=coalesce)
        if not submitted.coalesced:
            self.bus.publish(
                {"type": "status", "execution_id": submitted.execution_id, "job": job, "status": "queued"}
            )
        return {"execution_id": submitted.execution_id, "coalesced": submitted.coalesced}

    def run(self, job: str, trigger: str = "manual") -> dict[str, Any]:
        return self.submit(job, "backup", trigger)

    def trigger_scheduled(self, job: str, reason: str) -> None:
        """Scheduler callback: queue a run, coalescing with a pending one."""
        self.submit(job, "backup", reason, coalesce=True)

    def cancel(self, execution: int) -> dict[str, Any]:
        rec = self.store.get_execution(execution)  # raises execution-not-found
        if rec.status in FINAL_STATUSES:
            raise NotCancellable(execution=execution, status=rec.status)
        before = self.queue.cancel(execution)
        return {"execution_id": execution, "was": before}

    def history(self, job: str | None = None, limit: int = 20) -> list[ExecutionRecord]:
        if job is not None and job not in self._loaded.config.jobs and not self.store.history(job, 1):
            raise JobNotFound(job=job)
        return self.store.history(job, max(1, min(limit, 10_000)))

    def execution(self, execution: int) -> dict[str, Any]:
        rec = self.store.get_execution(execution)
        item = self.queue.get(execution)
        out: dict[str, Any] = {"record": rec}
        if item is not None and item.state == "running":
            out["progress"] = item.progress.as_dict()
        return out

    def wait(self, execution: int, timeout: float | None = None, emit: Emit | None = None) -> ExecutionRecord:
        """Block until the execution is final (or ``timeout``); return its record."""
        self.store.get_execution(execution)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if self.queue.wait(execution, WAIT_SLICE):
                rec = self.store.get_execution(execution)
                if rec.status in FINAL_STATUSES:
                    return rec
            if emit is not None:
                emit({"type": "heartbeat"})  # notices a client that went away
            if deadline is not None and time.monotonic() > deadline:
                return self.store.get_execution(execution)

    def logs(
        self, execution: int, after: int = 0, follow: bool = False, emit: Emit | None = None
    ) -> list[LogLine]:
        """Return log lines after ``after``; with ``follow``, stream new ones as events until
        the execution is final, then return the rest."""
        self.store.get_execution(execution)
        if not follow or emit is None:
            return self.store.logs(execution, after)
        seq = after
        while True:
            for line in self.store.logs(execution, seq):
                emit({"type": "log", **self._line_dict(line)})
                seq = line.seq
            item = self.queue.get(execution)
            finished = item is None or item.done.is_set()  # done comes after retention, the last step
            if finished and self.store.get_execution(execution).status in FINAL_STATUSES:
                return self.store.logs(execution, seq)
            self.queue.wait(execution, WAIT_SLICE)
            item = self.queue.get(execution)
            if item is not None and item.state == "running":
                emit(
                    {
                        "type": "progress",
                        "execution_id": execution,
                        "job": item.job,
                        **item.progress.as_dict(),
                    }
                )

    @staticmethod
    def _line_dict(line: LogLine) -> dict[str, Any]:
        return {
            "execution_id": line.execution_id,
            "seq": line.seq,
            "time": line.time,
            "level": line.level,
            "step": line.step,
            "message": line.message,
        }

    def watch(self, execution: int | None = None, emit: Emit | None = None) -> dict[str, Any]:
        """Stream every event (or one execution's) until the client leaves or, for one
        execution, until it is final."""
        assert emit is not None
        if execution is not None:
            self.store.get_execution(execution)
        sub = self.bus.subscribe(execution)
        try:
            emit({"type": "snapshot", **self.queue.snapshot()})
            while True:
                event = sub.get(timeout=1.0)
                emit(event if event is not None else {"type": "heartbeat"})
                if execution is not None and self.store.get_execution(execution).status in FINAL_STATUSES:
                    return {"execution": self.store.get_execution(execution)}
        finally:
            sub.close()

    # --- settings and reload -----------------------------------------------------------------
    def settings_get(self, key: str | None = None) -> dict[str, Any]:
        values = {"max_concurrent_jobs": self.queue.limit}
        if key is None:
            return values
        if key not in values:
            raise SettingUnknown(key=key, known=", ".join(SETTINGS))
        return {key: values[key]}

    def settings_set(self, key: str, value: Any) -> dict[str, Any]:
        if key not in SETTINGS:
            raise SettingUnknown(key=key, known=", ".join(SETTINGS))
        try:
            parsed = SETTINGS[key](str(value))
        except ValueError:
            raise SettingInvalid(key=key, reason=f"expected a whole number, not {value!r}") from None
        if key == "max_concurrent_jobs":
            if not 1 <= parsed <= 64:
                raise SettingInvalid(key=key, reason="must be between 1 and 64")
            self.store.set_setting(key, str(parsed))
            self.queue.set_limit(parsed)
        return {key: parsed}

    def reload(self) -> dict[str, Any]:
        assert self.reloader is not None
        return {"message": self.reloader()}

    # --- backups, restore, verification, retention (extensions) ----------------------------
    def backups(
        self, job: str | None = None, destination: str | None = None, all: bool = False
    ) -> dict[str, Any]:
        if job is not None:
            self._job(job)
        if destination is not None and destination not in self._loaded.config.destinations:
            raise BackupNotFound(what=f"on unknown destination {destination!r}")
        rows: list[BackupRecord] = self.store.backups(job=job, destination=destination)
        result: dict[str, Any] = {"backups": rows}
        if all:
            result["incomplete"] = self._ext("catalog").incomplete(job, destination)
        return result

    def lock(self, key: str, destination: str | None = None) -> dict[str, Any]:
        return self._set_lock(key, destination, True)

    def unlock(self, key: str, destination: str | None = None) -> dict[str, Any]:
        return self._set_lock(key, destination, False)

    def _set_lock(self, key: str, destination: str | None, locked: bool) -> dict[str, Any]:
        found = self.store.find_backup(key, destination)
        if not found:
            raise BackupNotFound(what=f"with key {key!r}" + (f" on {destination}" if destination else ""))
        for rec in found:
            self.store.set_lock(rec.destination, rec.key, locked)
        return {"key": key, "destinations": [r.destination for r in found], "locked": locked}

    def restore(self, **kwargs: Any) -> dict[str, Any]:
        return self._ext("restore").submit(self, **kwargs)

    def verify(self, job: str | None = None, key: str | None = None, full: bool = False) -> dict[str, Any]:
        return self._ext("integrity").submit(self, job=job, key=key, full=full)

    def retention_plan(self, job: str, confirm: bool = False) -> dict[str, Any]:
        self._job(job)
        return self._ext("retention").plan_job(job)

    def retention_apply(self, job: str, confirm: bool = False) -> dict[str, Any]:
        self._job(job)
        return self._ext("retention").apply_job(job, confirm=confirm)

    def destinations_test(self, name: str | None = None) -> list[dict[str, Any]]:
        return self._ext("catalog").test_destinations(name)

    def notifications(self, limit: int = 20) -> list[dict[str, Any]]:
        return self.store.notifications(max(1, min(limit, 1000)))

    def notify_test(self, name: str | None = None) -> dict[str, Any]:
        return self._ext("notify").send_test(name)

    def metrics(self) -> dict[str, Any]:
        return {"text": self._ext("metrics")()}
