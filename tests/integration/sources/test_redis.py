"""RedisAdapter against a real Redis (the session's ``redis_server``).

Round trip: keys of every common type (non-ASCII strings, binary values, hashes, lists,
sets, sorted sets, a stream, a key with a TTL) in two logical databases are dumped with
``redis-cli --rdb -``, the dataset is replaced, and the RDB is restored (Redis stopped,
file swapped, Redis started again); DEBUG DIGEST, key counts and values must match. Both
transfer modes are covered: diskless (the RDB followed by redis-cli's end mark on stdout)
and disk-based. Failure gates: wrong password, server killed mid-dump, a redis-cli that
exits 0 with empty or cut output, refusals (data present, AOF on, no way to restart), and
the password never on any process's argv nor in an error.
"""

from __future__ import annotations

import io
import os
import random

import pytest

from backupd.config.model import RedisSource
from backupd.errors import DumpFailed, RestoreFailed, RestoreRefused, SourceError
from backupd.sources.base import RestoreTarget
from backupd.sources.redis import RdbDump, RedisAdapter, rdb_end
from tests.fixtures.redis import resp

from .helpers import ArgvWatch, check_watch_detects, drain, dump_all, fake_tool, make_ctx, watched_dump

BINARY = bytes(range(256)) * 4


def make_adapter(server, tmp_path, **overrides) -> RedisAdapter:
    fields = dict(
        host=server.host,
        port=server.port,
        username=server.user,
        password_file=str(server.password_file),
        data_dir=str(server.data_dir),
        start_command=server.start_command,
    )
    fields.update(overrides)
    return RedisAdapter("redis-test", RedisSource(**fields), make_ctx(tmp_path))


def load_sample(server) -> None:
    server.cli("FLUSHALL")
    cmds = [
        resp("SET", "greeting", "Grüße, 世界 🚀"),
        resp("SET", b"bin\x00key", BINARY),
        resp("HSET", "user:1", "name", "Zoë", "city", "Malmö", "avatar", BINARY[:300]),
        resp("RPUSH", "queue", *[f"job-{i}" for i in range(500)]),
        resp("SADD", "tags", "ünï", "çödé", "日本", "plain"),
        resp("ZADD", "scores", "1.5", "ann", "2", "bob", "-3", "cäcilie"),
        resp("XADD", "events", "1-1", "kind", "login", "user", "1"),
        resp("XADD", "events", "2-1", "kind", "logout", "user", "1"),
        resp("SET", "session", "temp", "EX", "3600"),
        resp("SELECT", "3"),
        resp("SET", "other-db", "kept in db 3"),
        resp("HSET", "h3", *[f"f{i}" for i in range(200) for _ in (0, 1)]),
    ]
    cmds += [resp("SET", f"k:{i}", os.urandom(64)) for i in range(2000)]
    server.pipe(b"".join(cmds))


@pytest.mark.timeout(30)
def test_test_reports_version_and_single_database(redis_server, tmp_path):
    adapter = make_adapter(redis_server, tmp_path)
    info = adapter.test()
    assert info.engine == "redis" and info.version[0].isdigit()
    assert adapter.list_databases() == ["all"]
    with pytest.raises(SourceError, match="all"):
        adapter.dump("0")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("diskless", ["yes", "no"])
def test_round_trip_replaces_the_dataset(redis_server, tmp_path, diskless):
    redis_server.cli("CONFIG", "SET", "repl-diskless-sync", diskless)
    load_sample(redis_server)
    digest, keyspace = redis_server.cli("DEBUG", "DIGEST"), redis_server.keyspace()
    adapter = make_adapter(redis_server, tmp_path)
    handle = adapter.dump("all")
    assert handle.extension == ".rdb"
    data, result = dump_all(handle)
    assert (result.name, result.exit_code) == ("redis-cli", 0)
    assert data.startswith(b"REDIS") and data[-9] == 0xFF  # plain RDB: no end mark after the checksum
    # Diskless, redis-cli wrote the 40-byte end mark after the RDB and the handle dropped it.
    assert handle._inner._size - len(data) == (40 if diskless == "yes" else 0)

    redis_server.cli("FLUSHALL")
    redis_server.cli("SET", "junk", "not in the backup")
    pid_before = redis_server.pid()
    with pytest.raises(RestoreRefused, match="holds 1 keys"):
        adapter.restore(io.BytesIO(data), RestoreTarget(None))
    assert redis_server.cli("GET", "junk") == "not in the backup"

    adapter.restore(io.BytesIO(data), RestoreTarget(None, force=True))
    assert redis_server.pid() != pid_before, "Redis was not restarted"
    assert redis_server.cli("DEBUG", "DIGEST") == digest
    assert redis_server.keyspace() == keyspace
    assert redis_server.cli("GET", "greeting") == "Grüße, 世界 🚀"
    assert redis_server.cli("-n", "3", "GET", "other-db") == "kept in db 3"
    assert 0 < int(redis_server.cli("TTL", "session")) <= 3600
    assert redis_server.cli("EXISTS", "junk") == "0"
    kept = [p.name for p in redis_server.data_dir.iterdir()]
    assert "dump.rdb" in kept and not [n for n in kept if n.startswith(".restore-")]
    redis_server.cli("CONFIG", "SET", "repl-diskless-sync", "yes")


@pytest.mark.timeout(60)
def test_restore_without_a_way_to_restart_leaves_the_file_and_explains(redis_server, tmp_path):
    load_sample(redis_server)
    data, _ = dump_all(make_adapter(redis_server, tmp_path).dump("all"))
    redis_server.cli("SET", "still", "here")
    adapter = make_adapter(redis_server, tmp_path, start_command=None)
    with pytest.raises(RestoreRefused, match="stop Redis, move") as caught:
        adapter.restore(io.BytesIO(data), RestoreTarget(None, force=True))
    restored = redis_server.data_dir / "dump.rdb.restored"
    assert str(restored) in str(caught.value)
    assert restored.read_bytes() == data
    assert redis_server.cli("GET", "still") == "here", "the running server was touched"
    restored.unlink()


@pytest.mark.timeout(60)
def test_restore_refusals_and_bad_input(redis_server, tmp_path):
    load_sample(redis_server)
    adapter = make_adapter(redis_server, tmp_path)
    data, _ = dump_all(adapter.dump("all"))
    with pytest.raises(RestoreRefused, match="whole server"):
        adapter.restore(io.BytesIO(data), RestoreTarget("0", force=True))
    with pytest.raises(RestoreRefused, match="data_dir"):
        make_adapter(redis_server, tmp_path, data_dir=None).restore(
            io.BytesIO(data), RestoreTarget(None, force=True)
        )
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(RestoreRefused, match="not data_dir"):
        make_adapter(redis_server, tmp_path, data_dir=str(other)).restore(
            io.BytesIO(data), RestoreTarget(None, force=True)
        )
    redis_server.cli("CONFIG", "SET", "appendonly", "yes")
    try:
        with pytest.raises(RestoreRefused, match="appendonly"):
            adapter.restore(io.BytesIO(data), RestoreTarget(None, force=True))
    finally:
        redis_server.cli("CONFIG", "SET", "appendonly", "no")
    pid = redis_server.pid()
    with pytest.raises(RestoreFailed, match="EOF opcode"):
        adapter.restore(io.BytesIO(data[:-5000]), RestoreTarget(None, force=True))
    with pytest.raises(RestoreFailed, match="magic"):
        adapter.restore(io.BytesIO(b"PGDMP" + data[5:]), RestoreTarget(None, force=True))
    assert redis_server.pid() == pid, "a bad backup must not stop the server"
    assert not [p for p in redis_server.data_dir.iterdir() if p.name.startswith(".restore-")]


@pytest.mark.timeout(30)
def test_wrong_password_fails_test_and_dump_without_leaking_it(redis_server, tmp_path):
    wrong = "Wrong-Sentinel-9d2b'pw"
    pwfile = tmp_path / "wrong.pw"
    pwfile.write_text(wrong + "\n")
    adapter = make_adapter(redis_server, tmp_path, password_file=str(pwfile))
    with pytest.raises(SourceError, match="authentication failed") as caught:
        adapter.test()
    assert wrong not in str(caught.value)
    handle = adapter.dump("all")
    drain(handle)
    with pytest.raises(DumpFailed, match=r"AUTH failed|WRONGPASS") as caught:
        handle.finish()
    assert wrong not in str(caught.value)


@pytest.mark.timeout(120)
def test_server_killed_mid_dump_fails_the_dump(redis_server, tmp_path):
    redis_server.cli("FLUSHALL")
    rng = random.Random(7)
    redis_server.pipe(b"".join(resp("SET", f"big:{i}", rng.randbytes(10_000)) for i in range(4000)))
    handle = make_adapter(redis_server, tmp_path).dump("all")
    got = 0
    try:
        while got < 1024 * 1024:
            chunk = handle.read()
            assert chunk, "dump ended before the server was killed"
            got += len(chunk)
        redis_server.kill()
        got += len(drain(handle))
        assert got < 30 * 1024 * 1024
        with pytest.raises(DumpFailed, match=r"redis-cli|RDB"):
            handle.finish()
    finally:
        redis_server.dump_file.unlink(missing_ok=True)
        redis_server.start()


@pytest.mark.timeout(30)
def test_redis_cli_exiting_0_with_empty_or_cut_output_fails(redis_server, tmp_path, monkeypatch):
    fake_dir = tmp_path / "fakebin"
    fake_tool(fake_dir, "redis-cli", 'case "$1" in --version) echo "redis-cli 7.0.99";; esac\nexit 0')
    monkeypatch.setenv("PATH", f"{fake_dir}:{os.environ['PATH']}")
    adapter = make_adapter(redis_server, tmp_path)
    handle = adapter.dump("all")
    assert drain(handle) == b""
    with pytest.raises(DumpFailed, match="wrote nothing"):
        handle.finish()
    fake_tool(fake_dir, "redis-cli", "printf 'REDIS0010\\372\\011redis-ver\\0067.0.15'")
    handle = adapter.dump("all")
    drain(handle)
    with pytest.raises(DumpFailed, match="EOF opcode"):
        handle.finish()


def test_end_mark_is_recognised_only_after_the_eof_opcode():
    crc = bytes(range(1, 9))
    mark = b"0123456789abcdef0123456789abcdef01234567"
    assert rdb_end(b"REDIS..." + b"\xff" + crc) == (0, None)
    assert rdb_end(b"REDIS..." + b"\xff" + crc + mark) == (40, None)
    assert rdb_end(b"REDIS..." + b"\xfe" + crc + mark)[1] is not None
    assert rdb_end(b"REDIS..." + b"\xff" + crc + mark[:-1] + b"Z")[1] is not None


def test_rdb_handle_strips_the_mark_across_read_boundaries():
    body = b"REDIS0010" + os.urandom(5000) + b"\xff" + os.urandom(8)
    mark = b"f" * 40

    class Inner:
        database = "all"
        extension = ".rdb"

        def __init__(self, data: bytes) -> None:
            self.buf = io.BytesIO(data)

        def read(self, size: int = 7) -> bytes:
            return self.buf.read(7)

    for tail in (b"", mark):
        handle = RdbDump(Inner(body + tail))  # type: ignore[arg-type]
        assert drain(handle) == body


@pytest.mark.timeout(60)
def test_password_never_on_any_argv(redis_server, tmp_path):
    load_sample(redis_server)
    adapter = make_adapter(redis_server, tmp_path)
    with ArgvWatch(redis_server.password) as watch:
        adapter.test()
        data, _ = watched_dump(adapter.dump("all"), watch, "redis-cli")
        adapter.restore(io.BytesIO(data), RestoreTarget(None, force=True))
    assert watch.passes > 3
    assert watch.hits == []
    check_watch_detects(redis_server.password)
