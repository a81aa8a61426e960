"""The queue as users see it: the concurrency limit, changing it at run time, one run per job,
cancel reaching a running dump."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.system.daemon_helpers import DaemonProc, base_config, sqlite_job

pytestmark = pytest.mark.timeout(180)


def _slow_jobs(tmp_path: Path, names: list[str], max_jobs: int) -> DaemonProc:
    cfg = base_config(tmp_path, max_concurrent_jobs=max_jobs)
    for name in names:
        # brotli at level 11 is slow enough (well under 1 MiB/s) to keep each job busy for seconds
        sqlite_job(cfg, tmp_path, name, rows=60, blob_kib=64, compression="brotli", level=11)
    return DaemonProc(tmp_path, cfg).start()


def _status(d: DaemonProc) -> dict:
    with d.client() as c:
        return c.call("status")


def _running(d: DaemonProc) -> list[str]:
    return [r["job"] for r in _status(d)["running"]]


def test_limit_setting_mutex_and_cancel(tmp_path: Path) -> None:
    d = _slow_jobs(tmp_path, ["a", "b", "c"], max_jobs=2)
    try:
        ids = {j: json.loads(d.ctl("run", j, "--json").stdout)["execution_id"] for j in ("a", "b", "c")}
        d.wait_for(lambda: len(_running(d)) == 2, what="two running")
        seen_max = 0
        for _ in range(10):
            st = _status(d)
            seen_max = max(seen_max, len(st["running"]))
            assert len(st["running"]) <= 2
            assert len(st["running"]) + len(st["queued"]) == 3
            time.sleep(0.1)
        assert seen_max == 2
        # a second trigger of a running job is refused and names the running execution
        running_job = _running(d)[0]
        res = d.ctl("run", running_job)
        assert res.returncode == 1 and "[already-running]" in res.stderr
        assert f"execution {ids[running_job]}" in res.stderr
        # raising the limit at run time starts the third at once, and it is persisted
        assert d.ctl("settings", "set", "max_concurrent_jobs", "3").returncode == 0
        d.wait_for(lambda: len(_running(d)) == 3, timeout=10, what="three running")
        assert json.loads(d.ctl("settings", "get", "--json").stdout) == {"max_concurrent_jobs": 3}
        bad = d.ctl("settings", "set", "max_concurrent_jobs", "many")
        assert bad.returncode == 1 and "[setting-invalid]" in bad.stderr
        # cancel reaches every running dump
        for j in ("a", "b", "c"):
            assert d.ctl("cancel", str(ids[j])).returncode == 0
        for j in ("a", "b", "c"):
            res = d.ctl("history", j, "--json")
            d.wait_for(
                lambda j=j: json.loads(d.ctl("history", j, "--json").stdout)[0]["status"] == "cancelled",
                timeout=20,
                what=f"{j} cancelled",
            )
        assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "backups").rglob("*"))
    finally:
        assert d.stop() == 0
    # the setting survives a restart
    d2 = DaemonProc(tmp_path, d.config).start()
    try:
        assert json.loads(d2.ctl("settings", "get", "max_concurrent_jobs", "--json").stdout) == {
            "max_concurrent_jobs": 3
        }
    finally:
        d2.stop()


def test_queued_execution_can_be_cancelled(tmp_path: Path) -> None:
    d = _slow_jobs(tmp_path, ["a", "b"], max_jobs=1)
    try:
        first = json.loads(d.ctl("run", "a", "--json").stdout)["execution_id"]
        second = json.loads(d.ctl("run", "b", "--json").stdout)["execution_id"]
        d.wait_for(lambda: _running(d) == ["a"], what="a running")
        st = json.loads(d.ctl("status", "--json").stdout)
        assert [q["job"] for q in st["queued"]] == ["b"]
        res = d.ctl("cancel", str(second), "--json")
        assert json.loads(res.stdout)["was"] == "queued"
        assert json.loads(d.ctl("history", "b", "--json").stdout)[0]["status"] == "cancelled"
        d.ctl("cancel", str(first))
        res = d.ctl("cancel", str(second))
        assert res.returncode == 1 and "is cancelled, not queued or running [not-cancellable]" in res.stderr
    finally:
        d.stop()
