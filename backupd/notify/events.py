"""What backupd notifies about: the event kinds, the :class:`Event` record, and the words a
channel's ``events = [...]`` filter accepts.

A filter word is either a full kind (``"backup.failed"``) or a short form that stands for
several kinds (``"failed"`` = every ``*.failed`` kind). An empty filter means the channel's
default: for webhook and Apprise channels that is every problem (failures, partial backups,
skipped retention, an unclean stop), so a quiet night stays quiet; a ping channel defaults
to the backup lifecycle, because a dead-man's-switch service needs the successes too.
The ``test`` kind is not filtered: ``backupctl notify test NAME`` always reaches the channel.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from types import MappingProxyType
from typing import Any

BACKUP_STARTED = "backup.started"
BACKUP_SUCCEEDED = "backup.succeeded"
BACKUP_PARTIAL = "backup.partial"
BACKUP_FAILED = "backup.failed"
RESTORE_SUCCEEDED = "restore.succeeded"
RESTORE_FAILED = "restore.failed"
INTEGRITY_FAILED = "integrity.failed"
RETENTION_SKIPPED = "retention.skipped"
RELOAD_FAILED = "reload.failed"
DAEMON_UNCLEAN_STOP = "daemon.unclean_stop"
TEST = "test"

# Ordered as they are documented (docs/NOTIFICATIONS.md).
EVENT_KINDS: tuple[str, ...] = (
    BACKUP_STARTED,
    BACKUP_SUCCEEDED,
    BACKUP_PARTIAL,
    BACKUP_FAILED,
    RESTORE_SUCCEEDED,
    RESTORE_FAILED,
    INTEGRITY_FAILED,
    RETENTION_SKIPPED,
    RELOAD_FAILED,
    DAEMON_UNCLEAN_STOP,
    TEST,
)

_FILTERABLE = tuple(k for k in EVENT_KINDS if k != TEST)

# Everything that needs a person's attention; the default for webhook and Apprise channels.
PROBLEM_KINDS: frozenset[str] = frozenset(
    {
        BACKUP_PARTIAL,
        BACKUP_FAILED,
        RESTORE_FAILED,
        INTEGRITY_FAILED,
        RETENTION_SKIPPED,
        RELOAD_FAILED,
        DAEMON_UNCLEAN_STOP,
    }
)
DEFAULT_EVENTS: frozenset[str] = PROBLEM_KINDS

# Short filter words and the kinds each one stands for.
SHORT_FORMS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "all": frozenset(_FILTERABLE),
        "problems": PROBLEM_KINDS,
        "failed": frozenset(k for k in _FILTERABLE if k.endswith(".failed")),
        "succeeded": frozenset(k for k in _FILTERABLE if k.endswith(".succeeded")),
        "partial": frozenset({BACKUP_PARTIAL}),
        "started": frozenset({BACKUP_STARTED}),
        "skipped": frozenset({RETENTION_SKIPPED}),
    }
)

FieldValue = str | int | float | None


def allowed_filter_words() -> list[str]:
    """Return every word a channel's ``events`` list may contain, short forms first."""
    return [*SHORT_FORMS, *_FILTERABLE]


def validate_event_filter(words: Iterable[str]) -> None:
    """Given a channel's ``events`` list, do nothing if every word is known; raise ValueError
    naming the unknown words and listing the allowed ones otherwise."""
    unknown = [w for w in words if w not in SHORT_FORMS and w not in _FILTERABLE]
    if unknown:
        raise ValueError(
            f"unknown event filter word(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(allowed_filter_words())}"
        )


def expand_event_filter(words: Iterable[str], default: frozenset[str] = DEFAULT_EVENTS) -> frozenset[str]:
    """Given a channel's ``events`` list and the default for its type, return the set of
    kinds it receives (``default`` when the list is empty); raise ValueError on an unknown
    word."""
    words = list(words)
    validate_event_filter(words)
    if not words:
        return default
    kinds: set[str] = set()
    for word in words:
        kinds |= SHORT_FORMS.get(word, frozenset({word}))
    return frozenset(kinds)


@cache
def hostname() -> str:
    """Return this machine's host name, as put into every notification."""
    return socket.gethostname()


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Event:
    """One thing that happened and may be worth telling someone about.

    ``kind`` is one of :data:`EVENT_KINDS`; ``message`` is a one-line human summary (no
    secrets); ``fields`` holds extra facts (step, size, destination, ...) and is copied into
    a read-only mapping. ``time`` is normalised to UTC; a naive datetime is taken as UTC.
    """

    kind: str
    message: str
    job: str | None = None
    execution_id: int | None = None
    status: str | None = None
    fields: Mapping[str, FieldValue] = field(default_factory=dict, hash=False)
    time: datetime = field(default_factory=_utc_now)

    def __post_init__(self) -> None:
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"unknown event kind {self.kind!r}; known: {', '.join(EVENT_KINDS)}")
        # Frozen dataclass: normalise through object.__setattr__.
        object.__setattr__(self, "fields", MappingProxyType(dict(self.fields)))
        when = self.time if self.time.tzinfo else self.time.replace(tzinfo=UTC)
        object.__setattr__(self, "time", when.astimezone(UTC))

    def to_json_dict(self) -> dict[str, Any]:
        """Return the event as a JSON-ready dict (time as ISO 8601 UTC with a ``Z``)."""
        return {
            "kind": self.kind,
            "message": self.message,
            "job": self.job,
            "execution_id": self.execution_id,
            "status": self.status,
            "fields": dict(self.fields),
            "time": self.time.isoformat(timespec="seconds").replace("+00:00", "Z"),
        }

    def title(self) -> str:
        """Return a short subject line: host, kind and job, e.g. ``db1: backup.failed nightly-pg``."""
        parts = [f"{hostname()}:", self.kind]
        if self.job:
            parts.append(self.job)
        if self.execution_id is not None:
            parts.append(f"(execution {self.execution_id})")
        return " ".join(parts)

    def text(self) -> str:
        """Return a plain-text body: the message, then one ``name: value`` line per fact."""
        lines = [self.message, ""]
        facts: list[tuple[str, object]] = [
            ("job", self.job),
            ("execution", self.execution_id),
            ("status", self.status),
            *self.fields.items(),
            ("host", hostname()),
            ("time", self.to_json_dict()["time"]),
        ]
        lines.extend(f"{name}: {value}" for name, value in facts if value is not None)
        return "\n".join(lines)
