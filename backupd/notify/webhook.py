"""Webhook channel: POST the event as JSON, optionally signed with HMAC-SHA256.

Request (see docs/NOTIFICATIONS.md for the receiver's side):

* body: ``event.to_json_dict()`` plus ``source`` (``"backupd"``), ``hostname`` and
  ``backupd_version``, as compact UTF-8 JSON;
* ``X-Backupd-Event``: the event kind; ``X-Backupd-Delivery``: an id that stays the same when
  the dispatcher retries the same event, so a receiver can drop duplicates;
* with ``secret_file``: ``X-Backupd-Timestamp`` (unix seconds) and
  ``X-Backupd-Signature: sha256=<hex>``, the HMAC-SHA256 keyed with the secret (UTF-8) over
  ``<timestamp> + "." + <body bytes>``. The timestamp is inside the signed bytes so that a
  captured request cannot be replayed later: receivers reject timestamps more than
  :data:`SIGNATURE_TOLERANCE` seconds away from their clock.

Anything but a 2xx answer is a failure; redirects are not followed.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from urllib.parse import urlsplit

from backupd import __version__
from backupd.config.model import WebhookChannel
from backupd.config.secrets import read_secret
from backupd.errors import ConfigError
from backupd.notify import http_request, redact_text, redact_url, url_secrets
from backupd.notify.events import DEFAULT_EVENTS, Event, expand_event_filter, hostname

SIGNATURE_TOLERANCE = 300
EVENT_HEADER = "X-Backupd-Event"
DELIVERY_HEADER = "X-Backupd-Delivery"
TIMESTAMP_HEADER = "X-Backupd-Timestamp"
SIGNATURE_HEADER = "X-Backupd-Signature"
_DELIVERY_NS = uuid.UUID("9d3c1f5e-8a47-4d6b-b1e2-5f0a7c2d9e41")


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """Given the shared secret, a unix timestamp and the exact body bytes, return the
    ``X-Backupd-Signature`` header value ``sha256=<hex>``."""
    digest = hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def verify_signature(
    secret: bytes,
    timestamp: str,
    body: bytes,
    signature: str,
    *,
    now: float | None = None,
    tolerance: float = SIGNATURE_TOLERANCE,
) -> bool:
    """Given the secret and a request's timestamp header, body and signature header, return
    True when the signature matches and the timestamp is within ``tolerance`` seconds of
    ``now``. A reference for receivers written in Python."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - stamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, stamp, body), signature)


class WebhookNotifier:
    """Given a channel name, an http(s) URL, an optional secret, the expanded event filter
    and a timeout, POST events to the URL; raise ConfigError for a non-HTTP URL."""

    kind = "webhook"

    def __init__(
        self,
        name: str,
        url: str,
        *,
        secret: str | None = None,
        events: frozenset[str] = DEFAULT_EVENTS,
        timeout: float = 10.0,
    ) -> None:
        if urlsplit(url).scheme.lower() not in ("http", "https"):
            raise ConfigError(f"notifications.{name}.url: expected an http:// or https:// URL")
        self.name = name
        self.url = url
        self.events = events
        self.timeout = timeout
        self._secret = secret.encode("utf-8") if secret else None
        self._secrets = url_secrets(url) | ({secret} if secret else set())

    @classmethod
    def from_config(cls, name: str, config: WebhookChannel) -> WebhookNotifier:
        """Given the channel's name and config, read its secret file and return the channel;
        raise SecretError if the secret cannot be read, ValueError on a bad events filter."""
        secret = read_secret(config.secret_file, None, f"notifications.{name}.secret_file")
        return cls(
            name,
            config.url,
            secret=secret,
            events=expand_event_filter(config.events),
            timeout=config.timeout,
        )

    def body(self, event: Event) -> bytes:
        """Given an event, return the exact JSON bytes that are posted (and signed)."""
        payload = event.to_json_dict()
        payload.update(source="backupd", hostname=hostname(), backupd_version=__version__)
        return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def headers(self, event: Event, body: bytes, timestamp: int) -> dict[str, str]:
        """Given an event, its body and the send time, return the request headers."""
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"backupd/{__version__}",
            EVENT_HEADER: event.kind,
            # Same event, same body, same id: retries are recognisable as duplicates.
            DELIVERY_HEADER: str(uuid.uuid5(_DELIVERY_NS, hashlib.sha256(body).hexdigest())),
        }
        if self._secret is not None:
            headers[TIMESTAMP_HEADER] = str(timestamp)
            headers[SIGNATURE_HEADER] = sign(self._secret, timestamp, body)
        return headers

    def send(self, event: Event) -> None:
        """Given an event, POST it; raise NotifyError on a non-2xx answer, a network error or
        no answer within the timeout."""
        body = self.body(event)
        http_request(
            self.name,
            "POST",
            self.url,
            body=body,
            headers=self.headers(event, body, int(time.time())),
            timeout=self.timeout,
        )

    def describe(self) -> str:
        """Return a one-line, secret-free description of the channel."""
        signed = "signed" if self._secret is not None else "unsigned"
        return f"webhook {redact_url(self.url)} ({signed}, timeout {self.timeout:g}s)"

    def redact(self, text: str) -> str:
        """Given free text, return it with the URL's tokens and the secret masked."""
        return redact_text(text, self._secrets)
