"""SQLite source: the database file's pages streamed from inside one read transaction (or,
by choice or as a fallback, a backup-API snapshot); see :mod:`backupd.sources.sqlite_dump`.

Restore writes the stream to a temporary file beside the target, switches it to rollback-
journal mode (a WAL database is copied with its WAL flag; the application sets its journal
mode again on open), checks it with ``PRAGMA integrity_check``, keeps the file it replaces as
``NAME.before-restore-<time>`` and renames the new file into place.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import BinaryIO

from backupd.adapters import AdapterContext
from backupd.config.model import SqliteSource
from backupd.errors import DumpFailed, RestoreFailed, RestoreRefused, SourceError
from backupd.sources.base import READ_SIZE, RestoreTarget, SourceInfo
from backupd.sources.sqlite_dump import PageStreamDump, SnapshotDump, open_read_only, pin_state, snapshot


class SqliteAdapter:
    engine = "sqlite"

    def __init__(self, name: str, config: SqliteSource, ctx: AdapterContext) -> None:
        self.name = name
        self.path = Path(config.path)
        self.method = config.method
        self._ctx = ctx

    def _open_source(self, *, threads: bool = False) -> sqlite3.Connection:
        if not self.path.is_file():
            raise SourceError(source=self.name, reason=f"{self.path} does not exist or is not a file")
        try:
            return open_read_only(self.path, threads=threads)
        except sqlite3.Error as exc:
            raise SourceError(source=self.name, reason=f"{self.path}: {exc}") from None

    def test(self) -> SourceInfo:
        self._open_source().close()
        return SourceInfo("sqlite", sqlite3.sqlite_version)

    def list_databases(self) -> list[str]:
        return [self.path.stem]

    def dump(self, database: str) -> PageStreamDump | SnapshotDump:
        """Given the database name (the file's stem), pin one committed state and return a
        handle streaming it (the page stream, else a snapshot); raise DumpFailed if the
        database cannot be read."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise SourceError(source=self.name, reason=f"{self.path}: {exc.strerror}") from None
        conn = self._open_source(threads=True)
        handed_over = False  # a PageStreamDump owns conn from then on
        try:
            size = None if self.method == "snapshot" else pin_state(self.path, conn)
            if size is None:
                return snapshot(database, conn, self._ctx.ensure().work_dir)
            if size == 0:
                raise DumpFailed(database=database, reason=f"{self.path} holds no pages")
            handle = PageStreamDump(database, self.path, conn, size, (st.st_dev, st.st_ino))
            handed_over = True
            return handle
        except sqlite3.Error as exc:
            raise DumpFailed(database=database, reason=f"{self.path}: {exc}") from None
        finally:
            if not handed_over:
                conn.close()

    def restore(self, stream: BinaryIO, target: RestoreTarget) -> None:
        """Given a stream of an SQLite file, put it at ``target.database`` (a path; default the
        configured one). Refuse an existing non-empty file unless ``target.force``."""
        dest = Path(target.database) if target.database else self.path
        if dest.exists() and dest.stat().st_size > 0 and not target.force:
            raise RestoreRefused(reason=f"{dest} exists and is not empty (use --force to replace it)")
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{dest.name}.restore-", dir=dest.parent)
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(READ_SIZE):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            conn = sqlite3.connect(str(tmp), isolation_level=None)
            try:
                conn.execute("PRAGMA journal_mode=DELETE").fetchone()
                (ok,) = conn.execute("PRAGMA integrity_check").fetchone()
            finally:
                conn.close()
            if ok != "ok":
                raise RestoreFailed(reason=f"restored file fails integrity_check: {ok}")
            if dest.exists():
                stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                os.rename(dest, dest.with_name(f"{dest.name}.before-restore-{stamp}"))
                for suffix in ("-wal", "-shm"):
                    Path(f"{dest}{suffix}").unlink(missing_ok=True)
            os.rename(tmp, dest)
        except sqlite3.Error as exc:
            raise RestoreFailed(reason=f"{dest}: not a valid SQLite database ({exc})") from None
        finally:
            for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")):
                leftover.unlink(missing_ok=True)
