"""PostgresAdapter against a real PostgreSQL 15 (the session's ``postgres_server``).

Round trip: a database with several tables, non-ASCII text, binary data, a sequence, a view,
a PL/pgSQL function and a trigger is dumped, restored under a new name, and compared table by
table (row counts and md5 of the ordered rows); the view, function and trigger are exercised
in the copy after the original is dropped. Failure gates: wrong password, missing database,
server killed mid-dump, a pg_dump that exits 0 without output, a restore stream that breaks
off, and the password never on any process's argv nor in an error.
"""

from __future__ import annotations

import io

import pytest

from backupd.config.model import PostgresSource
from backupd.errors import DumpFailed, RestoreFailed, RestoreRefused, SourceError
from backupd.sources.base import RestoreTarget
from backupd.sources.postgresql import PostgresAdapter

from .helpers import (
    ArgvWatch,
    FailingStream,
    check_watch_detects,
    drain,
    dump_all,
    fake_tool,
    make_ctx,
    watched_dump,
)

SCHEMA = r"""
CREATE SCHEMA audit;
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, city text);
CREATE TABLE orders (
    id bigserial PRIMARY KEY,
    customer_id int NOT NULL REFERENCES customers(id),
    total numeric(12, 2) NOT NULL,
    note text,
    placed_at timestamptz NOT NULL DEFAULT '2024-05-01 12:00:00+00'
);
CREATE TABLE blobs (id int PRIMARY KEY, data bytea NOT NULL);
CREATE TABLE audit.order_log (id serial PRIMARY KEY, order_id bigint, total numeric(12, 2));
CREATE FUNCTION audit.log_order() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit.order_log (order_id, total) VALUES (NEW.id, NEW.total);
    RETURN NEW;
END $$;
CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW EXECUTE FUNCTION audit.log_order();
CREATE FUNCTION customer_total(cid int) RETURNS numeric LANGUAGE sql STABLE AS
    $$ SELECT coalesce(sum(total), 0) FROM orders WHERE customer_id = cid $$;
CREATE VIEW big_spenders AS
    SELECT c.name, customer_total(c.id) AS spent FROM customers c WHERE customer_total(c.id) > 1000;
INSERT INTO customers (name, city) VALUES
    ('Zoë Ångström', 'Malmö'), ('Иван Петров', 'Москва'), ('李小龙', '香港'),
    ('Ahmed 🚀', 'القاهرة'), ('plain', NULL);
INSERT INTO customers (name, city) SELECT 'customer ' || g, 'city ' || (g % 17) FROM generate_series(1, 300) g;
INSERT INTO orders (customer_id, total, note)
    SELECT 1 + (g % 305), (g * 37 % 5000) / 3.0, CASE WHEN g % 3 = 0 THEN 'naïve café ' || g END
    FROM generate_series(1, 3000) g;
INSERT INTO blobs SELECT g, decode(md5(g::text) || md5((g * 7)::text), 'hex') || '\x00ff00'::bytea
    FROM generate_series(1, 2000) g;
INSERT INTO blobs SELECT 5000 + g, convert_to(repeat(md5(g::text), 64), 'UTF8') FROM generate_series(1, 400) g;
"""
TABLES = ("customers", "orders", "blobs", "audit.order_log")


def table_digest(server, database: str) -> dict[str, str]:
    """Per table: row count and md5 of all rows in primary-key order."""
    out = {}
    for table in TABLES:
        out[table] = server.sql(
            f"SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, E'\\n' ORDER BY t.id)), '') "
            f"FROM {table} t",
            database,
        )
    return out


def make_adapter(server, tmp_path, **overrides) -> PostgresAdapter:
    fields = dict(
        host=server.host, port=server.port, user=server.superuser, password_file=str(server.password_file)
    )
    fields.update(overrides)
    return PostgresAdapter("pg-test", PostgresSource(**fields), make_ctx(tmp_path))


def recreate(server, name: str) -> None:
    server.sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    server.sql(f'CREATE DATABASE "{name}"')


@pytest.fixture(scope="module")
def shop(postgres_server) -> str:
    recreate(postgres_server, "shop")
    postgres_server.sql(SCHEMA, "shop")
    return "shop"


@pytest.fixture(scope="module")
def big(postgres_server) -> str:
    """A database whose dump is ~40 MB, so a dump is still running when the server dies."""
    recreate(postgres_server, "bigdb")
    postgres_server.sql(
        "CREATE TABLE big AS SELECT g AS id, repeat(md5(g::text), 20) AS payload FROM generate_series(1, 60000) g",
        "bigdb",
    )
    return "bigdb"


@pytest.mark.timeout(60)
def test_test_reports_server_and_picks_matching_client(postgres_server, tmp_path):
    adapter = make_adapter(postgres_server, tmp_path)
    info = adapter.test()
    assert info.engine == "postgresql"
    assert info.version.startswith(f"{postgres_server.major}.")
    assert adapter._client is not None and adapter._client.major == (postgres_server.major,)


@pytest.mark.timeout(60)
def test_list_databases_leaves_out_templates_and_empty_postgres(postgres_server, shop, tmp_path):
    names = make_adapter(postgres_server, tmp_path).list_databases()
    assert "shop" in names
    assert not {"template0", "template1", "postgres"} & set(names)


@pytest.mark.timeout(120)
def test_round_trip_under_new_name(postgres_server, shop, tmp_path):
    adapter = make_adapter(postgres_server, tmp_path)
    before = table_digest(postgres_server, shop)
    handle = adapter.dump(shop)
    assert handle.extension == ".pgdump"
    data, result = dump_all(handle)
    assert data.startswith(b"PGDMP")
    assert (result.name, result.exit_code) == ("pg_dump", 0) and result.version.startswith("15.")
    assert "naïve café".encode() in data  # uncompressed: backupd compresses
    assert list((tmp_path / "work").iterdir()) == [], "PGPASSFILE left behind"

    postgres_server.sql("DROP DATABASE IF EXISTS shop_copy WITH (FORCE)")
    adapter.restore(io.BytesIO(data), RestoreTarget("shop_copy", original_database=shop))
    assert table_digest(postgres_server, "shop_copy") == before
    spenders = postgres_server.sql("SELECT * FROM big_spenders ORDER BY name", shop)
    # The copy stands on its own: view, function and trigger work with the original gone
    # (renamed away for the moment, as other tests use it).
    postgres_server.sql(f"ALTER DATABASE {shop} RENAME TO shop_hidden")
    try:
        assert postgres_server.sql("SELECT * FROM big_spenders ORDER BY name", "shop_copy") == spenders
        assert spenders.count("\n") >= 1
        postgres_server.sql("INSERT INTO orders (customer_id, total) VALUES (2, 99.50)", "shop_copy")
        last = "SELECT total FROM audit.order_log ORDER BY id DESC LIMIT 1"
        assert postgres_server.sql(last, "shop_copy") == "99.50"
        assert postgres_server.sql("SELECT name FROM customers WHERE id = 3", "shop_copy") == "李小龙"
        assert postgres_server.sql("SELECT nextval('orders_id_seq')", "shop_copy") == "3002"
    finally:
        postgres_server.sql(f"ALTER DATABASE shop_hidden RENAME TO {shop}")
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.timeout(120)
def test_restore_refuses_non_empty_target_and_force_overwrites(postgres_server, shop, tmp_path):
    adapter = make_adapter(postgres_server, tmp_path)
    data, _ = dump_all(adapter.dump(shop))
    recreate(postgres_server, "shop_target")
    postgres_server.sql(
        "CREATE TABLE customers (id int PRIMARY KEY, name text); INSERT INTO customers VALUES (1, 'x')",
        "shop_target",
    )
    with pytest.raises(RestoreRefused, match="exists and holds"):
        adapter.restore(io.BytesIO(data), RestoreTarget("shop_target", original_database=shop))
    assert postgres_server.sql("SELECT name FROM customers", "shop_target") == "x"

    adapter.restore(io.BytesIO(data), RestoreTarget("shop_target", force=True, original_database=shop))
    assert table_digest(postgres_server, "shop_target") == table_digest(postgres_server, shop)

    # An existing but empty database is used without force.
    recreate(postgres_server, "shop_empty")
    adapter.restore(io.BytesIO(data), RestoreTarget("shop_empty", original_database=shop))
    assert table_digest(postgres_server, "shop_empty") == table_digest(postgres_server, shop)


@pytest.mark.timeout(120)
def test_failed_restore_commits_nothing_and_drops_the_new_database(postgres_server, shop, tmp_path):
    adapter = make_adapter(postgres_server, tmp_path)
    data, _ = dump_all(adapter.dump(shop))
    exists = "SELECT count(*) FROM pg_database WHERE datname = 'shop_broken'"

    with pytest.raises(RestoreFailed, match="pg_restore exited"):
        adapter.restore(
            io.BytesIO(data[: len(data) // 2]), RestoreTarget("shop_broken", original_database=shop)
        )
    assert postgres_server.sql(exists) == "0"

    with pytest.raises(RestoreFailed, match="simulated read failure"):
        adapter.restore(
            FailingStream(data, len(data) - 100), RestoreTarget("shop_broken", original_database=shop)
        )
    assert postgres_server.sql(exists) == "0"

    # Forced over an existing database: the single transaction leaves it as it was.
    recreate(postgres_server, "shop_keep")
    postgres_server.sql(
        "CREATE TABLE customers (id int PRIMARY KEY, name text); INSERT INTO customers VALUES (7, 'kept')",
        "shop_keep",
    )
    with pytest.raises(RestoreFailed):
        adapter.restore(FailingStream(data, len(data) - 100), RestoreTarget("shop_keep", force=True))
    assert postgres_server.sql("SELECT id, name FROM customers", "shop_keep") == "7|kept"


@pytest.mark.timeout(60)
def test_globals_dump_and_restore(postgres_server, tmp_path):
    adapter = make_adapter(postgres_server, tmp_path, include_globals=True)
    postgres_server.sql(
        "DROP ROLE IF EXISTS report_reader; CREATE ROLE report_reader NOLOGIN CONNECTION LIMIT 3"
    )
    handle = adapter.dump_globals()
    assert (handle.database, handle.extension) == ("_globals", ".sql")
    data, result = dump_all(handle)
    assert result.name == "pg_dumpall" and b"CREATE ROLE report_reader" in data
    postgres_server.sql("DROP ROLE report_reader")
    with pytest.raises(RestoreRefused):
        adapter.restore(io.BytesIO(data), RestoreTarget(None, original_database="_globals"))
    adapter.restore(io.BytesIO(data), RestoreTarget(None, force=True, original_database="_globals"))
    assert postgres_server.sql("SELECT rolconnlimit FROM pg_roles WHERE rolname = 'report_reader'") == "3"


@pytest.mark.timeout(60)
def test_wrong_password_fails_test_and_dump_without_leaking_it(postgres_server, shop, tmp_path):
    wrong = "Wrong-Sentinel-7f3a:pw"
    pwfile = tmp_path / "wrong.pw"
    pwfile.write_text(wrong + "\n")
    pwfile.chmod(0o600)
    adapter = make_adapter(postgres_server, tmp_path, password_file=str(pwfile))
    with pytest.raises(SourceError, match="password authentication failed") as caught:
        adapter.test()
    assert wrong not in str(caught.value)
    # dump() picks the client on its own; give it one so that the dump itself meets the wrong password.
    adapter._client = make_adapter(postgres_server, tmp_path / "ok")._ensure_client()
    handle = adapter.dump(shop)
    drain(handle)
    with pytest.raises(DumpFailed, match="password authentication failed") as caught:
        handle.finish()
    assert wrong not in str(caught.value)
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.timeout(60)
def test_missing_database_fails_the_dump(postgres_server, tmp_path):
    handle = make_adapter(postgres_server, tmp_path).dump("no_such_db")
    assert drain(handle) == b""
    with pytest.raises(DumpFailed, match='database "no_such_db" does not exist') as caught:
        handle.finish()
    assert postgres_server.password not in str(caught.value)


@pytest.mark.timeout(120)
def test_server_killed_mid_dump_fails_the_dump(postgres_server, big, tmp_path):
    handle = make_adapter(postgres_server, tmp_path).dump(big)
    got = 0
    while got < 1024 * 1024:
        chunk = handle.read()
        assert chunk, "dump ended before the server was killed"
        got += len(chunk)
    postgres_server.crash_and_restart()
    got += len(drain(handle))
    assert got < 30 * 1024 * 1024
    with pytest.raises(DumpFailed, match="pg_dump"):
        handle.finish()


@pytest.mark.timeout(60)
def test_pg_dump_exiting_0_without_output_fails(postgres_server, shop, tmp_path):
    # Fault injection: a bin_dir whose pg_dump claims the server's version and writes nothing.
    bin_dir = tmp_path / "fakebin"
    fake_tool(bin_dir, "psql", f'exec {postgres_server.bin_dir}/psql "$@"')
    fake_tool(bin_dir, "pg_dump", 'case "$1" in --version) echo "pg_dump (PostgreSQL) 15.99";; esac\nexit 0')
    adapter = make_adapter(postgres_server, tmp_path, bin_dir=str(bin_dir))
    adapter.test()
    handle = adapter.dump(shop)
    assert drain(handle) == b""
    with pytest.raises(DumpFailed, match="wrote nothing"):
        handle.finish()
    fake_tool(
        bin_dir, "pg_dump", 'case "$1" in --version) echo "pg_dump (PostgreSQL) 15.99";; esac\necho garbage'
    )
    handle = adapter.dump(shop)
    drain(handle)
    with pytest.raises(DumpFailed, match="PGDMP"):
        handle.finish()


@pytest.mark.timeout(120)
def test_password_never_on_any_argv(postgres_server, shop, tmp_path):
    adapter = make_adapter(postgres_server, tmp_path)
    with ArgvWatch(postgres_server.password) as watch:
        adapter.test()
        data, _ = watched_dump(adapter.dump(shop), watch, "pg_dump")
        adapter.restore(io.BytesIO(data), RestoreTarget("shop_watch", force=True))
    assert watch.passes > 3
    assert watch.hits == []
    check_watch_detects(postgres_server.password)


@pytest.mark.timeout(60)
def test_abort_kills_the_dump_and_removes_the_passfile(postgres_server, big, tmp_path):
    handle = make_adapter(postgres_server, tmp_path).dump(big)
    assert handle.read()
    handle.abort()
    assert handle._proc.poll() is not None
    assert list((tmp_path / "work").iterdir()) == []
