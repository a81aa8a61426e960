"""Each engine through the whole daemon: backup (zstd + BKD1), restore under a new name,
compare per-table checksums; failures fail at the named step and keep earlier backups; the
password never reaches a log line, sidecar or socket reply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.sources import test_mysql, test_postgresql
from tests.system.daemon_helpers import REPO, DaemonProc, base_config

pytestmark = pytest.mark.timeout(180)


def _key(tmp_path: Path) -> Path:
    import subprocess
    import sys

    key = tmp_path / "main.key"
    subprocess.run(
        [sys.executable, "-m", "backupctl", "key", "generate", str(key)],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    return key


def _daemon(tmp_path: Path, source: dict, databases: list[str] | None = None) -> DaemonProc:
    cfg = base_config(tmp_path)
    cfg["sources"]["db"] = source
    cfg["destinations"]["disk"] = {"type": "local", "path": str(tmp_path / "backups")}
    cfg["encryption"] = {"main": {"key_file": str(_key(tmp_path))}}
    job = {"source": "db", "destinations": ["disk"], "compression": "zstd", "encryption": "main"}
    if databases is not None:
        job["databases"] = databases
    cfg["jobs"]["app"] = job
    return DaemonProc(tmp_path, cfg).start()


def _pg_source(pg, **extra: object) -> dict:
    return {
        "type": "postgresql",
        "host": pg.host,
        "port": pg.port,
        "user": pg.superuser,
        "password_file": str(pg.password_file),
        **extra,
    }


def _small_databases(pg, names: tuple[str, ...], rows: int) -> None:
    for name in names:
        pg.sql(f"DROP DATABASE IF EXISTS {name}")
        pg.sql(f"CREATE DATABASE {name}")
        pg.sql(f"CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, {rows})", name)


def _no_secret_anywhere(d: DaemonProc, tmp_path: Path, secret: str) -> None:
    replies = "".join(
        d.ctl(*args, "--json").stdout for args in (("history",), ("backups",), ("status",), ("jobs",))
    )
    replies += "".join(d.ctl("logs", str(i)).stdout for i in range(1, 4))
    sidecars = "".join(p.read_text() for p in (tmp_path / "backups").rglob("*.meta.json"))
    for text in (replies, sidecars, d.log()):
        assert secret not in text


def test_postgresql_through_the_daemon(tmp_path: Path, postgres_server) -> None:
    pg = postgres_server
    pg.sql("DROP DATABASE IF EXISTS sysapp")
    pg.sql("CREATE DATABASE sysapp")
    pg.sql(test_postgresql.SCHEMA, "sysapp")
    d = _daemon(tmp_path, _pg_source(pg, include_globals=True), databases=["sysapp"])
    try:
        res = d.ctl("run", "app", "--wait")
        assert res.returncode == 0, res.stdout + d.log()[-3000:]
        backups = json.loads(d.ctl("backups", "app", "--json").stdout)["backups"]
        assert sorted(b["database"] for b in backups) == ["_globals", "sysapp"]
        assert any(b["key"].endswith("_sysapp.pgdump.zst.bkd") for b in backups)
        pg.sql("DROP DATABASE IF EXISTS sysapp_copy")
        res = d.ctl("restore", "app", "--database", "sysapp", "--as", "sysapp_copy")
        assert res.returncode == 0, res.stdout + res.stderr
        assert test_postgresql.table_digest(pg, "sysapp_copy") == test_postgresql.table_digest(pg, "sysapp")
        # restoring over the non-empty copy is refused without --force
        res = d.ctl("restore", "app", "--database", "sysapp", "--as", "sysapp_copy")
        assert res.returncode == 10 and "exists and holds" in res.stdout
        assert d.ctl("verify", "app", "--full").returncode == 0
        # a missing database fails at dump; the earlier backups stay
        cfg = d.config
        cfg["jobs"]["app"]["databases"] = ["no_such_db"]
        from tests.system.daemon_helpers import write_config

        write_config(d.config_path, cfg)
        assert d.ctl("reload").returncode == 0
        assert d.ctl("run", "app", "--wait").returncode == 10
        rec = json.loads(d.ctl("history", "app", "--json").stdout)[0]
        assert "dump" in rec["error"] and "no_such_db" in rec["error"]
        after = json.loads(d.ctl("backups", "app", "--json").stdout)["backups"]
        assert {b["key"] for b in backups} <= {b["key"] for b in after}  # earlier backups intact
        assert not any(b["database"] == "no_such_db" for b in after)
        _no_secret_anywhere(d, tmp_path, pg.password)
    finally:
        d.stop()


def test_postgresql_wrong_password_fails_at_initialize(tmp_path: Path, postgres_server) -> None:
    bad = tmp_path / "bad.pw"
    bad.write_text("not-the-password-sentinel")
    bad.chmod(0o600)
    d = _daemon(tmp_path, _pg_source(postgres_server, password_file=str(bad)), databases=["postgres"])
    try:
        assert d.ctl("run", "app", "--wait").returncode == 10
        rec = json.loads(d.ctl("history", "app", "--json").stdout)[0]
        assert rec["error"].startswith("initialize:") and "password authentication failed" in rec["error"]
        _no_secret_anywhere(d, tmp_path, "not-the-password-sentinel")
    finally:
        d.stop()


def test_mariadb_through_the_daemon(tmp_path: Path, mariadb_server) -> None:
    my = mariadb_server
    my.sql("DROP DATABASE IF EXISTS sysapp; CREATE DATABASE sysapp")
    my.sql(test_mysql.SCHEMA, "sysapp")
    source = {
        "type": "mariadb",
        "host": my.host,
        "port": my.port,
        "user": my.user,
        "password_file": str(my.password_file),
    }
    d = _daemon(tmp_path, source, databases=["sysapp"])
    try:
        res = d.ctl("run", "app", "--wait")
        assert res.returncode == 0, res.stdout + d.log()[-3000:]
        my.sql("DROP DATABASE IF EXISTS sysapp_copy")
        res = d.ctl("restore", "app", "--as", "sysapp_copy")
        assert res.returncode == 0, res.stdout + res.stderr
        assert test_mysql.table_digest(my, "sysapp_copy") == test_mysql.table_digest(my, "sysapp")
        assert d.ctl("verify", "app", "--full").returncode == 0
        _no_secret_anywhere(d, tmp_path, my.password)
    finally:
        d.stop()


def test_redis_through_the_daemon(tmp_path: Path, redis_server) -> None:
    r = redis_server
    r.cli("SET", "sys:key", "värde")
    source = {"type": "redis", "host": r.host, "port": r.port, "password_file": str(r.password_file)}
    if getattr(r, "user", None) and r.user != "default":
        source["username"] = r.user
    d = _daemon(tmp_path, source)
    try:
        res = d.ctl("run", "app", "--wait")
        assert res.returncode == 0, res.stdout + d.log()[-3000:]
        backups = json.loads(d.ctl("backups", "app", "--json").stdout)["backups"]
        assert len(backups) == 1 and backups[0]["key"].endswith(".rdb.zst.bkd")
        assert d.ctl("verify", "app", "--full").returncode == 0
        _no_secret_anywhere(d, tmp_path, r.password)
    finally:
        d.stop()


def test_the_sources_database_list_is_honoured(tmp_path: Path, postgres_server) -> None:
    pg = postgres_server
    _small_databases(pg, ("only_this", "not_that"), 10)
    d = _daemon(tmp_path, _pg_source(pg, databases=["only_this"]))
    try:
        assert d.ctl("run", "app", "--wait").returncode == 0
        backups = json.loads(d.ctl("backups", "app", "--json").stdout)["backups"]
        assert [b["database"] for b in backups] == ["only_this"]
    finally:
        d.stop()
        for name in ("only_this", "not_that"):
            pg.sql(f"DROP DATABASE IF EXISTS {name}")


def test_all_databases_in_one_execution(tmp_path: Path, postgres_server) -> None:
    pg = postgres_server
    _small_databases(pg, ("multi_a", "multi_b"), 100)
    d = _daemon(tmp_path, _pg_source(pg))  # databases = [] : every non-system database
    try:
        assert d.ctl("run", "app", "--wait").returncode == 0
        rec = json.loads(d.ctl("history", "app", "--json").stdout)[0]
        names = {x["database"] for x in rec["details"]["databases"]}
        assert {"multi_a", "multi_b"} <= names
        backups = json.loads(d.ctl("backups", "app", "--json").stdout)["backups"]
        assert {b["database"] for b in backups} == names and {b["execution_id"] for b in backups} == {
            rec["id"]
        }
        res = d.ctl("restore", "app")
        assert res.returncode == 1 and "add --database" in res.stderr
    finally:
        d.stop()
