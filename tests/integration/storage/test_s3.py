"""The s3 destination against a real SeaweedFS S3 gateway (and a fault proxy in front of it)."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import secrets
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from backupd.adapters import AdapterContext
from backupd.config.model import S3Destination
from backupd.errors import KeyEscapesRoot, SecretError, StorageError, VerifyFailed
from backupd.storage import s3 as s3_module
from backupd.storage.base import get_bytes, put_bytes
from backupd.storage.parts import MiB
from backupd.storage.s3 import S3Storage, parse_credential
from backupd.storage.s3_writer import TAG_PARTS, composite_checksum
from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.seaweedfs import SeaweedS3

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def bucket(seaweedfs_s3: SeaweedS3) -> str:
    return seaweedfs_s3.make_bucket()


@pytest.fixture
def make(seaweedfs_s3: SeaweedS3, bucket: str, tmp_path: Path) -> Callable[..., S3Storage]:
    """A factory of adapters on this test's own prefix; keyword arguments override the config."""
    key_file, secret_file = seaweedfs_s3.write_key_files(tmp_path / "secrets")
    prefix = f"t{secrets.token_hex(4)}/"
    made: list[S3Storage] = []

    def factory(growth: int | None = None, **over: Any) -> S3Storage:
        fields: dict[str, Any] = {
            "bucket": bucket,
            "prefix": prefix,
            "endpoint_url": seaweedfs_s3.endpoint,
            "access_key_id_file": str(key_file),
            "secret_access_key_file": str(secret_file),
            "part_size": 5 * MiB,
            "timeout": 10.0,
            "max_attempts": 2,
        }
        fields.update(over)
        ctx = AdapterContext(state_dir=tmp_path / "state", work_dir=tmp_path / "work")
        storage = S3Storage("offsite", S3Destination(**fields), ctx, part_growth_every=growth)
        made.append(storage)
        return storage

    yield factory  # type: ignore[misc]
    for storage in made:
        storage.close()


def uploads(server: SeaweedS3, bucket: str, prefix: str) -> list[dict[str, Any]]:
    return server.client().list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", [])


def write_chunks(writer: Any, data: bytes, rng: random.Random, largest: int) -> None:
    pos = 0
    while pos < len(data):
        step = rng.randint(1, largest)
        writer.write(data[pos : pos + step])
        pos += step


def no_readback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make reading back fail, so that a passing verify must have used the store's checksum."""

    def refuse(*args: object) -> None:
        raise AssertionError("verify read the object back")

    monkeypatch.setattr(s3_module, "readback_verify", refuse)


def test_small_stream_round_trip_in_many_chunks(
    make: Callable[..., S3Storage], seaweedfs_s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = make()
    data = os.urandom(300_000)
    writer = storage.open_writer("job/a.sql.zst")
    write_chunks(writer, data, random.Random(1), 4096)
    assert storage.stat("job/a.sql.zst") is None  # invisible until commit
    info = writer.commit()
    assert info.size == len(data)
    assert storage.stat("job/a.sql.zst").size == len(data)  # type: ignore[union-attr]
    assert [(o.key, o.size) for o in storage.list("job/")] == [("job/a.sql.zst", len(data))]
    assert get_bytes(storage, "job/a.sql.zst") == data
    sha = hashlib.sha256(data).hexdigest()
    make(verify="readback").verify("job/a.sql.zst", len(data), sha)
    with monkeypatch.context() as m:
        no_readback(m)
        make(verify="size").verify("job/a.sql.zst", len(data), sha)
        make(verify="checksum").verify(
            "job/a.sql.zst", len(data), sha
        )  # single part: the object's own SHA-256
    storage.delete("job/a.sql.zst")
    storage.delete("job/a.sql.zst")  # a missing object is not an error
    assert storage.stat("job/a.sql.zst") is None
    assert list(storage.list()) == []


def test_multipart_round_trip_and_every_verify_mode(
    make: Callable[..., S3Storage], seaweedfs_s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = make(upload_concurrency=3)
    data = os.urandom(17 * MiB + 12345)
    writer = storage.open_writer("job/big.bkd")
    write_chunks(writer, data, random.Random(2), 3 * MiB)
    writer.commit()
    head = seaweedfs_s3.client().head_object(Bucket=storage.bucket, Key=storage.full_key("job/big.bkd"))
    assert head["ETag"].strip('"').endswith("-4")  # 5+5+5+2.x MiB: really a multipart object
    with storage.open_reader("job/big.bkd") as f:
        assert f.read() == data
    sha = hashlib.sha256(data).hexdigest()
    fresh = make()  # a later process: only the object's tags link it to the whole-object hash
    tags = seaweedfs_s3.client().get_object_tagging(Bucket=fresh.bucket, Key=fresh.full_key("job/big.bkd"))
    assert {t["Key"] for t in tags["TagSet"]} >= {TAG_PARTS}
    with monkeypatch.context() as m:
        no_readback(m)
        storage.verify("job/big.bkd", len(data), sha)  # composite remembered by this adapter
        fresh.verify("job/big.bkd", len(data), sha)
    make(verify="readback").verify("job/big.bkd", len(data), sha)
    make(verify="size").verify("job/big.bkd", len(data), "0" * 64)  # size only: hash not looked at
    with pytest.raises(VerifyFailed):
        fresh.verify("job/big.bkd", len(data), "0" * 64)
    with pytest.raises(VerifyFailed):
        make(verify="size").verify("job/big.bkd", len(data) + 1, sha)


def test_part_size_grows_during_a_real_upload(
    make: Callable[..., S3Storage], seaweedfs_s3: SeaweedS3
) -> None:
    storage = make(growth=2)  # 5, 5, 10, 10, 20 MiB …
    data = os.urandom(40 * MiB)
    writer = storage.open_writer("grow.bin")
    write_chunks(writer, data, random.Random(3), 1 * MiB)
    writer.commit()
    attrs = seaweedfs_s3.client().get_object_attributes(
        Bucket=storage.bucket, Key=storage.full_key("grow.bin"), ObjectAttributes=["ObjectParts"]
    )
    sizes = [p["Size"] // MiB for p in attrs["ObjectParts"]["Parts"]]
    assert sizes == [5, 5, 10, 10, 10]
    storage.verify("grow.bin", len(data), hashlib.sha256(data).hexdigest())


def test_abort_leaves_no_object_and_no_upload(
    make: Callable[..., S3Storage], seaweedfs_s3: SeaweedS3
) -> None:
    storage = make()
    writer = storage.open_writer("job/x")
    writer.write(os.urandom(11 * MiB))  # two parts sent
    assert writer.upload_id is not None
    assert len(uploads(seaweedfs_s3, storage.bucket, storage.prefix)) == 1
    writer.abort()
    writer.abort()  # idempotent
    assert uploads(seaweedfs_s3, storage.bucket, storage.prefix) == []
    assert storage.stat("job/x") is None
    with pytest.raises(StorageError):
        writer.write(b"more")
    small = storage.open_writer("job/y")
    small.write(b"never sent")
    small.abort()
    assert list(storage.list()) == []


def test_abort_stale_uploads_of_a_crashed_writer(
    make: Callable[..., S3Storage], seaweedfs_s3: SeaweedS3
) -> None:
    crashed = make()
    writer = crashed.open_writer("job/crashed")
    writer.write(os.urandom(6 * MiB))  # one part sent, then the "process" dies
    writer._drain()  # let the part finish; nothing aborts it
    restarted = make()
    assert restarted.abort_stale_uploads(older_than=timedelta(hours=1)) == 0
    assert restarted.abort_stale_uploads(match=lambda key: key.startswith("other/")) == 0
    assert restarted.abort_stale_uploads() == 1
    assert uploads(seaweedfs_s3, restarted.bucket, restarted.prefix) == []
    assert restarted.stat("job/crashed") is None


def test_own_open_writer_is_not_stale(make: Callable[..., S3Storage], seaweedfs_s3: SeaweedS3) -> None:
    storage = make()
    writer = storage.open_writer("job/live")
    writer.write(os.urandom(6 * MiB))
    assert storage.abort_stale_uploads() == 0
    writer.commit()
    assert storage.stat("job/live").size == 6 * MiB  # type: ignore[union-attr]


def test_connection_dropped_mid_upload(
    make: Callable[..., S3Storage], seaweedfs_s3: SeaweedS3, fault_proxy: Callable[..., FaultProxy]
) -> None:
    proxy = fault_proxy(seaweedfs_s3.port)
    storage = make(endpoint_url=f"http://127.0.0.1:{proxy.port}", max_attempts=2)
    writer = storage.open_writer("job/dropped")
    writer.write(os.urandom(6 * MiB))  # the upload exists and its first part is on its way
    proxy.drop(after=256 * 1024)  # every connection, old and new, dies after 256 KiB
    with pytest.raises(StorageError) as caught:
        writer.write(os.urandom(6 * MiB))
        writer.commit()
    assert "offsite" in str(caught.value)
    assert proxy.accepted >= 2  # botocore retried on a new connection before giving up
    proxy.pass_through()
    writer.abort()  # the abort inside commit could not reach the store; this one can
    assert uploads(seaweedfs_s3, storage.bucket, storage.prefix) == []
    assert storage.stat("job/dropped") is None


def test_stalled_server_fails_within_the_timeout(
    make: Callable[..., S3Storage], seaweedfs_s3: SeaweedS3, fault_proxy: Callable[..., FaultProxy]
) -> None:
    proxy = fault_proxy(seaweedfs_s3.port)
    storage = make(endpoint_url=f"http://127.0.0.1:{proxy.port}", timeout=2.0, max_attempts=1)
    storage.test()
    proxy.stall(after=64 * 1024)
    start = time.monotonic()
    with pytest.raises(StorageError, match="no answer within 2s"):
        put_bytes(storage, "job/stalled", os.urandom(1 * MiB))
    elapsed = time.monotonic() - start
    assert elapsed < 2.0 + 1.5, elapsed  # one attempt of at most `timeout`, plus a margin
    proxy.pass_through()
    assert storage.stat("job/stalled") is None


def test_stalled_read_fails_within_the_timeout(
    make: Callable[..., S3Storage], seaweedfs_s3: SeaweedS3, fault_proxy: Callable[..., FaultProxy]
) -> None:
    proxy = fault_proxy(seaweedfs_s3.port)
    storage = make(endpoint_url=f"http://127.0.0.1:{proxy.port}", timeout=2.0, max_attempts=1)
    _write_big(storage, "job/r", os.urandom(32 * MiB))
    reader = storage.open_reader("job/r")
    reader.read(1 * MiB)
    proxy.stall()
    start = time.monotonic()
    with pytest.raises(StorageError, match="no answer within 2s"):
        reader.read()
    assert time.monotonic() - start < 2.0 + 1.5
    reader.close()


def test_refused_connection_is_a_clear_error(
    make: Callable[..., S3Storage], fault_proxy: Callable[..., FaultProxy]
) -> None:
    proxy = fault_proxy(1)  # the target does not matter: every connection is refused
    proxy.refuse()
    storage = make(endpoint_url=f"http://127.0.0.1:{proxy.port}", max_attempts=1)
    with pytest.raises(StorageError, match="offsite"):
        storage.test()


def test_wrong_secret_is_a_clear_error(
    make: Callable[..., S3Storage], tmp_path: Path, seaweedfs_s3: SeaweedS3
) -> None:
    wrong = tmp_path / "wrong-secret"
    wrong.write_text("not-the-secret-" + secrets.token_hex(8))
    storage = make(secret_access_key_file=str(wrong), max_attempts=1)
    with pytest.raises(StorageError) as caught:
        storage.test()
    message = str(caught.value)
    assert "offsite" in message and "access denied" in message
    assert wrong.read_text() not in message and seaweedfs_s3.secret_key not in message
    assert wrong.read_text() not in storage.describe()


def test_systemd_credential_and_its_format(
    make: Callable[..., S3Storage], tmp_path: Path, seaweedfs_s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "offsite-s3").write_text(
        f"# keys for offsite\nAWS_ACCESS_KEY_ID={seaweedfs_s3.access_key}\n"
        f"aws_secret_access_key = {seaweedfs_s3.secret_key}\n"
    )
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    make(access_key_id_file=None, secret_access_key_file=None, credential="offsite-s3").test()
    with pytest.raises(SecretError, match="line 1") as caught:
        parse_credential("aws_secret_key=hunter2\n")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(SecretError, match="missing aws_secret_access_key"):
        parse_credential("aws_access_key_id=AKIA\n")
    with pytest.raises(StorageError, match="not both"):
        make(credential="offsite-s3").test()


def test_test_leaves_nothing_and_describe(make: Callable[..., S3Storage], seaweedfs_s3: SeaweedS3) -> None:
    storage = make()
    storage.test()
    listed = seaweedfs_s3.client().list_objects_v2(Bucket=storage.bucket, Prefix=storage.prefix)
    assert listed.get("KeyCount", 0) == 0
    assert storage.describe() == f"s3://{storage.bucket}/{storage.prefix} ({seaweedfs_s3.endpoint})"


def test_keys_escaping_the_prefix_are_refused(make: Callable[..., S3Storage]) -> None:
    storage = make()
    for bad in ("../x", "/abs", "a/../b", "a//b", ""):
        with pytest.raises(KeyEscapesRoot):
            storage.open_writer(bad)
        with pytest.raises(KeyEscapesRoot):
            storage.stat(bad)
    with pytest.raises(KeyEscapesRoot):
        storage.delete("a/./b")


@pytest.mark.parametrize("size", [200_000, 12 * MiB], ids=["single", "multipart"])
def test_verify_detects_an_object_replaced_behind_its_back(
    make: Callable[..., S3Storage], seaweedfs_s3: SeaweedS3, size: int
) -> None:
    storage = make()
    data = os.urandom(size)
    put_bytes(storage, "job/victim", data) if size < 5 * MiB else _write_big(storage, "job/victim", data)
    sha = hashlib.sha256(data).hexdigest()
    storage.verify("job/victim", size, sha)
    raw = seaweedfs_s3.client()
    key = storage.full_key("job/victim")
    evil = bytearray(data)
    evil[size // 2] ^= 0xFF
    raw.put_object(Bucket=storage.bucket, Key=key, Body=bytes(evil))  # no SHA-256 stored: read back
    for mode in ("checksum", "readback"):
        with pytest.raises(VerifyFailed):
            make(verify=mode).verify("job/victim", size, sha)
    with pytest.raises(VerifyFailed):
        storage.verify("job/victim", size, sha)  # this adapter's memory of the upload does not help
    digest = base64.b64encode(hashlib.sha256(evil).digest()).decode()
    raw.put_object(Bucket=storage.bucket, Key=key, Body=bytes(evil), ChecksumSHA256=digest)
    with pytest.raises(VerifyFailed, match="store checksum"):
        storage.verify("job/victim", size, sha)  # caught from the checksum alone
    raw.put_object(Bucket=storage.bucket, Key=key, Body=bytes(evil[:-1]))
    with pytest.raises(VerifyFailed, match="size"):
        make(verify="size").verify("job/victim", size, sha)


def _write_big(storage: S3Storage, key: str, data: bytes) -> None:
    writer = storage.open_writer(key)
    writer.write(data)
    writer.commit()


def test_composite_checksum_matches_the_store(
    make: Callable[..., S3Storage], seaweedfs_s3: SeaweedS3
) -> None:
    storage = make()
    data = os.urandom(11 * MiB)
    _write_big(storage, "c.bin", data)
    parts = [data[: 5 * MiB], data[5 * MiB : 10 * MiB], data[10 * MiB :]]
    head = seaweedfs_s3.client().head_object(
        Bucket=storage.bucket, Key=storage.full_key("c.bin"), ChecksumMode="ENABLED"
    )
    assert head["ChecksumSHA256"] == composite_checksum([hashlib.sha256(p).digest() for p in parts])
