"""Webhook and ping channels against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import json
import threading

import pytest

from backupd.errors import NotifyError
from backupd.notify.dispatcher import Dispatcher, NotificationAttempt
from backupd.notify.events import Event
from backupd.notify.ping import PingNotifier
from backupd.notify.webhook import WebhookNotifier

SECRET = "s3cr3t-webhook-key-0123456789"
TOKEN = "4d2b0e2a-91c7-4b8e-a0f1-ffeeddccbbaa"


def failed_event() -> Event:
    return Event(
        "backup.failed",
        "dump of 'app' failed",
        job="nightly-pg",
        execution_id=42,
        status="failed",
        fields={"step": "dump", "size": 0},
    )


class Recorded:
    def __init__(self) -> None:
        self.items: list[NotificationAttempt] = []
        self.done = threading.Event()

    def __call__(self, attempt: NotificationAttempt) -> None:
        self.items.append(attempt)
        self.done.set()


@pytest.mark.timeout(10)
def test_signed_webhook_arrives_and_verifies(http_recorder):
    http_recorder.secret = SECRET.encode()
    channel = WebhookNotifier("ops", http_recorder.url(), secret=SECRET, timeout=2)
    channel.send(failed_event())
    [req] = http_recorder.wait_for(1)
    assert req.method == "POST"
    assert req.path == "/hook"
    assert req.signature_ok is True
    assert req.headers["x-backupd-event"] == "backup.failed"
    assert req.headers["content-type"] == "application/json"
    body = json.loads(req.body)
    assert body["source"] == "backupd"
    assert body["hostname"]
    assert body["kind"] == "backup.failed"
    assert body["job"] == "nightly-pg"
    assert body["execution_id"] == 42
    assert body["fields"] == {"step": "dump", "size": 0}
    assert body["time"].endswith("Z")
    assert SECRET not in req.body.decode()


@pytest.mark.timeout(10)
def test_wrong_secret_is_detected_by_the_receiver_and_not_leaked(http_recorder):
    http_recorder.secret = b"the-receivers-real-secret"
    channel = WebhookNotifier("ops", http_recorder.url(), secret=SECRET, timeout=2)
    recorded = Recorded()
    dispatcher = Dispatcher({"ops": channel}, recorded, retry_backoff=0.05)
    try:
        dispatcher.notify(failed_event(), ["ops"])
        assert recorded.done.wait(5)
    finally:
        dispatcher.close(2)
    [req] = http_recorder.wait_for(1)
    assert req.signature_ok is False
    [attempt] = recorded.items
    assert not attempt.ok
    assert attempt.attempts == 1  # 401 is not worth a retry
    assert "401" in attempt.error
    assert SECRET not in attempt.error


@pytest.mark.timeout(10)
def test_unsigned_webhook_has_no_signature_headers(http_recorder):
    WebhookNotifier("ops", http_recorder.url(), timeout=2).send(failed_event())
    [req] = http_recorder.wait_for(1)
    assert "x-backupd-signature" not in req.headers
    assert "x-backupd-timestamp" not in req.headers


@pytest.mark.timeout(10)
def test_transient_error_is_retried_once_with_the_same_delivery_id(http_recorder):
    http_recorder.statuses = [503, 200]
    channel = WebhookNotifier("ops", http_recorder.url(), timeout=2)
    recorded = Recorded()
    dispatcher = Dispatcher({"ops": channel}, recorded, retry_backoff=0.05)
    try:
        dispatcher.notify(failed_event(), ["ops"])
        assert recorded.done.wait(5)
    finally:
        dispatcher.close(2)
    [attempt] = recorded.items
    assert attempt.ok, attempt.error
    assert attempt.attempts == 2
    first, second = http_recorder.wait_for(2)
    assert first.headers["x-backupd-delivery"] == second.headers["x-backupd-delivery"]


@pytest.mark.timeout(10)
def test_persistent_5xx_fails_after_two_attempts(http_recorder):
    http_recorder.statuses = [500]
    recorded = Recorded()
    dispatcher = Dispatcher(
        {"ops": WebhookNotifier("ops", http_recorder.url(), timeout=2)}, recorded, retry_backoff=0.05
    )
    try:
        dispatcher.notify(failed_event(), ["ops"])
        assert recorded.done.wait(5)
    finally:
        dispatcher.close(2)
    [attempt] = recorded.items
    assert (attempt.ok, attempt.attempts) == (False, 2)
    assert "HTTP 500" in attempt.error
    assert len(http_recorder.requests) == 2


@pytest.mark.timeout(10)
def test_redirect_is_a_failure_not_followed(http_recorder):
    http_recorder.statuses = [302]
    with pytest.raises(NotifyError, match="302"):
        WebhookNotifier("ops", http_recorder.url(), timeout=2).send(failed_event())
    assert [r.path for r in http_recorder.requests] == ["/hook"]


@pytest.mark.timeout(10)
def test_connection_refused_is_transient_and_redacted(http_recorder):
    # A port that was free a moment ago: nothing listens there.
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    url = f"http://127.0.0.1:{port}/ping/{TOKEN}"
    with pytest.raises(NotifyError) as info:
        WebhookNotifier("ops", url, timeout=2).send(failed_event())
    assert info.value.transient
    assert TOKEN not in str(info.value)
    assert f"127.0.0.1:{port}" in str(info.value)


@pytest.mark.timeout(10)
def test_ping_hits_start_success_and_fail_urls(http_recorder):
    base = http_recorder.url(f"/{TOKEN}")
    ping = PingNotifier("hc", base, start_url=base + "/start", timeout=2)
    ping.send(Event("backup.started", "started", job="j"))
    ping.send(Event("backup.succeeded", "done", job="j"))
    ping.send(Event("backup.partial", "one destination failed", job="j"))
    ping.send(Event("backup.failed", "boom", job="j"))
    reqs = http_recorder.wait_for(4)
    assert [r.path for r in reqs] == [f"/{TOKEN}/start", f"/{TOKEN}", f"/{TOKEN}/fail", f"/{TOKEN}/fail"]
    assert all(r.method == "POST" for r in reqs)
    assert reqs[3].body.decode().startswith("backup.failed j on ")
    assert reqs[3].body.decode().endswith(": boom")


@pytest.mark.timeout(10)
def test_ping_get_sends_no_body(http_recorder):
    ping = PingNotifier("hc", http_recorder.url(f"/{TOKEN}"), method="GET", timeout=2)
    ping.send(Event("backup.succeeded", "done", job="j"))
    [req] = http_recorder.wait_for(1)
    assert (req.method, req.path, req.body) == ("GET", f"/{TOKEN}", b"")


@pytest.mark.timeout(10)
def test_ping_error_does_not_reveal_the_token(http_recorder):
    http_recorder.statuses = [404]
    ping = PingNotifier("hc", http_recorder.url(f"/{TOKEN}"), timeout=2)
    recorded = Recorded()
    dispatcher = Dispatcher({"hc": ping}, recorded)
    try:
        attempt = dispatcher.send_test("hc")
    finally:
        dispatcher.close(2)
    assert not attempt.ok
    assert "404" in attempt.error
    assert TOKEN not in attempt.error
    assert recorded.items == [attempt]
