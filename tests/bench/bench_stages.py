"""Measure backupd's in-process stream stages against the zstd CLI on the same bytes.

Run: ``python tests/bench/bench_stages.py [--size-mib N] [--dir DIR] [--repeat R]``

It writes N MiB (default 512) of SQL-dump-like text to DIR (default /dev/shm, a tmpfs, so no
disk is involved), then times, in one run:

* the backupd stages zstd(level 3) → BKD1 encrypt → SHA-256 in this process, with zstd
  ``threads=0`` (compression on the calling thread) and ``threads=2``;
* the same with encryption + hashing moved to a second thread behind a bounded queue;
* each stage alone, to show where the time goes;
* ``zstd -3 -T0 -c FILE | sha256sum`` (and zstd alone) as the reference.

It prints wall and CPU times and ratios; nothing is asserted (timings depend on the machine).
The name does not start with ``test_`` so pytest never collects it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import queue
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from backupd.crypto.bkd1 import Encryptor  # noqa: E402
from backupd.crypto.keyring import MasterKey  # noqa: E402
from backupd.pipeline.streams import ByteSink, HashingSink, compressor  # noqa: E402

MIB = 1 << 20
READ_BLOCK = MIB  # what the dump step reads from the dump process per call, roughly
KEY = MasterKey.from_secret("bench", bytes(range(32)))


# --- test data -------------------------------------------------------------------------------
def generate_dump(path: Path, size: int, seed: int = 20250101) -> None:
    """Given a path and a size, write that many bytes of SQL-dump-like text (compresses ~4-5x).

    Rows mix repeated words with random numbers, like a real table; one random draw per row
    keeps generation at tens of MiB/s.
    """
    rng = random.Random(seed)
    first = [
        "anna",
        "bert",
        "chen",
        "dara",
        "emil",
        "fatima",
        "goran",
        "hana",
        "ivan",
        "jules",
        "kofi",
        "lena",
    ]
    last = ["meyer", "okafor", "rossi", "sato", "silva", "novak", "khan", "dubois", "berg", "garcia", "ito"]
    names = [f"{f} {g}" for f in first for g in last][:128]
    emails = [n.replace(" ", ".") for n in names]
    domains = ["example.org", "mail.example.com", "corp.example.net", "example.edu"]
    statuses = ["new", "paid", "shipped", "delivered", "returned", "cancelled", "paid", "shipped"]
    words = ["the", "order", "customer", "delivery", "late", "box", "fragile", "gift", "wrap", "call", "noon"]
    notes = [" ".join(rng.choices(words, k=rng.randrange(0, 8))) for _ in range(4096)]
    row_id = 0
    with path.open("wb") as out:
        out.write(
            b"-- dump of database shop\nBEGIN;\nCREATE TABLE orders (id bigint, customer text, email text,\n"
        )
        out.write(b"  amount numeric(10,2), status text, created_at timestamp, note text);\n")
        written = 0
        while written < size:
            rows = []
            for _ in range(4000):
                row_id += 1
                r = rng.getrandbits(80)
                n = r & 127
                rows.append(
                    f"INSERT INTO orders VALUES ({row_id}, '{names[n]}', "
                    f"'{emails[n]}{row_id * 7 % 100}@{domains[(r >> 7) & 3]}', "
                    f"{(r >> 9) & 0x1FFFF}.{(r >> 26) % 100:02d}, '{statuses[(r >> 33) & 7]}', "
                    f"'2024-{(r >> 36) % 12 + 1:02d}-{(r >> 40) % 28 + 1:02d} {(r >> 45) % 24:02d}:"
                    f"{(r >> 50) % 60:02d}:{(r >> 56) % 60:02d}', '{notes[(r >> 62) & 4095]}');\n"
                )
            block = "".join(rows).encode()[: size - written]
            out.write(block)
            written += len(block)


# --- sinks -----------------------------------------------------------------------------------
class NullSink:
    """The end of a pipeline: counts bytes and drops them (stands in for a destination writer)."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)

    def finish(self) -> None:
        pass

    def abort(self) -> None:
        pass


class CollectSink(NullSink):
    """A sink that keeps the bytes, to time later stages alone on real compressed data."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        super().write(data)
        self.parts.append(bytes(data))


class ThreadedSink:
    """Hand writes to ``downstream`` on a worker thread through a queue of at most ``depth`` items."""

    _END = object()

    def __init__(self, downstream: ByteSink, depth: int = 8) -> None:
        self._down = downstream
        self._q: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="encrypt", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._q.get()) is not self._END:
            try:
                self._down.write(item)  # type: ignore[arg-type]
            except BaseException as exc:  # kept and re-raised on the caller's thread
                self._error = exc

    def write(self, data: bytes) -> None:
        if self._error:
            raise self._error
        self._q.put(bytes(data))

    def finish(self) -> None:
        self._q.put(self._END)
        self._thread.join()
        if self._error:
            raise self._error
        self._down.finish()

    def abort(self) -> None:
        self._q.put(self._END)
        self._thread.join()
        self._down.abort()


# --- measuring -------------------------------------------------------------------------------
@dataclass
class Row:
    name: str
    wall: float = float("inf")
    cpu: float = float("inf")


def cpu_seconds() -> float:
    """Return user+system CPU of this process (all threads) and its waited-for children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def measure(workloads: dict[str, Callable[[], object]], rounds: int) -> list[Row]:
    """Given named workloads, run each once per round, interleaved so that load from other
    processes spreads over all of them; return each one's fastest wall time and lowest CPU time."""
    rows = {name: Row(name) for name in workloads}
    for _ in range(rounds):
        for name, fn in workloads.items():
            c0, t0 = cpu_seconds(), time.perf_counter()
            fn()
            row = rows[name]
            row.wall = min(row.wall, time.perf_counter() - t0)
            row.cpu = min(row.cpu, cpu_seconds() - c0)
    return list(rows.values())


def feed(path: Path, sink: ByteSink) -> None:
    """Given a data file and the head of a pipeline, push the file through in 1 MiB reads."""
    buf = bytearray(READ_BLOCK)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            sink.write(view[:n])
    sink.finish()


def stages(path: Path, threads: int, encrypt_thread: bool) -> int:
    """Run zstd(3) → BKD1 → SHA-256 over the file; return the stored size."""
    end = NullSink()
    hashed = HashingSink(end)
    enc: ByteSink = Encryptor(hashed, KEY)
    if encrypt_thread:
        enc = ThreadedSink(enc)
    feed(path, compressor("zstd", enc, 3, threads=threads))
    return end.size


def shell(cmd: str) -> None:
    """Run a shell pipeline, raising if any part of it fails."""
    subprocess.run(["bash", "-o", "pipefail", "-c", cmd], check=True, stdout=subprocess.DEVNULL)


def main() -> int:
    """Parse arguments, build the data, run every measurement and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    parser.add_argument("--rounds", type=int, default=3, help="runs per measurement; the fastest counts")
    args = parser.parse_args()
    if not shutil.which("zstd") or not shutil.which("sha256sum"):
        print("zstd and sha256sum are needed", file=sys.stderr)
        return 1
    size = args.size_mib * MIB
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench-stages-") as tmp:
        data = Path(tmp) / "dump.sql"
        t0 = time.perf_counter()
        generate_dump(data, size)
        print(f"generated {args.size_mib} MiB of SQL text in {time.perf_counter() - t0:.1f}s at {data}")
        print(
            f"cpus: {os.cpu_count()}, python {sys.version.split()[0]}, load before: {os.getloadavg()[0]:.2f}"
        )
        packed = CollectSink()
        feed(data, compressor("zstd", packed, 3))
        compressed = packed.parts

        def encrypt_only() -> None:
            enc = Encryptor(NullSink(), KEY)
            for part in compressed:
                enc.write(part)
            enc.finish()

        def sha_only() -> None:
            h = hashlib.sha256()
            for part in compressed:
                h.update(part)

        workloads: dict[str, Callable[[], object]] = {
            "zstd -3 -T0 | sha256sum (CLI)": lambda: shell(f"zstd -q -3 -T0 -c {data} | sha256sum"),
            "zstd -3 -T0 (CLI alone)": lambda: shell(f"zstd -q -3 -T0 -c {data} > /dev/null"),
            "zstd -3 -T1 | sha256sum (CLI)": lambda: shell(f"zstd -q -3 -T1 -c {data} | sha256sum"),
        }
        for threads in (0, 2):
            for threaded in (False, True):
                label = f"stages threads={threads}" + (" + encrypt thread" if threaded else "")
                workloads[label] = lambda t=threads, e=threaded: stages(data, t, e)
        # Each stage alone, to see where the time goes.
        workloads["  zstd only, threads=0"] = lambda: feed(data, compressor("zstd", NullSink(), 3))
        workloads["  BKD1 encrypt only (compressed bytes)"] = encrypt_only
        workloads["  SHA-256 only (compressed bytes)"] = sha_only
        rows = measure(workloads, args.rounds)
        print(f"load after: {os.getloadavg()[0]:.2f}  (other processes on the machine skew wall times)\n")
        print_table(rows, size, packed.size)
    return 0


def print_table(rows: list[Row], size: int, compressed: int) -> None:
    """Given the measurements, print wall/CPU time, throughput and ratios to the zstd CLI pipeline."""
    ref = rows[0]
    print(
        f"input {size / MIB:.0f} MiB, zstd -3 output {compressed / MIB:.1f} MiB (ratio {size / compressed:.2f})"
    )
    print(f"{'measurement':<40} {'wall s':>7} {'cpu s':>7} {'MiB/s':>7} {'wall÷CLI':>9} {'cpu÷CLI':>8}")
    for row in rows:
        print(
            f"{row.name:<40} {row.wall:7.2f} {row.cpu:7.2f} {size / MIB / row.wall:7.0f}"
            f" {row.wall / ref.wall:9.2f} {row.cpu / ref.cpu:8.2f}"
        )
    pipelines = [r for r in rows if r.name.startswith("stages")]
    best = min(pipelines, key=lambda r: r.wall)
    print(
        f"\nfastest in-process pipeline: {best.name} ({best.wall / ref.wall:.2f}x the zstd CLI pipeline's wall time)"
    )


if __name__ == "__main__":
    sys.exit(main())
