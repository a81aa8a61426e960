"""MongoDB source: ``mongodump --archive`` to stdout, ``mongorestore --archive`` from stdin.

The URI and the password go into a 0600 YAML file in the work directory, handed to the tools
with ``--config`` (MongoDB Database Tools >= 100.3), so neither appears in argv; put the user
name in the URI and the password in ``password_file``/``credential``, not in the URI.

backupd needs no MongoDB driver. A mongodump archive starts with a *prelude*: the magic
number, a header document (which names the server version) and one metadata document per
collection to come, then a terminator; mongodump writes it before any data. So
``test``/``list_databases`` and the restore-target check run mongodump, read only the
prelude and stop it. Restore reads the backup's own prelude first, to learn which database
it holds and to check the target before mongorestore sees a byte.

A dump is valid when it starts with the archive magic and ends with a terminator. Restore
renames with ``--nsFrom/--nsTo``, replaces collections with ``--drop`` under force, and runs
with ``--stopOnError``; MongoDB has no multi-collection transaction here, so a failed
restore can leave some collections restored.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import struct
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from backupd.adapters import AdapterContext
from backupd.config.model import MongoSource
from backupd.config.secrets import read_secret
from backupd.errors import DumpFailed, RestoreFailed, RestoreRefused, SourceError
from backupd.sources.base import READ_SIZE, RestoreTarget, SourceInfo, ToolResult
from backupd.sources.tools import (
    SecretFile,
    StreamFailed,
    ToolDump,
    child_env,
    feed_process,
    find_tool,
    kill_group,
    last_line,
    parse_version,
    scrub,
    tool_version,
)

MAGIC = struct.pack("<I", 0x8199E26D)
TERMINATOR = b"\xff\xff\xff\xff"
MAX_DOCUMENT = 48 * 1024 * 1024
PRELUDE_LIMIT = 64 * 1024 * 1024  # past this the dump handle stops looking for the prelude's end
SYSTEM_DATABASES = frozenset({"admin", "local", "config"})
FATAL_STDERR = ("Failed:",)
FAILED_DOCS = re.compile(r"(\d+) document\(s\) failed to restore")
# Fixed sizes of BSON element values, by type byte; the variable ones are handled in _skip.
_FIXED = {0x01: 8, 0x06: 0, 0x07: 12, 0x08: 1, 0x09: 8, 0x0A: 0, 0x10: 4, 0x11: 8, 0x12: 8, 0x13: 16}
_FIXED |= {0xFF: 0, 0x7F: 0}


@dataclass
class Prelude:
    """What an archive's prelude says: versions and the (db, collection) pairs it holds."""

    server_version: str = ""
    tool_version: str = ""
    namespaces: list[tuple[str, str]] = field(default_factory=list)
    raw: bytes = b""

    @property
    def databases(self) -> list[str]:
        return sorted({db for db, _ in self.namespaces if db})


def bson_strings(doc: bytes) -> dict[str, str]:
    """Given one BSON document, return its top-level string fields (others are skipped);
    raise ValueError if it is malformed."""
    out: dict[str, str] = {}
    pos, end = 4, len(doc) - 1
    while pos < end:
        kind = doc[pos]
        name_end = doc.index(b"\x00", pos + 1)
        name = doc[pos + 1 : name_end].decode("utf-8", "replace")
        pos = name_end + 1
        if kind == 0x02:
            (length,) = struct.unpack_from("<i", doc, pos)
            out[name] = doc[pos + 4 : pos + 3 + length].decode("utf-8", "replace")
            pos += 4 + length
        else:
            pos = _skip(doc, kind, pos)
    if pos != end or doc[-1:] != b"\x00":
        raise ValueError("malformed BSON document")
    return out


def _skip(doc: bytes, kind: int, pos: int) -> int:
    if kind in _FIXED:
        return pos + _FIXED[kind]
    if kind in (0x03, 0x04, 0x0F):  # document, array, code with scope: int32 total length
        return pos + struct.unpack_from("<i", doc, pos)[0]
    if kind in (0x0D, 0x0E):  # javascript, symbol: like a string
        return pos + 4 + struct.unpack_from("<i", doc, pos)[0]
    if kind == 0x05:  # binary: length, subtype, bytes
        return pos + 5 + struct.unpack_from("<i", doc, pos)[0]
    if kind == 0x0B:  # regex: two cstrings
        return doc.index(b"\x00", doc.index(b"\x00", pos) + 1) + 1
    if kind == 0x0C:  # DBPointer: string + 12-byte id
        return pos + 4 + struct.unpack_from("<i", doc, pos)[0] + 12
    raise ValueError(f"unknown BSON type 0x{kind:02x}")


class PreludeIncomplete(ValueError):
    """The bytes end before the prelude does."""


def read_prelude(read: Callable[[int], bytes]) -> Prelude:
    """Given a read(n) function over an archive, consume and return its prelude; raise
    ValueError if the bytes are not a mongodump archive or end inside the prelude."""
    raw = bytearray()

    def take(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = read(n - len(buf))
            if not chunk:
                raise PreludeIncomplete("archive ends inside its prelude")
            buf += chunk
        raw.extend(buf)
        return buf

    if take(4) != MAGIC:
        raise ValueError("not a mongodump archive (bad magic number)")
    docs = []
    while (size_bytes := take(4)) != TERMINATOR:
        size = struct.unpack("<i", size_bytes)[0]
        if not 5 <= size <= MAX_DOCUMENT:
            raise ValueError(f"corrupt archive prelude (document size {size})")
        docs.append(bson_strings(size_bytes + take(size - 4)))
    if not docs:
        raise ValueError("archive prelude has no header")
    header, metas = docs[0], docs[1:]
    return Prelude(
        server_version=header.get("server_version", ""),
        tool_version=header.get("tool_version", ""),
        namespaces=[(m.get("db", ""), m.get("collection", "")) for m in metas],
        raw=bytes(raw),
    )


def ns_pattern(database: str) -> str:
    """Given a database name, return the namespace pattern for all its collections."""
    return database.replace("\\", "\\\\").replace("*", "\\*") + ".*"


def _valid_archive(head: bytes, tail: bytes, size: int) -> str | None:
    if not head.startswith(MAGIC):
        return "output does not start with the mongodump archive magic"
    if not tail.endswith(TERMINATOR):
        return "archive does not end with a terminator (truncated?)"
    return None


class ArchiveDump:
    """A DumpHandle around mongodump that reads the archive's prelude as it streams past, so
    that ``finish`` can refuse an archive holding no collection of the database: mongodump
    treats a missing (e.g. misspelt) database as an empty one and exits 0."""

    extension = ".archive"

    def __init__(self, inner: ToolDump) -> None:
        self._inner = inner
        self.database = inner.database
        self._head: bytearray | None = bytearray()
        self.prelude: Prelude | None = None

    def read(self, size: int = READ_SIZE) -> bytes:
        data = self._inner.read(size)
        if data and self._head is not None:
            self._head += data
            try:
                self.prelude = read_prelude(io.BytesIO(self._head).read)
                self._head = None
            except PreludeIncomplete:
                if len(self._head) > PRELUDE_LIMIT:
                    self._head = None
            except ValueError:
                self._head = None  # not an archive at all: the magic check in finish() says so
        return data

    def finish(self) -> ToolResult:
        result = self._inner.finish()
        if self.prelude is not None and self.database not in self.prelude.databases:
            raise DumpFailed(
                database=self.database,
                reason="the archive holds no collection of it (does the database exist?)",
            )
        return result

    def abort(self) -> None:
        self._inner.abort()


class MongoAdapter:
    """Source adapter for ``type = "mongodb"``."""

    engine = "mongodb"

    def __init__(self, name: str, config: MongoSource, ctx: AdapterContext) -> None:
        self.name = name
        self.config = config
        self._ctx = ctx

    def _password(self) -> str | None:
        return read_secret(self.config.password_file, self.config.credential, f"sources.{self.name}.password")

    def _config_file(self) -> SecretFile:
        # JSON strings are valid YAML double-quoted scalars, escapes included.
        lines = [f"uri: {json.dumps(self.config.uri)}"]
        password = self._password()
        if password is not None:
            lines.append(f"password: {json.dumps(password)}")
        return SecretFile(self._ctx.work_dir, "mongo-", "\n".join(lines) + "\n")

    def _tool(self, name: str) -> str:
        path = find_tool([name])
        if path is None:
            raise SourceError(
                source=self.name, reason=f"{name} not found on $PATH (install MongoDB Database Tools)"
            )
        return path

    def _env(self) -> dict[str, str]:
        return child_env({})

    def _probe(self, database: str | None) -> Prelude:
        """Run mongodump on ``database`` (None: every database), read its prelude, stop it;
        return the prelude. Raise SourceError with mongodump's reason if it fails."""
        with self._config_file() as conf:
            argv = [self._tool("mongodump"), f"--config={conf.path}", "--archive"]
            if database is not None:
                argv.append(f"--db={database}")
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=self._env(),
                start_new_session=True,
            )
            assert proc.stdout is not None and proc.stderr is not None
            try:
                return read_prelude(proc.stdout.read)
            except ValueError as exc:
                proc.wait(timeout=60)
                err = proc.stderr.read().decode("utf-8", "replace")
                reason = last_line(err) if proc.returncode else str(exc)
                raise SourceError(source=self.name, reason=scrub(reason, self._password())) from None
            finally:
                kill_group(proc)
                with contextlib.suppress(OSError):
                    proc.stdout.close()
                    proc.stderr.close()

    # --- the port ---------------------------------------------------------------------------
    def test(self) -> SourceInfo:
        """Connect (through a mongodump prelude) and return the server version; raise
        SourceError if mongodump cannot connect or authenticate."""
        first = self.config.databases[0] if self.config.databases else None
        return SourceInfo(self.engine, self._probe(first).server_version or "unknown")

    def list_databases(self) -> list[str]:
        """Return the databases that hold collections, without admin, local and config."""
        return [db for db in self._probe(None).databases if db not in SYSTEM_DATABASES]

    def dump(self, database: str) -> ArchiveDump:
        """Given a database, start ``mongodump --archive --db=NAME`` and return its handle;
        the config file is removed when the handle finishes or aborts."""
        tool = self._tool("mongodump")
        conf = self._config_file()
        version = parse_version(tool_version(tool))
        inner = ToolDump(
            argv=[tool, f"--config={conf.path}", "--archive", f"--db={database}"],
            database=database,
            extension=".archive",
            tool="mongodump",
            tool_version=".".join(map(str, version)) if version else "",
            validate=_valid_archive,
            env=self._env(),
            fatal_stderr=FATAL_STDERR,
            cleanup=conf.remove,
            secrets=(self._password(),),
        ).start()
        return ArchiveDump(inner)

    def restore(self, stream: BinaryIO, target: RestoreTarget) -> None:
        """Given an archive of one database, restore it under ``target.database`` (default:
        its own name); refuse a target that has collections unless ``target.force`` (then
        they are dropped and replaced). Raise RestoreFailed if mongorestore fails."""
        try:
            prelude = read_prelude(stream.read)
        except ValueError as exc:
            raise RestoreFailed(reason=f"the backup is not a usable mongodump archive: {exc}") from None
        sources = prelude.databases
        if len(sources) > 1 and target.database:
            raise RestoreRefused(
                reason=f"the archive holds several databases ({', '.join(sources)}); cannot rename"
            )
        original = sources[0] if len(sources) == 1 else target.original_database
        dest = target.database or original
        for db in [dest] if dest else sources:
            existing = self._probe(db).namespaces
            if existing and not target.force:
                raise RestoreRefused(
                    reason=f"database {db!r} has {len(existing)} collections; "
                    "restore under another name or use force to replace them"
                )
        with self._config_file() as conf:
            argv = [self._tool("mongorestore"), f"--config={conf.path}", "--archive", "--stopOnError"]
            if original and dest:
                argv.append(f"--nsInclude={ns_pattern(original)}")
                if dest != original:
                    argv += [f"--nsFrom={ns_pattern(original)}", f"--nsTo={ns_pattern(dest)}"]
            if target.force:
                argv.append("--drop")
            try:
                result = feed_process(argv, stream, self._env(), prefix=prelude.raw)
            except StreamFailed as exc:
                raise RestoreFailed(reason=f"reading the backup failed: {exc}") from exc.cause
        # Without --stopOnError hits (e.g. duplicate keys) mongorestore still exits 0; its
        # summary line says how many documents it could not insert.
        failed = sum(int(n) for n in FAILED_DOCS.findall(result.stderr))
        if not result.ok or failed:
            reason = scrub(last_line(result.stderr), self._password())
            raise RestoreFailed(reason=f"mongorestore: {reason}")
