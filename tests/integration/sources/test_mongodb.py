"""MongoAdapter against STAND-IN mongodump/mongorestore tools -- NOT a real MongoDB.

Debian 12 packages neither a MongoDB server nor the MongoDB Database Tools, and nothing can
be downloaded on the machines this project runs on, so these tests put the executable
stand-ins from ``standins/`` first on $PATH. They imitate what backupd relies on (option
spelling, the ``--config`` YAML file, the archive format with its prelude, exit statuses and
``Failed:`` messages, namespace renaming, --drop, --stopOnError) over a JSON "server", and
additionally assert what a careful tool would: no password on any argv and a 0600 config
file. They show that the adapter drives the tools correctly; they cannot show that a real
mongod accepts the result. Every test name says ``standin``, and the module emits a warning
that appears in pytest's summary. See ``standins/_standin.py``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from backupd.config.model import MongoSource
from backupd.errors import DumpFailed, RestoreFailed, RestoreRefused, SourceError
from backupd.sources.base import RestoreTarget
from backupd.sources.mongodb import MAGIC, MongoAdapter, Prelude, bson_strings, read_prelude

from .helpers import (
    ArgvWatch,
    FailingStream,
    check_watch_detects,
    drain,
    dump_all,
    make_ctx,
    watched_dump,
)

STANDINS = Path(__file__).parent / "standins"
BLOB = base64.b64encode(bytes(range(256))).decode()


class StandinWarning(UserWarning):
    """Raised once per run so the summary says MongoDB was tested against stand-ins."""


@dataclass
class MongoStandin:
    state_file: Path
    log_file: Path
    password: str
    password_file: Path

    def databases(self) -> dict:
        return json.loads(self.state_file.read_text())["databases"]

    def put(self, databases: dict) -> None:
        state = json.loads(self.state_file.read_text())
        state["databases"] = databases
        self.state_file.write_text(json.dumps(state))

    def calls(self, tool: str) -> list[dict]:
        if not self.log_file.exists():
            return []
        lines = [json.loads(ln) for ln in self.log_file.read_text().splitlines()]
        return [c for c in lines if c["tool"] == tool]


def sample() -> dict:
    return {
        "shop": {
            "customers": [
                {"_id": i, "name": name, "tags": ["a", "b"], "address": {"city": city}}
                for i, (name, city) in enumerate(
                    [("Zoë Ångström", "Malmö"), ("Иван", "Москва"), ("李小龙", "香港"), ("Ahmed 🚀", "Cairo")]
                )
            ],
            "orders": [
                {"_id": i, "customer": i % 4, "total": i * 1.25, "big": 2**40 + i} for i in range(300)
            ],
            "blobs": [
                {"_id": i, "data": {"$binary": BLOB}, "flag": i % 2 == 0, "none": None} for i in range(20)
            ],
            "empty": [],
        },
        "admin": {"system.version": [{"_id": "authSchema", "currentVersion": 5}]},
        "local": {"startup_log": [{"_id": "x"}]},
    }


@pytest.fixture(scope="module", autouse=True)
def announce_standin():
    warnings.warn(
        StandinWarning("MongoDB adapter tested against STAND-IN mongodump/mongorestore, not a real MongoDB"),
        stacklevel=1,
    )


@pytest.fixture
def mongo(tmp_path, monkeypatch) -> MongoStandin:
    password = f"Mg-{os.getpid()}-sentinel\"q'\\ #x"
    pwfile = tmp_path / "mongo.pw"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o600)
    stand = MongoStandin(tmp_path / "server.json", tmp_path / "calls.jsonl", password, pwfile)
    stand.state_file.write_text(json.dumps({"server_version": "7.0.14", "users": {"backup": password}}))
    stand.put(sample())
    monkeypatch.setenv("PATH", f"{STANDINS}:{os.environ['PATH']}")
    monkeypatch.setenv("MONGO_STANDIN_STATE", str(stand.state_file))
    monkeypatch.setenv("MONGO_STANDIN_LOG", str(stand.log_file))
    monkeypatch.delenv("MONGO_STANDIN_FAULT", raising=False)
    return stand


def make_adapter(mongo: MongoStandin, tmp_path: Path, **overrides) -> MongoAdapter:
    fields = dict(
        uri="mongodb://backup@127.0.0.1:27017/?authSource=admin", password_file=str(mongo.password_file)
    )
    fields.update(overrides)
    return MongoAdapter("mongo-test", MongoSource(**fields), make_ctx(tmp_path))


@pytest.mark.timeout(30)
def test_standin_test_reads_server_version_and_lists_user_databases(mongo, tmp_path):
    adapter = make_adapter(mongo, tmp_path)
    assert adapter.test().version == "7.0.14"
    assert adapter.list_databases() == ["shop"]
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.timeout(30)
def test_standin_round_trip_under_new_name(mongo, tmp_path):
    adapter = make_adapter(mongo, tmp_path)
    handle = adapter.dump("shop")
    assert handle.extension == ".archive"
    data, result = dump_all(handle)
    assert data.startswith(MAGIC) and data.endswith(b"\xff\xff\xff\xff")
    assert (result.name, result.version) == ("mongodump", "100.9.4")
    assert sorted(handle.prelude.namespaces) == [
        ("shop", c) for c in ("blobs", "customers", "empty", "orders")
    ]

    adapter.restore(io.BytesIO(data), RestoreTarget("shop_copy", original_database="shop"))
    dbs = mongo.databases()
    assert dbs["shop_copy"] == dbs["shop"]
    restore_argv = mongo.calls("mongorestore")[-1]["argv"]
    assert "--nsFrom=shop.*" in restore_argv and "--nsTo=shop_copy.*" in restore_argv
    assert "--drop" not in restore_argv and "--stopOnError" in restore_argv
    assert all(
        c["config_keys"] == ["password", "uri"]
        for c in mongo.calls("mongodump") + mongo.calls("mongorestore")
    )
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.timeout(30)
def test_standin_restore_refuses_non_empty_target_and_force_drops(mongo, tmp_path):
    adapter = make_adapter(mongo, tmp_path)
    data, _ = dump_all(adapter.dump("shop"))
    dbs = mongo.databases()
    dbs["shop_target"] = {"orders": [{"_id": 0, "stale": True}], "other": [{"_id": 1}]}
    mongo.put(dbs)
    with pytest.raises(RestoreRefused, match="has 2 collections"):
        adapter.restore(io.BytesIO(data), RestoreTarget("shop_target", original_database="shop"))
    assert mongo.databases()["shop_target"]["orders"] == [{"_id": 0, "stale": True}]

    adapter.restore(io.BytesIO(data), RestoreTarget("shop_target", force=True, original_database="shop"))
    after = mongo.databases()
    assert after["shop_target"]["orders"] == after["shop"]["orders"]
    assert after["shop_target"]["other"] == [{"_id": 1}]  # --drop replaces only what the archive holds
    assert "--drop" in mongo.calls("mongorestore")[-1]["argv"]

    # Into its own name (no rename) with force.
    adapter.restore(io.BytesIO(data), RestoreTarget(None, force=True))
    assert "--nsFrom=shop.*" not in mongo.calls("mongorestore")[-1]["argv"]


@pytest.mark.timeout(30)
def test_standin_failed_or_cut_restores_fail(mongo, tmp_path):
    adapter = make_adapter(mongo, tmp_path)
    data, _ = dump_all(adapter.dump("shop"))
    with pytest.raises(RestoreFailed, match="unexpected EOF"):
        adapter.restore(io.BytesIO(data[:-300]), RestoreTarget("cut"))
    with pytest.raises(RestoreFailed, match="simulated read failure"):
        adapter.restore(FailingStream(data, len(data) - 300), RestoreTarget("cut2"))
    assert "cut2" not in mongo.databases()  # killed before it could write anything
    restores = len(mongo.calls("mongorestore"))
    with pytest.raises(RestoreFailed, match="not a usable mongodump archive"):
        adapter.restore(io.BytesIO(b"PGDMP" + data), RestoreTarget("junk"))
    assert len(mongo.calls("mongorestore")) == restores  # refused before mongorestore ran


@pytest.mark.timeout(30)
def test_standin_wrong_password_fails_test_and_dump_without_leaking_it(mongo, tmp_path):
    wrong = 'Wrong-Sentinel-1b7c"pw'
    pwfile = tmp_path / "wrong.pw"
    pwfile.write_text(wrong + "\n")
    adapter = make_adapter(mongo, tmp_path, password_file=str(pwfile))
    with pytest.raises(SourceError, match="Authentication failed") as caught:
        adapter.test()
    assert wrong not in str(caught.value)
    handle = adapter.dump("shop")
    drain(handle)
    with pytest.raises(DumpFailed, match="Authentication failed") as caught:
        handle.finish()
    assert wrong not in str(caught.value)
    assert list((tmp_path / "work").iterdir()) == []


@pytest.mark.timeout(30)
def test_standin_missing_database_fails_the_dump(mongo, tmp_path):
    handle = make_adapter(mongo, tmp_path).dump("no_such_db")
    data = drain(handle)
    assert data.startswith(MAGIC)  # mongodump itself is content with an empty archive
    with pytest.raises(DumpFailed, match="no collection"):
        handle.finish()


@pytest.mark.timeout(30)
def test_standin_connection_lost_mid_dump_fails(mongo, tmp_path, monkeypatch):
    monkeypatch.setenv("MONGO_STANDIN_FAULT", "disconnect")
    handle = make_adapter(mongo, tmp_path).dump("shop")
    assert drain(handle)
    with pytest.raises(DumpFailed, match="incomplete read of message header"):
        handle.finish()


@pytest.mark.timeout(30)
def test_standin_mongodump_exiting_0_without_output_fails(mongo, tmp_path, monkeypatch):
    monkeypatch.setenv("MONGO_STANDIN_FAULT", "empty")
    handle = make_adapter(mongo, tmp_path).dump("shop")
    assert drain(handle) == b""
    with pytest.raises(DumpFailed, match="wrote nothing"):
        handle.finish()


@pytest.mark.timeout(60)
def test_standin_password_never_on_any_argv(mongo, tmp_path, monkeypatch):
    monkeypatch.setenv("MONGO_STANDIN_DELAY", "0.002")  # keeps mongodump alive for the watcher
    adapter = make_adapter(mongo, tmp_path)
    with ArgvWatch(mongo.password) as watch:
        adapter.test()
        data, _ = watched_dump(adapter.dump("shop"), watch, "mongodump")
        adapter.restore(io.BytesIO(data), RestoreTarget("shop_watch"))
    assert watch.passes > 3
    assert watch.hits == []
    check_watch_detects(mongo.password)


def test_standin_checks_would_catch_a_careless_adapter(mongo, tmp_path):
    """The stand-in's own checks fail a call with the password on argv or a readable
    config file, so the tests above could fail."""
    conf = tmp_path / "loose.yaml"
    conf.write_text(f"uri: mongodb://backup@127.0.0.1:27017\npassword: {json.dumps(mongo.password)}\n")
    conf.chmod(0o644)
    tool = str(STANDINS / "mongodump")
    loose = subprocess.run(
        [sys.executable, tool, f"--config={conf}", "--archive"], capture_output=True, check=False
    )
    assert loose.returncode == 3 and b"mode" in loose.stderr
    on_argv = subprocess.run(
        [sys.executable, tool, "--archive", f"--password={mongo.password}"], capture_output=True, check=False
    )
    assert on_argv.returncode == 3 and b"password" in on_argv.stderr


def test_prelude_parser():
    doc = b"".join(
        [
            b"\x02name\x00\x06\x00\x00\x00hello\x00",
            b"\x10n\x00\x07\x00\x00\x00",
            b"\x03sub\x00\x05\x00\x00\x00\x00",
            b"\x05bin\x00\x02\x00\x00\x00\x00\xab\xcd",
        ]
    )
    doc = len(doc + b"xxxx\x00").to_bytes(4, "little") + doc + b"\x00"
    assert bson_strings(doc) == {"name": "hello"}
    header = b"\x02server_version\x00\x06\x00\x00\x007.0.1\x00"
    header = len(header + b"xxxx\x00").to_bytes(4, "little") + header + b"\x00"
    archive = MAGIC + header + b"\xff\xff\xff\xff"
    assert read_prelude(io.BytesIO(archive).read) == Prelude("7.0.1", "", [], archive)
    with pytest.raises(ValueError, match="ends inside"):
        read_prelude(io.BytesIO(archive[:-2]).read)
    with pytest.raises(ValueError, match="magic"):
        read_prelude(io.BytesIO(b"XXXX" + archive[4:]).read)
