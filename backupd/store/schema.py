"""The state database's schema, as migrations applied in order by ``PRAGMA user_version``.

A migration is appended, never edited: a database at version N gets migrations N+1.. only.
Times are stored as UNIX seconds (REAL, UTC) so that they sort and compare cheaply.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: list[str] = [
    # 1: the walking skeleton's tables (DESIGN §10)
    """
    CREATE TABLE executions (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        job         TEXT NOT NULL,
        kind        TEXT NOT NULL DEFAULT 'backup',
        trigger     TEXT NOT NULL,
        status      TEXT NOT NULL,
        step        TEXT,
        queued_at   REAL NOT NULL,
        started_at  REAL,
        finished_at REAL,
        size        INTEGER,
        sha256      TEXT,
        error       TEXT,
        details     TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX executions_job ON executions (job, id);
    CREATE INDEX executions_status ON executions (status);
    CREATE TABLE execution_log (
        execution_id INTEGER NOT NULL REFERENCES executions (id),
        seq          INTEGER NOT NULL,
        time         REAL NOT NULL,
        level        TEXT NOT NULL,
        step         TEXT,
        message      TEXT NOT NULL,
        PRIMARY KEY (execution_id, seq)
    );
    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE schedules (
        job               TEXT PRIMARY KEY,
        last_triggered_at REAL NOT NULL
    );
    CREATE TABLE backups (
        destination      TEXT NOT NULL,
        key              TEXT NOT NULL,
        job              TEXT NOT NULL,
        database         TEXT NOT NULL,
        created_at       REAL NOT NULL,
        size             INTEGER NOT NULL,
        sha256           TEXT NOT NULL,
        execution_id     INTEGER,
        sidecar          TEXT NOT NULL,
        locked           INTEGER NOT NULL DEFAULT 0,
        last_verified_at REAL,
        verify_result    TEXT,
        PRIMARY KEY (destination, key)
    );
    CREATE INDEX backups_group ON backups (job, database, destination, created_at);
    CREATE TABLE notifications (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        time         REAL NOT NULL,
        channel      TEXT NOT NULL,
        event        TEXT NOT NULL,
        job          TEXT,
        execution_id INTEGER,
        ok           INTEGER NOT NULL,
        attempts     INTEGER NOT NULL,
        error        TEXT,
        duration     REAL
    );
    """,
    # 2: locks survive a catalog rebuild, so they live apart from the rebuilt rows
    """
    CREATE TABLE backup_locks (
        destination TEXT NOT NULL,
        key         TEXT NOT NULL,
        locked_at   REAL NOT NULL,
        PRIMARY KEY (destination, key)
    );
    """,
]


def migrate(conn: sqlite3.Connection) -> int:
    """Given an open connection, apply the migrations it lacks in one transaction each;
    return the resulting version. Raise RuntimeError if the database is newer than this code."""
    (current,) = conn.execute("PRAGMA user_version").fetchone()
    if current > len(MIGRATIONS):
        raise RuntimeError(
            f"state database is at schema version {current}, newer than this backupd ({len(MIGRATIONS)})"
        )
    for version in range(current + 1, len(MIGRATIONS) + 1):
        with conn:
            conn.executescript("BEGIN;" + MIGRATIONS[version - 1] + f";PRAGMA user_version = {version};")
    return len(MIGRATIONS)
