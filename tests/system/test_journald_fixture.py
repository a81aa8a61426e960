"""The journald fixture: entries sent the way backupd sends them come back with their fields."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import uuid
from types import ModuleType

import pytest

from backupd import catalog
from tests.fixtures.common import unavailable
from tests.fixtures.journald import JOURNAL_SOCKET, Journald, journal_socket_alive


def _systemd_journal() -> ModuleType:
    try:
        from systemd import journal
    except ImportError:
        unavailable("systemd-python (pip install 'backupd[journald]' or Debian's python3-systemd)")
        raise
    return journal


@pytest.mark.timeout(60)
def test_fixture_serves_the_standard_socket(journald: Journald) -> None:
    # JournalHandler cannot be pointed elsewhere, so the fixture must serve this path.
    assert journald.socket_path == JOURNAL_SOCKET
    assert journal_socket_alive(journald.socket_path)


@pytest.mark.timeout(60)
def test_send_with_custom_fields_reads_back(journald: Journald) -> None:
    journal = _systemd_journal()
    token = uuid.uuid4().hex
    journal.send(
        f"backup started {token}",
        MESSAGE_ID=catalog.STARTED,
        JOB="fixture-job",
        EXECUTION_ID="42",
        STEP="dump",
        DESTINATION="disk",
        TEST_TOKEN=token,
    )
    entries = journald.wait({"TEST_TOKEN": token})
    assert len(entries) == 1
    entry = entries[0]
    assert entry["MESSAGE"] == f"backup started {token}"
    assert entry["MESSAGE_ID"] == catalog.STARTED
    assert entry["JOB"] == "fixture-job"
    assert entry["EXECUTION_ID"] == "42"
    assert entry["STEP"] == "dump"
    assert entry["DESTINATION"] == "disk"
    assert entry["_PID"] == str(os.getpid())


@pytest.mark.timeout(60)
def test_match_filters_entries(journald: Journald) -> None:
    journal = _systemd_journal()
    token = uuid.uuid4().hex
    journal.send("first", TEST_TOKEN=token, JOB="a")
    journal.send("second", TEST_TOKEN=token, JOB="b")
    both = journald.wait({"TEST_TOKEN": token}, count=2)
    assert [e["MESSAGE"] for e in both] == ["first", "second"]
    # Two fields must both match; a value never sent matches nothing.
    assert [e["MESSAGE"] for e in journald.read({"TEST_TOKEN": token, "JOB": "b"})] == ["second"]
    assert journald.read({"TEST_TOKEN": uuid.uuid4().hex}) == []


@pytest.mark.timeout(60)
def test_journal_handler_extra_fields(journald: Journald) -> None:
    # The daemon logs through logging + JournalHandler with the fields passed as extra=.
    journal = _systemd_journal()
    token = uuid.uuid4().hex
    logger = logging.getLogger(f"backupd.test.{token}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = journal.JournalHandler(SYSLOG_IDENTIFIER="backupd-test")
    logger.addHandler(handler)
    try:
        logger.warning(
            "job failed",
            extra={"JOB": "nightly", "EXECUTION_ID": 7, "MESSAGE_ID": catalog.FAILED, "T": token},
        )
    finally:
        logger.removeHandler(handler)
    (entry,) = journald.wait({"T": token})
    assert entry["MESSAGE"] == "job failed"
    assert entry["JOB"] == "nightly"
    assert entry["EXECUTION_ID"] == "7"
    assert entry["MESSAGE_ID"] == catalog.FAILED
    assert entry["PRIORITY"] == "4"
    assert entry["SYSLOG_IDENTIFIER"] == "backupd-test"


@pytest.mark.timeout(60)
def test_entries_of_another_user_are_read(journald: Journald) -> None:
    # The packaged daemon runs as user backupd; journald may file its entries in a per-user
    # journal file, which the reader must include.
    if os.geteuid() != 0:
        pytest.skip("needs root to send as another user")
    setpriv = shutil.which("setpriv")
    logger_bin = shutil.which("logger")
    if setpriv is None or logger_bin is None:
        unavailable("setpriv and logger (util-linux, bsdutils)")
        return
    token = uuid.uuid4().hex
    # logger --journald reads FIELD=value lines from stdin and sends them as one entry.
    subprocess.run(
        [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", logger_bin, "--journald"],
        input=f"MESSAGE=from nobody\nJOB=other-user\nTEST_TOKEN={token}\n",
        text=True,
        check=True,
        timeout=30,
    )
    (entry,) = journald.wait({"TEST_TOKEN": token})
    assert entry["MESSAGE"] == "from nobody"
    assert entry["JOB"] == "other-user"
    assert entry["_UID"] == str(int(subprocess.check_output(["id", "-u", "nobody"], text=True)))
