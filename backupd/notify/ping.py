"""Ping channel: a dead-man's switch in the style of healthchecks.io (also Cronitor, Uptime
Kuma push monitors and similar services).

Which URL an event hits:

* ``backup.started`` → ``start_url`` (only when set; otherwise the event is not sent);
* ``*.succeeded`` and ``test`` → ``success_url`` (default: ``url``);
* every other kind (failed, partial, skipped, ...) → ``fail_url`` (default: ``url + "/fail"``,
  healthchecks' convention).

With ``method = "POST"`` (the default) the body is one short line of text (the kind, job and
message, at most :data:`MAX_BODY` bytes), which healthchecks shows in the check's log; with
``"GET"`` nothing is sent but the request. An empty ``events`` filter means the backup
lifecycle: started (if ``start_url`` is set), succeeded, partial and failed. A ping service
needs the successes, which is why this default differs from the other channels'.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from backupd import __version__
from backupd.config.model import PingChannel
from backupd.errors import ConfigError
from backupd.notify import http_request, redact_text, redact_url, url_secrets
from backupd.notify.events import (
    BACKUP_FAILED,
    BACKUP_PARTIAL,
    BACKUP_STARTED,
    BACKUP_SUCCEEDED,
    TEST,
    Event,
    expand_event_filter,
    hostname,
)

MAX_BODY = 1000
LIFECYCLE_EVENTS = frozenset({BACKUP_SUCCEEDED, BACKUP_PARTIAL, BACKUP_FAILED})


def default_events(start_url: str | None) -> frozenset[str]:
    """Given the channel's start URL (or None), return the kinds an empty filter stands for."""
    return LIFECYCLE_EVENTS | {BACKUP_STARTED} if start_url else LIFECYCLE_EVENTS


class PingNotifier:
    """Given a channel name, the base ``url`` and optional start/success/fail URLs, the HTTP
    method, the expanded event filter and a timeout, ping the URL that matches each event;
    raise ConfigError if a URL is not http(s)."""

    kind = "ping"

    def __init__(
        self,
        name: str,
        url: str,
        *,
        start_url: str | None = None,
        success_url: str | None = None,
        fail_url: str | None = None,
        method: str = "POST",
        events: frozenset[str] | None = None,
        timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.url = url
        self.start_url = start_url
        self.success_url = success_url or url
        self.fail_url = fail_url or url.rstrip("/") + "/fail"
        self.method = method.upper()
        if self.method not in ("GET", "POST"):
            raise ConfigError(f"notifications.{name}.method: expected GET or POST")
        for key, value in self._urls().items():
            if urlsplit(value).scheme.lower() not in ("http", "https"):
                raise ConfigError(f"notifications.{name}.{key}: expected an http:// or https:// URL")
        self.events = default_events(start_url) if events is None else events
        self.timeout = timeout
        self._secrets: set[str] = set()
        for value in self._urls().values():
            self._secrets |= url_secrets(value)

    @classmethod
    def from_config(cls, name: str, config: PingChannel) -> PingNotifier:
        """Given the channel's name and config, return the channel; raise ValueError on a bad
        events filter, ConfigError on a bad URL."""
        return cls(
            name,
            config.url,
            start_url=config.start_url,
            success_url=config.success_url,
            fail_url=config.fail_url,
            method=config.method,
            events=expand_event_filter(config.events, default_events(config.start_url)),
            timeout=config.timeout,
        )

    def _urls(self) -> dict[str, str]:
        urls = {"url": self.url, "success_url": self.success_url, "fail_url": self.fail_url}
        if self.start_url:
            urls["start_url"] = self.start_url
        return urls

    def target(self, kind: str) -> str | None:
        """Given an event kind, return the URL it pings, or None when it pings nothing."""
        if kind == BACKUP_STARTED:
            return self.start_url
        if kind == TEST or kind.endswith(".succeeded"):
            return self.success_url
        return self.fail_url

    def body(self, event: Event) -> bytes:
        """Given an event, return the short text body sent with a POST."""
        job = f" {event.job}" if event.job else ""
        text = f"{event.kind}{job} on {hostname()}: {event.message}"
        return text.encode("utf-8")[:MAX_BODY]

    def send(self, event: Event) -> None:
        """Given an event, ping its URL (nothing when it has none); raise NotifyError on a
        non-2xx answer, a network error or no answer within the timeout."""
        url = self.target(event.kind)
        if url is None:
            return
        post = self.method == "POST"
        http_request(
            self.name,
            self.method,
            url,
            body=self.body(event) if post else None,
            headers={"User-Agent": f"backupd/{__version__}"}
            | ({"Content-Type": "text/plain; charset=utf-8"} if post else {}),
            timeout=self.timeout,
        )

    def describe(self) -> str:
        """Return a one-line, secret-free description of the channel."""
        start = ", start pings" if self.start_url else ""
        return f"ping {redact_url(self.url)} ({self.method}{start}, timeout {self.timeout:g}s)"

    def redact(self, text: str) -> str:
        """Given free text, return it with every ping URL's token masked."""
        return redact_text(text, self._secrets)
