"""Retention and integrity through the daemon, on a local destination."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.system.daemon_helpers import DaemonProc, base_config, sqlite_job

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def daemon(tmp_path: Path):
    started: list[DaemonProc] = []

    def start(cfg: dict) -> DaemonProc:
        d = DaemonProc(tmp_path, cfg).start()
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def _backups(d: DaemonProc, job: str) -> list[dict]:
    return json.loads(d.ctl("backups", job, "--json").stdout)["backups"]


def test_retention_runs_after_success_and_honours_locks(tmp_path: Path, daemon) -> None:
    cfg = base_config(tmp_path)
    sqlite_job(cfg, tmp_path, "app", retention={"keep_last": 2})
    d = daemon(cfg)
    for _ in range(3):
        assert d.ctl("run", "app", "--wait").returncode == 0
    rows = _backups(d, "app")
    assert len(rows) == 2  # the oldest was pruned by the retention step
    files = sorted(p.name for p in (tmp_path / "backups" / "app").iterdir())
    assert len(files) == 4 and sum(f.endswith(".meta.json") for f in files) == 2
    plan = json.loads(d.ctl("retention", "plan", "app", "--json").stdout)
    decisions = plan["groups"][0]["decisions"]
    assert [x["keep"] for x in decisions] == [True, True]
    assert "newest backup" in decisions[0]["reasons"] and "keep_last #1" in decisions[0]["reasons"]
    text = d.ctl("retention", "plan", "app").stdout
    assert "keep_last #2" in text and "app / app on disk" in text
    oldest = rows[-1]["key"]
    assert d.ctl("lock", oldest).returncode == 0
    for _ in range(2):
        assert d.ctl("run", "app", "--wait").returncode == 0
    keys = [b["key"] for b in _backups(d, "app")]
    assert oldest in keys and len(keys) == 3  # locked + the two newest
    assert d.ctl("unlock", oldest).returncode == 0
    res = json.loads(d.ctl("retention", "apply", "app", "--json").stdout)
    assert res["deleted"] == 1 and oldest not in [b["key"] for b in _backups(d, "app")]
    assert not (tmp_path / "backups" / oldest).exists()
    assert not (tmp_path / "backups" / (oldest + ".meta.json")).exists()


def test_retention_safety_limit_needs_confirm(tmp_path: Path, daemon) -> None:
    cfg = base_config(tmp_path)
    sqlite_job(cfg, tmp_path, "app")
    d = daemon(cfg)
    for _ in range(4):
        assert d.ctl("run", "app", "--wait").returncode == 0
    cfg["jobs"]["app"]["retention"] = {"keep_last": 1}
    from tests.system.daemon_helpers import write_config

    write_config(d.config_path, cfg)
    assert d.ctl("reload").returncode == 0
    res = json.loads(d.ctl("retention", "apply", "app", "--json").stdout)
    assert res["deleted"] == 0 and res["skipped"] == 1  # 3 of 4 is more than 0.5
    assert len(_backups(d, "app")) == 4
    assert "would delete 3 of 4 backups" in d.log()
    res = json.loads(d.ctl("retention", "apply", "app", "--confirm", "--json").stdout)
    assert res["deleted"] == 3 and len(_backups(d, "app")) == 1


def test_integrity_finds_exactly_the_damaged_object(tmp_path: Path, daemon) -> None:
    cfg = base_config(tmp_path)
    sqlite_job(cfg, tmp_path, "app")
    d = daemon(cfg)
    for _ in range(4):
        assert d.ctl("run", "app", "--wait").returncode == 0
    keys = [b["key"] for b in _backups(d, "app")]
    root = tmp_path / "backups"
    res = d.ctl("verify", "app", "--full")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count(": ok") == 4
    flipped, gone, no_sidecar = keys[1], keys[2], keys[3]
    data = bytearray((root / flipped).read_bytes())
    data[len(data) // 2] ^= 0x01
    (root / flipped).write_bytes(bytes(data))
    (root / gone).unlink()
    (root / (no_sidecar + ".meta.json")).unlink()
    res = d.ctl("verify", "app")
    assert res.returncode == 10
    lines = res.stdout.splitlines()
    assert any(flipped in ln and "checksum mismatch" in ln for ln in lines)
    assert any(gone in ln and "missing object" in ln for ln in lines)
    assert any(no_sidecar in ln and "missing sidecar" in ln for ln in lines)
    assert any(keys[0] in ln and ln.endswith(": ok") for ln in lines)
    rows = {b["key"]: b for b in _backups(d, "app")}
    assert rows[keys[0]]["verify_result"] == "ok"
    assert rows[flipped]["verify_result"].startswith("failed: checksum mismatch")
    assert "c8b1f22690894f3c9c9357620ba0961d" not in res.stdout  # MESSAGE_IDs stay in the journal


def test_incomplete_objects_are_listed_but_never_counted(tmp_path: Path, daemon) -> None:
    cfg = base_config(tmp_path)
    sqlite_job(cfg, tmp_path, "app")
    (tmp_path / "backups" / "app").mkdir(parents=True)
    orphan = tmp_path / "backups" / "app" / "app_20260101T000000Z_99_app.sqlite.gz"
    orphan.write_bytes(b"half a backup")
    d = daemon(cfg)
    assert d.ctl("run", "app", "--wait").returncode == 0
    d.wait_for(
        lambda: json.loads(d.ctl("backups", "--all", "--json").stdout).get("incomplete"), what="catalog sync"
    )
    res = json.loads(d.ctl("backups", "--all", "--json").stdout)
    assert [i["key"] for i in res["incomplete"]] == ["app/app_20260101T000000Z_99_app.sqlite.gz"]
    assert all(b["key"] != "app/app_20260101T000000Z_99_app.sqlite.gz" for b in res["backups"])
    assert "INCOMPLETE" in d.ctl("backups", "--all").stdout


def test_restore_of_a_sidecar_without_checksum_says_so(tmp_path: Path, daemon) -> None:
    cfg = base_config(tmp_path)
    sqlite_job(cfg, tmp_path, "app")
    d = daemon(cfg)
    assert d.ctl("run", "app", "--wait").returncode == 0
    d.stop()
    # a sidecar written by another tool, without the checksum
    sidecar = next((tmp_path / "backups").rglob("*.meta.json"))
    meta = json.loads(sidecar.read_text())
    meta["sha256"] = None
    sidecar.write_text(json.dumps(meta))
    d = daemon(cfg)
    d.wait_for(lambda: _backups(d, "app"), what="catalog rebuilt")
    res = d.ctl("restore", "app", "--as", str(tmp_path / "restored.db"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "the sidecar has no checksum: restoring without verifying" in res.stdout
    res = d.ctl("verify", "app")
    assert res.returncode == 10 and "has no checksum" in res.stdout
