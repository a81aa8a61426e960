"""Pipeline benchmark: the real daemon against the dump tool alone and a temp-file pipeline.

    python tests/bench/bench_pipeline.py [--sizes 256,1024] [--no-pg] [--clients 1,8,32]

For each dump size it reports, from one run (the machine is shared and noisy, so only
ratios within a run mean anything; nothing is asserted):

- backupd's pipeline wall time (zstd -3 + BKD1 + SHA-256 → local destination) ÷ the dump tool
  alone writing to /dev/null;
- a temp-file pipeline (dump to file, ``zstd`` to file, encrypt to file, ``sha256sum``, copy)
  ÷ backupd;
- the daemon's peak RSS (VmHWM) and the temp-disk bytes each approach needs;
- control-socket latency (``status``) under concurrent clients.

SQLite always; PostgreSQL too when its server binaries are installed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from backupctl.client import Client  # noqa: E402
from backupd.crypto.bkd1 import Encryptor  # noqa: E402
from backupd.crypto.keyring import MasterKey  # noqa: E402
from tests.fixtures.common import discard  # noqa: E402
from tests.system.daemon_helpers import DaemonProc, base_config  # noqa: E402

WORDS = [f"{i * 2654435761 % 2**32:08x}" for i in range(4000)]


def make_sqlite(path: Path, mib: int) -> None:
    """Build an SQLite database in WAL mode of about ``mib`` MiB of SQL-like rows (compressible
    about 4x)."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute(
        "CREATE TABLE events (id INTEGER PRIMARY KEY, ts TEXT, kind TEXT, payload TEXT, amount REAL)"
    )
    row = 0
    target = mib * 1024 * 1024
    while True:
        batch = []
        for _ in range(20000):
            row += 1
            words = " ".join(WORDS[(row * 7 + k * 13) % len(WORDS)] for k in range(12))
            batch.append(
                (f"2026-11-{1 + row % 28:02d}T{row % 24:02d}:00:00Z", WORDS[row % 50], words, row * 0.37)
            )
        conn.executemany("INSERT INTO events (ts, kind, payload, amount) VALUES (?,?,?,?)", batch)
        conn.commit()
        if path.stat().st_size >= target:
            break
    # WAL, the mode recommended for databases written during backups (and the harder path
    # for the page stream: it checkpoints before streaming)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()


def timed(argv: list[str] | str, **kw: object) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - started


def dir_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file():
                total += p.stat().st_size
        except FileNotFoundError:
            pass
    return total


def vm_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def run_daemon(root: Path, source: dict, key_file: Path) -> dict:
    """Back up ``source`` once through a fresh daemon; return wall time, RSS and temp bytes."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = base_config(root)
    cfg["sources"]["src"] = source
    cfg["destinations"]["disk"] = {"type": "local", "path": str(root / "backups")}
    cfg["encryption"] = {"main": {"key_file": str(key_file)}}
    cfg["jobs"]["bench"] = {
        "source": "src",
        "destinations": ["disk"],
        "compression": "zstd",
        "encryption": "main",
    }
    d = DaemonProc(root, cfg).start()
    work = root / "state" / "work"
    peak_temp = 0
    stop = threading.Event()

    def watch_temp() -> None:
        nonlocal peak_temp
        while not stop.is_set():
            peak_temp = max(peak_temp, dir_bytes(work))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_temp)
    watcher.start()
    try:
        res = d.ctl("run", "bench", "--wait", timeout=3600)
        if res.returncode != 0:
            raise RuntimeError(res.stdout + res.stderr + d.log()[-3000:])
        rec = json.loads(d.ctl("history", "--json").stdout)[0]
        assert d.proc is not None
        rss = vm_hwm(d.proc.pid)
    finally:
        stop.set()
        watcher.join()
        d.stop()
    stored = sum(p.stat().st_size for p in (root / "backups").rglob("*.bkd"))
    return {"wall": rec["finished_at"] - rec["started_at"], "rss": rss, "temp": peak_temp, "stored": stored}


def temp_file_pipeline(dump_cmd: str, work: Path, dest: Path, key: MasterKey) -> dict:
    """The multi-pass way: dump to a file, compress to a file, encrypt to a file, hash, copy."""
    work.mkdir(parents=True, exist_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    dump, comp, enc = work / "dump", work / "dump.zst", work / "dump.zst.bkd"
    started = time.perf_counter()
    subprocess.run(f"({dump_cmd}) > {dump}", shell=True, check=True)
    subprocess.run(["zstd", "-q", "-3", "-T0", str(dump), "-o", str(comp)], check=True)
    temp_peak = dump.stat().st_size + comp.stat().st_size

    class FileSink:
        def __init__(self, f):  # type: ignore[no-untyped-def]
            self.f = f

        def write(self, data: bytes) -> None:
            self.f.write(data)

        def finish(self) -> None:
            pass

        def abort(self) -> None:
            pass

    with open(comp, "rb") as src, open(enc, "wb") as out:
        e = Encryptor(FileSink(out), key)
        while chunk := src.read(1024 * 1024):
            e.write(chunk)
        e.finish()
    temp_peak += enc.stat().st_size
    subprocess.run(["sha256sum", str(enc)], check=True, capture_output=True)
    shutil.copyfile(enc, dest / enc.name)
    with open(dest / enc.name, "rb+") as f:
        os.fsync(f.fileno())
    wall = time.perf_counter() - started
    shutil.rmtree(work)
    return {"wall": wall, "temp": temp_peak}


def socket_latency(root: Path, clients: list[int], calls: int = 200) -> list[tuple[int, float, float]]:
    root.mkdir(parents=True, exist_ok=True)
    cfg = base_config(root)
    d = DaemonProc(root, cfg).start()
    out = []
    try:
        for n in clients:
            samples: list[float] = []
            lock = threading.Lock()

            def client(samples: list[float] = samples, lock: threading.Lock = lock) -> None:
                with Client(d.socket) as c:
                    mine = []
                    for _ in range(calls):
                        t = time.perf_counter()
                        c.call("status")
                        mine.append(time.perf_counter() - t)
                with lock:
                    samples.extend(mine)

            threads = [threading.Thread(target=client) for _ in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            samples.sort()
            out.append((n, statistics.median(samples) * 1000, samples[int(len(samples) * 0.99) - 1] * 1000))
    finally:
        d.stop()
    return out


def bench_source(name: str, size: int, root: Path, source: dict, dump_cmd: str, key_file: Path) -> dict:
    key = MasterKey.from_secret("main", key_file.read_bytes())
    # warm the page cache the same way for every contender
    timed(f"({dump_cmd}) > /dev/null", shell=True)
    dump_alone = timed(f"({dump_cmd}) > /dev/null", shell=True)
    daemon = run_daemon(root / "daemon", source, key_file)
    temp = temp_file_pipeline(dump_cmd, root / "tmpwork", root / "tmpdest", key)
    return {"name": name, "size": size, "dump": dump_alone, "daemon": daemon, "tempfile": temp}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256,1024", help="dump sizes in MiB")
    ap.add_argument("--no-pg", action="store_true")
    ap.add_argument("--no-sqlite", action="store_true")
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument(
        "--dir", default=None, help="work directory (default: a temp dir on the same disk as /var/tmp)"
    )
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="backupd-bench-", dir=args.dir or "/var/tmp"))
    key_file = base / "main.key"
    key_file.write_bytes(os.urandom(32))
    key_file.chmod(0o600)
    results = []
    pg = None
    try:
        for size in [int(s) for s in args.sizes.split(",")]:
            if not args.no_sqlite:
                db = base / f"bench-{size}.db"
                make_sqlite(db, size)
                snap = base / "snap.db"
                # the SQLite "dump tool": the backup API writing a consistent copy, then reading it
                cmd = f"sqlite3 {db} '.backup {snap}' && cat {snap}; rm -f {snap}"
                res = bench_source(
                    "sqlite", size, base / f"s{size}", {"type": "sqlite", "path": str(db)}, cmd, key_file
                )
                # what backupd's page stream itself reads: the file, from inside a read transaction
                res["raw_read"] = timed(["dd", f"if={db}", "bs=1M", "of=/dev/null", "status=none"])
                results.append(res)
                db.unlink()
            if not args.no_pg:
                if pg is None:
                    from tests.fixtures.postgres import _start_postgres

                    pg = _start_postgres()
                dbname = f"bench{size}"
                pg.sql(f"CREATE DATABASE {dbname}")
                rows = size * 1024 * 1024 // 180
                pg.sql(
                    "CREATE TABLE events AS SELECT g AS id, md5(g::text) || ' ' || md5((g*7)::text) || ' ' || "
                    f"repeat(to_hex(g % 4096), 8) AS payload, g * 0.37 AS amount FROM generate_series(1, {rows}) g",
                    dbname,
                )
                # the fixture's superuser is trusted over the unix socket: no password on this command line
                cmd = (
                    f"{pg.bin_dir}/pg_dump -Fc --compress=0 -h {pg.socket_dir} -p {pg.port} "
                    f"-U {pg.superuser} {dbname}"
                )
                source = {
                    "type": "postgresql",
                    "host": "127.0.0.1",
                    "port": pg.port,
                    "user": pg.superuser,
                    "password_file": str(pg.password_file),
                    "databases": [dbname],
                    "bin_dir": str(pg.bin_dir),
                }
                results.append(bench_source("postgresql", size, base / f"p{size}", source, cmd, key_file))
        latency = socket_latency(base / "sock", [int(c) for c in args.clients.split(",")])
    finally:
        if pg is not None:
            discard(pg, pg.base_dir)  # the cluster holds GiBs of tables
        shutil.rmtree(base, ignore_errors=True)

    print(
        f"\nbackupd pipeline benchmark ({os.cpu_count()} cores); zstd -3 + BKD1 + SHA-256 to a local destination\n"
    )
    header = (
        "source",
        "MiB",
        "dump alone s",
        "backupd s",
        "backupd÷dump",
        "temp-file s",
        "temp÷backupd",
        "daemon RSS MiB",
        "backupd temp MiB",
        "temp-file temp MiB",
    )
    rows = []
    for r in results:
        d, t = r["daemon"], r["tempfile"]
        rows.append(
            (
                r["name"],
                r["size"],
                f"{r['dump']:.2f}",
                f"{d['wall']:.2f}",
                f"{d['wall'] / r['dump']:.2f}",
                f"{t['wall']:.2f}",
                f"{t['wall'] / d['wall']:.2f}",
                f"{d['rss'] / 2**20:.0f}",
                f"{d['temp'] / 2**20:.0f}",
                f"{t['temp'] / 2**20:.0f}",
            )
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]
    for line in (header, *rows):
        print("  ".join(str(x).rjust(w) for x, w in zip(line, widths, strict=False)))
    for r in results:
        if "raw_read" in r:
            print(
                f"{r['name']} {r['size']} MiB: 'dump alone' is sqlite3 .backup + reading the copy; "
                f"reading the file alone (dd) takes {r['raw_read']:.2f} s, "
                f"backupd ÷ that = {r['daemon']['wall'] / r['raw_read']:.1f}"
            )
    print("\ncontrol socket, 'status' round trips")
    print("  clients  p50 ms  p99 ms")
    for n, p50, p99 in latency:
        print(f"  {n:7d}  {p50:6.2f}  {p99:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
