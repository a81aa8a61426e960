"""An encrypted, zstd-compressed backup restores byte-identical through the daemon, through
`backupctl decrypt`, and through the standalone script in docs/."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from tests.system.daemon_helpers import REPO, DaemonProc, base_config, row_count, sqlite_job

pytestmark = pytest.mark.timeout(120)


def _ctl_offline(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "backupctl", *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def test_encrypted_backup_round_trips(tmp_path: Path) -> None:
    key = tmp_path / "keys" / "main.key"
    key.parent.mkdir(mode=0o700)
    gen = _ctl_offline("key", "generate", str(key), "--json")
    assert gen.returncode == 0, gen.stderr
    key_id = json.loads(gen.stdout)["key_id"]
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    old = tmp_path / "keys" / "old.key"
    assert _ctl_offline("key", "generate", str(old)).returncode == 0
    cfg = base_config(tmp_path)
    db = sqlite_job(cfg, tmp_path, "app", rows=800, compression="zstd", encryption="main")
    cfg["encryption"] = {"main": {"key_file": str(key)}, "old": {"key_file": str(old), "decrypt_only": True}}
    d = DaemonProc(tmp_path, cfg).start()
    try:
        res = d.ctl("run", "app", "--wait")
        assert res.returncode == 0, res.stdout + d.log()[-2000:]
        stored = next((tmp_path / "backups" / "app").glob("*.sqlite.zst.bkd"))
        meta = json.loads(Path(str(stored) + ".meta.json").read_text())
        assert meta["encryption"] == {"format": "BKD1", "key_id": key_id}
        assert stored.read_bytes()[:8] == b"BKD1\0\r\n\x1a"
        # through the daemon
        target = tmp_path / "restored.db"
        res = d.ctl("restore", "app", "--as", str(target))
        assert res.returncode == 0, res.stdout + res.stderr
        assert row_count(target) == row_count(db) == 800
        # full verification decrypts and checks the dump
        assert d.ctl("verify", "app", "--full").returncode == 0
    finally:
        assert d.stop() == 0
    # offline, with backupctl decrypt
    out = tmp_path / "plain.zst"
    res = _ctl_offline("decrypt", str(stored), "--key", str(old), "--key", str(key), "-o", str(out))
    assert res.returncode == 0, res.stderr
    plain = zstandard.ZstdDecompressor().stream_reader(out.open("rb")).read()
    assert len(plain) == meta["plaintext_size"]
    import hashlib

    assert hashlib.sha256(plain).hexdigest() == meta["plaintext_sha256"]
    # offline, with the standalone script from the docs
    out2 = tmp_path / "plain2.zst"
    res = subprocess.run(
        [sys.executable, str(REPO / "docs" / "bkd1_decrypt.py"), str(key), str(stored), str(out2)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert out2.read_bytes() == out.read_bytes()
    # the wrong key fails closed and leaves nothing
    out3 = tmp_path / "plain3.zst"
    res = _ctl_offline("decrypt", str(stored), "--key", str(old), "-o", str(out3))
    assert (
        res.returncode == 1 and f"no key in the keyring has id {key_id}" in res.stderr and not out3.exists()
    )
    # inspect shows the key id and the sidecar
    res = _ctl_offline("inspect", str(stored))
    assert res.returncode == 0 and key_id in res.stdout


def test_group_readable_key_fails_the_run_clearly(tmp_path: Path) -> None:
    key = tmp_path / "loose.key"
    assert _ctl_offline("key", "generate", str(key)).returncode == 0
    key.chmod(0o644)
    cfg = base_config(tmp_path)
    sqlite_job(cfg, tmp_path, "app", encryption="main")
    cfg["encryption"] = {"main": {"key_file": str(key)}}
    d = DaemonProc(tmp_path, cfg).start()
    try:
        assert d.ctl("run", "app", "--wait").returncode == 10
        rec = json.loads(d.ctl("history", "--json").stdout)[0]
        assert (
            rec["error"].startswith("initialize:") and str(key) in rec["error"] and "readable" in rec["error"]
        )
        assert not list((tmp_path / "backups").rglob("*.bkd"))
    finally:
        d.stop()
