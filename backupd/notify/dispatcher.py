"""Deliver events to channels without ever holding up the job that raised them.

:meth:`Dispatcher.notify` only filters and enqueues: a bounded queue feeds ``max_workers``
worker threads, and when the queue is full the notification is dropped and recorded as a
failure instead of blocking the caller. A worker runs each send in a thread of its own and
waits for it at most the channel's ``timeout`` (plus a short grace, so the channel's own
timeout error wins the race); a send that is still running then is abandoned and recorded
as timed out. A channel with :data:`MAX_HUNG_PER_CHANNEL` abandoned sends still alive is
failed at once without starting another, so one dead endpoint cannot pile up threads or hold
the workers for longer than one timeout per event.

Retry policy: one more try after ``retry_backoff`` seconds (1 s by default) when the first
failure is transient (connection refused or reset, HTTP 408/425/429/5xx, an Apprise call
where nothing was delivered). Timeouts are not retried: the endpoint already had the whole
timeout, and a second wait would double the stall. Every outcome, good or bad, is passed to
``record`` as one :class:`NotificationAttempt`, with its error redacted by the channel.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from backupd.config.model import AppriseChannel, ChannelConfig, PingChannel, WebhookChannel
from backupd.errors import ChannelNotFound, ConfigError, NotifyError
from backupd.notify import Channel, redact_text
from backupd.notify.events import TEST, Event, hostname

log = logging.getLogger("backupd.notify")

MAX_HUNG_PER_CHANNEL = 4
# Extra wait past the channel's timeout so that its own, more precise timeout error arrives.
_GRACE = 0.25
_MAX_ATTEMPTS = 2


@dataclass(frozen=True)
class NotificationAttempt:
    """The outcome of delivering one event to one channel (after any retry).

    ``time`` is when delivery started (UTC); ``attempts`` counts sends tried (0 when the
    notification was dropped before any send); ``error`` is redacted, None on success;
    ``duration`` is in seconds, retries and backoff included.
    """

    channel: str
    event_kind: str
    job: str | None
    execution_id: int | None
    time: datetime
    ok: bool
    attempts: int
    error: str | None
    duration: float

    def to_json_dict(self) -> dict[str, Any]:
        """Return the attempt as a JSON-ready dict (time as ISO 8601 UTC)."""
        return {
            "channel": self.channel,
            "event_kind": self.event_kind,
            "job": self.job,
            "execution_id": self.execution_id,
            "time": self.time.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "ok": self.ok,
            "attempts": self.attempts,
            "error": self.error,
            "duration": round(self.duration, 3),
        }


def build_channels(config: Mapping[str, ChannelConfig]) -> dict[str, Channel]:
    """Given the ``[notifications.*]`` tables, return a channel per name, with secret files
    read now so that a missing one fails the (re)load; raise ConfigError for a bad URL or
    events filter, SecretError for an unreadable secret."""
    from backupd.notify.apprise_channel import AppriseNotifier
    from backupd.notify.ping import PingNotifier
    from backupd.notify.webhook import WebhookNotifier

    channels: dict[str, Channel] = {}
    for name, entry in config.items():
        try:
            if isinstance(entry, WebhookChannel):
                channels[name] = WebhookNotifier.from_config(name, entry)
            elif isinstance(entry, AppriseChannel):
                channels[name] = AppriseNotifier.from_config(name, entry)
            elif isinstance(entry, PingChannel):
                channels[name] = PingNotifier.from_config(name, entry)
            else:
                raise ConfigError(f"notifications.{name}: unsupported channel type {type(entry).__name__}")
        except ValueError as exc:
            raise ConfigError(f"notifications.{name}.events: {exc}") from None
    return channels


class Dispatcher:
    """Given channels by name, a ``record`` callback (called from worker threads and, for a
    dropped notification, from the caller's thread: it must be thread-safe), the number of
    worker threads, the queue bound and the retry backoff, deliver events in the background."""

    def __init__(
        self,
        channels: Mapping[str, Channel],
        record: Callable[[NotificationAttempt], None],
        max_workers: int = 2,
        *,
        queue_size: int = 100,
        retry_backoff: float = 1.0,
    ) -> None:
        self._channels: dict[str, Channel] = dict(channels)
        self._record = record
        self._retry_backoff = retry_backoff
        self._queue: queue.Queue[tuple[Channel, Event] | None] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._hung: dict[str, list[threading.Thread]] = {}
        self._closed = False
        # Set when close() gives up: no more retries, remaining items are dropped.
        self._abandon = threading.Event()
        self._workers = [
            threading.Thread(target=self._work, name=f"notify-worker-{i}", daemon=True)
            for i in range(max(1, max_workers))
        ]
        for worker in self._workers:
            worker.start()

    @property
    def channels(self) -> dict[str, Channel]:
        """Return a copy of the current channels by name."""
        with self._lock:
            return dict(self._channels)

    def replace_channels(self, channels: Mapping[str, Channel]) -> None:
        """Given the channels of a reloaded config, use them for every later notify();
        events already queued still go to the channel objects they were queued for."""
        with self._lock:
            self._channels = dict(channels)

    def notify(self, event: Event, channel_names: Iterable[str]) -> None:
        """Given an event and the names of the channels a job lists, queue one delivery per
        channel whose filter accepts the event and return at once; a full queue, a closed
        dispatcher or an unknown name is recorded as a failed attempt, never raised."""
        for name in dict.fromkeys(channel_names):
            with self._lock:
                channel = self._channels.get(name)
            if channel is None:
                self._emit(self._dropped(name, event, f"no notification channel named {name!r}"))
                continue
            if event.kind != TEST and event.kind not in channel.events:
                continue
            if self._closed:
                self._emit(self._dropped(name, event, "not sent: backupd is stopping"))
                continue
            try:
                self._queue.put_nowait((channel, event))
            except queue.Full:
                reason = f"not sent: notification queue full ({self._queue.maxsize} waiting)"
                self._emit(self._dropped(name, event, reason))

    def notify_all(self, event: Event) -> None:
        """Given an event that belongs to no job (a failed reload, an unclean stop), queue it
        for every channel whose filter accepts it, like :meth:`notify`; return at once."""
        self.notify(event, self.channels)

    def send_test(self, name: str) -> NotificationAttempt:
        """Given a channel name, send it a ``test`` event now, in this thread, record the
        outcome and return it; raise ChannelNotFound for an unknown name."""
        with self._lock:
            channel = self._channels.get(name)
        if channel is None:
            raise ChannelNotFound(channel=name)
        event = Event(TEST, f"Test notification from backupd on {hostname()} for channel {name!r}.")
        attempt = self._deliver(channel, event)
        self._emit(attempt)
        return attempt

    def close(self, timeout: float = 5.0) -> None:
        """Given a time budget in seconds, stop taking events, let queued deliveries finish
        within the budget, then drop (and record) what is left; return when done."""
        if self._abandon.is_set():
            return  # closed before
        deadline = time.monotonic() + timeout
        self._closed = True
        for _ in self._workers:
            try:
                self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                break
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        self._abandon.set()
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                self._emit(self._dropped(item[0].name, item[1], "not sent: backupd stopped first"))

    # --- workers -------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            channel, event = item
            if self._abandon.is_set():
                self._emit(self._dropped(channel.name, event, "not sent: backupd stopped first"))
                continue
            self._emit(self._deliver(channel, event))

    def _deliver(self, channel: Channel, event: Event) -> NotificationAttempt:
        started = datetime.now(UTC)
        t0 = time.monotonic()
        attempts = 0
        error: str | None = None
        while attempts < _MAX_ATTEMPTS:
            attempts += 1
            failure = self._send_once(channel, event)
            if failure is None:
                error = None
                break
            error, transient = failure
            if not transient or attempts >= _MAX_ATTEMPTS or self._abandon.wait(self._retry_backoff):
                break
        return NotificationAttempt(
            channel=channel.name,
            event_kind=event.kind,
            job=event.job,
            execution_id=event.execution_id,
            time=started,
            ok=error is None,
            attempts=attempts,
            error=None if error is None else self._redact(channel, error),
            duration=time.monotonic() - t0,
        )

    def _send_once(self, channel: Channel, event: Event) -> tuple[str, bool] | None:
        """Run one send in its own thread; return None on success, else (error, transient)."""
        with self._lock:
            alive = [t for t in self._hung.get(channel.name, []) if t.is_alive()]
            self._hung[channel.name] = alive
        if len(alive) >= MAX_HUNG_PER_CHANNEL:
            return f"not sent: {len(alive)} earlier sends to this channel are still hanging", False
        outcome: list[BaseException] = []

        def run() -> None:
            try:
                channel.send(event)
            except BaseException as exc:  # reported to the worker, never lost in a thread
                outcome.append(exc)

        thread = threading.Thread(target=run, name=f"notify-send-{channel.name}", daemon=True)
        thread.start()
        thread.join(channel.timeout + _GRACE)
        if thread.is_alive():
            with self._lock:
                self._hung.setdefault(channel.name, []).append(thread)
            return f"no answer within {channel.timeout:g}s (send abandoned)", False
        if not outcome:
            return None
        exc = outcome[0]
        if isinstance(exc, NotifyError):
            # The attempt names the channel already; keep only the reason.
            return str(exc.details.get("reason", exc.message)), exc.transient
        return f"{type(exc).__name__}: {exc}", False

    # --- recording -----------------------------------------------------------------------
    @staticmethod
    def _redact(channel: Channel, text: str) -> str:
        try:
            return channel.redact(text)
        except Exception:
            # A broken redactor must not leak: fall back to masking every URL.
            return redact_text(text)

    def _dropped(self, name: str, event: Event, reason: str) -> NotificationAttempt:
        return NotificationAttempt(
            channel=name,
            event_kind=event.kind,
            job=event.job,
            execution_id=event.execution_id,
            time=datetime.now(UTC),
            ok=False,
            attempts=0,
            error=reason,
            duration=0.0,
        )

    def _emit(self, attempt: NotificationAttempt) -> None:
        if not attempt.ok:
            log.warning(
                "notification %s to %s failed: %s",
                attempt.event_kind,
                attempt.channel,
                attempt.error,
                extra={"JOB": attempt.job, "EXECUTION_ID": attempt.execution_id},
            )
        try:
            self._record(attempt)
        except Exception:
            log.exception("could not record a notification attempt for channel %s", attempt.channel)
