"""The two ways backupd copies a live SQLite database, both consistent while it is written.

**Page stream** (the default, no temp file): a read transaction pins one committed state, and
while it is open a child ``dd`` streams the first ``page_count * page_size`` bytes of the file
into the pipeline. The file holds exactly the pinned state when:

- the database is in a rollback-journal mode: the transaction's SHARED lock keeps every
  writer from changing the file until the stream ends (writers wait, up to their busy
  timeout, as they would for any long reader);
- the database is in WAL mode and a checkpoint run *after* the transaction began reports the
  whole WAL copied into the file: a checkpoint never copies frames past an open reader's
  mark, so nothing newer can reach the file while the transaction lasts, and writers go on
  appending to the WAL undisturbed. To keep commits from slipping in between the pin and
  the checkpoint, a second connection holds the write lock for that moment. If older
  readers keep the WAL ahead of the file for every attempt, or the checkpoint is not
  permitted, the dump falls back to the snapshot.

The file is read by a child process because closing any descriptor of a file drops every
POSIX lock the *process* holds on it — the transaction's lock included.

**Snapshot** (``method = "snapshot"``, or the fallback above): SQLite's online backup API
writes a copy into the daemon's private work directory, which is streamed, then removed.
It needs free space the size of the database.

Either way ``PRAGMA quick_check`` runs on the state that is stored (beside the stream, on its
own thread; on the snapshot's copy before it is streamed), and the dump fails if it finds a
problem: a damaged database is not a good backup.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path
from typing import BinaryIO

from backupd.errors import Cancelled, DumpFailed
from backupd.sources.base import READ_SIZE, ProcessDump, ToolResult

log = logging.getLogger("backupd.sources.sqlite")

MAGIC = b"SQLite format 3\x00"
WAL_ATTEMPTS = 5
CHECKPOINT_TRIES = 40  # x 5 ms while another checkpoint runs
WRITE_LOCK_WAIT = 30.0  # seconds to wait for a writer's transaction before taking a snapshot
STREAM_TOOL = "sqlite-page-stream"
SNAPSHOT_TOOL = "sqlite3-backup-api"


def open_read_only(path: Path, *, threads: bool = False) -> sqlite3.Connection:
    """Given a database path, return a read-only connection in autocommit mode (transactions
    are begun explicitly); raise sqlite3.Error if SQLite cannot read it."""
    conn = sqlite3.connect(
        f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None, check_same_thread=not threads
    )
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    return conn


class QuickCheck:
    """``PRAGMA quick_check`` on a thread, over whatever state ``conn``'s transaction pins."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._problem: str | None = None
        self._thread = threading.Thread(target=self._run, name="sqlite-quick-check", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            (ok,) = self._conn.execute("PRAGMA quick_check").fetchone()
            self._problem = None if ok == "ok" else f"quick_check: {ok}"
        except sqlite3.Error as exc:
            self._problem = f"quick_check could not run: {exc}"

    def result(self) -> str | None:
        """Wait for the check; return None if the database passed, else what is wrong."""
        self._thread.join()
        return self._problem

    def cancel(self) -> None:
        self._conn.interrupt()
        self._thread.join()


def pin_state(path: Path, conn: sqlite3.Connection) -> int | None:
    """Given a read-only ``conn`` to ``path``, begin a read transaction and return the byte
    length of the pinned database when the file itself holds exactly that state; leave the
    transaction open then. Return None, with no transaction open, when the WAL could not be
    brought level with the file in any attempt or a checkpoint was not permitted."""
    (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
    if mode != "wal":
        return _begin(conn)
    for attempt in range(WAL_ATTEMPTS):
        try:
            size, level = _pin_wal(path, conn)
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("COMMIT")
            log.warning(
                "%s: cannot bring the file level with the WAL (%s); copying a snapshot instead", path, exc
            )
            return None
        if level:
            return size
        conn.execute("COMMIT")
        time.sleep(0.05 * (attempt + 1))
    log.warning("%s: older readers kept the WAL ahead of the file; copying a snapshot instead", path)
    return None


def _begin(conn: sqlite3.Connection) -> int:
    conn.execute("BEGIN")
    conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    (page_count,) = conn.execute("PRAGMA page_count").fetchone()
    return int(page_size) * int(page_count)


def _pin_wal(path: Path, conn: sqlite3.Connection) -> tuple[int, bool]:
    """Pin the WAL's newest state on ``conn`` while a second connection holds the write lock
    (so no commit can slip in between), then checkpoint from a third; return the pinned size
    and whether the checkpoint copied every frame into the file. Writers pause for one passive
    checkpoint, usually a few milliseconds (the WAL is checkpointed every 1000 pages), plus the
    end of another connection's checkpoint if one is running (at most 200 ms)."""
    with closing(sqlite3.connect(str(path), timeout=WRITE_LOCK_WAIT, isolation_level=None)) as writer:
        writer.execute("BEGIN IMMEDIATE")
        try:
            size = _begin(conn)
            busy, in_log, copied = _checkpoint(path)
        finally:
            writer.execute("ROLLBACK")
    return size, busy == 0 and in_log >= 0 and in_log == copied


def _checkpoint(path: Path) -> tuple[int, int, int]:
    """Run a passive checkpoint of ``path``; return (busy, frames in the WAL, frames copied).
    Busy means another connection's checkpoint (an application's autocheckpoint) holds the
    checkpoint lock; it ends within milliseconds, so wait for it here."""
    with closing(sqlite3.connect(str(path), timeout=5, isolation_level=None)) as checkpointer:
        for _ in range(CHECKPOINT_TRIES):
            busy, in_log, copied = checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if not busy:
                break
            time.sleep(0.005)
    return busy, in_log, copied


class PageStreamDump:
    """A DumpHandle streaming the pinned database file through ``dd``; the read transaction
    ends (and the quick_check verdict is read) only after the copy finished."""

    extension = ".sqlite"

    def __init__(
        self, database: str, path: Path, conn: sqlite3.Connection, size: int, identity: tuple[int, int]
    ) -> None:
        """``identity`` is the file's (device, inode) taken before ``conn`` was opened: ``dd``
        reads by path, so a file renamed over the database meanwhile must fail the dump."""
        self.database = database
        self._path = path
        self._identity = identity
        self._conn: sqlite3.Connection | None = conn
        self._aborted = False
        self._lock = threading.Lock()
        self._check = QuickCheck(conn)

        def well_formed(head: bytes, _tail: bytes, got: int) -> str | None:
            if not head.startswith(MAGIC):
                return "the copy lacks the SQLite header"
            if got != size:
                return f"copied {got} bytes of the pinned {size}"
            return None

        self._proc = ProcessDump(
            argv=["dd", f"if={path}", "bs=1M", f"count={size}", "iflag=count_bytes", "status=none"],
            database=database,
            extension=self.extension,
            tool=STREAM_TOOL,
            tool_version=sqlite3.sqlite_version,
            validate=well_formed,
        )
        try:
            self._proc.start()
        except DumpFailed:
            self.abort()
            raise

    def read(self, size: int = READ_SIZE) -> bytes:
        return self._proc.read(size)

    def finish(self) -> ToolResult:
        try:
            result = self._proc.finish()
            problem = self._check.result() or self._replaced()
            if self._aborted:  # a cancel that came while the check was finishing
                raise Cancelled()
            if problem:
                raise DumpFailed(database=self.database, reason=problem)
            return result
        finally:
            self._end()

    def _replaced(self) -> str | None:
        try:
            st = os.stat(self._path)
        except OSError as exc:
            return f"{self._path} vanished during the backup ({exc.strerror})"
        if (st.st_dev, st.st_ino) != self._identity:
            return f"{self._path} was replaced by another file during the backup"
        return None

    def abort(self) -> None:
        """Kill the copy, stop the check and end the transaction. Idempotent; safe from a
        canceller's thread while the job's thread is reading."""
        self._aborted = True
        self._proc.abort()
        with self._lock:
            if self._conn is not None:
                self._check.cancel()
        self._end()

    def _end(self) -> None:
        with self._lock:
            if self._conn is not None:
                conn, self._conn = self._conn, None
                conn.close()  # ends the read transaction: writers and checkpoints may go on


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
        return ToolResult(SNAPSHOT_TOOL, sqlite3.sqlite_version, 0)

    def abort(self) -> None:
        self._aborted = True
        self._release()

    def _release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._path.unlink(missing_ok=True)


def snapshot(database: str, src: sqlite3.Connection, work_dir: Path) -> SnapshotDump:
    """Given a read-only connection with no open transaction, copy its database with the
    backup API into ``work_dir``, check the copy, and return a handle streaming it; raise
    DumpFailed if the copy fails or is damaged."""
    fd, name = tempfile.mkstemp(prefix="sqlite-snapshot-", suffix=".sqlite", dir=work_dir)
    os.close(fd)
    snap = Path(name)
    try:
        dst = sqlite3.connect(str(snap))
        try:
            # a throw-away copy: durability of the snapshot file buys nothing
            dst.execute("PRAGMA synchronous=OFF")
            dst.execute("PRAGMA journal_mode=OFF")
            # one step: a stepwise copy starts over whenever another connection writes, and
            # under a steady write load it never finishes
            src.backup(dst, pages=-1)
            (ok,) = dst.execute("PRAGMA quick_check").fetchone()
            dst.execute("PRAGMA journal_mode=DELETE")
        finally:
            dst.close()
    except sqlite3.Error as exc:
        snap.unlink(missing_ok=True)
        raise DumpFailed(database=database, reason=f"backup API: {exc}") from None
    if ok != "ok":
        snap.unlink(missing_ok=True)
        raise DumpFailed(database=database, reason=f"snapshot failed quick_check: {ok}")
    return SnapshotDump(database, snap)
