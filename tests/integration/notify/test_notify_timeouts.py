"""A channel whose server accepts and never answers: notify() must not wait for it, the
attempt must be recorded as failed after the channel's timeout, and other channels must
still be served meanwhile."""

from __future__ import annotations

import threading
import time

import pytest

from backupd.notify.apprise_channel import AppriseNotifier
from backupd.notify.dispatcher import Dispatcher, NotificationAttempt
from backupd.notify.events import Event
from backupd.notify.webhook import WebhookNotifier


class Recorded:
    def __init__(self) -> None:
        self.items: list[tuple[float, NotificationAttempt]] = []
        self.cond = threading.Condition()

    def __call__(self, attempt: NotificationAttempt) -> None:
        with self.cond:
            self.items.append((time.monotonic(), attempt))
            self.cond.notify_all()

    def wait_for(self, count: int, timeout: float) -> list[tuple[float, NotificationAttempt]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.items) >= count, timeout), self.items
            return list(self.items)


def failed() -> Event:
    return Event("backup.failed", "boom", job="nightly-pg", execution_id=1)


@pytest.mark.timeout(15)
def test_hanging_webhook_does_not_delay_notify_and_fails_after_its_timeout(silent_server):
    recorded = Recorded()
    channel = WebhookNotifier("dead", silent_server.url(), timeout=1.0)
    dispatcher = Dispatcher({"dead": channel}, recorded)
    try:
        t0 = time.monotonic()
        dispatcher.notify(failed(), ["dead"])
        assert time.monotonic() - t0 < 0.1
        [(when, attempt)] = recorded.wait_for(1, timeout=5)
    finally:
        dispatcher.close(1)
    elapsed = when - t0
    assert 0.9 <= elapsed < 2.5, elapsed
    assert not attempt.ok
    assert attempt.attempts == 1  # a timeout is not retried
    assert "1s" in attempt.error
    assert silent_server.accepted >= 1


@pytest.mark.timeout(15)
def test_hanging_channel_does_not_starve_a_healthy_one(silent_server, http_recorder):
    recorded = Recorded()
    channels = {
        "dead": WebhookNotifier("dead", silent_server.url(), timeout=1.0),
        "ok": WebhookNotifier("ok", http_recorder.url(), timeout=1.0),
    }
    dispatcher = Dispatcher(channels, recorded, max_workers=2)
    try:
        t0 = time.monotonic()
        dispatcher.notify(failed(), ["dead", "ok"])
        assert time.monotonic() - t0 < 0.1
        items = recorded.wait_for(2, timeout=5)
    finally:
        dispatcher.close(1)
    by_channel = {a.channel: (when - t0, a) for when, a in items}
    assert by_channel["ok"][1].ok
    assert by_channel["ok"][0] < 0.8, "the healthy channel waited for the hanging one"
    assert not by_channel["dead"][1].ok


@pytest.mark.timeout(15)
def test_hanging_apprise_url_is_bounded_by_the_channel_timeout(silent_server):
    recorded = Recorded()
    channel = AppriseNotifier("chat", [f"json://127.0.0.1:{silent_server.port}/x"], timeout=1.0)
    dispatcher = Dispatcher({"chat": channel}, recorded)
    try:
        t0 = time.monotonic()
        dispatcher.notify(failed(), ["chat"])
        assert time.monotonic() - t0 < 0.1
        [(when, attempt)] = recorded.wait_for(1, timeout=6)
    finally:
        dispatcher.close(1)
    assert not attempt.ok
    assert attempt.attempts == 1  # a timeout is not retried
    assert 0.9 <= when - t0 < 2.5
