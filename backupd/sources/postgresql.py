"""PostgreSQL source: ``pg_dump -Fc`` dumps (uncompressed: backupd compresses), restores with
``pg_restore`` into a new database or, with force, over an existing one.

Client choice: a dump must be made by a pg_dump at least as new as the server. Debian keeps
each major's clients in ``/usr/lib/postgresql/N/bin``; the adapter asks the server for
``server_version_num`` and uses the bin dir of the same major, else the newest newer one, and
refuses (ClientTooOld) when only older clients exist. ``bin_dir`` in the config pins one
directory (still checked against the server). Without any ``/usr/lib/postgresql/*/bin`` the
tools on ``$PATH`` are used.

The password travels in a 0600 PGPASSFILE in the work directory, removed after each command;
inherited ``PG*`` variables are dropped so the daemon's environment cannot redirect a dump.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from backupd.adapters import AdapterContext
from backupd.config.model import PostgresSource
from backupd.config.secrets import read_secret
from backupd.errors import ClientTooOld, RestoreFailed, RestoreRefused, SourceError
from backupd.sources.base import RestoreTarget, SourceInfo, Validator
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

PG_LIB_ROOT = Path("/usr/lib/postgresql")
MAINTENANCE_DB = "postgres"
GLOBALS = "_globals"
FIELD_SEP = "\x1f"
# Schemas that hold no user data; "pg_%" also covers pg_toast and temp schemas.
_USER_NS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
USER_OBJECTS_SQL = f"""
SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_USER_NS})
     + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE {_USER_NS})
     + (SELECT count(*) FROM pg_namespace n WHERE {_USER_NS} AND n.nspname <> 'public');
"""
# "postgres" is the maintenance database initdb creates; it counts as a user database only
# when someone has put tables in it (this query runs while connected to it).
LIST_SQL = f"""
SELECT d.datname FROM pg_database d
 WHERE d.datallowconn AND NOT d.datistemplate
   AND (d.datname <> 'postgres' OR (current_database() = 'postgres' AND EXISTS (
        SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {_USER_NS})))
 ORDER BY 1;
"""


@dataclass(frozen=True)
class PgClient:
    """One installation of the client tools: its directory and pg_dump's version."""

    bin_dir: Path
    version: tuple[int, ...]
    version_text: str

    @property
    def major(self) -> tuple[int, ...]:
        return major_of(self.version)

    def tool(self, name: str) -> str:
        path = self.bin_dir / name
        if not path.is_file():
            raise SourceError(source="postgresql", reason=f"{name} not found in {self.bin_dir}")
        return str(path)


def major_of(version: tuple[int, ...]) -> tuple[int, ...]:
    """Given a version tuple, return its major: (15,) for 15.x, (9, 6) for 9.6.x."""
    return version[:1] if version and version[0] >= 10 else version[:2]


def version_from_num(num: int) -> tuple[int, ...]:
    """Given ``server_version_num`` (150004, 90624), return (15, 4) or (9, 6, 24)."""
    if num >= 100000:
        return (num // 10000, num % 10000)
    return (num // 10000, num // 100 % 100, num % 100)


def discover_clients(bin_dir: str | None, lib_root: Path = PG_LIB_ROOT) -> list[PgClient]:
    """Given the configured bin_dir (or None), return the installed clients that have pg_dump.

    With bin_dir only that directory counts; otherwise every ``lib_root/N/bin``, and when
    there is none, the pg_dump on $PATH.
    """
    if bin_dir:
        dirs = [Path(bin_dir)]
    else:
        dirs = sorted(p for p in lib_root.glob("*/bin") if p.is_dir())
        if not dirs:
            found = find_tool(["pg_dump"])
            dirs = [Path(found).parent] if found else []
    clients = []
    for d in dirs:
        pg_dump = find_tool(["pg_dump"], d)
        if pg_dump is None:
            continue
        text = tool_version(pg_dump)
        version = parse_version(text)
        if version:
            clients.append(PgClient(d, version, ".".join(map(str, version))))
    return clients


def choose_client(server_num: int, clients: list[PgClient]) -> PgClient:
    """Given the server's ``server_version_num`` and the installed clients, return the one to
    use: the newest of the server's major, else the newest newer major; raise ClientTooOld if
    every client is older, SourceError if there is none."""
    if not clients:
        raise SourceError(source="postgresql", reason="no pg_dump found (install postgresql-client)")
    server_major = major_of(version_from_num(server_num))
    same = [c for c in clients if c.major == server_major]
    newer = [c for c in clients if c.major > server_major]
    pick = same or newer
    if pick:
        return max(pick, key=lambda c: c.version)
    newest = max(clients, key=lambda c: c.version)
    major_text = ".".join(map(str, server_major))
    raise ClientTooOld(
        tool="pg_dump",
        client=newest.version_text,
        server=".".join(map(str, version_from_num(server_num))),
        hint=f"postgresql-client-{major_text} (or set bin_dir to a client of major {major_text} or newer)",
    )


def conninfo(database: str) -> str:
    """Given a database name, return a libpq conninfo naming it (safe for any characters)."""
    escaped = database.replace("\\", "\\\\").replace("'", "\\'")
    return f"dbname='{escaped}'"


def pgpass_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


def _valid_custom(head: bytes, tail: bytes, size: int) -> str | None:
    return None if head.startswith(b"PGDMP") else "output does not start with the PGDMP magic"


def _valid_globals(head: bytes, tail: bytes, size: int) -> str | None:
    if b"PostgreSQL database cluster dump complete" not in tail:
        return "pg_dumpall output lacks its 'dump complete' trailer"
    return None


class PostgresAdapter:
    """Source adapter for ``type = "postgresql"``."""

    engine = "postgresql"

    def __init__(
        self, name: str, config: PostgresSource, ctx: AdapterContext, *, lib_root: Path = PG_LIB_ROOT
    ) -> None:
        self.name = name
        self.config = config
        self._ctx = ctx
        self._lib_root = lib_root
        self._client: PgClient | None = None

    # --- connection plumbing ---------------------------------------------------------------
    def _password(self) -> str | None:
        return read_secret(self.config.password_file, self.config.credential, f"sources.{self.name}.password")

    def _passfile(self) -> SecretFile:
        password = self._password()
        line = None if password is None else f"*:*:*:*:{pgpass_escape(password)}\n"
        return SecretFile(self._ctx.work_dir, "pgpass-", line)

    def _env(self, passfile: SecretFile) -> dict[str, str]:
        env = {
            "PGHOST": self.config.host,
            "PGPORT": str(self.config.port),
            "PGUSER": self.config.user,
            "PGCONNECT_TIMEOUT": "15",
            "PGAPPNAME": f"backupd/{self.name}",
        }
        if self.config.sslmode:
            env["PGSSLMODE"] = self.config.sslmode
        if passfile.path is not None:
            env["PGPASSFILE"] = str(passfile.path)
        return child_env(env, drop_prefixes=("PG",))

    def _fail(self, reason: str) -> SourceError:
        return SourceError(source=self.name, reason=scrub(reason, self._password()))

    def _psql(
        self,
        sql: str,
        database: str = MAINTENANCE_DB,
        variables: dict[str, str] | None = None,
        *,
        client: PgClient | None = None,
    ) -> list[list[str]]:
        """Given SQL (psql ``:'var'`` interpolation allowed), run it and return the rows;
        raise SourceError with psql's message if it fails."""
        client = client or self._ensure_client()
        argv = [client.tool("psql"), "-X", "-q", "-A", "-t", "-F", FIELD_SEP, "-v", "ON_ERROR_STOP=1"]
        argv += ["--no-password", "-d", conninfo(database)]
        for key, value in (variables or {}).items():
            argv += ["-v", f"{key}={value}"]
        with self._passfile() as passfile:
            env = self._env(passfile)
            env["PGCLIENTENCODING"] = "UTF8"
            result = run([*argv, "-f", "-"], env, stdin=sql.encode())
        if not result.ok:
            raise self._fail(last_line(result.stderr))
        return [line.split(FIELD_SEP) for line in result.text.splitlines() if line]

    # --- client selection ------------------------------------------------------------------
    def _server_version(self) -> tuple[int, str]:
        clients = discover_clients(self.config.bin_dir, self._lib_root)
        if not clients:
            where = self.config.bin_dir or f"{self._lib_root}/*/bin or $PATH"
            raise self._fail(f"no pg_dump found in {where} (install postgresql-client)")
        # Any psql can read the version; the newest copes best with unknown servers.
        probe = max(clients, key=lambda c: c.version)
        sql = "SELECT current_setting('server_version_num'), current_setting('server_version');"
        rows = self._psql(sql, client=probe)
        try:
            return int(rows[0][0]), rows[0][1]
        except (IndexError, ValueError):
            raise self._fail(f"unexpected answer to the version query: {rows!r:.200}") from None

    def _ensure_client(self) -> PgClient:
        if self._client is None:
            num, _ = self._server_version()
            self._client = choose_client(num, discover_clients(self.config.bin_dir, self._lib_root))
        return self._client

    # --- the port --------------------------------------------------------------------------
    def test(self) -> SourceInfo:
        """Connect, learn the server version and choose the matching client; return
        SourceInfo; raise SourceError (wrong password, unreachable) or ClientTooOld."""
        self._client = None
        num, text = self._server_version()
        self._client = choose_client(num, discover_clients(self.config.bin_dir, self._lib_root))
        log.debug("source %s: server %s, using clients in %s", self.name, text, self._client.bin_dir)
        return SourceInfo(self.engine, text.split(" ")[0])

    def list_databases(self) -> list[str]:
        """Return every database that accepts connections, without templates (and without
        ``postgres`` unless it holds tables)."""
        return [row[0] for row in self._psql(LIST_SQL)]

    def extra_objects(self) -> list[str]:
        """Objects stored besides the databases: ``_globals`` when ``include_globals``."""
        return [GLOBALS] if self.config.include_globals else []

    def dump(self, database: str) -> ToolDump:
        """Given a database name, start ``pg_dump -Fc`` and return its handle (for ``_globals``,
        ``pg_dumpall --globals-only``); the PGPASSFILE is removed when the handle finishes or
        aborts."""
        if database == GLOBALS:
            return self.dump_globals()
        client = self._ensure_client()
        argv = [client.tool("pg_dump"), "--format=custom", "--compress=0", "--no-password"]
        argv.append(f"--dbname={conninfo(database)}")
        return self._start(argv, database, ".pgdump", "pg_dump", client, _valid_custom)

    def dump_globals(self) -> ToolDump:
        """Start ``pg_dumpall --globals-only`` (roles, tablespaces; needs a superuser, or
        read access to pg_authid) and return its handle, named database ``_globals``."""
        client = self._ensure_client()
        argv = [client.tool("pg_dumpall"), "--globals-only", "--no-password", f"--database={MAINTENANCE_DB}"]
        return self._start(argv, GLOBALS, ".sql", "pg_dumpall", client, _valid_globals)

    def _start(
        self, argv: list[str], database: str, extension: str, tool: str, client: PgClient, validate: Validator
    ) -> ToolDump:
        passfile = self._passfile()
        return ToolDump(
            argv=argv,
            database=database,
            extension=extension,
            tool=tool,
            tool_version=client.version_text,
            validate=validate,
            env=self._env(passfile),
            fatal_stderr=(f"{tool}: error:",),
            cleanup=passfile.remove,
            secrets=(self._password(),),
        ).start()

    def restore(self, stream: BinaryIO, target: RestoreTarget) -> None:
        """Given a custom-format dump and a target, restore it in one transaction.

        A missing target database is created (from template0); an existing empty one is used;
        an existing non-empty one is refused (RestoreRefused) unless ``target.force``, which
        restores with ``--clean --if-exists`` (objects of the dump are dropped and recreated,
        others stay). On failure nothing is committed and a database created here is dropped.
        """
        name = target.database or target.original_database
        if not name:
            raise RestoreFailed(reason="no target database given and the backup names none")
        if target.original_database == GLOBALS or name == GLOBALS:
            self._restore_globals(stream, target)
            return
        client = self._ensure_client()
        exists = bool(
            self._psql("SELECT 1 FROM pg_database WHERE datname = :'name';", variables={"name": name})
        )
        clean = False
        if exists:
            objects = int(self._psql(USER_OBJECTS_SQL, database=name)[0][0])
            if objects and not target.force:
                raise RestoreRefused(
                    reason=f"database {name!r} exists and holds {objects} objects; "
                    "restore under another name or use force to overwrite"
                )
            clean = objects > 0
        else:
            self._psql('CREATE DATABASE :"name" TEMPLATE template0;', variables={"name": name})
        argv = [client.tool("pg_restore"), "--no-password", "--single-transaction", "--exit-on-error"]
        argv += ["--no-owner", *(["--clean", "--if-exists"] if clean else []), f"--dbname={conninfo(name)}"]
        try:
            with self._passfile() as passfile:
                result = feed_process(argv, stream, self._env(passfile))
        except StreamFailed as exc:
            self._drop_created(name, created=not exists)
            raise RestoreFailed(reason=f"reading the backup failed: {exc}") from exc.cause
        except BaseException:  # cancelled: pg_restore was killed, nothing was committed
            self._drop_created(name, created=not exists)
            raise
        if not result.ok:
            self._drop_created(name, created=not exists)
            reason = scrub(last_line(result.stderr), self._password())
            raise RestoreFailed(reason=f"pg_restore exited with status {result.code}: {reason}")

    def _drop_created(self, name: str, created: bool) -> None:
        if not created:
            return
        try:
            self._psql('DROP DATABASE IF EXISTS :"name";', variables={"name": name})
        except SourceError as exc:
            log.warning("source %s: could not drop %r after a failed restore: %s", self.name, name, exc)

    def _restore_globals(self, stream: BinaryIO, target: RestoreTarget) -> None:
        """Replay a ``pg_dumpall --globals-only`` script with psql. Roles that exist already
        are altered to match the backup, hence force is required. "already exists" errors
        (the role running the restore, always) are expected; any other error fails."""
        if not target.force:
            raise RestoreRefused(reason="restoring roles and tablespaces alters existing ones; use force")
        client = self._ensure_client()
        argv = [client.tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=0", "--no-password"]
        argv += ["-d", conninfo(MAINTENANCE_DB), "-f", "-"]
        try:
            with self._passfile() as passfile:
                result = feed_process(argv, stream, self._env(passfile))
        except StreamFailed as exc:
            raise RestoreFailed(reason=f"reading the backup failed: {exc}") from exc.cause
        errors = [ln for ln in result.stderr.splitlines() if "ERROR:" in ln and "already exists" not in ln]
        if not result.ok or errors:
            reason = scrub(errors[0] if errors else last_line(result.stderr), self._password())
            raise RestoreFailed(reason=f"globals: {reason}")
