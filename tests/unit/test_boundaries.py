"""Architecture rules that code review alone would let slip.

- ``backupd/domain`` and ``backupd/pipeline`` never import I/O libraries (boto3, paramiko,
  sqlite3, socket, systemd): they see adapters through ports (DESIGN §2).
- ``backupctl`` imports from the daemon's package only ``backupd.ipc.protocol``,
  ``backupd.errors`` (and ``backupd`` for its version), so that it starts fast; the offline
  tools load their libraries inside the command handlers.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IO_LIBRARIES = {"boto3", "botocore", "paramiko", "sqlite3", "socket", "systemd"}


def _imports(path: Path, top_level_only: bool = False) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_domain_and_pipeline_import_no_io_library() -> None:
    offenders = []
    for package in ("domain", "pipeline"):
        for path in (ROOT / "backupd" / package).rglob("*.py"):
            bad = {n for n in _imports(path) if n.split(".")[0] in IO_LIBRARIES}
            if bad:
                offenders.append(f"{path.relative_to(ROOT)}: {sorted(bad)}")
    assert offenders == []


def test_backupctl_starts_without_the_daemon_or_heavy_libraries() -> None:
    code = (
        "import sys, backupctl.cli; "
        "heavy = {'boto3', 'paramiko', 'cryptography', 'zstandard', 'apprise', 'prometheus_client', "
        "'backupd.service', 'backupd.pipeline', 'backupd.config', 'sqlite3'}; "
        "print(sorted(m for m in sys.modules if m in heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
