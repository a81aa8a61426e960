"""The control protocol (DESIGN §9): one JSON object per line over a Unix stream socket.

Request: ``{"id": n, "op": "...", ...args}``. Reply: ``{"id": n, "ok": true, "result": ...}``
or ``{"id": n, "ok": false, "error": {"code": "...", "message": "..."}}``. Streaming ops
(``watch``, ``logs`` with ``follow``) first send ``{"id": n, "event": {...}}`` lines and end
with an ordinary reply. The first request of a client should be ``hello`` with its
``protocol``; a different major protocol is refused with ``protocol-mismatch``.

This module uses only the standard library and msgspec, so that backupctl starts fast.
"""

from __future__ import annotations

from typing import Any

import msgspec

from backupd.domain.records import BackupRecord, ExecutionRecord, LogLine

PROTOCOL_VERSION = 1
MAX_FRAME = 1024 * 1024
MAX_DEPTH = 32

# Operations anyone who can connect may call; every other op needs root or an admin.
READ_ONLY_OPS = frozenset(
    {
        "hello",
        "status",
        "jobs",
        "history",
        "execution",
        "logs",
        "wait",
        "watch",
        "settings.get",
        "backups",
        "retention.plan",
        "notifications",
        "metrics",
    }
)
MUTATING_OPS = frozenset(
    {
        "run",
        "cancel",
        "restore",
        "verify",
        "settings.set",
        "reload",
        "lock",
        "unlock",
        "retention.apply",
        "destinations.test",
        "notify.test",
    }
)
ALL_OPS = READ_ONLY_OPS | MUTATING_OPS

_encoder = msgspec.json.Encoder()


def encode(obj: Any) -> bytes:
    """Return ``obj`` as one frame: compact JSON and a newline."""
    return _encoder.encode(obj) + b"\n"


def nesting_depth(frame: bytes) -> int:
    """Return the deepest nesting of arrays/objects in a JSON text, ignoring strings.

    Checked before decoding so that a hostile, deeply nested frame costs a linear scan and
    nothing more.
    """
    if frame.count(b"[") + frame.count(b"{") <= MAX_DEPTH:
        return frame.count(b"[") + frame.count(b"{")
    depth = deepest = 0
    in_string = escaped = False
    for byte in frame:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    return deepest
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def ok_reply(req_id: Any, result: Any) -> dict[str, Any]:
    return {"id": req_id, "ok": True, "result": result}


def error_reply(req_id: Any, code: str, message: str) -> dict[str, Any]:
    return {"id": req_id, "ok": False, "error": {"code": code, "message": message}}


def event_frame(req_id: Any, event: dict[str, Any]) -> dict[str, Any]:
    return {"id": req_id, "event": event}


def to_builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)


def decode_executions(data: Any) -> list[ExecutionRecord]:
    return msgspec.convert(data, list[ExecutionRecord])


def decode_execution(data: Any) -> ExecutionRecord:
    return msgspec.convert(data, ExecutionRecord)


def decode_logs(data: Any) -> list[LogLine]:
    return msgspec.convert(data, list[LogLine])


def decode_backups(data: Any) -> list[BackupRecord]:
    return msgspec.convert(data, list[BackupRecord])


__all__ = [
    "ALL_OPS",
    "MAX_FRAME",
    "MUTATING_OPS",
    "PROTOCOL_VERSION",
    "READ_ONLY_OPS",
    "BackupRecord",
    "ExecutionRecord",
    "LogLine",
    "encode",
    "error_reply",
    "ok_reply",
]
