"""An SQLite database that is being written, backed up by the daemon through the page stream
(no temp file) and restored with `backupctl restore`: the copy is one committed state."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from tests.system.daemon_helpers import DaemonProc, base_config, sqlite_job

pytestmark = pytest.mark.timeout(120)


def _writer(db: Path, stop: threading.Event, commits: list[int]) -> None:
    conn = sqlite3.connect(db, timeout=30)
    grp = 0
    while not stop.is_set():
        with conn:  # each transaction adds two rows of one group
            conn.executemany("INSERT INTO pairs (grp, payload) VALUES (?, ?)", [(grp, b"w" * 2000)] * 2)
        grp += 1
        commits[0] += 1
    conn.close()


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_live_database_backs_up_without_temp_and_restores_whole(tmp_path: Path, journal_mode: str) -> None:
    cfg = base_config(tmp_path)
    db = sqlite_job(cfg, tmp_path, "live", rows=50, compression="zstd")
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA journal_mode={journal_mode}")
    with conn:
        conn.execute("CREATE TABLE pairs (id INTEGER PRIMARY KEY, grp INTEGER, payload BLOB)")
        conn.executemany("INSERT INTO pairs (grp, payload) VALUES (?, ?)", [(-1, b"s" * 2000)] * 4000)
    conn.close()
    d = DaemonProc(tmp_path, cfg).start()
    stop, commits = threading.Event(), [0]
    writer = threading.Thread(target=_writer, args=(db, stop, commits))
    writer.start()
    try:
        while commits[0] < 20:
            stop.wait(0.01)
        res = d.ctl("run", "live", "--wait")
        assert res.returncode == 0, res.stdout + d.log()[-2000:]
        stop.set()
        writer.join()
        stored = next((tmp_path / "backups" / "live").glob("*.sqlite.zst"))
        meta = json.loads(Path(f"{stored}.meta.json").read_text())
        assert meta["tool"]["name"] == "sqlite-page-stream"
        assert not any((tmp_path / "state" / "work").glob("sqlite-*"))
        target = tmp_path / "restored.db"
        res = d.ctl("restore", "live", "--as", str(target))
        assert res.returncode == 0, res.stdout + res.stderr
    finally:
        stop.set()
        writer.join()
        assert d.stop() == 0
    restored = sqlite3.connect(target)
    try:
        assert restored.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert restored.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        torn = "SELECT count(*) FROM (SELECT grp FROM pairs WHERE grp >= 0 GROUP BY grp HAVING count(*) != 2)"
        assert restored.execute(torn).fetchone()[0] == 0
        assert restored.execute("SELECT count(*) FROM pairs").fetchone()[0] >= 4000 + 2 * 20
    finally:
        restored.close()
