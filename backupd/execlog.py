"""StoreJournal: an execution's log lines and progress, to the state DB, the logger (journald
fields JOB, EXECUTION_ID, STEP) and live watchers."""

from __future__ import annotations

import logging
import time
from typing import Any

from backupd.bus import EventBus
from backupd.logs import LEVELS
from backupd.scheduler.queue import Progress
from backupd.store.state import StateStore

log = logging.getLogger("backupd")
PROGRESS_INTERVAL = 0.5


class StoreJournal:
    def __init__(
        self, store: StateStore, bus: EventBus, job: str, execution_id: int, progress: Progress
    ) -> None:
        self._store, self._bus = store, bus
        self.job, self.execution_id = job, execution_id
        self._progress = progress
        self._last_publish = 0.0

    def log(self, level: str, step: str | None, message: str, **fields: Any) -> None:
        line = self._store.append_log(self.execution_id, level, step, message)
        extra = {"JOB": self.job, "EXECUTION_ID": self.execution_id, "STEP": step, **fields}
        log.log(
            LEVELS.get(level, logging.INFO), "%s", f"{self.job}#{self.execution_id}: {message}", extra=extra
        )
        self._bus.publish(
            {
                "type": "log",
                "execution_id": self.execution_id,
                "job": self.job,
                "seq": line.seq,
                "time": line.time,
                "level": level,
                "step": step,
                "message": message,
            }
        )

    def step(self, step: str) -> None:
        self._progress.step = str(step)
        self._progress.done, self._progress.total = 0, None
        self._progress.step_started = time.monotonic()
        self._store.set_step(self.execution_id, str(step))
        self._publish_progress(force=True)

    def progress(self, step: str, done: int, total: int | None) -> None:
        self._progress.done, self._progress.total = done, total
        self._publish_progress(force=total is not None)

    def _publish_progress(self, force: bool) -> None:
        now = time.monotonic()
        if not force and now - self._last_publish < PROGRESS_INTERVAL:
            return
        self._last_publish = now
        self._bus.publish(
            {
                "type": "progress",
                "execution_id": self.execution_id,
                "job": self.job,
                **self._progress.as_dict(),
            }
        )
