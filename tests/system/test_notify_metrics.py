"""Notifications, metrics and the live view through the real daemon."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pty
import select
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.fixtures.common import free_port
from tests.system.daemon_helpers import REPO, DaemonProc, base_config, sqlite_job

pytestmark = pytest.mark.timeout(120)


class Hook:
    def __init__(self) -> None:
        self.received: list[tuple[dict, dict]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.received.append((dict(self.headers), {"raw": body, **json.loads(body)}))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def test_failure_is_notified_signed_and_recorded(tmp_path: Path) -> None:
    hook = Hook()
    secret = tmp_path / "hook.secret"
    secret.write_text("s3cr3t-sentinel")
    secret.chmod(0o600)
    cfg = base_config(tmp_path)
    sqlite_job(cfg, tmp_path, "app", notify=["ops"])
    cfg["sources"]["app"]["path"] = str(tmp_path / "missing.db")
    cfg["notifications"] = {
        "ops": {"type": "webhook", "url": hook.url, "secret_file": str(secret), "events": ["failed"]}
    }
    d = DaemonProc(tmp_path, cfg).start()
    try:
        assert d.ctl("run", "app", "--wait").returncode == 10
        d.wait_for(lambda: hook.received, what="webhook delivery")
        headers, body = hook.received[0]
        assert body["kind"] == "backup.failed" and body["job"] == "app"
        ts = headers["X-Backupd-Timestamp"]
        expected = hmac.new(b"s3cr3t-sentinel", ts.encode() + b"." + body["raw"], hashlib.sha256).hexdigest()
        assert headers["X-Backupd-Signature"] == f"sha256={expected}"
        rows = d.wait_for(
            lambda: json.loads(d.ctl("notifications", "--json").stdout), what="attempt recorded"
        )
        assert rows[0]["channel"] == "ops" and rows[0]["ok"] == 1 and rows[0]["event"] == "backup.failed"
        test = d.ctl("notify", "test", "ops")
        assert test.returncode == 0, test.stderr
        assert "s3cr3t-sentinel" not in d.log() + d.ctl("notifications").stdout
    finally:
        d.stop()
        hook.server.shutdown()


def test_metrics_change_after_a_run(tmp_path: Path) -> None:
    port = free_port()
    cfg = base_config(
        tmp_path, metrics_listen=f"127.0.0.1:{port}", metrics_textfile=str(tmp_path / "backupd.prom")
    )
    sqlite_job(cfg, tmp_path, "app")
    d = DaemonProc(tmp_path, cfg).start()
    try:

        def samples(text: str) -> dict:
            return {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for fam in text_string_to_metric_families(text)
                for s in fam.samples
            }

        before = samples(d.ctl("metrics").stdout)
        assert not any(name == "backupd_backups" for name, _ in before)
        assert d.ctl("run", "app", "--wait").returncode == 0
        import urllib.request

        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        after = samples(text)
        names = {name for name, _ in after}
        assert "backupd_job_last_success_timestamp_seconds" in names or any(
            "last_success" in n for n in names
        )
        groups = [
            v
            for (name, labels), v in after.items()
            if name.startswith("backupd_backups") and ("job", "app") in labels
        ]
        assert groups == [1.0]
        d.wait_for(
            lambda: (
                (tmp_path / "backupd.prom").exists()
                and "backupd_backups" in (tmp_path / "backupd.prom").read_text()
            ),
            what="textfile refreshed",
        )
    finally:
        d.stop()


def test_follow_draws_a_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    cfg = base_config(tmp_path)
    sqlite_job(cfg, tmp_path, "app", rows=30, blob_kib=64, compression="brotli", level=11)
    d = DaemonProc(tmp_path, cfg).start()
    try:
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "backupctl", "--socket", str(d.socket), "run", "app", "--follow"],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=REPO,
            env=d.env,
        )
        os.close(slave)
        out = b""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.5)
            if r:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                out += chunk
            elif proc.poll() is not None:
                break
        assert proc.wait(10) == 0
        text = out.decode(errors="replace")
        assert "\x1b[1F\x1b[J" in text and "app #1 dump" in text  # a redrawn progress bar
        assert "succeeded" in text
    finally:
        d.stop()
