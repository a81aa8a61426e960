"""RunnerContext: what the pipeline's steps share for one execution, and the ports they use.

The steps see the outside world only through this context: adapters behind the source and
storage ports, a :class:`ExecutionJournal` for log lines and progress, a :class:`CancelToken`
and a clock. Nothing here imports an I/O library.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from backupd.config.model import JobConfig
from backupd.domain.states import Status, Step
from backupd.errors import Cancelled
from backupd.sources.base import SourceAdapter, SourceInfo, ToolResult
from backupd.storage.base import StorageAdapter


class ExecutionJournal(Protocol):
    """Where an execution's log lines and progress go (state DB, journald, watchers)."""

    def log(self, level: str, step: str | None, message: str, **fields: Any) -> None: ...

    def step(self, step: str) -> None: ...

    def progress(self, step: str, done: int, total: int | None) -> None: ...


class CancelToken:
    """Set once; callbacks registered while a dump runs kill it at once."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: list[Callable[[], None]] = []
        self.reason = "cancelled"

    def cancel(self, reason: str = "cancelled") -> None:
        with self._lock:
            if self._event.is_set():
                return
            self.reason = reason
            self._event.set()
            callbacks = list(self._callbacks)
        for cb in callbacks:
            cb()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled(self.reason)

    def on_cancel(self, cb: Callable[[], None]) -> Callable[[], None]:
        """Register ``cb``; if already cancelled, call it now. Return a function removing it."""
        with self._lock:
            already = self._event.is_set()
            if not already:
                self._callbacks.append(cb)
        if already:
            cb()

        def remove() -> None:
            with self._lock:
                if cb in self._callbacks:
                    self._callbacks.remove(cb)

        return remove


def destination_error(name: str, exc: BaseException, verb: str = "") -> str:
    """Return ``exc`` as a message naming destination ``name`` once (storage errors name it
    already), e.g. ``destination offsite unusable: …``."""
    text, prefix = str(exc), f"destination {name}: "
    return f"destination {name}{verb}: {text.removeprefix(prefix)}"


@dataclass
class StoredCopy:
    """One committed object on one destination."""

    destination: str
    key: str
    size: int
    sha256: str


@dataclass
class DatabaseResult:
    """What happened to one database of the execution."""

    database: str
    key: str | None = None
    plaintext_size: int = 0
    plaintext_sha256: str | None = None
    size: int = 0
    sha256: str | None = None
    tool: ToolResult | None = None
    copies: list[StoredCopy] = field(default_factory=list)
    failed_destinations: dict[str, str] = field(default_factory=dict)
    error: str | None = None


@dataclass
class RunnerContext:
    job_name: str
    job: JobConfig
    execution_id: int
    source: SourceAdapter
    destinations: dict[str, StorageAdapter]
    journal: ExecutionJournal
    cancel: CancelToken
    encryption_key: Any = None  # backupd.crypto.keyring.MasterKey when the job encrypts
    compression_threads: int = 0
    expected_sizes: dict[str, int] = field(default_factory=dict)  # database -> last plaintext size, for ETAs
    configured_databases: list[str] = field(default_factory=list)  # the source's `databases`; [] = all
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    # filled in by the steps
    started_at: datetime | None = None
    source_info: SourceInfo | None = None
    databases: list[str] = field(default_factory=list)
    results: list[DatabaseResult] = field(default_factory=list)
    status: Status = Status.RUNNING
    failed_step: Step | None = None
    error: str | None = None
    retention_summary: dict[str, Any] = field(default_factory=dict)
    hooks: dict[str, Callable[..., Any]] = field(default_factory=dict)

    def log(self, level: str, step: Step | None, message: str, **fields: Any) -> None:
        self.journal.log(level, step.value if step else None, message, **fields)
