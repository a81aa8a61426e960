"""Execution states (DESIGN §5) and which of them are final."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


ACTIVE_STATUSES = frozenset({Status.QUEUED, Status.RUNNING})
FINAL_STATUSES = frozenset(Status) - ACTIVE_STATUSES


class Step(StrEnum):
    INITIALIZE = "initialize"
    DUMP = "dump"
    UPLOAD = "upload"
    COMPLETION = "completion"
    RETENTION = "retention"
    # restore and verify executions
    DOWNLOAD = "download"
    RESTORE = "restore"
    VERIFY = "verify"
