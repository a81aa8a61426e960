"""Start the real backupd as a subprocess in a temp dir, and talk to it with the real
backupctl (as a subprocess) or its client class."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import tomli_w

from backupctl.client import Client

REPO = Path(__file__).resolve().parents[2]


def make_sqlite(path: Path, rows: int = 500, blob_kib: int = 0, seed: int = 1) -> None:
    """Create an SQLite database with text (non-ASCII too), numbers and optional blobs of
    compressible but not trivial content (so slow compressors take real time)."""
    rnd = random.Random(seed)
    words = [f"{rnd.getrandbits(32):08x}" for _ in range(2000)] + ["Zürich", "東京", "naïve"]
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER, data BLOB)")
        for i in range(rows):
            blob = " ".join(rnd.choice(words) for _ in range(blob_kib * 110)).encode()[: blob_kib * 1024]
            conn.execute(
                "INSERT INTO items (name, qty, data) VALUES (?,?,?)",
                (f"item {i} {rnd.choice(words)}", i, blob),
            )
    conn.close()


def row_count(path: Path, table: str = "items") -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def base_config(root: Path, **daemon: Any) -> dict[str, Any]:
    return {
        "daemon": {
            "state_dir": str(root / "state"),
            "socket": str(root / "control.sock"),
            "log_target": "stderr",
            "max_concurrent_jobs": 2,
            "shutdown_timeout": 5.0,
            **daemon,
        },
        "sources": {},
        "destinations": {},
        "jobs": {},
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(tomli_w.dumps(config))
    return path


class DaemonProc:
    """A backupd subprocess with its own config, state and socket under ``root``."""

    def __init__(self, root: Path, config: dict[str, Any], env: dict[str, str] | None = None) -> None:
        self.root = root
        self.config = config
        self.config_path = write_config(root / "backupd.toml", config)
        self.socket = Path(config["daemon"]["socket"])
        self.log_path = root / "daemon.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> DaemonProc:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "backupd", "--config", str(self.config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=REPO,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"backupd exited with {self.proc.returncode}:\n{self.log()}")
            try:
                Client(self.socket, timeout=2).close()
                return
            except Exception:
                time.sleep(0.1)
        raise TimeoutError(f"backupd not ready:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def ctl(
        self, *args: str, timeout: float = 60, user: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "backupctl", "--socket", str(self.socket), *args]
        if user is not None:
            cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=self.env)

    def client(self, timeout: float | None = 30) -> Client:
        return Client(self.socket, timeout)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(10)
        self._log.close()
        return code

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def wait_for(self, predicate: Any, timeout: float = 30, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.1)
        raise TimeoutError(f"{what} not reached in {timeout}s; daemon log:\n{self.log()[-3000:]}")


def sqlite_job(
    config: dict[str, Any],
    root: Path,
    name: str,
    *,
    rows: int = 300,
    blob_kib: int = 0,
    compression: str = "gzip",
    level: int | None = None,
    dest: str = "disk",
    **job: Any,
) -> Path:
    """Add an SQLite source, a local destination (shared) and a job to ``config``; create the
    database; return its path."""
    db = root / f"{name}.db"
    if not db.exists():
        make_sqlite(db, rows=rows, blob_kib=blob_kib)
    config["sources"][name] = {"type": "sqlite", "path": str(db)}
    config["destinations"].setdefault(dest, {"type": "local", "path": str(root / "backups")})
    entry: dict[str, Any] = {"source": name, "destinations": [dest], "compression": compression, **job}
    if level is not None:
        entry["compression_level"] = level
    config["jobs"][name] = entry
    return db
