"""The demo set-up: a config, a sample SQLite database and a job, all under one folder.

``backupd --demo DIR`` runs as an ordinary user with no system config: state, socket and
backups live in DIR, and job ``demo`` backs up ``DIR/sample.db`` to ``DIR/backups``.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import tomli_w

DEMO_CONFIG = "backupd.toml"


def demo_paths(root: Path) -> dict[str, Path]:
    root = root.resolve()
    return {
        "root": root,
        "config": root / DEMO_CONFIG,
        "state": root / "state",
        "socket": root / "control.sock",
        "database": root / "sample.db",
        "backups": root / "backups",
    }


def create_sample_database(path: Path, rows: int = 2000) -> None:
    """Create a small database with a few tables (text, numbers, blobs, non-ASCII names)."""
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL, city TEXT)")
        conn.execute(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id),"
            " amount REAL, note BLOB)"
        )
        cities = ["Zürich", "Kraków", "São Paulo", "Reykjavík", "東京"]
        conn.executemany(
            "INSERT INTO customers (name, city) VALUES (?, ?)",
            [(f"customer {i}", cities[i % len(cities)]) for i in range(rows)],
        )
        conn.executemany(
            "INSERT INTO orders (customer_id, amount, note) VALUES (?, ?, ?)",
            [(1 + i % rows, i * 1.25, bytes([i % 256]) * 16) for i in range(rows * 3)],
        )
        conn.execute("CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 1000")
    conn.close()


def prepare_demo(root: Path) -> Path:
    """Given a folder, create (if missing) the demo config and sample database; return the
    config path."""
    p = demo_paths(root)
    p["root"].mkdir(parents=True, exist_ok=True)
    if not p["database"].exists():
        create_sample_database(p["database"])
    if not p["config"].exists():
        config = {
            "daemon": {
                "max_concurrent_jobs": 2,
                "state_dir": str(p["state"]),
                "socket": str(p["socket"]),
                "log_target": "stderr",
            },
            "sources": {"sample": {"type": "sqlite", "path": str(p["database"])}},
            "destinations": {"local": {"type": "local", "path": str(p["backups"])}},
            "jobs": {
                "demo": {
                    "source": "sample",
                    "destinations": ["local"],
                    "compression": "gzip",
                    "retention": {"keep_last": 10},
                }
            },
        }
        p["config"].write_text(tomli_w.dumps(config))
    return p["config"]
