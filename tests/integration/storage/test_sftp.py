"""The sftp destination against a real OpenSSH sshd (and a fault proxy in front of it)."""

from __future__ import annotations

import hashlib
import os
import random
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from backupd.adapters import AdapterContext
from backupd.config.model import SftpDestination
from backupd.errors import KeyEscapesRoot, StorageError, VerifyFailed
from backupd.storage.base import get_bytes, put_bytes
from backupd.storage.sftp import SftpStorage
from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.sshd import SshdServer

pytestmark = pytest.mark.timeout(60)
MiB = 1024 * 1024


@pytest.fixture
def make(sshd_server: SshdServer, tmp_path: Path) -> Iterator[Callable[..., SftpStorage]]:
    """A factory of adapters on this test's own directory; keyword arguments override the config."""
    path = sshd_server.root / f"t{secrets.token_hex(4)}" / "backups"
    made: list[SftpStorage] = []

    def factory(**over: Any) -> SftpStorage:
        fields: dict[str, Any] = {
            "host": sshd_server.host,
            "port": sshd_server.port,
            "user": sshd_server.user,
            "key_file": str(sshd_server.key_file),
            "known_hosts": str(sshd_server.known_hosts),
            "path": str(path),
            "timeout": 10.0,
        }
        fields.update(over)
        ctx = AdapterContext(state_dir=tmp_path / "state", work_dir=tmp_path / "work")
        storage = SftpStorage("box", SftpDestination(**fields), ctx)
        made.append(storage)
        return storage

    yield factory
    for storage in made:
        storage.close()


def through(proxy: FaultProxy, sshd: SshdServer) -> dict[str, Any]:
    """Config overrides that reach sshd through the proxy (the host key pinned by fingerprint)."""
    return {"port": proxy.port, "known_hosts": None, "host_key_fingerprint": sshd.fingerprint}


def files_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_round_trip_in_small_and_large_chunks(make: Callable[..., SftpStorage]) -> None:
    storage = make()
    root = Path(storage.root)
    data = os.urandom(9 * MiB + 7)
    writer = storage.open_writer("job/a.pgdump.zst")
    rng, pos = random.Random(4), 0
    while pos < len(data):
        step = rng.choice((1, 100, 4096, 65536, 2 * MiB))
        writer.write(data[pos : pos + step])
        pos += step
    temps = files_under(root)
    assert len(temps) == 1 and ".part-" in temps[0]  # only the temp name exists before commit
    assert list(storage.list()) == [] and storage.stat("job/a.pgdump.zst") is None
    info = writer.commit()
    assert info.size == len(data) and info.modified is not None
    assert files_under(root) == ["job/a.pgdump.zst"]
    assert storage.stat("job/a.pgdump.zst").size == len(data)  # type: ignore[union-attr]
    assert [(o.key, o.size) for o in storage.list("job/a.pg")] == [("job/a.pgdump.zst", len(data))]
    with storage.open_reader("job/a.pgdump.zst") as f:
        assert f.read() == data
    sha = hashlib.sha256(data).hexdigest()
    storage.verify("job/a.pgdump.zst", len(data), sha)
    make(remote_hash=True).verify("job/a.pgdump.zst", len(data), sha)
    storage.delete("job/a.pgdump.zst")
    storage.delete("job/a.pgdump.zst")  # a missing file is not an error
    assert list(storage.list()) == []


def test_small_object_and_temp_names_hidden_from_list(make: Callable[..., SftpStorage]) -> None:
    storage = make()
    put_bytes(storage, "job/x.meta.json", b'{"ok": true}')
    assert get_bytes(storage, "job/x.meta.json") == b'{"ok": true}'
    (Path(storage.root) / "job" / f"y.sql.part-{secrets.token_hex(8)}").write_bytes(b"half")
    assert [o.key for o in storage.list()] == ["job/x.meta.json"]
    assert len(list(storage.list("job/", include_temp=True))) == 2
    assert [o.key for o in storage.list("nothing/")] == []


def test_abort_leaves_nothing(make: Callable[..., SftpStorage]) -> None:
    storage = make()
    writer = storage.open_writer("job/aborted")
    writer.write(os.urandom(3 * MiB))
    writer.abort()
    writer.abort()  # idempotent
    assert files_under(Path(storage.root)) == []
    with pytest.raises(StorageError):
        writer.write(b"more")


def test_abort_stale_uploads_of_a_crashed_writer(make: Callable[..., SftpStorage]) -> None:
    crashed = make()
    writer = crashed.open_writer("job/crashed")
    writer.write(os.urandom(1 * MiB))
    crashed.close()  # the process died: nobody removes the temp file
    restarted = make()
    assert restarted.abort_stale_uploads(older_than=timedelta(hours=1)) == 0
    live = restarted.open_writer("job/live")  # this adapter's own open writer is not stale
    assert restarted.abort_stale_uploads() == 1
    assert files_under(Path(restarted.root)) == [Path(live.temp_path).relative_to(restarted.root).as_posix()]
    live.abort()


def test_connection_dropped_mid_upload(
    make: Callable[..., SftpStorage], sshd_server: SshdServer, fault_proxy: Callable[..., FaultProxy]
) -> None:
    proxy = fault_proxy(sshd_server.port)
    storage = make(**through(proxy, sshd_server))
    writer = storage.open_writer("job/dropped")
    writer.write(os.urandom(1 * MiB))
    proxy.drop(after=512 * 1024)
    with pytest.raises(StorageError, match="box"):
        for _ in range(16):
            writer.write(os.urandom(1 * MiB))
        writer.commit()
    proxy.pass_through()
    writer.abort()  # reconnects to remove the temp file
    assert files_under(Path(storage.root)) == []
    assert storage.stat("job/dropped") is None  # the adapter works again on a new connection


def test_stalled_server_fails_within_the_timeout(
    make: Callable[..., SftpStorage], sshd_server: SshdServer, fault_proxy: Callable[..., FaultProxy]
) -> None:
    proxy = fault_proxy(sshd_server.port)
    storage = make(**through(proxy, sshd_server), timeout=2.0)
    writer = storage.open_writer("job/stalled")
    writer.write(os.urandom(64 * 1024))
    proxy.stall()
    start = time.monotonic()
    with pytest.raises(StorageError, match="did not answer within 2s"):
        for _ in range(64):
            writer.write(os.urandom(1 * MiB))
        writer.commit()
    elapsed = time.monotonic() - start
    assert elapsed < 2.0 + 1.5, elapsed
    proxy.pass_through()
    writer.abort()
    assert storage.stat("job/stalled") is None


def test_stalled_read_fails_within_the_timeout(
    make: Callable[..., SftpStorage], sshd_server: SshdServer, fault_proxy: Callable[..., FaultProxy]
) -> None:
    proxy = fault_proxy(sshd_server.port)
    storage = make(**through(proxy, sshd_server), timeout=2.0)
    put_bytes(storage, "job/r", os.urandom(20 * MiB))
    reader = storage.open_reader("job/r")
    reader.read(1 * MiB)
    proxy.stall()
    start = time.monotonic()
    with pytest.raises(StorageError, match="did not answer within 2s"):
        reader.read()
    assert time.monotonic() - start < 2.0 + 1.5
    reader.close()


def test_reconnects_after_the_connection_was_reset(
    make: Callable[..., SftpStorage], sshd_server: SshdServer, fault_proxy: Callable[..., FaultProxy]
) -> None:
    proxy = fault_proxy(sshd_server.port)
    storage = make(**through(proxy, sshd_server))
    put_bytes(storage, "job/one", b"1")
    proxy.reset()  # the next byte on the open connection kills it with an RST
    time.sleep(0.2)
    proxy.pass_through()
    assert storage.stat("job/one").size == 1  # type: ignore[union-attr]
    assert proxy.accepted == 2


def test_list_while_a_writer_is_busy(make: Callable[..., SftpStorage]) -> None:
    storage = make()
    put_bytes(storage, "job/old", b"old")
    writer = storage.open_writer("job/new")
    stop = threading.Event()

    def keep_writing() -> None:
        while not stop.is_set():
            writer.write(b"x" * 65536)

    thread = threading.Thread(target=keep_writing)
    thread.start()
    try:
        for _ in range(20):
            assert [o.key for o in storage.list("job/")] == ["job/old"]
    finally:
        stop.set()
        thread.join()
    writer.commit()
    assert sorted(o.key for o in storage.list("job/")) == ["job/new", "job/old"]


def test_unknown_host_key_is_refused(
    make: Callable[..., SftpStorage], tmp_path: Path, sshd_server: SshdServer
) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(StorageError, match="unknown host key") as caught:
        make(known_hosts=str(empty)).test()
    assert sshd_server.fingerprint in str(caught.value) and "refusing" in str(caught.value)
    assert empty.read_text() == ""  # never added


def test_changed_host_key_is_refused(
    make: Callable[..., SftpStorage], tmp_path: Path, sshd_server: SshdServer
) -> None:
    other = tmp_path / "other"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = tmp_path / "known_hosts"
    kind, blob = (tmp_path / "other.pub").read_text().split()[:2]
    known.write_text(f"[{sshd_server.host}]:{sshd_server.port} {kind} {blob}\n")
    with pytest.raises(StorageError, match="HOST KEY MISMATCH") as caught:
        make(known_hosts=str(known)).test()
    assert sshd_server.fingerprint in str(caught.value)


def test_host_key_fingerprint(make: Callable[..., SftpStorage], sshd_server: SshdServer) -> None:
    make(known_hosts=None, host_key_fingerprint=sshd_server.fingerprint).test()
    wrong = "SHA256:" + "A" * 43
    with pytest.raises(StorageError, match="not host_key_fingerprint") as caught:
        make(known_hosts=None, host_key_fingerprint=wrong).test()
    assert sshd_server.fingerprint in str(caught.value)


def test_wrong_client_key_is_a_clear_error(make: Callable[..., SftpStorage], tmp_path: Path) -> None:
    stranger = tmp_path / "stranger"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(stranger)], check=True)
    with pytest.raises(StorageError, match="refused login as") as caught:
        make(key_file=str(stranger)).test()
    assert "box" in str(caught.value)
    password = tmp_path / "password"
    password.write_text("hunter2-" + secrets.token_hex(4))
    with pytest.raises(StorageError, match="with password_file") as caught:
        make(key_file=None, password_file=str(password)).test()  # sshd allows keys only
    assert password.read_text() not in str(caught.value)


def test_test_leaves_nothing_and_describe(make: Callable[..., SftpStorage], sshd_server: SshdServer) -> None:
    storage = make()
    storage.test()
    assert files_under(Path(storage.root)) == []
    assert storage.describe() == f"sftp://{sshd_server.user}@127.0.0.1:{sshd_server.port}{storage.root}"


def test_keys_escaping_the_root_are_refused(make: Callable[..., SftpStorage]) -> None:
    storage = make()
    for bad in ("../x", "/etc/passwd", "a/../../b", "a//b"):
        with pytest.raises(KeyEscapesRoot):
            storage.open_writer(bad)
        with pytest.raises(KeyEscapesRoot):
            storage.stat(bad)
    with pytest.raises(StorageError):
        list(storage.list("../"))


@pytest.mark.parametrize("remote_hash", [False, True], ids=["readback", "sha256sum"])
def test_verify_detects_a_file_changed_behind_its_back(
    make: Callable[..., SftpStorage], remote_hash: bool
) -> None:
    storage = make(remote_hash=remote_hash)
    data = os.urandom(2 * MiB)
    put_bytes(storage, "job/victim", data)
    sha = hashlib.sha256(data).hexdigest()
    storage.verify("job/victim", len(data), sha)
    path = Path(storage.root) / "job" / "victim"
    evil = bytearray(data)
    evil[12345] ^= 0x01
    path.write_bytes(evil)
    with pytest.raises(VerifyFailed, match="sha256"):
        storage.verify("job/victim", len(data), sha)
    path.write_bytes(data[:-1])
    with pytest.raises(VerifyFailed, match="size"):
        storage.verify("job/victim", len(data), sha)
    path.unlink()
    with pytest.raises(VerifyFailed, match="missing"):
        storage.verify("job/victim", len(data), sha)
