"""StateStore: backupd's SQLite state (executions, their logs, settings, schedules, the
backup catalog, notification attempts).

One connection shared by the daemon's threads behind a lock: writes are small and rare
(a few per execution), so serialising them is simpler and safer than a pool. WAL mode lets
``sqlite3`` readers (an administrator poking at the file) run alongside.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backupd.domain.states import ACTIVE_STATUSES, Status
from backupd.errors import ExecutionNotFound
from backupd.store.records import BackupRecord, ExecutionRecord, LogLine
from backupd.store.schema import migrate

BUSY_TIMEOUT_MS = 10_000


class StateStore:
    """Given a path, open (creating if needed) and migrate the state database."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(
            str(path), check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000
        )
        self._conn.row_factory = sqlite3.Row
        self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = NORMAL")
        self._conn.execute("PRAGMA foreign_keys = ON")
        path.chmod(0o600)
        with self._lock:
            self._conn.isolation_level = ""  # migrations need transactions
            self.version = migrate(self._conn)
            self._conn.isolation_level = None

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _all(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, tuple(args)).fetchall()

    # --- executions ----------------------------------------------------------------------
    def create_execution(
        self, job: str, trigger: str, kind: str = "backup", details: dict[str, Any] | None = None
    ) -> int:
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO executions (job, kind, trigger, status, queued_at, details) VALUES (?,?,?,?,?,?)",
                (job, kind, trigger, Status.QUEUED, time.time(), json.dumps(details or {})),
            )
            return int(cur.lastrowid or 0)

    def mark_running(self, execution_id: int) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE executions SET status=?, started_at=? WHERE id=?",
                (Status.RUNNING, time.time(), execution_id),
            )

    def set_step(self, execution_id: int, step: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE executions SET step=? WHERE id=?", (step, execution_id))

    def finish_execution(
        self,
        execution_id: int,
        status: Status,
        *,
        error: str | None = None,
        size: int | None = None,
        sha256: str | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        with self._tx() as c:
            row = c.execute("SELECT details FROM executions WHERE id=?", (execution_id,)).fetchone()
            merged = {**json.loads(row["details"] if row else "{}"), **(details or {})}
            c.execute(
                "UPDATE executions SET status=?, finished_at=?, error=?, size=?, sha256=?, details=? WHERE id=?",
                (status, time.time(), error, size, sha256, json.dumps(merged), execution_id),
            )

    def interrupt_orphans(self) -> list[int]:
        """Mark executions left queued/running by a daemon that died as ``interrupted``;
        return their ids."""
        with self._tx() as c:
            ids = [
                r[0]
                for r in c.execute(
                    f"SELECT id FROM executions WHERE status IN ({','.join('?' * len(ACTIVE_STATUSES))})",
                    tuple(ACTIVE_STATUSES),
                )
            ]
            now = time.time()
            for i in ids:
                c.execute(
                    "UPDATE executions SET status=?, finished_at=?, error=? WHERE id=?",
                    (Status.INTERRUPTED, now, "the daemon stopped while this execution was active", i),
                )
            return ids

    def get_execution(self, execution_id: int) -> ExecutionRecord:
        rows = self._all("SELECT * FROM executions WHERE id=?", (execution_id,))
        if not rows:
            raise ExecutionNotFound(execution=execution_id)
        return ExecutionRecord.from_row(rows[0])

    def history(self, job: str | None = None, limit: int = 20) -> list[ExecutionRecord]:
        if job is None:
            rows = self._all("SELECT * FROM executions ORDER BY id DESC LIMIT ?", (limit,))
        else:
            rows = self._all("SELECT * FROM executions WHERE job=? ORDER BY id DESC LIMIT ?", (job, limit))
        return [ExecutionRecord.from_row(r) for r in rows]

    def last_execution(
        self, job: str, status: Status | None = None, kind: str = "backup"
    ) -> ExecutionRecord | None:
        sql = "SELECT * FROM executions WHERE job=? AND kind=?"
        args: list[Any] = [job, kind]
        if status is not None:
            sql += " AND status=?"
            args.append(status)
        rows = self._all(sql + " ORDER BY id DESC LIMIT 1", args)
        return ExecutionRecord.from_row(rows[0]) if rows else None

    def count_by_status(self) -> dict[tuple[str, str], int]:
        rows = self._all("SELECT job, status, COUNT(*) AS n FROM executions GROUP BY job, status")
        return {(r["job"], r["status"]): int(r["n"]) for r in rows}

    # --- execution log -------------------------------------------------------------------
    def append_log(self, execution_id: int, level: str, step: str | None, message: str) -> LogLine:
        with self._tx() as c:
            (seq,) = c.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM execution_log WHERE execution_id=?", (execution_id,)
            ).fetchone()
            now = time.time()
            c.execute(
                "INSERT INTO execution_log (execution_id, seq, time, level, step, message) VALUES (?,?,?,?,?,?)",
                (execution_id, seq, now, level, step, message),
            )
        return LogLine(execution_id, int(seq), now, level, step, message)

    def logs(self, execution_id: int, after_seq: int = 0) -> list[LogLine]:
        rows = self._all(
            "SELECT * FROM execution_log WHERE execution_id=? AND seq>? ORDER BY seq",
            (execution_id, after_seq),
        )
        return [
            LogLine(r["execution_id"], r["seq"], r["time"], r["level"], r["step"], r["message"]) for r in rows
        ]

    # --- settings and schedules ------------------------------------------------------------
    def get_setting(self, key: str) -> str | None:
        rows = self._all("SELECT value FROM settings WHERE key=?", (key,))
        return str(rows[0]["value"]) if rows else None

    def all_settings(self) -> dict[str, str]:
        return {r["key"]: r["value"] for r in self._all("SELECT key, value FROM settings")}

    def set_setting(self, key: str, value: str) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO settings (key, value) VALUES (?,?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (key, value),
            )

    def get_last_triggered(self, job: str) -> datetime | None:
        rows = self._all("SELECT last_triggered_at FROM schedules WHERE job=?", (job,))
        return datetime.fromtimestamp(rows[0][0], UTC) if rows else None

    def set_last_triggered(self, job: str, when: datetime) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO schedules (job, last_triggered_at) VALUES (?,?) "
                "ON CONFLICT(job) DO UPDATE SET last_triggered_at=excluded.last_triggered_at",
                (job, when.timestamp()),
            )

    # --- backup catalog ------------------------------------------------------------------
    def upsert_backup(self, rec: BackupRecord) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO backups (destination, key, job, database, created_at, size, sha256, execution_id, "
                "sidecar) VALUES (?,?,?,?,?,?,?,?,?) ON CONFLICT(destination, key) DO UPDATE SET "
                "job=excluded.job, database=excluded.database, created_at=excluded.created_at, "
                "size=excluded.size, sha256=excluded.sha256, execution_id=excluded.execution_id, "
                "sidecar=excluded.sidecar",
                (
                    rec.destination,
                    rec.key,
                    rec.job,
                    rec.database,
                    rec.created_at,
                    rec.size,
                    rec.sha256,
                    rec.execution_id,
                    rec.sidecar,
                ),
            )

    def remove_backup(self, destination: str, key: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM backups WHERE destination=? AND key=?", (destination, key))

    def replace_catalog(self, destination: str, records: list[BackupRecord], listed_at: float) -> None:
        """Replace what the catalog knows of ``destination`` with ``records`` (from sidecars
        listed at ``listed_at``), keeping verification results of keys still there and rows
        committed after the listing began."""
        keep = {r.key for r in records}
        with self._tx() as c:
            rows = c.execute(
                "SELECT key FROM backups WHERE destination=? AND created_at < ?",
                (destination, listed_at - 60),
            ).fetchall()
            for row in rows:
                if row["key"] not in keep:
                    c.execute("DELETE FROM backups WHERE destination=? AND key=?", (destination, row["key"]))
        for rec in records:
            self.upsert_backup(rec)

    def backups(
        self, job: str | None = None, destination: str | None = None, database: str | None = None
    ) -> list[BackupRecord]:
        sql = (
            "SELECT b.*, (l.key IS NOT NULL) AS is_locked FROM backups b LEFT JOIN backup_locks l "
            "ON l.destination=b.destination AND l.key=b.key WHERE 1=1"
        )
        args: list[Any] = []
        for col, val in (("job", job), ("destination", destination), ("database", database)):
            if val is not None:
                sql += f" AND b.{col}=?"
                args.append(val)
        rows = self._all(sql + " ORDER BY b.created_at DESC, b.key DESC", args)
        return [BackupRecord.from_row(r) for r in rows]

    def find_backup(self, key: str, destination: str | None = None) -> list[BackupRecord]:
        return [b for b in self.backups(destination=destination) if b.key == key]

    def set_lock(self, destination: str, key: str, locked: bool) -> None:
        with self._tx() as c:
            if locked:
                c.execute(
                    "INSERT OR IGNORE INTO backup_locks (destination, key, locked_at) VALUES (?,?,?)",
                    (destination, key, time.time()),
                )
            else:
                c.execute("DELETE FROM backup_locks WHERE destination=? AND key=?", (destination, key))

    def record_verification(self, destination: str, key: str, result: str) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE backups SET last_verified_at=?, verify_result=? WHERE destination=? AND key=?",
                (time.time(), result, destination, key),
            )

    # --- notifications -------------------------------------------------------------------
    def record_notification(
        self,
        channel: str,
        event: str,
        job: str | None,
        execution_id: int | None,
        ok: bool,
        attempts: int,
        error: str | None,
        duration: float | None,
    ) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO notifications (time, channel, event, job, execution_id, ok, attempts, error, duration)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (time.time(), channel, event, job, execution_id, int(ok), attempts, error, duration),
            )

    def notifications(self, limit: int = 20) -> list[dict[str, Any]]:
        rows = self._all("SELECT * FROM notifications ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(r) for r in rows]
