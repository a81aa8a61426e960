"""Session-wide test set-up: every module in tests/fixtures is loaded as a pytest plugin,
so the real servers (PostgreSQL, MariaDB, Redis, sshd, SeaweedFS, journald) each start once
per session, lazily, only when a test asks for them."""

from pathlib import Path

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}"
    for p in (Path(__file__).parent / "fixtures").glob("*.py")
    if p.stem != "__init__"
)
