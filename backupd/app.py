"""Application: builds the daemon's parts from a config and wires them together.

State DB → (interrupted executions marked) → event bus → queue manager → control service and
its extensions (restore, integrity, retention, catalog, notifications, metrics) → control
socket → scheduler. ``stop`` takes them down in the reverse order.
"""

from __future__ import annotations

import logging
import os
import threading
import zoneinfo
from collections.abc import Callable, Mapping
from typing import Any

from backupd import catalog
from backupd.adapters import AdapterContext
from backupd.bus import EventBus
from backupd.config.load import LoadedConfig
from backupd.executions import Services, run_backup
from backupd.integrity import SYSTEM_TASK as INTEGRITY_TASK
from backupd.ipc.handlers import make_dispatch
from backupd.ipc.server import ControlServer
from backupd.logs import setup_logging
from backupd.scheduler.queue import QueueManager, WorkItem
from backupd.scheduler.scheduler import Scheduler, ScheduleSpec
from backupd.service import ControlService
from backupd.store.state import StateStore

log = logging.getLogger("backupd")


class Application:
    def __init__(self, loaded: LoadedConfig, reloader: Callable[[], str] | None = None) -> None:
        self.loaded = loaded
        self._reloader = reloader
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._keyring: Any = None
        self._keyring_lock = threading.Lock()
        self.socket_path = loaded.socket_path

    # --- start and stop -----------------------------------------------------------------
    def start(self) -> None:
        state_dir = self.loaded.state_dir
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.store = StateStore(state_dir / "state.db")
        orphans = self.store.interrupt_orphans()
        if orphans:
            log.warning(
                "executions %s were active when the daemon last stopped; marked interrupted",
                ", ".join(map(str, orphans)),
                extra={"MESSAGE_ID": catalog.UNCLEAN_STOP},
            )
        self.bus = EventBus()
        limit = self.store.get_setting("max_concurrent_jobs")
        self.queue = QueueManager(int(limit) if limit else self.loaded.config.daemon.max_concurrent_jobs)
        self.actx = AdapterContext(state_dir, state_dir / "work").ensure()
        self._clean_work_dir()
        self.services = Services(
            store=self.store,
            bus=self.bus,
            config=lambda: self.loaded,
            adapter_context=self.actx,
            keyring=self.keyring,
            notify=self.notify_event,
            compression_threads=self._compression_threads,
        )
        self.service = ControlService(self.loaded, self.store, self.bus, self.queue, self._run_work)
        self.service.reloader = self._reloader
        self._install_extensions()
        if orphans:
            self.notify_event("daemon.unclean_stop", None, None, None, f"interrupted executions: {orphans}")
        self.server = ControlServer(self.socket_path, make_dispatch(self.service))
        self.server.listen()
        self.server.start()
        self.scheduler = Scheduler(
            jobs=self._schedule_specs,
            store=self.store,
            trigger=self._scheduled,
            tz=lambda: zoneinfo.ZoneInfo(self.loaded.config.daemon.timezone),
        )
        self.service.next_run = self.scheduler.next_run
        self._sched_thread = threading.Thread(
            target=self.scheduler.run, args=(self._stop, self._wake), name="scheduler", daemon=True
        )
        self._sched_thread.start()

    def _install_extensions(self) -> None:
        """Optional services; each registers itself on the control service."""
        from backupd import extensions

        extensions.install(self)

    def _clean_work_dir(self) -> None:
        """Remove snapshots and secret files a killed daemon may have left in the work dir."""
        for leftover in self.actx.work_dir.iterdir():
            if leftover.is_file():
                leftover.unlink(missing_ok=True)

    def stop(self, grace: float) -> None:
        self._stop.set()
        self._wake.set()
        self.queue.shutdown(grace)
        self.server.stop()
        closer = getattr(self, "close_extensions", None)
        if closer is not None:
            closer()
        self.store.close()

    # --- wiring ---------------------------------------------------------------------------
    def keyring(self) -> Any:
        with self._keyring_lock:
            if self._keyring is None:
                from backupd.crypto.keyring import Keyring

                self._keyring = Keyring.from_config(self.loaded.config.encryption)
            return self._keyring

    def _compression_threads(self) -> int:
        """zstd worker threads per job: at least two on a machine with two or more cores
        (measured on 2 cores: compression on two worker threads beat compressing on the
        job's own thread, and overlaps with the hashing, encryption and writing done there),
        more when cores are plentiful per concurrent job."""
        cores = os.cpu_count() or 1
        return max(2, cores // max(1, self.queue.limit)) if cores >= 2 else 0

    def _run_work(self, kind: str, item: WorkItem) -> None:
        runner = self.service.extensions.get(f"run.{kind}")
        if kind == "backup":
            run_backup(self.services, item)
        elif runner is not None:
            runner(item)
        else:  # pragma: no cover - every kind that can be submitted has a runner
            raise RuntimeError(f"no runner for {kind}")

    def _schedule_specs(self) -> Mapping[str, ScheduleSpec]:
        specs = {
            name: ScheduleSpec(cron=job.schedule, catch_up=job.catch_up, random_delay=job.random_delay)
            for name, job in self.loaded.config.jobs.items()
            if job.schedule
        }
        if self.loaded.config.jobs:
            specs[INTEGRITY_TASK] = ScheduleSpec(
                cron=self.loaded.config.daemon.integrity_schedule, catch_up=False, random_delay=0.0
            )
        return specs

    def _scheduled(self, job: str, reason: str) -> None:
        if job == INTEGRITY_TASK:
            try:
                self.service.submit(job, "verify", reason, coalesce=True, details={"scheduled": True})
            except Exception as exc:
                log.warning("integrity check not queued: %s", exc)
            return
        if reason == "catch-up":
            log.info(
                "%s: catching up a run missed while the daemon was down",
                job,
                extra={"JOB": job, "MESSAGE_ID": catalog.CATCH_UP},
            )
        try:
            self.service.trigger_scheduled(job, reason)
        except Exception as exc:
            log.warning("%s: scheduled run not queued: %s", job, exc, extra={"JOB": job})

    def notify_event(
        self, kind: str, job: str | None, execution_id: int | None, status: str | None, message: str
    ) -> None:
        sender = self.service.extensions.get("notify") if hasattr(self, "service") else None
        if sender is not None:
            sender.emit(kind, job, execution_id, status, message)

    def apply_config(self, new: LoadedConfig) -> None:
        old = self.loaded
        self.loaded = new
        self.service.swap_config(new)
        with self._keyring_lock:
            self._keyring = None
        setup_logging(new.config.daemon.log_target, new.config.daemon.log_level)
        if self.store.get_setting("max_concurrent_jobs") is None:
            self.queue.set_limit(new.config.daemon.max_concurrent_jobs)
        if new.state_dir != old.state_dir or new.socket_path != old.socket_path:
            log.warning("state_dir and socket changes take effect at the next restart")
        for hook in self.service.extensions.get("reload_hooks", []):
            try:
                hook(new)
            except Exception as exc:  # one extension's trouble must not undo a valid reload
                log.error("after reload: %s", exc)
        self._wake.set()

    # --- health and status ----------------------------------------------------------------
    def healthy(self) -> bool:
        return self.queue.healthy() and self._sched_thread.is_alive() and self.server.alive()

    def status_line(self) -> str:
        snap = self.queue.snapshot()
        running = snap["running"]
        if running:
            first = running[0]
            prog = first["progress"]
            amount = (
                f"{100 * prog['bytes'] / prog['total']:.0f}%"
                if prog.get("total")
                else f"{prog['bytes'] / 1048576:.1f} MiB"
            )
            more = f" (+{len(running) - 1} more)" if len(running) > 1 else ""
            queued = f", {len(snap['queued'])} queued" if snap["queued"] else ""
            return f"running {len(running)}/{self.queue.limit}: {first['job']} {prog['step']} {amount}{more}{queued}"
        upcoming = [(t, j) for j in self.loaded.config.jobs if (t := self.scheduler.next_run(j)) is not None]
        if upcoming:
            when, job = min(upcoming)
            return f"idle; next: {job} at {when.strftime('%Y-%m-%d %H:%M UTC')}"
        return "idle"
