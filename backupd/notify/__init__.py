"""Notification channels (webhook, Apprise, ping) and what they share.

The dispatcher (:mod:`backupd.notify.dispatcher`) sends :class:`~backupd.notify.events.Event`
records to channels without blocking the job that raised them. This module holds the small
pieces every channel uses: the :class:`Channel` port, URL and secret redaction, and one
bounded HTTP request helper. It deliberately imports none of the channel modules, so that
each of them can import it.
"""

from __future__ import annotations

import http.client
import re
import socket
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from urllib.parse import unquote, urlsplit

from backupd.errors import NotifyError

if TYPE_CHECKING:
    from backupd.notify.events import Event

MASK = "***"

# Schemes whose host part is a real network host rather than a token (Apprise puts bot
# tokens and webhook ids where a host would be, e.g. tgram://TOKEN/CHAT, discord://ID/TOKEN).
_HOST_SCHEMES = frozenset(
    base + secure for base in ("http", "json", "xml", "form", "mailto", "gotify") for secure in ("", "s")
)
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
_FRAGMENT_SPLIT = re.compile(r"[/?&=@:#;,+]")
# Shorter pieces are too likely to be ordinary words ("to", "from") to mask everywhere.
_MIN_SECRET_LEN = 6


@runtime_checkable
class Channel(Protocol):
    """The port the dispatcher drives. ``events`` is the expanded filter (a set of kinds);
    ``send`` raises :class:`~backupd.errors.NotifyError` and should give up by ``timeout``;
    ``describe`` and ``redact`` never reveal secrets."""

    name: str
    kind: str
    events: frozenset[str]
    timeout: float

    def send(self, event: Event) -> None: ...

    def describe(self) -> str: ...

    def redact(self, text: str) -> str: ...


def redact_url(url: str) -> str:
    """Given a URL, return it with everything that may carry a token masked: keep the scheme,
    and the host when the scheme puts a real host there; raise nothing."""
    scheme_match = _SCHEME_RE.match(url.strip())
    if scheme_match is None:
        return MASK
    scheme = scheme_match.group(1).lower()
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        port = parts.port
    except ValueError:
        # e.g. tgram://123:TOKEN/chat parses as a host with a non-numeric port
        return f"{scheme}://{MASK}"
    if scheme not in _HOST_SCHEMES or not host:
        return f"{scheme}://{MASK}"
    shown = f"[{host}]" if ":" in host else host
    if port is not None:
        shown += f":{port}"
    has_more = bool(
        parts.username or parts.password or parts.path.strip("/") or parts.query or parts.fragment
    )
    return f"{scheme}://{shown}" + (f"/{MASK}" if has_more else "")


def url_secrets(url: str) -> set[str]:
    """Given a URL, return the pieces of it that could be secret (userinfo, path segments,
    query values, a token-like host), raw and percent-decoded, for :func:`redact_text`."""
    url = url.strip()
    found = {url}
    _, sep, rest = url.partition("://")
    kept = ""
    try:
        parts = urlsplit(url)
        if parts.scheme.lower() in _HOST_SCHEMES and parts.hostname:
            kept = parts.hostname
    except ValueError:
        pass
    for piece in _FRAGMENT_SPLIT.split(rest if sep else url):
        for candidate in {piece, unquote(piece)}:
            if len(candidate) >= _MIN_SECRET_LEN and candidate.lower() != kept.lower():
                found.add(candidate)
    return found


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Given free text (an error message, a log line) and known secret strings, return the
    text with each secret and every URL-looking substring masked."""
    # URLs first, so that they keep their readable scheme and host; then each secret,
    # longest first, so a secret that contains another is masked whole.
    text = _URL_RE.sub(lambda m: redact_url(m.group(0)), text)
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirected POST would be replayed as a GET without its body (and signature) or to a
    # host the admin never named; a 3xx is reported as a failure instead.
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


def http_request(
    channel: str,
    method: str,
    url: str,
    *,
    body: bytes | None,
    headers: Mapping[str, str],
    timeout: float,
) -> int:
    """Given a channel name (for errors), a method, URL, body, headers and a timeout (per
    socket operation), send one HTTP request and return its 2xx status; raise NotifyError,
    with the URL redacted and ``transient`` set for errors a retry may cure, otherwise."""
    shown = redact_url(url)
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers))
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            response.read(65536)  # drain a little so keep-alive peers see a clean close
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        hint = " (redirects are not followed)" if 300 <= exc.code < 400 else ""
        raise NotifyError(
            channel=channel,
            reason=f"{shown} answered HTTP {exc.code} {exc.reason}{hint}",
            transient=exc.code in _TRANSIENT_STATUS,
            status=exc.code,
        ) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError | socket.timeout):
            raise NotifyError(channel=channel, reason=f"{shown}: no answer within {timeout:g}s") from None
        reason = exc.reason.strerror if isinstance(exc.reason, OSError) else str(exc.reason)
        reason = redact_text(str(reason or exc.reason), url_secrets(url))
        raise NotifyError(channel=channel, reason=f"{shown}: {reason}", transient=True) from None
    except TimeoutError:
        raise NotifyError(channel=channel, reason=f"{shown}: no answer within {timeout:g}s") from None
    except (OSError, http.client.HTTPException) as exc:
        detail = redact_text(f"{type(exc).__name__}: {exc}", url_secrets(url))
        raise NotifyError(channel=channel, reason=f"{shown}: {detail}", transient=True) from None
    except ValueError as exc:
        detail = redact_text(str(exc), url_secrets(url))
        raise NotifyError(channel=channel, reason=f"{shown}: {detail}") from None
    if not 200 <= status < 300:
        raise NotifyError(channel=channel, reason=f"{shown} answered HTTP {status}", status=status)
    return status


__all__ = ["MASK", "Channel", "http_request", "redact_text", "redact_url", "url_secrets"]
