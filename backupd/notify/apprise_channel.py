"""Apprise channel: one config entry reaches any of the services Apprise knows (e-mail,
Matrix, Telegram, Slack, ntfy, Gotify, ...), each named by an Apprise URL.

Apprise URLs carry credentials (bot tokens, SMTP passwords, webhook ids), so prefer
``urls_file``: a file (mode 0600 or 0640, group backupd) with one URL per line, blank lines
and ``#`` comments ignored. Inline ``urls`` end up in a world-readable TOML file, in
``backupctl config`` output and in backups of /etc. Both may be given; the lists are joined.

The title is ``<host>: <kind> <job> (execution N)`` and the body is the plain-text message
followed by one ``name: value`` line per fact. Each plugin's socket timeouts are capped at the
channel's ``timeout`` and, where the installed Apprise supports it, the whole call is bounded
by it too; the dispatcher additionally runs the call in its own thread so it never blocks a
job. Apprise's own log is held at WARNING: its debug lines print whole URLs.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Sequence
from typing import Any

import apprise

from backupd.config.model import AppriseChannel
from backupd.config.secrets import read_secret
from backupd.errors import ConfigError, NotifyError
from backupd.notify import redact_text, redact_url, url_secrets
from backupd.notify.events import (
    BACKUP_PARTIAL,
    DAEMON_UNCLEAN_STOP,
    DEFAULT_EVENTS,
    RETENTION_SKIPPED,
    Event,
    expand_event_filter,
)

logging.getLogger("apprise").setLevel(logging.WARNING)

# Apprise 2 bounds the whole notify() call itself; older releases only have socket timeouts.
_CALL_TIMEOUT = "timeout" in inspect.signature(apprise.Apprise.notify).parameters
_MAX_DETAIL = 400


def read_urls_file(path: str, what: str) -> list[str]:
    """Given the path of a URL file, return its URLs (one a line, ``#`` comments and blank
    lines skipped); raise SecretError if it cannot be read."""
    text = read_secret(path, None, what) or ""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def notify_type(kind: str) -> str:
    """Given an event kind, return the Apprise notification type (which sets icons, colours)."""
    if kind.endswith(".failed") or kind == DAEMON_UNCLEAN_STOP:
        return apprise.NotifyType.FAILURE
    if kind in (BACKUP_PARTIAL, RETENTION_SKIPPED):
        return apprise.NotifyType.WARNING
    if kind.endswith(".succeeded"):
        return apprise.NotifyType.SUCCESS
    return apprise.NotifyType.INFO


class AppriseNotifier:
    """Given a channel name, its Apprise URLs, the expanded event filter and a timeout,
    deliver events to every URL; raise ConfigError if there is no URL or Apprise does not
    understand one (named by position and redacted form, never in full)."""

    kind = "apprise"

    def __init__(
        self,
        name: str,
        urls: Sequence[str],
        *,
        events: frozenset[str] = DEFAULT_EVENTS,
        timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.events = events
        self.timeout = timeout
        self._urls = list(urls)
        self._asset = apprise.AppriseAsset(app_id="backupd", app_desc="backupd database backups")
        if not self._urls:
            raise ConfigError(f"notifications.{name}: no Apprise URL (set urls or urls_file)")
        self._secrets: set[str] = set()
        for url in self._urls:
            self._secrets |= url_secrets(url)
        for index, url in enumerate(self._urls, 1):
            if self._plugin(url) is None:
                raise ConfigError(
                    f"notifications.{name}: Apprise URL #{index} ({redact_url(url)}) is not understood by Apprise"
                )

    @classmethod
    def from_config(cls, name: str, config: AppriseChannel) -> AppriseNotifier:
        """Given the channel's name and config, read ``urls_file`` and return the channel;
        raise SecretError if the file is unreadable, ConfigError on a bad or missing URL,
        ValueError on a bad events filter."""
        urls = list(config.urls)
        if config.urls_file:
            urls += read_urls_file(config.urls_file, f"notifications.{name}.urls_file")
        return cls(name, urls, events=expand_event_filter(config.events), timeout=config.timeout)

    def _plugin(self, url: str) -> Any:
        plugin = apprise.Apprise.instantiate(url, asset=self._asset)
        if plugin is None:
            return None
        # Apprise's per-plugin defaults (4 s for HTTP, 15 s for SMTP) must not outlast ours.
        for attr in ("socket_connect_timeout", "socket_read_timeout"):
            current = getattr(plugin, attr, None)
            if isinstance(current, int | float):
                setattr(plugin, attr, min(float(current), self.timeout))
        return plugin

    def send(self, event: Event) -> None:
        """Given an event, deliver it to every URL; raise NotifyError when any URL failed."""
        # A fresh Apprise object per send: plugins keep per-connection state and the
        # dispatcher may send two events to this channel at once.
        client = apprise.Apprise(asset=self._asset)
        for url in self._urls:
            plugin = self._plugin(url)
            if plugin is not None:
                client.add(plugin)
        extra: dict[str, Any] = {"timeout": self.timeout} if _CALL_TIMEOUT else {}
        started = time.monotonic()
        result = client.notify(
            body=event.text(),
            title=event.title(),
            notify_type=notify_type(event.kind),
            body_format=apprise.NotifyFormat.TEXT,
            **extra,
        )
        if result:
            return
        # Apprise reports a read timeout as a connection error; a call that used up (nearly)
        # the whole timeout is treated as a timeout, which the dispatcher does not retry.
        slow = time.monotonic() - started >= 0.9 * self.timeout
        raise NotifyError(
            channel=self.name,
            reason=self._failure_reason(result, slow),
            transient=not slow and self._nothing_delivered(result),
        )

    def _nothing_delivered(self, result: Any) -> bool:
        # Retrying after a partial delivery would repeat the message on the services that
        # got it; only a result where nothing was delivered (nor timed out) is retried.
        success = getattr(result, "success_count", None)
        timeouts = getattr(result, "timeout_count", None)
        return success == 0 and timeouts == 0

    def _failure_reason(self, result: Any, slow: bool) -> str:
        total = len(self._urls)
        failed = getattr(result, "failed_count", None)
        timeouts = getattr(result, "timeout_count", 0) or 0
        if failed is None:
            summary = f"delivery to {total} Apprise URL(s) failed"
        else:
            summary = f"{failed + timeouts} of {total} Apprise URL(s) failed"
            if timeouts:
                summary += f" ({timeouts} timed out after {self.timeout:g}s)"
        if slow and not timeouts:
            summary += f" (no answer within {self.timeout:g}s)"
        logs = getattr(result, "logs", None)
        details: list[str] = []
        if callable(logs):
            for entry in logs():
                message = str(getattr(entry, "message", ""))
                if message and message not in details and str(getattr(entry, "level", "")) != "DEBUG":
                    details.append(message)
        text = summary + (": " + "; ".join(details) if details else "")
        # Mask before cutting: a cut could leave half a token that no longer matches.
        return self.redact(text)[:_MAX_DETAIL]

    def describe(self) -> str:
        """Return a one-line, secret-free description of the channel."""
        shown = ", ".join(redact_url(url) for url in self._urls)
        return f"apprise {shown} (timeout {self.timeout:g}s)"

    def redact(self, text: str) -> str:
        """Given free text, return it with every token of every URL masked."""
        return redact_text(text, self._secrets)
