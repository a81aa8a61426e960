"""The scheduler in the running daemon: a run missed while the daemon was down fires once at
start, recorded as catch-up; a job with catch_up = false does not."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backupd.store.state import StateStore
from tests.system.daemon_helpers import DaemonProc, base_config, sqlite_job

pytestmark = pytest.mark.timeout(90)


def test_catch_up_fires_once_after_a_week_down(tmp_path: Path) -> None:
    cfg = base_config(tmp_path)
    sqlite_job(cfg, tmp_path, "weekly", schedule="0 3 * * *")
    sqlite_job(cfg, tmp_path, "nocatch", schedule="0 3 * * *", catch_up=False)
    store = StateStore(tmp_path / "state" / "state.db")
    week_ago = datetime.now(UTC) - timedelta(days=7)
    store.set_last_triggered("weekly", week_ago)
    store.set_last_triggered("nocatch", week_ago)
    store.close()
    d = DaemonProc(tmp_path, cfg).start()
    try:
        d.wait_for(lambda: json.loads(d.ctl("history", "weekly", "--json").stdout), what="catch-up run")
        time.sleep(2)  # a second catch-up would show up by now
        runs = json.loads(d.ctl("history", "--json").stdout)
        assert [(r["job"], r["trigger"]) for r in runs] == [("weekly", "catch-up")]
        d.wait_for(
            lambda: json.loads(d.ctl("history", "weekly", "--json").stdout)[0]["status"] == "succeeded",
            what="catch-up succeeded",
        )
        jobs = {j["name"]: j for j in json.loads(d.ctl("jobs", "--json").stdout)}
        nxt = datetime.fromtimestamp(jobs["weekly"]["next_run"], UTC)
        assert nxt > datetime.now(UTC) and (nxt.hour, nxt.minute) == (3, 0)
        assert "catching up a run missed while the daemon was down" in d.log()
    finally:
        d.stop()
