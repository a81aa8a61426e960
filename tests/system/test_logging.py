"""journald: the daemon's entries read back with journalctl from a real systemd-journald,
with the structured fields JOB, EXECUTION_ID, STEP and the MESSAGE_IDs."""

from __future__ import annotations

from pathlib import Path

import pytest

from backupd import catalog
from tests.system.daemon_helpers import DaemonProc, base_config, sqlite_job

pytestmark = pytest.mark.timeout(120)


def test_entries_carry_fields_and_message_ids(tmp_path: Path, journald) -> None:
    cfg = base_config(tmp_path, log_target="journal")
    db = sqlite_job(cfg, tmp_path, "jrnl")
    d = DaemonProc(tmp_path, cfg).start()
    try:
        assert d.ctl("run", "jrnl", "--wait").returncode == 0
        db.unlink()
        assert d.ctl("run", "jrnl", "--wait").returncode == 10
        started = journald.wait({"JOB": "jrnl", "MESSAGE_ID": catalog.STARTED}, count=2)
        assert {e["EXECUTION_ID"] for e in started} == {"1", "2"}
        ok = journald.wait({"JOB": "jrnl", "EXECUTION_ID": "1", "MESSAGE_ID": catalog.SUCCEEDED})
        assert ok[0]["STEP"] == "completion" and ok[0]["SYSLOG_IDENTIFIER"] == "backupd"
        failed = journald.wait({"JOB": "jrnl", "EXECUTION_ID": "2", "MESSAGE_ID": catalog.FAILED})
        assert failed[0]["STEP"] == "initialize" and "does not exist" in failed[0]["MESSAGE"]
        dump_lines = journald.wait({"JOB": "jrnl", "EXECUTION_ID": "1", "STEP": "upload"})
        assert dump_lines[0]["DESTINATION"] == "disk" and int(dump_lines[0]["PRIORITY"]) == 6
        # a config error on reload is logged with its MESSAGE_ID
        d.config_path.write_text(d.config_path.read_text() + "\n[bogus]\n")
        assert d.ctl("reload").returncode == 1
        journald.wait({"MESSAGE_ID": catalog.RELOAD_FAILED})
    finally:
        d.stop()
