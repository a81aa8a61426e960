"""SqliteAdapter against real SQLite files: a consistent copy while the database is being
written (WAL and rollback-journal modes, page stream and snapshot), what writers see during a
stream, the fallbacks, damaged sources, and restore by atomic replace."""

from __future__ import annotations

import io
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from backupd.adapters import AdapterContext
from backupd.config.model import SqliteSource
from backupd.errors import Cancelled, DumpFailed, RestoreFailed, RestoreRefused, SourceError
from backupd.sources import sqlite_dump
from backupd.sources.base import RestoreTarget, ToolResult
from backupd.sources.sqlite import SqliteAdapter

pytestmark = pytest.mark.timeout(60)


def _adapter(tmp_path: Path, db: Path, method: str = "stream") -> SqliteAdapter:
    return SqliteAdapter(
        "app", SqliteSource(path=str(db), method=method), AdapterContext(tmp_path, tmp_path / "work")
    )


def _dump_with_tool(adapter: SqliteAdapter) -> tuple[bytes, ToolResult]:
    handle = adapter.dump("app")
    out = io.BytesIO()
    while chunk := handle.read():
        out.write(chunk)
    return out.getvalue(), handle.finish()


def _dump(adapter: SqliteAdapter) -> bytes:
    return _dump_with_tool(adapter)[0]


def _make_db(db: Path, journal_mode: str, rows: int = 2000) -> None:
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA journal_mode={journal_mode}")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, payload BLOB)")
    with conn:
        conn.executemany("INSERT INTO t (payload) VALUES (?)", [(b"p" * 1000,) for _ in range(rows)])
    conn.close()


def _rows_in_copy(tmp_path: Path, data: bytes) -> int:
    copy = tmp_path / "copy.db"
    copy.write_bytes(data)
    c = sqlite3.connect(copy)
    try:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return int(c.execute("SELECT count(*) FROM t").fetchone()[0])
    finally:
        c.close()
        copy.unlink()


def _work_files(tmp_path: Path) -> list[Path]:
    work = tmp_path / "work"
    return list(work.iterdir()) if work.exists() else []


@pytest.mark.parametrize("method", ["stream", "snapshot"])
@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_copy_is_consistent_while_written(tmp_path: Path, journal_mode: str, method: str) -> None:
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
        data, tool = _dump_with_tool(_adapter(tmp_path, db, method))
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
    expected = sqlite_dump.STREAM_TOOL if method == "stream" else sqlite_dump.SNAPSHOT_TOOL
    assert tool.name == expected
    assert _work_files(tmp_path) == []  # no temp file left (none made by the stream)


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


def test_stream_makes_no_temp_file_and_ends_its_transaction(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    _make_db(db, "delete", rows=6000)
    handle = _adapter(tmp_path, db).dump("app")
    first = handle.read(4096)
    assert first.startswith(sqlite_dump.MAGIC)
    assert _work_files(tmp_path) == []
    # rollback-journal mode: the pinned state holds the file, so a writer waits
    writer = sqlite3.connect(db, timeout=0.2)
    with pytest.raises(sqlite3.OperationalError, match="locked"), writer:
        writer.execute("INSERT INTO t (payload) VALUES (x'00')")
    rest = b"".join(iter(handle.read, b""))
    assert handle.finish().name == sqlite_dump.STREAM_TOOL
    assert len(first + rest) == db.stat().st_size
    with writer:  # the transaction ended with the stream
        writer.execute("INSERT INTO t (payload) VALUES (x'00')")
    writer.close()


def test_wal_writers_go_on_during_a_stream(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    _make_db(db, "wal", rows=6000)
    handle = _adapter(tmp_path, db).dump("app")
    head = handle.read(4096)
    writer = sqlite3.connect(db, timeout=0.2)
    with writer:
        writer.executemany("INSERT INTO t (payload) VALUES (?)", [(b"n" * 3000,) for _ in range(500)])
    writer.execute("PRAGMA wal_checkpoint(PASSIVE)")  # must not reach the pinned pages
    writer.close()
    data = head + b"".join(iter(handle.read, b""))
    handle.finish()
    assert _rows_in_copy(tmp_path, data) == 6000  # the state when pinned


def test_wal_held_back_by_an_older_reader_falls_back_to_a_snapshot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = tmp_path / "app.db"
    _make_db(db, "wal")
    old_reader = sqlite3.connect(db, isolation_level=None)
    old_reader.execute("BEGIN")
    old_reader.execute("SELECT count(*) FROM t").fetchone()  # holds its snapshot's mark
    writer = sqlite3.connect(db)
    with writer:
        writer.executemany("INSERT INTO t (payload) VALUES (?)", [(b"n" * 1000,) for _ in range(300)])
    writer.close()
    data, tool = _dump_with_tool(_adapter(tmp_path, db))
    old_reader.execute("COMMIT")
    old_reader.close()
    assert tool.name == sqlite_dump.SNAPSHOT_TOOL
    assert "older readers kept the WAL ahead of the file" in caplog.text
    assert _rows_in_copy(tmp_path, data) == 2300  # the newest state
    assert _work_files(tmp_path) == []


def test_wal_checkpoint_refused_falls_back_to_a_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refused(path: Path, conn: sqlite3.Connection) -> tuple[int, bool]:
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(sqlite_dump, "_pin_wal", refused)
    db = tmp_path / "app.db"
    _make_db(db, "wal")
    data, tool = _dump_with_tool(_adapter(tmp_path, db))
    assert tool.name == sqlite_dump.SNAPSHOT_TOOL
    assert data.startswith(sqlite_dump.MAGIC)
    assert "cannot bring the file level with the WAL (attempt to write a readonly database)" in caplog.text


def test_wal_writer_holding_its_transaction_leads_to_a_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sqlite_dump, "WRITE_LOCK_WAIT", 0.2)
    db = tmp_path / "app.db"
    _make_db(db, "wal")
    busy = sqlite3.connect(db, isolation_level=None)
    busy.execute("BEGIN IMMEDIATE")
    busy.execute("INSERT INTO t (payload) VALUES (x'00')")  # uncommitted: not in the backup
    try:
        data, tool = _dump_with_tool(_adapter(tmp_path, db))
    finally:
        busy.execute("ROLLBACK")
        busy.close()
    assert tool.name == sqlite_dump.SNAPSHOT_TOOL
    assert "cannot bring the file level with the WAL (database is locked)" in caplog.text
    assert _rows_in_copy(tmp_path, data) == 2000


def test_damaged_database_fails_the_dump(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    _make_db(db, "delete", rows=3000)
    with open(db, "r+b") as f:  # scribble over a b-tree page in the middle of the table
        f.seek(4096 * 200 + 8)
        f.write(b"\xff" * 64)
    handle = _adapter(tmp_path, db).dump("app")
    while handle.read():
        pass
    with pytest.raises(DumpFailed, match="quick_check"):
        handle.finish()


def test_abort_kills_the_copy_and_releases_the_database(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    _make_db(db, "delete", rows=6000)
    handle = _adapter(tmp_path, db).dump("app")
    handle.read(4096)
    canceller = threading.Thread(target=handle.abort)  # a cancel arrives on another thread
    canceller.start()
    canceller.join()
    handle.abort()  # and the runner aborts again on its own: no error
    with pytest.raises(Cancelled):
        handle.read()
    writer = sqlite3.connect(db, timeout=0.2)
    with writer:
        writer.execute("INSERT INTO t (payload) VALUES (x'00')")
    writer.close()


def test_empty_file_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    db.touch()
    with pytest.raises(DumpFailed, match="holds no pages"):
        _adapter(tmp_path, db).dump("app")


def test_restore_of_a_wal_copy_leaves_a_rollback_file(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    _make_db(db, "wal")
    data = _dump(_adapter(tmp_path, db))
    assert data[18:20] == b"\x02\x02"  # the WAL flag travels with the pages
    target = tmp_path / "restored" / "app.db"
    _adapter(tmp_path, db).restore(io.BytesIO(data), RestoreTarget(database=str(target)))
    assert target.read_bytes()[18:20] == b"\x01\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["app.db"]
    c = sqlite3.connect(target)
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 2000
    c.close()


def test_file_renamed_over_the_database_fails_the_dump(tmp_path: Path) -> None:
    db, other = tmp_path / "app.db", tmp_path / "other.db"
    _make_db(db, "delete")
    _make_db(other, "delete", rows=10)
    handle = _adapter(tmp_path, db).dump("app")
    handle.read(4096)  # dd has opened the pinned file
    os.replace(other, db)  # the path no longer names what was pinned and copied
    while handle.read():
        pass
    with pytest.raises(DumpFailed, match="was replaced by another file during the backup"):
        handle.finish()


def test_cancel_while_the_check_finishes_is_a_cancel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    released = threading.Event()

    def slow_check(self: sqlite_dump.QuickCheck) -> None:  # a check still running at the end
        released.wait(10)
        self._problem = "quick_check could not run: interrupted"

    def cancel(self: sqlite_dump.QuickCheck) -> None:
        released.set()
        self._thread.join()

    monkeypatch.setattr(sqlite_dump.QuickCheck, "_run", slow_check)
    monkeypatch.setattr(sqlite_dump.QuickCheck, "cancel", cancel)
    db = tmp_path / "app.db"
    _make_db(db, "delete")
    handle = _adapter(tmp_path, db).dump("app")
    while handle.read():
        pass
    raised: list[BaseException] = []

    def finish() -> None:
        try:
            handle.finish()
        except BaseException as exc:  # handed to the test's thread
            raised.append(exc)

    finisher = threading.Thread(target=finish)
    finisher.start()
    finisher.join(0.2)  # finish() is now waiting for the check
    handle.abort()
    finisher.join(10)
    assert len(raised) == 1 and isinstance(raised[0], Cancelled)
