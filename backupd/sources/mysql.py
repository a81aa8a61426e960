"""MySQL and MariaDB source: logical SQL dumps with ``mariadb-dump``/``mysqldump``, restores
with the ``mariadb``/``mysql`` client.

The flavour comes from ``SELECT VERSION()`` (MariaDB says so in it), not from the config tag:
each flavour's own tools are preferred and the other's are a fallback, logged and recorded as
the dump's tool name. Connection settings and the password go into a 0600 option file passed
as ``--defaults-extra-file`` (which the tools accept only as their *first* option); it lives
in the work directory and is removed after each command.

A dump names no database (no ``--databases``): it holds no ``CREATE DATABASE``/``USE``, so it
restores into whatever database the restore names. Restore creates that database, refuses an
existing non-empty one unless forced, and with force drops and recreates it. MySQL has no
transactional DDL, so a failed restore leaves a partial database; one created by the restore
is dropped again, a forced one is reported as incomplete.
"""

from __future__ import annotations

import logging
from typing import BinaryIO

from backupd.adapters import AdapterContext
from backupd.config.model import MariadbSource, MysqlSource
from backupd.config.secrets import read_secret
from backupd.errors import RestoreFailed, RestoreRefused, SourceError
from backupd.sources.base import RestoreTarget, SourceInfo
from backupd.sources.tools import (
    SecretFile,
    StreamFailed,
    ToolDump,
    child_env,
    feed_process,
    find_tool,
    last_line,
    parse_version,
    run,
    scrub,
    tool_version,
)

log = logging.getLogger(__name__)

SYSTEM_DATABASES = frozenset({"information_schema", "performance_schema", "mysql", "sys"})
CLIENTS = {"mariadb": ("mariadb", "mysql"), "mysql": ("mysql", "mariadb")}
DUMPERS = {"mariadb": ("mariadb-dump", "mysqldump"), "mysql": ("mysqldump", "mariadb-dump")}
DUMP_OPTIONS = (
    "--single-transaction",
    "--routines",
    "--events",
    "--triggers",
    "--hex-blob",
    "--no-tablespaces",
    "--default-character-set=utf8mb4",
)
# Options that would remove the completion trailer, write elsewhere than stdout, or change
# the dump's shape; extra_dump_options may not contain them.
FORBIDDEN_OPTIONS = frozenset(
    {"--skip-comments", "--compact", "--result-file", "-r", "--tab", "-T", "--xml", "-X"}
    | {"--databases", "-B", "--all-databases", "-A", "--defaults-file", "--defaults-extra-file"}
)
FATAL_STDERR = ("Got error", "Couldn't execute", "Lost connection", "server has gone away")
TRAILER = b"-- Dump completed"


def option_value(value: str) -> str:
    """Given a value for an option file, return it double-quoted with the escapes the
    client library undoes (backslash, quote, control characters)."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def quote_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def string_literal(value: str) -> str:
    """A string literal immune to sql_mode (NO_BACKSLASH_ESCAPES or not): a hex literal."""
    return f"CONVERT(X'{value.encode().hex()}' USING utf8mb4)" if value else "''"


def unescape_batch(field: str) -> str:
    """Undo the escaping of ``--batch`` output (\\t, \\n, \\0, \\\\)."""
    if "\\" not in field:
        return field
    out, i = [], 0
    table = {"t": "\t", "n": "\n", "0": "\0", "\\": "\\"}
    while i < len(field):
        ch = field[i]
        if ch == "\\" and i + 1 < len(field):
            out.append(table.get(field[i + 1], field[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _valid_sql(head: bytes, tail: bytes, size: int) -> str | None:
    return None if TRAILER in tail else "dump lacks the '-- Dump completed' trailer (truncated?)"


class MysqlAdapter:
    """Source adapter for ``type = "mysql"`` and ``type = "mariadb"``."""

    def __init__(self, name: str, config: MysqlSource, ctx: AdapterContext) -> None:
        self.name = name
        self.config = config
        self._ctx = ctx
        # The tag is the first guess; test() replaces it with what the server says.
        self.engine = "mariadb" if isinstance(config, MariadbSource) else "mysql"
        self._flavour: str | None = None

    # --- plumbing -----------------------------------------------------------------------
    def _password(self) -> str | None:
        return read_secret(self.config.password_file, self.config.credential, f"sources.{self.name}.password")

    def _option_file(self) -> SecretFile:
        cfg = self.config
        lines = ["[client]", f"user={option_value(cfg.user)}"]
        password = self._password()
        if password is not None:
            lines.append(f"password={option_value(password)}")
        if cfg.socket:
            lines += [f"socket={option_value(cfg.socket)}", "protocol=SOCKET"]
        else:
            lines += [f"host={option_value(cfg.host)}", f"port={cfg.port}", "protocol=TCP"]
        return SecretFile(self._ctx.work_dir, "my-", "\n".join(lines) + "\n")

    def _env(self) -> dict[str, str]:
        # MYSQL_PWD and MYSQL_HOST would override or confuse the option file.
        return child_env({}, drop_prefixes=("MYSQL_", "MARIADB_"))

    def _tool(self, kind: dict[str, tuple[str, ...]]) -> str:
        flavour = self._flavour or self.engine
        names = kind[flavour]
        path = find_tool(names)
        if path is None:
            raise SourceError(source=self.name, reason=f"none of {', '.join(names)} found on $PATH")
        if not path.endswith("/" + names[0]):
            log.warning("source %s: %s not found, using %s", self.name, names[0], path)
        return path

    def _fail(self, reason: str) -> SourceError:
        return SourceError(source=self.name, reason=scrub(reason, self._password()))

    def _query(self, sql: str, database: str | None = None) -> list[list[str]]:
        """Given SQL, run it with the client and return the rows; raise SourceError with the
        client's message if it fails."""
        with self._option_file() as opt:
            argv = [
                self._tool(CLIENTS),
                f"--defaults-extra-file={opt.path}",
                "--batch",
                "--skip-column-names",
            ]
            argv.append("--default-character-set=utf8mb4")
            if database:
                argv.append(f"--database={database}")
            result = run(argv, self._env(), stdin=sql.encode())
        if not result.ok:
            raise self._fail(last_line(result.stderr, prefer=("ERROR",)))
        return [[unescape_batch(f) for f in line.split("\t")] for line in result.text.splitlines()]

    # --- the port --------------------------------------------------------------------------
    def test(self) -> SourceInfo:
        """Connect and return the flavour ("mariadb"/"mysql") and version; raise SourceError
        (wrong password, unreachable, no client installed)."""
        rows = self._query("SELECT VERSION();")
        version = rows[0][0] if rows and rows[0] else ""
        self._flavour = "mariadb" if "mariadb" in version.lower() else "mysql"
        self.engine = self._flavour
        return SourceInfo(self._flavour, version)

    def list_databases(self) -> list[str]:
        """Return every database except the system schemas."""
        rows = self._query("SHOW DATABASES;")
        return [r[0] for r in rows if r and r[0] not in SYSTEM_DATABASES]

    def dump(self, database: str) -> ToolDump:
        """Given a database name, start the dump tool and return its handle; the option file
        is removed when the handle finishes or aborts. Raise SourceError if
        ``extra_dump_options`` contains an option that would break the dump's contract."""
        extra = list(self.config.extra_dump_options)
        bad = [o for o in extra if o.split("=", 1)[0] in FORBIDDEN_OPTIONS]
        if bad:
            raise SourceError(source=self.name, reason=f"extra_dump_options may not contain {', '.join(bad)}")
        if self._flavour is None:
            self.test()
        tool = self._tool(DUMPERS)
        opt = self._option_file()
        assert opt.path is not None
        argv = [tool, f"--defaults-extra-file={opt.path}", *DUMP_OPTIONS, *extra, database]
        version_text = tool_version(tool)
        version = parse_version(version_text.split("Distrib", 1)[-1]) or parse_version(version_text)
        return ToolDump(
            argv=argv,
            database=database,
            extension=".sql",
            tool=tool.rsplit("/", 1)[-1],
            tool_version=".".join(map(str, version)) if version else version_text,
            validate=_valid_sql,
            env=self._env(),
            fatal_stderr=FATAL_STDERR,
            cleanup=opt.remove,
            secrets=(self._password(),),
        ).start()

    def restore(self, stream: BinaryIO, target: RestoreTarget) -> None:
        """Given an SQL dump and a target, create the target database and replay the dump
        into it; refuse an existing non-empty database unless ``target.force`` (then it is
        dropped and recreated). Raise RestoreFailed if the client fails."""
        name = target.database or target.original_database
        if not name:
            raise RestoreFailed(reason="no target database given and the backup names none")
        if self._flavour is None:
            self.test()
        lit = string_literal(name)
        rows = self._query(
            f"SELECT (SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {lit}),"
            f" (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {lit})"
            f" + (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = {lit})"
            f" + (SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = {lit});"
        )
        exists, objects = int(rows[0][0]), int(rows[0][1])
        if objects and not target.force:
            raise RestoreRefused(
                reason=f"database {name!r} exists and holds {objects} objects; "
                "restore under another name or use force to overwrite"
            )
        ident = quote_ident(name)
        if exists and objects:
            self._query(f"DROP DATABASE {ident}; CREATE DATABASE {ident};")
        elif not exists:
            self._query(f"CREATE DATABASE {ident};")
        created = not exists
        with self._option_file() as opt:
            argv = [self._tool(CLIENTS), f"--defaults-extra-file={opt.path}", "--binary-mode"]
            argv.append(f"--database={name}")
            try:
                result = feed_process(argv, stream, self._env())
            except StreamFailed as exc:
                self._after_failure(name, created)
                raise RestoreFailed(reason=f"reading the backup failed: {exc}") from exc.cause
            except BaseException:  # cancelled
                self._after_failure(name, created)
                raise
        if not result.ok:
            self._after_failure(name, created)
            reason = scrub(last_line(result.stderr, prefer=("ERROR",)), self._password())
            state = f"database {name!r} was dropped again" if created else f"database {name!r} is incomplete"
            raise RestoreFailed(reason=f"client exited with status {result.code}: {reason} ({state})")

    def _after_failure(self, name: str, created: bool) -> None:
        if not created:
            return
        try:
            self._query(f"DROP DATABASE IF EXISTS {quote_ident(name)};")
        except SourceError as exc:
            log.warning("source %s: could not drop %r after a failed restore: %s", self.name, name, exc)
