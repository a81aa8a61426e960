"""SQLite source: a consistent copy through SQLite's online backup API.

The backup API needs a database file to write into, so this is the one source that makes a
snapshot file (in the daemon's private work directory, removed as soon as it has been
streamed); compression, encryption and hashing still stream. The copy is consistent even
while the database is being written, in WAL and rollback-journal mode alike.

Restore writes the stream to a temporary file beside the target, checks it with
``PRAGMA integrity_check``, keeps the file it replaces as ``NAME.before-restore-<time>`` and
renames the new file into place.
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
from backupd.errors import Cancelled, DumpFailed, RestoreFailed, RestoreRefused, SourceError
from backupd.sources.base import READ_SIZE, RestoreTarget, SourceInfo, ToolResult

MAGIC = b"SQLite format 3\x00"
PAGES_PER_STEP = 16384  # per step of the backup API; writers may commit between steps


class SnapshotDump:
    """A DumpHandle streaming a snapshot file, deleted on finish or abort."""

    extension = ".sqlite"

    def __init__(self, database: str, path: Path) -> None:
        self.database = database
        self._path = path
        self._file: BinaryIO | None = open(path, "rb")  # noqa: SIM115 - closed in finish/abort
        self._aborted = False

    def read(self, size: int = READ_SIZE) -> bytes:
        if self._aborted or self._file is None:
            raise Cancelled()
        return self._file.read(size)

    def finish(self) -> ToolResult:
        self._release()
        return ToolResult("sqlite3-backup-api", sqlite3.sqlite_version, 0)

    def abort(self) -> None:
        self._aborted = True
        self._release()

    def _release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._path.unlink(missing_ok=True)


class SqliteAdapter:
    engine = "sqlite"

    def __init__(self, name: str, config: SqliteSource, ctx: AdapterContext) -> None:
        self.name = name
        self.path = Path(config.path)
        self._ctx = ctx

    def _open_source(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise SourceError(source=self.name, reason=f"{self.path} does not exist or is not a file")
        try:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.Error as exc:
            raise SourceError(source=self.name, reason=f"{self.path}: {exc}") from None
        return conn

    def test(self) -> SourceInfo:
        self._open_source().close()
        return SourceInfo("sqlite", sqlite3.sqlite_version)

    def list_databases(self) -> list[str]:
        return [self.path.stem]

    def dump(self, database: str) -> SnapshotDump:
        """Given the database name (the file's stem), snapshot it with the backup API and return
        a handle streaming the snapshot; raise DumpFailed if the copy fails."""
        src = self._open_source()
        work = self._ctx.ensure().work_dir
        fd, name = tempfile.mkstemp(prefix="sqlite-snapshot-", suffix=".sqlite", dir=work)
        os.close(fd)
        snap = Path(name)
        try:
            dst = sqlite3.connect(str(snap))
            try:
                # a throw-away copy: durability of the snapshot file buys nothing
                dst.execute("PRAGMA synchronous=OFF")
                dst.execute("PRAGMA journal_mode=OFF")
                src.backup(dst, pages=PAGES_PER_STEP)
                (ok,) = dst.execute("PRAGMA quick_check").fetchone()
                # A plain rollback-journal file is what restore puts in place; WAL mode is a
                # property of the live database that the restored one picks up on first open.
                dst.execute("PRAGMA journal_mode=DELETE")
            finally:
                dst.close()
        except sqlite3.Error as exc:
            snap.unlink(missing_ok=True)
            raise DumpFailed(database=database, reason=f"backup API: {exc}") from None
        finally:
            src.close()
        if ok != "ok":
            snap.unlink(missing_ok=True)
            raise DumpFailed(database=database, reason=f"snapshot failed quick_check: {ok}")
        with open(snap, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                snap.unlink(missing_ok=True)
                raise DumpFailed(database=database, reason="snapshot lacks the SQLite header")
        return SnapshotDump(database, snap)

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
            conn = sqlite3.connect(f"file:{tmp}?mode=ro", uri=True)
            try:
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
            tmp.unlink(missing_ok=True)
