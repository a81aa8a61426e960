"""The real daemon with S3 (SeaweedFS) and SFTP (OpenSSH) destinations: fan-out, restore and
verification from each, a destination failing mid-stream, damage behind the daemon's back,
destination tests and retention on a bucket."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backupd.storage.parts import MiB
from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.seaweedfs import SeaweedS3
from tests.fixtures.sshd import SshdServer
from tests.system.daemon_helpers import REPO, DaemonProc, base_config, row_count, sqlite_job

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], DaemonProc]]:
    """A factory starting the daemon on a config; every daemon started is stopped (and must
    exit 0) at the test's end."""
    started: list[DaemonProc] = []

    def start(cfg: dict[str, Any]) -> DaemonProc:
        d = DaemonProc(tmp_path, cfg).start()
        started.append(d)
        return d

    yield start
    for d in started:
        assert d.stop() == 0, d.log()[-3000:]


@pytest.fixture
def s3_dest(seaweedfs_s3: SeaweedS3, tmp_path: Path) -> Callable[..., dict[str, Any]]:
    """A factory of ``[destinations.X]`` tables for a fresh bucket of this test (one bucket
    per test, a prefix per destination); keyword arguments override fields."""
    key_file, secret_file = seaweedfs_s3.write_key_files(tmp_path / "secrets")
    bucket = seaweedfs_s3.make_bucket()

    def make(**over: Any) -> dict[str, Any]:
        table: dict[str, Any] = {
            "type": "s3",
            "bucket": bucket,
            "prefix": f"p{secrets.token_hex(3)}/",
            "endpoint_url": seaweedfs_s3.endpoint,
            "access_key_id_file": str(key_file),
            "secret_access_key_file": str(secret_file),
            "part_size": 5 * MiB,
            "timeout": 10.0,
            "max_attempts": 2,
        }
        table.update(over)
        return table

    return make


@pytest.fixture
def sftp_dest(sshd_server: SshdServer) -> Callable[..., dict[str, Any]]:
    """A factory of ``[destinations.X]`` tables, each on its own directory under the sshd
    fixture's root; keyword arguments override fields."""

    def make(**over: Any) -> dict[str, Any]:
        table: dict[str, Any] = {
            "type": "sftp",
            "host": sshd_server.host,
            "port": sshd_server.port,
            "user": sshd_server.user,
            "key_file": str(sshd_server.key_file),
            "known_hosts": str(sshd_server.known_hosts),
            "path": str(sshd_server.root / f"d{secrets.token_hex(4)}"),
            "timeout": 10.0,
        }
        table.update(over)
        return table

    return make


def objects(server: SeaweedS3, table: dict[str, Any]) -> list[str]:
    """Given an S3 destination table, return the keys stored under its prefix (prefix cut)."""
    pages = (
        server.client()
        .get_paginator("list_objects_v2")
        .paginate(Bucket=table["bucket"], Prefix=table["prefix"])
    )
    return sorted(o["Key"][len(table["prefix"]) :] for page in pages for o in page.get("Contents", []))


def open_uploads(server: SeaweedS3, table: dict[str, Any]) -> list[dict[str, Any]]:
    """Given an S3 destination table, return the unfinished multipart uploads under its prefix."""
    found = server.client().list_multipart_uploads(Bucket=table["bucket"], Prefix=table["prefix"])
    return list(found.get("Uploads", []))


def files_under(root: Path) -> list[str]:
    """Given a directory, return the relative paths of the files below it, sorted."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def backups(d: DaemonProc, job: str) -> list[dict[str, Any]]:
    """Given a daemon and a job, return ``backupctl backups JOB --json``'s committed backups."""
    res = d.ctl("backups", job, "--json")
    assert res.returncode == 0, res.stderr
    rows: list[dict[str, Any]] = json.loads(res.stdout)["backups"]
    return rows


def last_execution(d: DaemonProc, job: str) -> dict[str, Any]:
    """Given a daemon and a job, return the job's newest execution from ``backupctl history``."""
    res = d.ctl("history", job, "--json")
    assert res.returncode == 0, res.stderr
    rec: dict[str, Any] = json.loads(res.stdout)[0]
    return rec


def generate_key(path: Path) -> None:
    """Given a path, write a new encryption key there with ``backupctl key generate``."""
    path.parent.mkdir(mode=0o700, exist_ok=True)
    res = subprocess.run(
        [sys.executable, "-m", "backupctl", "key", "generate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr


# --- 1. one backup to three destinations, restored from each remote one --------------------
def test_fan_out_to_local_s3_and_sftp_restores_from_each(
    tmp_path: Path, daemon: Callable[..., DaemonProc], seaweedfs_s3: SeaweedS3,
    s3_dest: Callable[..., dict[str, Any]], sftp_dest: Callable[..., dict[str, Any]],
) -> None:  # fmt: skip
    key = tmp_path / "keys" / "main.key"
    generate_key(key)
    cfg = base_config(tmp_path)
    db = sqlite_job(cfg, tmp_path, "app", rows=700, compression="zstd", encryption="main")
    cfg["encryption"] = {"main": {"key_file": str(key)}}
    cfg["destinations"]["offsite"] = s3_dest()
    cfg["destinations"]["box"] = sftp_dest()
    cfg["jobs"]["app"]["destinations"] = ["disk", "offsite", "box"]
    d = daemon(cfg)

    res = d.ctl("run", "app", "--wait")
    assert res.returncode == 0, res.stdout + d.log()[-3000:]
    rows = backups(d, "app")
    assert sorted(r["destination"] for r in rows) == ["box", "disk", "offsite"]
    assert len({r["sha256"] for r in rows}) == 1 and len({r["key"] for r in rows}) == 1
    stored_key = rows[0]["key"]
    assert stored_key.endswith(".sqlite.zst.bkd")
    # what the catalog says is what is stored on each remote destination
    both = [stored_key, stored_key + ".meta.json"]
    assert objects(seaweedfs_s3, cfg["destinations"]["offsite"]) == both
    assert files_under(Path(cfg["destinations"]["box"]["path"])) == both
    assert files_under(tmp_path / "backups") == both

    for dest in ("offsite", "box"):
        target = tmp_path / f"restored-{dest}.db"
        res = d.ctl("restore", "app", "--destination", dest, "--as", str(target))
        assert res.returncode == 0, res.stdout + res.stderr + d.log()[-3000:]
        assert f"from {dest}" in res.stdout
        assert row_count(target) == row_count(db) == 700

    res = d.ctl("verify", "app", "--full")
    assert res.returncode == 0, res.stdout + res.stderr
    for dest in ("disk", "offsite", "box"):
        assert f"{dest}: {stored_key}: ok" in res.stdout


# --- 2. a remote destination failing mid-stream --------------------------------------------
def test_s3_dropping_mid_upload_makes_the_run_partial_and_leaves_nothing(
    tmp_path: Path, daemon: Callable[..., DaemonProc], seaweedfs_s3: SeaweedS3,
    s3_dest: Callable[..., dict[str, Any]], fault_proxy: Callable[..., FaultProxy],
) -> None:  # fmt: skip
    proxy = fault_proxy(seaweedfs_s3.port)
    # Each connection may carry 1 MiB: enough for the destination test and for starting and
    # aborting a multipart upload, never for the first 5 MiB part (the dump is ~7 MiB).
    proxy.drop(after=1 * MiB)
    cfg = base_config(tmp_path)
    sqlite_job(cfg, tmp_path, "big", rows=300, blob_kib=24, compression="none")
    offsite = cfg["destinations"]["offsite"] = s3_dest(endpoint_url=f"http://127.0.0.1:{proxy.port}")
    nobucket = cfg["destinations"]["nobucket"] = s3_dest(bucket=f"missing-{secrets.token_hex(4)}")
    cfg["jobs"]["big"]["destinations"] = ["disk", "offsite"]
    cfg["jobs"]["doomed"] = {**cfg["jobs"]["big"], "destinations": ["offsite", "nobucket"]}
    d = daemon(cfg)

    res = d.ctl("run", "big", "--wait")
    assert res.returncode == 11, res.stdout + d.log()[-3000:]
    rec = last_execution(d, "big")
    assert rec["status"] == "partial"
    [db] = rec["details"]["databases"]
    assert db["destinations"] == ["disk"] and list(db["failed_destinations"]) == ["offsite"]
    [row] = backups(d, "big")
    assert row["destination"] == "disk" and row["size"] > 5 * MiB  # so S3 got a multipart upload
    assert files_under(tmp_path / "backups") == [row["key"], row["key"] + ".meta.json"]
    assert objects(seaweedfs_s3, offsite) == []  # no data object, no sidecar
    assert open_uploads(seaweedfs_s3, offsite) == []  # the multipart upload was aborted
    assert proxy.accepted > 0  # the S3 traffic went through the proxy

    assert d.ctl("status").returncode == 0  # the daemon keeps serving
    res = d.ctl("run", "doomed", "--wait")
    assert res.returncode == 10, res.stdout + d.log()[-3000:]
    rec = last_execution(d, "doomed")
    assert rec["status"] == "failed"
    log = d.ctl("logs", str(rec["id"])).stdout
    [refused] = [ln for ln in log.splitlines() if "destination nobucket unusable" in ln]
    assert f"bucket '{nobucket['bucket']}' does not exist" in refused
    buckets = [b["Name"] for b in seaweedfs_s3.client().list_buckets()["Buckets"]]
    assert offsite["bucket"] in buckets and nobucket["bucket"] not in buckets  # never created
    assert backups(d, "doomed") == []
    assert objects(seaweedfs_s3, offsite) == [] and open_uploads(seaweedfs_s3, offsite) == []
    assert d.ctl("status").returncode == 0


# --- 3. damage behind the daemon's back -----------------------------------------------------
def test_verify_reports_exactly_the_damaged_remote_objects(
    tmp_path: Path, daemon: Callable[..., DaemonProc], seaweedfs_s3: SeaweedS3,
    s3_dest: Callable[..., dict[str, Any]], sftp_dest: Callable[..., dict[str, Any]],
) -> None:  # fmt: skip
    cfg = base_config(tmp_path)
    sqlite_job(cfg, tmp_path, "app", rows=200)
    offsite = cfg["destinations"]["offsite"] = s3_dest()
    box = cfg["destinations"]["box"] = sftp_dest()
    cfg["jobs"]["app"]["destinations"] = ["offsite", "box"]
    d = daemon(cfg)
    for _ in range(3):
        res = d.ctl("run", "app", "--wait")
        assert res.returncode == 0, res.stdout + d.log()[-3000:]
    keys = sorted({r["key"] for r in backups(d, "app")})
    assert len(keys) == 3 and len(backups(d, "app")) == 6

    # S3: replace one object by bytes of the same size (with a store checksum that matches
    # the new bytes, so only a comparison with the sidecar can tell), drop another's sidecar.
    client = seaweedfs_s3.client()
    bucket, prefix = offsite["bucket"], offsite["prefix"]
    data = bytearray(client.get_object(Bucket=bucket, Key=prefix + keys[0])["Body"].read())
    data[len(data) // 2] ^= 0x01
    client.put_object(Bucket=bucket, Key=prefix + keys[0], Body=bytes(data), ChecksumAlgorithm="SHA256")
    client.delete_object(Bucket=bucket, Key=prefix + keys[1] + ".meta.json")
    # SFTP: the same on the server's disk, on other keys.
    root = Path(box["path"])
    path = root / keys[1]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    (root / (keys[2] + ".meta.json")).unlink()

    res = d.ctl("verify", "app")
    assert res.returncode == 10, res.stdout + res.stderr
    out = res.stdout
    expected = {
        ("offsite", keys[0]): "checksum mismatch",
        ("offsite", keys[1]): "missing sidecar",
        ("offsite", keys[2]): "ok",
        ("box", keys[0]): "ok",
        ("box", keys[1]): "checksum mismatch",
        ("box", keys[2]): "missing sidecar",
    }
    for (dest, key), verdict in expected.items():
        assert f"{dest}: {key}: {verdict}" in out, (dest, key, out)
    assert out.count(": ok\n") == 2 and "checked 6 backups (quick), 4 failed" in out
    rows = {(r["destination"], r["key"]): r["verify_result"] for r in backups(d, "app")}
    assert rows[("offsite", keys[2])] == "ok" and rows[("box", keys[0])] == "ok"
    assert rows[("offsite", keys[0])].startswith("failed: checksum mismatch")
    assert rows[("box", keys[2])].startswith("failed: missing sidecar")


# --- 4. destination tests -------------------------------------------------------------------
def test_destinations_test_refuses_an_unknown_host_key_and_leaves_nothing(
    tmp_path: Path, daemon: Callable[..., DaemonProc], seaweedfs_s3: SeaweedS3, sshd_server: SshdServer,
    s3_dest: Callable[..., dict[str, Any]], sftp_dest: Callable[..., dict[str, Any]],
) -> None:  # fmt: skip
    stranger_hosts = tmp_path / "known_hosts"
    stranger_hosts.write_text("# the backup server's key was never added here\n")
    cfg = base_config(tmp_path)
    sqlite_job(cfg, tmp_path, "app")
    offsite = cfg["destinations"]["offsite"] = s3_dest()
    box = cfg["destinations"]["box"] = sftp_dest()
    cfg["destinations"]["stranger"] = sftp_dest(known_hosts=str(stranger_hosts))
    d = daemon(cfg)

    res = d.ctl("destinations", "test")
    assert res.returncode == 1, res.stdout + res.stderr
    lines = {ln.split()[0]: ln for ln in res.stdout.splitlines()[1:]}
    assert set(lines) == {"disk", "offsite", "box", "stranger"}
    for name in ("disk", "offsite", "box"):
        assert lines[name].split()[2] == "ok", lines[name]
    assert lines["stranger"].split()[2] == "FAILED"
    assert "unknown host key" in lines["stranger"] and sshd_server.fingerprint in lines["stranger"]
    assert "refusing to connect" in lines["stranger"]
    rows = {r["name"]: r for r in json.loads(d.ctl("destinations", "test", "--json").stdout)}
    assert [n for n, r in rows.items() if not r["ok"]] == ["stranger"]

    assert d.ctl("destinations", "test", "box").returncode == 0
    assert objects(seaweedfs_s3, offsite) == [] and open_uploads(seaweedfs_s3, offsite) == []
    for root in (Path(box["path"]), tmp_path / "backups"):
        assert root.is_dir() and files_under(root) == []  # the probes were written here, then removed
    assert stranger_hosts.read_text() == "# the backup server's key was never added here\n"  # never added


# --- 5. retention on a bucket ---------------------------------------------------------------
def test_keep_last_one_on_s3_leaves_only_the_newest_backup(
    tmp_path: Path, daemon: Callable[..., DaemonProc], seaweedfs_s3: SeaweedS3,
    s3_dest: Callable[..., dict[str, Any]],
) -> None:  # fmt: skip
    cfg = base_config(tmp_path)
    sqlite_job(cfg, tmp_path, "app", rows=100, retention={"keep_last": 1})
    offsite = cfg["destinations"]["offsite"] = s3_dest()
    cfg["jobs"]["app"]["destinations"] = ["offsite"]
    d = daemon(cfg)
    for _ in range(3):
        res = d.ctl("run", "app", "--wait")
        assert res.returncode == 0, res.stdout + d.log()[-3000:]
    newest = last_execution(d, "app")
    # Retention is the step after completion, so `run --wait` may return before it ends.
    [row] = d.wait_for(lambda: (rows := backups(d, "app")) and len(rows) == 1 and rows, what="retention")
    assert f"_{newest['id']}_" in row["key"]
    d.wait_for(lambda: len(objects(seaweedfs_s3, offsite)) == 2, what="retention on the bucket")
    assert objects(seaweedfs_s3, offsite) == [row["key"], row["key"] + ".meta.json"]
