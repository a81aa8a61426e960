"""Records shared by the state store, the control protocol and backupctl.

msgspec Structs only (no I/O), so that backupctl can decode replies into the same types the
daemon stores. Times are UNIX seconds (UTC).
"""

from __future__ import annotations

from typing import Any

import msgspec


class ExecutionRecord(msgspec.Struct, kw_only=True):
    id: int
    job: str
    kind: str
    trigger: str
    status: str
    step: str | None = None
    queued_at: float
    started_at: float | None = None
    finished_at: float | None = None
    size: int | None = None
    sha256: str | None = None
    error: str | None = None
    details: dict[str, Any] = {}

    @classmethod
    def from_row(cls, row: Any) -> ExecutionRecord:
        d = dict(row)
        d["details"] = msgspec.json.decode(d.get("details") or "{}")
        return msgspec.convert(d, cls)

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or self.started_at) - self.started_at


class LogLine(msgspec.Struct, array_like=False):
    execution_id: int
    seq: int
    time: float
    level: str
    step: str | None
    message: str


class BackupRecord(msgspec.Struct, kw_only=True):
    destination: str
    key: str
    job: str
    database: str
    created_at: float
    size: int
    sha256: str
    execution_id: int | None = None
    sidecar: str = "{}"
    locked: bool = False
    last_verified_at: float | None = None
    verify_result: str | None = None

    @classmethod
    def from_row(cls, row: Any) -> BackupRecord:
        d = dict(row)
        d["locked"] = bool(d.pop("is_locked", d.get("locked", 0)))
        return msgspec.convert(d, cls)
