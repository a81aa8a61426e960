"""The whole daemon as a user runs it: backupd subprocess, backupctl subprocess, real files."""

from __future__ import annotations

import gzip
import json
import signal
import sqlite3
import time
from pathlib import Path

import pytest

from tests.system.daemon_helpers import DaemonProc, base_config, row_count, sqlite_job, write_config

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def daemon(tmp_path: Path):
    procs: list[DaemonProc] = []

    def start(config: dict, **kw) -> DaemonProc:
        d = DaemonProc(tmp_path, config, **kw).start()
        procs.append(d)
        return d

    yield start
    for d in procs:
        if d.proc and d.proc.poll() is None:
            d.stop()


def test_backup_restores_and_history(tmp_path: Path, daemon) -> None:
    cfg = base_config(tmp_path)
    db = sqlite_job(cfg, tmp_path, "app", rows=400)
    d = daemon(cfg)
    res = d.ctl("run", "app", "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "succeeded" in res.stdout
    files = sorted((tmp_path / "backups" / "app").iterdir())
    data = [f for f in files if f.name.endswith(".sqlite.gz")]
    sidecars = [f for f in files if f.name.endswith(".meta.json")]
    assert len(data) == 1 and len(sidecars) == 1
    assert oct(data[0].stat().st_mode & 0o777) == "0o600"
    restored = tmp_path / "restored.db"
    restored.write_bytes(gzip.decompress(data[0].read_bytes()))
    conn = sqlite3.connect(restored)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    assert row_count(restored) == row_count(db) == 400
    meta = json.loads(sidecars[0].read_text())
    assert meta["job"] == "app" and meta["compression"] == "gzip" and meta["encryption"] is None
    assert meta["size"] == data[0].stat().st_size
    hist = json.loads(d.ctl("history", "app", "--json").stdout)
    assert hist[0]["status"] == "succeeded" and hist[0]["size"] == meta["size"]
    assert hist[0]["sha256"] == meta["sha256"]
    logs = d.ctl("logs", str(hist[0]["id"])).stdout
    assert "committed and verified" in logs
    table = d.ctl("history").stdout
    assert table.splitlines()[0].split()[:3] == ["ID", "JOB", "KIND"]
    # restore through the daemon into a new file
    target = tmp_path / "via-daemon.db"
    res = d.ctl("restore", "app", "--as", str(target))
    assert res.returncode == 0, res.stdout + res.stderr
    assert row_count(target) == 400
    # restoring over an existing non-empty database is refused without --force
    res = d.ctl("restore", "app", "--as", str(target))
    assert res.returncode == 10 and "exists and is not empty" in res.stdout + res.stderr
    assert d.stop() == 0


def test_bad_config_exits_78_naming_file_and_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    cases = {
        "keep_dialy": ("retention", {"keep_dialy": 7}, "jobs.app.retention.keep_dialy: unknown key"),
        "string": (
            "retention",
            {"keep_daily": "7"},
            "jobs.app.retention.keep_daily: expected `int | null`, got `str`",
        ),
        "source": ("source", "nope", "jobs.app.source: one of the [sources] (app), not 'nope'"),
    }
    for name, (key, value, expected) in cases.items():
        cfg = base_config(tmp_path)
        sqlite_job(cfg, tmp_path, "app")
        cfg["jobs"]["app"][key] = value
        path = write_config(tmp_path / f"{name}.toml", cfg)
        for args in (["--check-config", "--config", str(path)], ["--config", str(path)]):
            res = subprocess.run(
                [sys.executable, "-m", "backupd", *args], capture_output=True, text=True, timeout=30
            )
            assert res.returncode == 78, (name, res.stderr)
            assert str(path) in res.stderr and expected in res.stderr, res.stderr


def test_reload_keeps_old_config_on_error(tmp_path: Path, daemon) -> None:
    cfg = base_config(tmp_path)
    sqlite_job(cfg, tmp_path, "app")
    d = daemon(cfg)
    good = d.config_path.read_text()
    d.config_path.write_text(
        good.replace("keep_", "keep_").replace("[jobs.app]", "[jobs.app]\nkeep_dialy = 1")
    )
    res = d.ctl("reload")
    assert res.returncode == 1
    assert "jobs.app.keep_dialy: unknown key" in res.stderr and "config-invalid" in res.stderr
    d.signal(signal.SIGHUP)
    time.sleep(0.5)
    assert d.proc.poll() is None
    assert "reload failed, keeping the previous configuration" in d.log()
    jobs = json.loads(d.ctl("jobs", "--json").stdout)
    assert [j["name"] for j in jobs] == ["app"]
    cfg2 = json.loads(json.dumps(cfg))
    sqlite_job(cfg2, tmp_path, "other")
    write_config(d.config_path, cfg2)
    res = d.ctl("reload")
    assert res.returncode == 0, res.stderr
    jobs = json.loads(d.ctl("jobs", "--json").stdout)
    assert [j["name"] for j in jobs] == ["app", "other"]
    assert d.ctl("run", "other", "--wait").returncode == 0


def test_unknown_job_and_execution(tmp_path: Path, daemon) -> None:
    cfg = base_config(tmp_path)
    sqlite_job(cfg, tmp_path, "app")
    d = daemon(cfg)
    res = d.ctl("run", "nope")
    assert res.returncode == 1 and "no job named 'nope'" in res.stderr and "[job-not-found]" in res.stderr
    res = d.ctl("logs", "999")
    assert res.returncode == 1 and "[execution-not-found]" in res.stderr
    res = d.ctl("cancel", "999")
    assert res.returncode == 1 and "[execution-not-found]" in res.stderr


def test_failures_name_the_step_and_leave_nothing(tmp_path: Path, daemon) -> None:
    cfg = base_config(tmp_path)
    sqlite_job(cfg, tmp_path, "app")
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a directory should be")
    cfg["destinations"]["blocked"] = {"type": "local", "path": str(blocker / "backups")}
    cfg["jobs"]["blocked"] = {"source": "app", "destinations": ["blocked"]}
    cfg["sources"]["missing"] = {"type": "sqlite", "path": str(tmp_path / "missing.db")}
    cfg["jobs"]["missing"] = {"source": "missing", "destinations": ["disk"]}
    d = daemon(cfg)
    assert d.ctl("run", "app", "--wait").returncode == 0
    before = sorted(p.name for p in (tmp_path / "backups").rglob("*"))
    res = d.ctl("run", "missing", "--wait")
    assert res.returncode == 10, res.stdout
    rec = json.loads(d.ctl("history", "missing", "--json").stdout)[0]
    assert (
        rec["status"] == "failed" and rec["error"].startswith("initialize:") and "missing.db" in rec["error"]
    )
    res = d.ctl("run", "blocked", "--wait")
    assert res.returncode == 10
    rec = json.loads(d.ctl("history", "blocked", "--json").stdout)[0]
    assert rec["error"].startswith("initialize:") and "blocked" in rec["error"]
    assert sorted(p.name for p in (tmp_path / "backups").rglob("*")) == before
    assert not any(".tmp-" in p.name for p in (tmp_path / "backups").rglob("*"))
    assert d.ctl("status").returncode == 0


def test_sigkill_mid_backup_then_restart(tmp_path: Path) -> None:
    cfg = base_config(tmp_path)
    sqlite_job(cfg, tmp_path, "slow", rows=40, blob_kib=64, compression="brotli", level=11)
    d = DaemonProc(tmp_path, cfg).start()
    eid = json.loads(d.ctl("run", "slow", "--json").stdout)["execution_id"]
    d.wait_for(lambda: json.loads(d.ctl("status", "--json").stdout)["running"], what="running")
    d.wait_for(
        lambda: any(p.name.startswith(".tmp-") for p in (tmp_path / "backups").rglob("*")),
        what="temp file written",
    )
    d.kill()
    d2 = DaemonProc(tmp_path, cfg).start()
    try:
        rec = json.loads(d2.ctl("history", "slow", "--json").stdout)[0]
        assert rec["id"] == eid and rec["status"] == "interrupted"
        backups = json.loads(d2.ctl("backups", "slow", "--json").stdout)["backups"]
        assert backups == []
        # the killed writer's temp file is removed at start-up, never counted
        d2.wait_for(
            lambda: not any(p.name.startswith(".tmp-") for p in (tmp_path / "backups").rglob("*")),
            what="temp file swept",
        )
        # the next run succeeds
        cfg["jobs"]["slow"]["compression_level"] = 1
        write_config(d2.config_path, cfg)
        assert d2.ctl("reload").returncode == 0
        assert d2.ctl("run", "slow", "--wait").returncode == 0
        backups = json.loads(d2.ctl("backups", "slow", "--json").stdout)["backups"]
        assert len(backups) == 1
        assert d2.ctl("backups", "--all").returncode == 0
    finally:
        assert d2.stop() == 0


def test_sigterm_cancels_running_job_within_bound(tmp_path: Path) -> None:
    cfg = base_config(tmp_path, shutdown_timeout=1.0)
    sqlite_job(cfg, tmp_path, "slow", rows=40, blob_kib=64, compression="brotli", level=11)
    d = DaemonProc(tmp_path, cfg).start()
    eid = json.loads(d.ctl("run", "slow", "--json").stdout)["execution_id"]
    d.wait_for(lambda: json.loads(d.ctl("status", "--json").stdout)["running"], what="running")
    started = time.monotonic()
    assert d.stop() == 0
    assert time.monotonic() - started < 15
    d2 = DaemonProc(tmp_path, cfg).start()
    try:
        rec = json.loads(d2.ctl("history", "slow", "--json").stdout)[0]
        assert rec["id"] == eid and rec["status"] == "cancelled"
        assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "backups").rglob("*"))
    finally:
        d2.stop()


def test_follow_streams_log_lines(tmp_path: Path, daemon) -> None:
    cfg = base_config(tmp_path)
    sqlite_job(cfg, tmp_path, "app")
    d = daemon(cfg)
    res = d.ctl("run", "app", "--follow")
    assert res.returncode == 0
    out = res.stdout
    assert "initialize" in out and "dumping" in out and "succeeded" in out


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A real 1 MiB tmpfs, so that a destination runs out of space for real."""
    import subprocess

    from tests.fixtures.common import unavailable

    mnt = tmp_path / "small"
    mnt.mkdir()
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if res.returncode != 0:
        unavailable(f"mounting a tmpfs ({res.stderr.strip()})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_destination_fails_at_dump_and_keeps_earlier_backups(
    tmp_path: Path, small_tmpfs: Path, daemon
) -> None:
    cfg = base_config(tmp_path)
    sqlite_job(cfg, tmp_path, "small", rows=50)
    sqlite_job(cfg, tmp_path, "big", rows=200, blob_kib=64, compression="none")
    cfg["destinations"]["disk"]["path"] = str(small_tmpfs)
    d = daemon(cfg)
    assert d.ctl("run", "small", "--wait").returncode == 0
    before = sorted(p.name for p in small_tmpfs.rglob("*") if p.is_file())
    res = d.ctl("run", "big", "--wait")
    assert res.returncode == 10
    rec = json.loads(d.ctl("history", "big", "--json").stdout)[0]
    assert rec["error"].startswith("big: dump: every destination failed: destination disk: ")
    assert rec["error"].endswith("no space left on device")
    assert sorted(p.name for p in small_tmpfs.rglob("*") if p.is_file()) == before
    assert d.ctl("run", "small", "--wait").returncode == 0  # the daemon keeps serving
