"""Start-up paths: a starter config from `backupctl config init`, socket activation through
LISTEN_FDS, and a second daemon refusing a socket that is in use."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from backupctl.client import Client
from tests.system.daemon_helpers import REPO, DaemonProc, base_config, sqlite_job, write_config

pytestmark = pytest.mark.timeout(90)


def test_config_init_writes_a_valid_config(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "backupd.toml"
    res = subprocess.run(
        [sys.executable, "-m", "backupctl", "config", "init", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr
    check = subprocess.run(
        [sys.executable, "-m", "backupd", "--check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert check.returncode == 0, check.stderr
    again = subprocess.run(
        [sys.executable, "-m", "backupctl", "config", "init", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert again.returncode == 1 and "exists" in again.stderr


def test_socket_activation(tmp_path: Path) -> None:
    sock_path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(16)
    cfg = base_config(tmp_path)
    cfg["daemon"]["socket"] = str(tmp_path / "unused.sock")
    sqlite_job(cfg, tmp_path, "app")
    config = write_config(tmp_path / "backupd.toml", cfg)
    # like systemd: the listening socket as fd 3, LISTEN_FDS=1 and LISTEN_PID of the daemon itself
    fd = listener.fileno()
    script = (
        f"exec 3<&{fd} {fd}<&-; LISTEN_FDS=1 LISTEN_PID=$$ exec {sys.executable} -m backupd --config {config}"
    )
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(["bash", "-c", script], pass_fds=(fd,), cwd=REPO, stdout=log, stderr=log)
    listener.close()
    try:
        import time

        deadline = time.monotonic() + 20
        while True:
            try:
                client = Client(sock_path, timeout=5)
                break
            except Exception:
                assert time.monotonic() < deadline and proc.poll() is None, (
                    tmp_path / "daemon.log"
                ).read_text()
                time.sleep(0.1)
        with client:
            rec_id = client.call("run", job="app")["execution_id"]
            assert client.call("wait", execution=rec_id)["status"] == "succeeded"
        assert not (tmp_path / "unused.sock").exists()
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        log.close()
    assert sock_path.exists()  # an inherited socket belongs to systemd: never unlinked


def test_second_daemon_refuses_a_socket_in_use(tmp_path: Path) -> None:
    cfg = base_config(tmp_path)
    d = DaemonProc(tmp_path, cfg).start()
    try:
        other = tmp_path / "second"
        other.mkdir()
        cfg2 = json.loads(json.dumps(cfg))
        cfg2["daemon"]["state_dir"] = str(other / "state")
        res = subprocess.run(
            [sys.executable, "-m", "backupd", "--config", str(write_config(other / "b.toml", cfg2))],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=REPO,
        )
        assert res.returncode == 1 and "already listening" in res.stderr
        assert d.ctl("status").returncode == 0
    finally:
        d.stop()
