"""MysqlAdapter against a real MariaDB (the session's ``mariadb_server``).

Round trip: a database with several tables (utf8mb4 text with emoji, random binary blobs),
a view, a stored function, a procedure, a trigger and an event is dumped, restored under a
new name with the original dropped meanwhile, and compared table by table (row counts and
md5 of the ordered rows). Failure gates: wrong password, missing database, server killed
mid-dump, dump tools that exit 0 with empty or truncated output, a failing restore, and the
password never on any process's argv nor in an error.
"""

from __future__ import annotations

import io
import os

import pytest

from backupd.config.model import MariadbSource, MysqlSource
from backupd.errors import Cancelled, DumpFailed, RestoreFailed, RestoreRefused, SourceError
from backupd.sources.base import RestoreTarget
from backupd.sources.mysql import MysqlAdapter, option_value, unescape_batch

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

SCHEMA = """
CREATE TABLE customers (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(100) NOT NULL, city VARCHAR(100))
    DEFAULT CHARSET=utf8mb4;
CREATE TABLE orders (id BIGINT PRIMARY KEY AUTO_INCREMENT, customer_id INT NOT NULL, total DECIMAL(12,2) NOT NULL,
    note TEXT, FOREIGN KEY (customer_id) REFERENCES customers(id)) DEFAULT CHARSET=utf8mb4;
CREATE TABLE blobs (id INT PRIMARY KEY, data LONGBLOB NOT NULL);
CREATE TABLE order_log (id INT PRIMARY KEY AUTO_INCREMENT, order_id BIGINT, total DECIMAL(12,2));
INSERT INTO customers (name, city) VALUES ('Zoë Ångström', 'Malmö'), ('Иван Петров', 'Москва'),
    ('李小龙', '香港'), ('Ahmed 🚀', 'القاهرة'), ('plain', NULL);
INSERT INTO customers (name, city) SELECT CONCAT('customer ', seq), CONCAT('city ', seq % 17) FROM seq_1_to_300;
INSERT INTO orders (customer_id, total, note)
    SELECT 1 + (seq % 305), (seq * 37 % 5000) / 3, IF(seq % 3 = 0, CONCAT('naïve café ', seq), NULL) FROM seq_1_to_3000;
INSERT INTO blobs SELECT seq, RANDOM_BYTES(1 + seq % 1024) FROM seq_1_to_1500;
INSERT INTO blobs VALUES (9000, X'00FF000D0A1A5C27');
CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW
    INSERT INTO order_log (order_id, total) VALUES (NEW.id, NEW.total);
CREATE FUNCTION customer_total(cid INT) RETURNS DECIMAL(14,2) READS SQL DATA
    RETURN (SELECT COALESCE(SUM(total), 0) FROM orders WHERE customer_id = cid);
CREATE PROCEDURE add_order(cid INT, amount DECIMAL(12,2)) INSERT INTO orders (customer_id, total) VALUES (cid, amount);
CREATE VIEW big_spenders AS SELECT name, customer_total(id) AS spent FROM customers WHERE customer_total(id) > 1000;
CREATE EVENT nightly_cleanup ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM order_log WHERE id < 0;
"""
TABLES = ("customers", "orders", "blobs", "order_log")


def table_digest(server, database: str) -> dict[str, str]:
    out = {}
    for table in TABLES:
        cols = server.sql(
            "SELECT GROUP_CONCAT(CONCAT('HEX(`', COLUMN_NAME, '`)') ORDER BY ORDINAL_POSITION) "
            f"FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = '{database}' AND TABLE_NAME = '{table}'"
        )
        out[table] = server.sql(
            "SET SESSION group_concat_max_len = 1073741824; "
            f"SELECT CONCAT(COUNT(*), ':', COALESCE(MD5(GROUP_CONCAT(CONCAT_WS('|', {cols}) ORDER BY id "
            f"SEPARATOR '\\n')), '')) FROM `{database}`.`{table}`"
        )
    return out


def routines(server, database: str) -> str:
    return server.sql(
        "SELECT GROUP_CONCAT(x ORDER BY x) FROM ("
        f" SELECT CONCAT(ROUTINE_TYPE, ':', ROUTINE_NAME) x FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = '{database}'"
        f" UNION SELECT CONCAT('TRIGGER:', TRIGGER_NAME) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = '{database}'"
        f" UNION SELECT CONCAT('EVENT:', EVENT_NAME) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = '{database}'"
        f" UNION SELECT CONCAT('VIEW:', TABLE_NAME) FROM information_schema.VIEWS WHERE TABLE_SCHEMA = '{database}') r"
    )


def make_adapter(server, tmp_path, cls=MariadbSource, **overrides) -> MysqlAdapter:
    fields = dict(
        host=server.host, port=server.port, user=server.user, password_file=str(server.password_file)
    )
    fields.update(overrides)
    return MysqlAdapter("my-test", cls(**fields), make_ctx(tmp_path))


def recreate(server, name: str) -> None:
    server.sql(f"DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}`")


@pytest.fixture(scope="module")
def shop(mariadb_server) -> str:
    recreate(mariadb_server, "shop")
    mariadb_server.sql(SCHEMA, "shop")
    return "shop"


@pytest.fixture(scope="module")
def big(mariadb_server) -> str:
    """A database whose dump is ~40 MB, so a dump is still running when the server dies."""
    recreate(mariadb_server, "bigdb")
    mariadb_server.sql(
        "CREATE TABLE big (id INT PRIMARY KEY, payload VARCHAR(700)); "
        "INSERT INTO big SELECT seq, REPEAT(MD5(seq), 20) FROM seq_1_to_60000;",
        "bigdb",
    )
    return "bigdb"


@pytest.mark.timeout(60)
def test_test_detects_mariadb_even_when_configured_as_mysql(mariadb_server, tmp_path):
    adapter = make_adapter(mariadb_server, tmp_path, cls=MysqlSource)
    assert adapter.engine == "mysql"
    info = adapter.test()
    assert info.engine == "mariadb" and "MariaDB" in info.version
    assert adapter.engine == "mariadb"


@pytest.mark.timeout(60)
def test_list_databases_leaves_out_system_schemas(mariadb_server, shop, tmp_path):
    names = make_adapter(mariadb_server, tmp_path).list_databases()
    assert "shop" in names
    assert not {"mysql", "information_schema", "performance_schema", "sys"} & set(names)


@pytest.mark.timeout(120)
def test_round_trip_under_new_name(mariadb_server, shop, tmp_path):
    # Its own source database, dropped before the restore: the copy must not lean on it.
    recreate(mariadb_server, "rt_src")
    mariadb_server.sql(SCHEMA, "rt_src")
    before, objects = table_digest(mariadb_server, "rt_src"), routines(mariadb_server, "rt_src")
    assert objects.count(",") == 4  # function, procedure, trigger, event, view
    spenders = "SELECT * FROM big_spenders ORDER BY name"
    spent = mariadb_server.sql(spenders, "rt_src")
    assert spent.count("\n") >= 1

    adapter = make_adapter(mariadb_server, tmp_path)
    handle = adapter.dump("rt_src")
    assert handle.extension == ".sql"
    data, result = dump_all(handle)
    assert result.name == "mariadb-dump" and result.version.startswith("10.")
    assert b"-- Dump completed" in data[-200:]
    assert b"CREATE DATABASE" not in data and b"USE `" not in data  # restores under any name
    assert list((tmp_path / "work").iterdir()) == [], "option file left behind"

    mariadb_server.sql("DROP DATABASE rt_src; DROP DATABASE IF EXISTS rt_copy")
    adapter.restore(io.BytesIO(data), RestoreTarget("rt_copy", original_database="rt_src"))
    assert table_digest(mariadb_server, "rt_copy") == before
    assert routines(mariadb_server, "rt_copy") == objects
    assert mariadb_server.sql(spenders, "rt_copy") == spent
    mariadb_server.sql("CALL add_order(2, 99.50)", "rt_copy")
    assert mariadb_server.sql("SELECT total FROM order_log ORDER BY id DESC LIMIT 1", "rt_copy") == "99.50"
    assert mariadb_server.sql("SELECT name FROM customers WHERE id = 4", "rt_copy") == "Ahmed 🚀"
    assert mariadb_server.sql("SELECT HEX(data) FROM blobs WHERE id = 9000", "rt_copy") == "00FF000D0A1A5C27"


@pytest.mark.timeout(120)
def test_restore_refuses_non_empty_target_and_force_replaces(mariadb_server, shop, tmp_path):
    adapter = make_adapter(mariadb_server, tmp_path)
    data, _ = dump_all(adapter.dump(shop))
    recreate(mariadb_server, "shop_target")
    mariadb_server.sql("CREATE TABLE stray (id INT PRIMARY KEY); INSERT INTO stray VALUES (1)", "shop_target")
    with pytest.raises(RestoreRefused, match="exists and holds 1 objects"):
        adapter.restore(io.BytesIO(data), RestoreTarget("shop_target", original_database=shop))
    assert mariadb_server.sql("SELECT id FROM stray", "shop_target") == "1"

    adapter.restore(io.BytesIO(data), RestoreTarget("shop_target", force=True, original_database=shop))
    assert table_digest(mariadb_server, "shop_target") == table_digest(mariadb_server, shop)
    assert "stray" not in mariadb_server.sql("SHOW TABLES", "shop_target")

    recreate(mariadb_server, "shop_empty")
    adapter.restore(io.BytesIO(data), RestoreTarget("shop_empty", original_database=shop))
    assert table_digest(mariadb_server, "shop_empty") == table_digest(mariadb_server, shop)


@pytest.mark.timeout(120)
def test_failed_restore_drops_the_database_it_created(mariadb_server, shop, tmp_path):
    adapter = make_adapter(mariadb_server, tmp_path)
    data, _ = dump_all(adapter.dump(shop))
    exists = "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'shop_broken'"
    broken = data.replace(b"INSERT INTO `orders`", b"INSERT INTO `orders_missing`", 1)
    with pytest.raises(RestoreFailed, match="orders_missing") as caught:
        adapter.restore(io.BytesIO(broken), RestoreTarget("shop_broken", original_database=shop))
    assert "dropped again" in str(caught.value)
    assert mariadb_server.sql(exists) == "0"
    with pytest.raises(RestoreFailed, match="simulated read failure"):
        adapter.restore(FailingStream(data, len(data) // 2), RestoreTarget("shop_broken"))
    assert mariadb_server.sql(exists) == "0"
    with pytest.raises(Cancelled):
        adapter.restore(FailingStream(data, len(data) // 3, Cancelled()), RestoreTarget("shop_broken"))
    assert mariadb_server.sql(exists) == "0"
    assert mariadb_server.password not in str(caught.value)


@pytest.mark.timeout(60)
def test_wrong_password_fails_test_and_dump_without_leaking_it(mariadb_server, shop, tmp_path):
    wrong = 'Wrong-Sentinel-5c1e"pw'
    pwfile = tmp_path / "wrong.pw"
    pwfile.write_text(wrong + "\n")
    pwfile.chmod(0o600)
    adapter = make_adapter(mariadb_server, tmp_path, password_file=str(pwfile))
    with pytest.raises(SourceError, match="Access denied") as caught:
        adapter.test()
    assert wrong not in str(caught.value)
    adapter._flavour = "mariadb"  # dump() would otherwise stop at test()
    handle = adapter.dump(shop)
    drain(handle)
    with pytest.raises(DumpFailed, match="Access denied") as caught:
        handle.finish()
    assert wrong not in str(caught.value)
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.timeout(60)
def test_missing_database_fails_the_dump(mariadb_server, tmp_path):
    handle = make_adapter(mariadb_server, tmp_path).dump("no_such_db")
    drain(handle)
    with pytest.raises(DumpFailed, match="Unknown database 'no_such_db'") as caught:
        handle.finish()
    assert mariadb_server.password not in str(caught.value)


@pytest.mark.timeout(120)
def test_server_killed_mid_dump_fails_the_dump(mariadb_server, big, tmp_path):
    handle = make_adapter(mariadb_server, tmp_path).dump(big)
    got = 0
    while got < 1024 * 1024:
        chunk = handle.read()
        assert chunk, "dump ended before the server was killed"
        got += len(chunk)
    mariadb_server.crash_and_restart()
    got += len(drain(handle))
    assert got < 30 * 1024 * 1024
    with pytest.raises(DumpFailed, match=r"Lost connection|exited with status"):
        handle.finish()


@pytest.mark.timeout(60)
def test_dump_tool_exiting_0_with_empty_or_cut_output_fails(mariadb_server, shop, tmp_path, monkeypatch):
    # Fault injection: a mariadb-dump on $PATH that exits 0 after writing nothing / half a dump.
    fake_dir = tmp_path / "fakebin"
    fake_tool(
        fake_dir, "mariadb-dump", 'case "$1" in --version) echo "mariadb-dump from 10.11.99";; esac\nexit 0'
    )
    monkeypatch.setenv("PATH", f"{fake_dir}:{os.environ['PATH']}")
    adapter = make_adapter(mariadb_server, tmp_path)
    handle = adapter.dump(shop)
    assert drain(handle) == b""
    with pytest.raises(DumpFailed, match="wrote nothing"):
        handle.finish()
    fake_tool(
        fake_dir,
        "mariadb-dump",
        "printf -- '-- MariaDB dump\\nCREATE TABLE t (id int);\\nINSERT INTO t VALUES '",
    )
    handle = adapter.dump(shop)
    drain(handle)
    with pytest.raises(DumpFailed, match="Dump completed"):
        handle.finish()
    fake_tool(
        fake_dir,
        "mariadb-dump",
        "echo '-- Dump completed'; echo 'mariadb-dump: Got error: 2013: Lost connection' >&2",
    )
    handle = adapter.dump(shop)
    drain(handle)
    with pytest.raises(DumpFailed, match="Got error"):
        handle.finish()


@pytest.mark.timeout(30)
def test_extra_dump_options_that_break_the_contract_are_refused(mariadb_server, tmp_path):
    adapter = make_adapter(mariadb_server, tmp_path, extra_dump_options=["--skip-comments"])
    with pytest.raises(SourceError, match="--skip-comments"):
        adapter.dump("shop")


@pytest.mark.timeout(120)
def test_password_never_on_any_argv(mariadb_server, shop, big, tmp_path):
    adapter = make_adapter(mariadb_server, tmp_path)
    with ArgvWatch(mariadb_server.password) as watch:
        adapter.test()
        data, _ = watched_dump(adapter.dump(big), watch, "mariadb-dump")
        adapter.restore(io.BytesIO(data), RestoreTarget("big_watch", force=True))
    assert watch.passes > 3 and "mariadb" in watch.seen
    assert watch.hits == []
    check_watch_detects(mariadb_server.password)


def test_option_file_and_batch_escaping():
    assert option_value('a"b\\c #d') == '"a\\"b\\\\c #d"'
    assert unescape_batch("a\\tb\\nc\\\\d") == "a\tb\nc\\d"
