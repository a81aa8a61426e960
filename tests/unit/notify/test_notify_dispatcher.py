"""Dispatcher behaviour with scripted channels (fault injection): filtering, retries, the
bounded queue, abandoned sends, recording and closing. The real-endpoint counterparts are
in tests/integration/notify."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from backupd.errors import ChannelNotFound, NotifyError
from backupd.notify import redact_text
from backupd.notify.dispatcher import MAX_HUNG_PER_CHANNEL, Dispatcher, NotificationAttempt
from backupd.notify.events import DEFAULT_EVENTS, Event

pytestmark = pytest.mark.timeout(15)

TOKEN = "tok-0123456789abcdef"


class Scripted:
    """A channel whose send runs the next scripted step (the last one repeats)."""

    kind = "fake"

    def __init__(
        self,
        name: str,
        steps: list[Callable[[Event], None]] | None = None,
        events: frozenset[str] = DEFAULT_EVENTS,
        timeout: float = 1.0,
    ) -> None:
        self.name = name
        self.events = events
        self.timeout = timeout
        self.steps = steps or [lambda e: None]
        self.sent: list[Event] = []
        self.entered = threading.Event()

    def send(self, event: Event) -> None:
        self.entered.set()
        step = self.steps[min(len(self.sent), len(self.steps) - 1)]
        self.sent.append(event)
        step(event)

    def describe(self) -> str:
        return f"fake {self.name}"

    def redact(self, text: str) -> str:
        return redact_text(text, {TOKEN})


class Recorder:
    def __init__(self) -> None:
        self.items: list[NotificationAttempt] = []
        self.cond = threading.Condition()

    def __call__(self, attempt: NotificationAttempt) -> None:
        with self.cond:
            self.items.append(attempt)
            self.cond.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[NotificationAttempt]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.items) >= count, timeout), self.items
            return list(self.items)


def fail(transient: bool, reason: str = "nope") -> Callable[[Event], None]:
    def step(event: Event) -> None:
        raise NotifyError(channel="x", reason=reason, transient=transient)

    return step


def failed(job: str = "j") -> Event:
    return Event("backup.failed", "boom", job=job, execution_id=5)


@pytest.fixture
def make():
    made: list[Dispatcher] = []

    def factory(channels, **kwargs) -> tuple[Dispatcher, Recorder]:
        recorder = Recorder()
        kwargs.setdefault("retry_backoff", 0.01)
        d = Dispatcher({c.name: c for c in channels}, recorder, **kwargs)
        made.append(d)
        return d, recorder

    yield factory
    for d in made:
        d.close(0.5)


def test_success_is_recorded_with_event_facts(make):
    channel = Scripted("a")
    d, rec = make([channel])
    d.notify(failed(), ["a"])
    [attempt] = rec.wait_for(1)
    assert attempt.ok and attempt.error is None
    assert (attempt.channel, attempt.event_kind, attempt.job, attempt.execution_id) == (
        "a",
        "backup.failed",
        "j",
        5,
    )
    assert attempt.attempts == 1
    assert attempt.time.tzinfo is not None
    assert attempt.duration >= 0
    assert attempt.to_json_dict()["time"].endswith("Z")


def test_filter_skips_unwanted_kinds_but_not_test(make):
    only_failed = Scripted("a", events=frozenset({"backup.failed"}))
    d, rec = make([only_failed])
    d.notify(Event("backup.succeeded", "ok", job="j"), ["a"])
    d.notify(Event("test", "hello"), ["a"])
    d.notify(failed(), ["a"])
    rec.wait_for(2)
    d.close(1)  # everything queued has been delivered once close returns
    assert sorted(a.event_kind for a in rec.items) == ["backup.failed", "test"]
    assert sorted(e.kind for e in only_failed.sent) == ["backup.failed", "test"]


def test_transient_failure_is_retried_once(make):
    flaky = Scripted("a", steps=[fail(True), lambda e: None])
    d, rec = make([flaky])
    d.notify(failed(), ["a"])
    [attempt] = rec.wait_for(1)
    assert attempt.ok
    assert attempt.attempts == 2


def test_retry_happens_only_once(make):
    down = Scripted("a", steps=[fail(True, "connection refused")])
    d, rec = make([down])
    d.notify(failed(), ["a"])
    [attempt] = rec.wait_for(1)
    assert (attempt.ok, attempt.attempts, attempt.error) == (False, 2, "connection refused")
    assert len(down.sent) == 2


def test_permanent_failure_is_not_retried(make):
    bad = Scripted("a", steps=[fail(False, "HTTP 400")])
    d, rec = make([bad])
    d.notify(failed(), ["a"])
    [attempt] = rec.wait_for(1)
    assert (attempt.ok, attempt.attempts, attempt.error) == (False, 1, "HTTP 400")


def test_unexpected_exception_is_recorded_redacted(make):
    def crash(event: Event) -> None:
        raise RuntimeError(f"library blew up with https://x.example.org/{TOKEN}")

    d, rec = make([Scripted("a", steps=[crash])])
    d.notify(failed(), ["a"])
    [attempt] = rec.wait_for(1)
    assert not attempt.ok
    assert attempt.error.startswith("RuntimeError: library blew up")
    assert TOKEN not in attempt.error


def test_hanging_send_is_abandoned_and_notify_never_waits(make):
    release = threading.Event()
    hang = Scripted("a", steps=[lambda e: release.wait(10)], timeout=0.2)
    d, rec = make([hang])
    try:
        t0 = time.monotonic()
        d.notify(failed(), ["a"])
        assert time.monotonic() - t0 < 0.1
        [attempt] = rec.wait_for(1)
        assert time.monotonic() - t0 >= 0.2
        assert not attempt.ok
        assert attempt.attempts == 1
        assert "send abandoned" in attempt.error
    finally:
        release.set()


def test_too_many_hung_sends_fail_fast(make):
    release = threading.Event()
    hang = Scripted("a", steps=[lambda e: release.wait(10)], timeout=0.1)
    d, rec = make([hang], max_workers=1)
    try:
        for i in range(MAX_HUNG_PER_CHANNEL + 1):
            d.notify(failed(f"j{i}"), ["a"])
        items = rec.wait_for(MAX_HUNG_PER_CHANNEL + 1)
        assert len(hang.sent) == MAX_HUNG_PER_CHANNEL
        assert "still hanging" in items[-1].error
        assert items[-1].attempts == 1
    finally:
        release.set()


def test_full_queue_drops_without_blocking(make):
    release = threading.Event()
    slow = Scripted("a", steps=[lambda e: release.wait(5)], timeout=5)
    d, rec = make([slow], max_workers=1, queue_size=1)
    try:
        d.notify(failed("first"), ["a"])
        assert slow.entered.wait(2)  # the worker holds the first event
        d.notify(failed("second"), ["a"])  # waits in the queue
        t0 = time.monotonic()
        d.notify(failed("third"), ["a"])  # no room: dropped
        assert time.monotonic() - t0 < 0.1
        [dropped] = rec.wait_for(1)
        assert (dropped.job, dropped.ok, dropped.attempts) == ("third", False, 0)
        assert "queue full" in dropped.error
    finally:
        release.set()
    items = rec.wait_for(3)
    assert {a.job for a in items if a.ok} == {"first", "second"}


def test_unknown_channel_is_recorded(make):
    d, rec = make([Scripted("a")])
    d.notify(failed(), ["missing"])
    [attempt] = rec.wait_for(1)
    assert (attempt.channel, attempt.ok, attempt.attempts) == ("missing", False, 0)
    assert "no notification channel named 'missing'" in attempt.error


def test_a_failing_recorder_does_not_stop_the_workers():
    calls: list[NotificationAttempt] = []

    def record(attempt: NotificationAttempt) -> None:
        calls.append(attempt)
        if len(calls) == 1:
            raise RuntimeError("database is locked")

    d = Dispatcher({"a": Scripted("a")}, record, max_workers=1)
    try:
        d.notify(failed("one"), ["a"])
        d.notify(failed("two"), ["a"])
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        d.close(1)
    assert [a.job for a in calls] == ["one", "two"]


def test_send_test_is_synchronous_and_recorded(make):
    channel = Scripted("a", events=frozenset())
    d, rec = make([channel])
    attempt = d.send_test("a")
    assert attempt.ok and attempt.event_kind == "test"
    assert channel.sent[0].kind == "test"
    assert rec.items == [attempt]
    with pytest.raises(ChannelNotFound):
        d.send_test("nope")


def test_replace_channels_applies_to_later_events(make):
    old, new = Scripted("a"), Scripted("a")
    d, rec = make([old])
    d.notify(failed("before"), ["a"])
    rec.wait_for(1)
    d.replace_channels({"a": new})
    d.notify(failed("after"), ["a"])
    rec.wait_for(2)
    assert [e.job for e in old.sent] == ["before"]
    assert [e.job for e in new.sent] == ["after"]


def test_close_drops_what_it_cannot_send_and_refuses_new_events():
    release = threading.Event()
    slow = Scripted("a", steps=[lambda e: release.wait(5)], timeout=5)
    rec = Recorder()
    d = Dispatcher({"a": slow}, rec, max_workers=1)
    try:
        d.notify(failed("running"), ["a"])
        assert slow.entered.wait(2)
        d.notify(failed("queued"), ["a"])
        t0 = time.monotonic()
        d.close(0.3)
        assert time.monotonic() - t0 < 1.0
        d.notify(failed("late"), ["a"])
    finally:
        release.set()
    items = rec.wait_for(3)
    by_job = {a.job: a for a in items}
    assert not by_job["queued"].ok and "stopped" in by_job["queued"].error
    assert not by_job["late"].ok and "stopping" in by_job["late"].error
    assert by_job["running"].ok


def test_notify_all_reaches_every_accepting_channel(make):
    wants = Scripted("a", events=frozenset({"reload.failed"}))
    ignores = Scripted("b", events=frozenset({"backup.failed"}))
    d, rec = make([wants, ignores])
    d.notify_all(Event("reload.failed", "bad config"))
    d.close(1)
    assert [(a.channel, a.ok) for a in rec.items] == [("a", True)]
    assert ignores.sent == []
