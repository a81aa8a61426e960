"""QueueManager: a FIFO of executions and a pool of worker threads (DESIGN §8).

- At most ``limit`` executions run at once; the check and the start happen under one lock,
  so the limit holds however many triggers arrive together. The limit can change at run
  time: raising it starts waiting work at once, lowering it lets running work finish.
- One job never runs twice at once: an item whose job is running waits in the queue (items
  of other jobs behind it may start first), so a backup and a restore of one job never
  overlap. A manual trigger while the job is queued or running is refused with
  ``already-running``; a scheduled one is coalesced into the pending run, if any.
- Cancel removes a queued item or reaches a running one through its CancelToken, which kills
  the dump's process group.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from backupd.errors import AlreadyRunning, ExecutionNotFound, NotCancellable, ShuttingDown
from backupd.pipeline.context import CancelToken

IDLE_WAIT = 1.0
log = logging.getLogger("backupd")


@dataclass
class Progress:
    step: str | None = None
    done: int = 0
    total: int | None = None
    started: float = field(default_factory=time.monotonic)
    step_started: float = field(default_factory=time.monotonic)

    def as_dict(self) -> dict[str, Any]:
        elapsed = time.monotonic() - self.started
        rate = self.done / (time.monotonic() - self.step_started) if self.done else 0.0
        return {"step": self.step, "bytes": self.done, "total": self.total, "elapsed": elapsed, "rate": rate}


@dataclass
class WorkItem:
    execution_id: int
    job: str
    kind: str
    trigger: str
    work: Callable[[WorkItem], None]
    on_drop: Callable[[WorkItem, str], None]
    cancel: CancelToken = field(default_factory=CancelToken)
    done: threading.Event = field(default_factory=threading.Event)
    progress: Progress = field(default_factory=Progress)
    state: str = "queued"

    def as_dict(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "job": self.job,
            "kind": self.kind,
            "trigger": self.trigger,
            "state": self.state,
            "progress": self.progress.as_dict(),
        }


@dataclass(frozen=True)
class Submitted:
    execution_id: int
    coalesced: bool = False


class QueueManager:
    def __init__(self, limit: int, on_change: Callable[[], None] = lambda: None) -> None:
        self._cond = threading.Condition()
        self._limit = limit
        self._queue: deque[WorkItem] = deque()
        self._running: dict[int, WorkItem] = {}
        self._workers: list[threading.Thread] = []
        self._accepting = True
        self._stopping = False
        self._on_change = on_change
        self._items: dict[int, WorkItem] = {}

    # --- submitting and cancelling -----------------------------------------------------------
    def submit(
        self,
        job: str,
        kind: str,
        trigger: str,
        create_execution: Callable[[], int],
        work: Callable[[WorkItem], None],
        on_drop: Callable[[WorkItem, str], None],
        coalesce: bool = False,
    ) -> Submitted:
        """Given a job and the work to do, queue it; return the execution id.

        Raise AlreadyRunning if the job is queued or running and ``coalesce`` is False (with
        ``coalesce``, a job already queued returns that execution instead, and a running one
        gets one pending run). Raise ShuttingDown while the daemon stops.
        """
        with self._cond:
            if not self._accepting:
                raise ShuttingDown()
            queued = next((i for i in self._queue if i.job == job), None)
            running = next((i for i in self._running.values() if i.job == job), None)
            if coalesce and queued is not None:
                return Submitted(queued.execution_id, coalesced=True)
            if not coalesce and (queued or running):
                busy = running or queued
                assert busy is not None
                raise AlreadyRunning(job=job, execution=busy.execution_id)
            item = WorkItem(create_execution(), job, kind, trigger, work, on_drop)
            self._queue.append(item)
            self._items[item.execution_id] = item
            self._ensure_workers()
            self._cond.notify_all()
        self._on_change()
        return Submitted(item.execution_id)

    def cancel(self, execution_id: int, reason: str = "cancelled by request") -> str:
        """Cancel a queued or running execution; return its state before ("queued"/"running").
        Raise ExecutionNotFound / NotCancellable for unknown or finished ones."""
        with self._cond:
            item = self._items.get(execution_id)
            if item is None:
                raise ExecutionNotFound(execution=execution_id)
            if item.state == "queued":
                self._queue.remove(item)
                self._finish(item)
            elif item.state != "running":
                raise NotCancellable(execution=execution_id, status=item.state)
            state = item.state
        if state == "queued":
            item.on_drop(item, reason)
            item.state = "finished"
            item.done.set()
            self._on_change()
        else:
            item.cancel.cancel(reason)
        return state

    def get(self, execution_id: int) -> WorkItem | None:
        with self._cond:
            return self._items.get(execution_id)

    def wait(self, execution_id: int, timeout: float | None = None) -> bool:
        item = self.get(execution_id)
        return True if item is None else item.done.wait(timeout)

    # --- limit and state ----------------------------------------------------------------
    @property
    def limit(self) -> int:
        return self._limit

    def set_limit(self, limit: int) -> None:
        with self._cond:
            self._limit = limit
            self._ensure_workers()
            self._cond.notify_all()
        self._on_change()

    def snapshot(self) -> dict[str, list[dict[str, Any]]]:
        with self._cond:
            return {
                "running": [i.as_dict() for i in self._running.values()],
                "queued": [i.as_dict() for i in self._queue],
            }

    def healthy(self) -> bool:
        """Return True when every worker thread is alive. A worker busy with a long backup is
        healthy: the watchdog guards the main loop and the threads, not the length of jobs."""
        with self._cond:
            return all(t.is_alive() for t in self._workers)

    # --- workers ------------------------------------------------------------------------
    def _ensure_workers(self) -> None:
        self._workers = [t for t in self._workers if t.is_alive()]
        while len(self._workers) < self._limit:
            t = threading.Thread(target=self._worker, name=f"worker-{len(self._workers) + 1}", daemon=True)
            self._workers.append(t)
            t.start()

    def _next_item(self) -> WorkItem | None:
        if len(self._running) >= self._limit:
            return None
        busy = {i.job for i in self._running.values()}
        for item in self._queue:
            if item.job not in busy:
                return item
        return None

    def _worker(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping and not self._queue:
                        return
                    if self._workers.index(threading.current_thread()) >= self._limit:
                        # the limit was lowered: surplus workers leave when idle
                        self._workers.remove(threading.current_thread())
                        return
                    item = self._next_item()
                    if item is not None:
                        break
                    self._cond.wait(IDLE_WAIT)
                self._queue.remove(item)
                item.state = "running"
                self._running[item.execution_id] = item
            self._on_change()
            try:
                item.work(item)
            except Exception:  # a bug in one execution must not take a worker away
                log.exception("execution %s (%s) crashed", item.execution_id, item.job)
            finally:
                with self._cond:
                    self._finish(item)
                    item.state = "finished"
                    self._cond.notify_all()
                item.done.set()
                self._on_change()

    def _finish(self, item: WorkItem) -> None:
        self._running.pop(item.execution_id, None)
        # finished items are forgotten after a while; the state DB has the record
        if len(self._items) > 1000:
            for eid in [e for e, i in self._items.items() if i.state == "finished"][:500]:
                del self._items[eid]

    # --- shutdown -----------------------------------------------------------------------
    def shutdown(self, grace: float) -> None:
        """Stop accepting; drop queued items; give running ones ``grace`` seconds, then cancel
        them and wait for them to record their status."""
        with self._cond:
            self._accepting = False
            dropped = list(self._queue)
            self._queue.clear()
            self._stopping = True
            self._cond.notify_all()
        for item in dropped:
            item.on_drop(item, "the daemon is stopping")
            item.state = "finished"
            item.done.set()
        deadline = time.monotonic() + grace
        for item in list(self._running.values()):
            item.done.wait(max(0.0, deadline - time.monotonic()))
        for item in list(self._running.values()):
            item.cancel.cancel("the daemon is stopping")
        for item in list(self._running.values()):
            item.done.wait(30)
