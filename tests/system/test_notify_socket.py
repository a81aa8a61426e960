"""sd_notify as systemd sees it: messages captured on a real datagram socket bound as
NOTIFY_SOCKET."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

import pytest

from tests.system.daemon_helpers import DaemonProc, base_config, sqlite_job

pytestmark = pytest.mark.timeout(90)


class NotifyListener:
    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self.cursor = 0  # messages before this index were consumed by an earlier wait_for

    def drain(self, seconds: float) -> list[str]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                self.messages.append(self.sock.recv(65536).decode())
            except TimeoutError:
                pass
        return self.messages

    def wait_for(self, predicate, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i in range(self.cursor, len(self.messages)):
                if predicate(self.messages[i]):
                    self.cursor = i + 1
                    return self.messages[i]
            self.drain(0.2)
        raise TimeoutError(f"no matching notify message; got {self.messages[-20:]}")


def test_ready_status_watchdog_reload_stopping(tmp_path: Path) -> None:
    listener = NotifyListener(tmp_path / "notify.sock")
    cfg = base_config(tmp_path)
    sqlite_job(cfg, tmp_path, "slow", rows=30, blob_kib=64, compression="brotli", level=11)
    d = DaemonProc(
        tmp_path, cfg, env={"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "1000000"}
    )
    d.start(wait=False)
    try:
        listener.wait_for(lambda m: "READY=1" in m)
        d.wait_ready()
        listener.wait_for(lambda m: m.startswith("STATUS=idle"))
        # WATCHDOG=1 at half of WATCHDOG_USEC (0.5 s): several within two seconds
        start = len(listener.messages)
        listener.drain(2.0)
        assert sum(m == "WATCHDOG=1" for m in listener.messages[start:]) >= 3
        # a running job shows in the STATUS line
        d.ctl("run", "slow")
        listener.wait_for(lambda m: m.startswith("STATUS=running 1/2: slow"))
        assert d.ctl("cancel", "1").returncode == 0
        listener.wait_for(lambda m: m.startswith("STATUS=idle"))
        # SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1
        d.signal(signal.SIGHUP)
        reloading = listener.wait_for(lambda m: "RELOADING=1" in m)
        assert "MONOTONIC_USEC=" in reloading
        usec = int(reloading.split("MONOTONIC_USEC=")[1].split()[0])
        assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 30_000_000
        listener.wait_for(lambda m: m == "READY=1")
    finally:
        code = d.stop()
    listener.drain(0.5)
    assert any(m == "STOPPING=1" for m in listener.messages)
    assert code == 0
