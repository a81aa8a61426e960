"""QueueManager: the limit holds under concurrent submits, changes at run time, one run per
job, coalescing, cancel of queued and running work, shutdown."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from backupd.errors import AlreadyRunning, ExecutionNotFound, ShuttingDown
from backupd.scheduler.queue import QueueManager, WorkItem

pytestmark = pytest.mark.timeout(30)


class Probe:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0
        self.release = threading.Event()
        self.ids = itertools.count(1)
        self.dropped: list[int] = []

    def work(self, item: WorkItem) -> None:
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        while not self.release.is_set() and not item.cancel.cancelled:
            time.sleep(0.01)
        with self.lock:
            self.running -= 1

    def submit(self, q: QueueManager, job: str, coalesce: bool = False):
        return q.submit(
            job,
            "backup",
            "manual",
            lambda: next(self.ids),
            self.work,
            lambda item, reason: self.dropped.append(item.execution_id),
            coalesce=coalesce,
        )


def _wait(pred, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_limit_holds_and_can_be_raised() -> None:
    p, q = Probe(), QueueManager(2)
    threads = [threading.Thread(target=p.submit, args=(q, f"job{i}")) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _wait(lambda: p.running == 2)
    time.sleep(0.2)
    assert p.peak == 2 and len(q.snapshot()["queued"]) == 4
    q.set_limit(4)
    _wait(lambda: p.running == 4)
    q.set_limit(1)
    p.release.set()
    q.shutdown(5)
    assert p.peak == 4


def test_one_run_per_job_and_coalescing() -> None:
    p, q = Probe(), QueueManager(2)
    first = p.submit(q, "a")
    _wait(lambda: p.running == 1)
    with pytest.raises(AlreadyRunning) as exc:
        p.submit(q, "a")
    assert exc.value.details["execution"] == first.execution_id
    pending = p.submit(q, "a", coalesce=True)  # a scheduled trigger while running: one pending run
    again = p.submit(q, "a", coalesce=True)
    assert not pending.coalesced and again.coalesced and again.execution_id == pending.execution_id
    time.sleep(0.2)
    assert p.running == 1  # the pending run waits for the job's lock although a slot is free
    p.release.set()
    q.wait(pending.execution_id, 5)
    q.shutdown(5)


def test_cancel_queued_and_running_and_shutdown() -> None:
    p, q = Probe(), QueueManager(1)
    a = p.submit(q, "a")
    b = p.submit(q, "b")
    _wait(lambda: p.running == 1)
    assert q.cancel(b.execution_id) == "queued" and p.dropped == [b.execution_id]
    assert q.cancel(a.execution_id) == "running"
    assert q.wait(a.execution_id, 5)
    with pytest.raises(ExecutionNotFound):
        q.cancel(12345)
    c = p.submit(q, "c")
    _wait(lambda: p.running == 1)
    started = time.monotonic()
    q.shutdown(grace=0.2)  # the running item is cancelled after the grace period
    assert time.monotonic() - started < 5 and q.wait(c.execution_id, 1)
    with pytest.raises(ShuttingDown):
        p.submit(q, "d")


def test_a_crashing_execution_keeps_its_worker() -> None:
    q = QueueManager(1)
    ids = itertools.count(1)

    def boom(item: WorkItem) -> None:
        raise RuntimeError("bug")

    first = q.submit("a", "backup", "manual", lambda: next(ids), boom, lambda i, r: None)
    assert q.wait(first.execution_id, 5)
    assert q.healthy()
    ran = threading.Event()
    second = q.submit("b", "backup", "manual", lambda: next(ids), lambda item: ran.set(), lambda i, r: None)
    assert q.wait(second.execution_id, 5) and ran.is_set()
    q.shutdown(1)
