"""SqliteAdapter against real SQLite files: a consistent copy while the database is being
written (WAL and rollback-journal modes), and restore by atomic replace."""

from __future__ import annotations

import io
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from backupd.adapters import AdapterContext
from backupd.config.model import SqliteSource
from backupd.errors import RestoreFailed, RestoreRefused, SourceError
from backupd.sources.base import RestoreTarget
from backupd.sources.sqlite import SqliteAdapter

pytestmark = pytest.mark.timeout(60)


def _adapter(tmp_path: Path, db: Path) -> SqliteAdapter:
    return SqliteAdapter("app", SqliteSource(path=str(db)), AdapterContext(tmp_path, tmp_path / "work"))


def _dump(adapter: SqliteAdapter) -> bytes:
    handle = adapter.dump("app")
    out = io.BytesIO()
    while chunk := handle.read():
        out.write(chunk)
    handle.finish()
    return out.getvalue()


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_copy_is_consistent_while_written(tmp_path: Path, journal_mode: str) -> None:
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA journal_mode={journal_mode}")
    conn.execute("CREATE TABLE pairs (id INTEGER PRIMARY KEY, grp INTEGER, payload BLOB)")
    with conn:
        conn.executemany(
            "INSERT INTO pairs (grp, payload) VALUES (?, ?)", [(i // 2, b"x" * 2000) for i in range(20000)]
        )
    conn.close()
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        w = sqlite3.connect(db, timeout=30)
        grp = 10_000
        while not stop.is_set():
            with w:  # every transaction adds exactly two rows of one group
                w.execute("INSERT INTO pairs (grp, payload) VALUES (?, ?)", (grp, b"y" * 3000))
                w.execute("INSERT INTO pairs (grp, payload) VALUES (?, ?)", (grp, b"z" * 3000))
            grp += 1
            written[0] += 1
        w.close()

    t = threading.Thread(target=writer)
    t.start()
    try:
        while written[0] < 20:
            time.sleep(0.01)
        data = _dump(_adapter(tmp_path, db))
    finally:
        stop.set()
        t.join()
    copy = tmp_path / "copy.db"
    copy.write_bytes(data)
    c = sqlite3.connect(copy)
    assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # a torn copy would hold a group with one row only
    assert (
        c.execute(
            "SELECT count(*) FROM (SELECT grp FROM pairs GROUP BY grp HAVING count(*) != 2)"
        ).fetchone()[0]
        == 0
    )
    assert c.execute("SELECT count(*) FROM pairs").fetchone()[0] >= 20000 + 2 * 20
    c.close()
    assert list((tmp_path / "work").iterdir()) == []  # the snapshot is gone


def test_missing_file_and_restore_rules(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        _adapter(tmp_path, tmp_path / "nope.db").test()
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    with conn:
        conn.execute("CREATE TABLE t (x)")
        conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    adapter = _adapter(tmp_path, db)
    data = _dump(adapter)
    with pytest.raises(RestoreRefused, match="exists and is not empty"):
        adapter.restore(io.BytesIO(data), RestoreTarget(database=None))
    adapter.restore(io.BytesIO(data), RestoreTarget(database=None, force=True))
    kept = [p.name for p in tmp_path.iterdir() if ".before-restore-" in p.name]
    assert len(kept) == 1  # the replaced file is kept beside it
    with pytest.raises(RestoreFailed, match=r"not a valid SQLite database|integrity"):
        adapter.restore(io.BytesIO(b"garbage" * 1000), RestoreTarget(database=str(tmp_path / "new.db")))
    assert not (tmp_path / "new.db").exists()
