"""The state DB: migrations by user_version, WAL, the append-only log, settings, catalog."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backupd.domain.records import BackupRecord
from backupd.domain.states import Status
from backupd.errors import ExecutionNotFound
from backupd.store.schema import MIGRATIONS
from backupd.store.state import StateStore


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state.db")


def test_migrations_wal_and_mode(tmp_path: Path, store: StateStore) -> None:
    conn = sqlite3.connect(tmp_path / "state.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert oct((tmp_path / "state.db").stat().st_mode & 0o777) == "0o600"
    store.close()
    assert StateStore(tmp_path / "state.db").version == len(MIGRATIONS)  # reopening migrates nothing


def test_newer_database_is_refused(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "state.db")
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    with pytest.raises(RuntimeError, match="newer than this backupd"):
        StateStore(tmp_path / "state.db")


def test_execution_lifecycle_and_interrupt(store: StateStore) -> None:
    a = store.create_execution("job", "manual")
    b = store.create_execution("job", "schedule")
    store.mark_running(a)
    store.finish_execution(b, Status.SUCCEEDED, size=10, details={"x": 1})
    assert store.interrupt_orphans() == [a]
    rec = store.get_execution(a)
    assert rec.status == "interrupted" and "daemon stopped" in (rec.error or "")
    assert store.get_execution(b).details == {"x": 1}
    assert [r.id for r in store.history("job")] == [b, a]
    with pytest.raises(ExecutionNotFound):
        store.get_execution(999)


def test_log_is_append_only_and_ordered_across_threads(store: StateStore) -> None:
    eid = store.create_execution("job", "manual")

    def writer(n: int) -> None:
        for i in range(50):
            store.append_log(eid, "info", "dump", f"{n}-{i}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = store.logs(eid)
    assert [line.seq for line in lines] == list(range(1, 201))
    assert len(store.logs(eid, after_seq=150)) == 50


def test_settings_schedules_catalog_and_locks(store: StateStore) -> None:
    store.set_setting("max_concurrent_jobs", "3")
    store.set_setting("max_concurrent_jobs", "4")
    assert store.all_settings() == {"max_concurrent_jobs": "4"}
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    store.set_last_triggered("job", when)
    assert store.get_last_triggered("job") == when
    rec = BackupRecord(
        destination="d", key="job/k1", job="job", database="db", created_at=100.0, size=1, sha256="a"
    )
    store.upsert_backup(rec)
    store.set_lock("d", "job/k1", True)
    assert store.backups(job="job")[0].locked is True
    store.record_verification("d", "job/k1", "ok")
    # a rebuild from sidecars keeps locks and verification results of keys still present
    store.replace_catalog("d", [rec], listed_at=1000.0)
    row = store.backups()[0]
    assert row.locked and row.verify_result == "ok"
    store.replace_catalog("d", [], listed_at=1000.0)
    assert store.backups() == []
