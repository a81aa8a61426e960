"""Logging set-up: journald when stderr is the journal (or the config asks), else stderr.

Journal entries carry the structured fields JOB, EXECUTION_ID, STEP, DESTINATION and a
MESSAGE_ID for the events listed in :mod:`backupd.catalog`; on stderr the same fields are
folded into the line.
"""

from __future__ import annotations

import logging
import os
import sys

FIELDS = ("JOB", "EXECUTION_ID", "STEP", "DESTINATION")
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}

log = logging.getLogger("backupd")


def stderr_is_journal() -> bool:
    """Return True when systemd connected stderr to the journal ($JOURNAL_STREAM = dev:ino)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return st.st_dev == dev and st.st_ino == ino


class _FieldsFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"{name}={getattr(record, name)}" for name in FIELDS if getattr(record, name, None) is not None
        ]
        base = super().format(record)
        return f"{base} [{' '.join(parts)}]" if parts else base


def setup_logging(target: str = "auto", level: str = "info") -> str:
    """Given the config's log_target and log_level, install one handler on the ``backupd``
    logger; return "journal" or "stderr"."""
    for h in list(log.handlers):
        log.removeHandler(h)
    log.setLevel(LEVELS[level])
    log.propagate = False
    use_journal = target == "journal" or (target == "auto" and stderr_is_journal())
    if use_journal:
        try:
            from systemd.journal import JournalHandler  # type: ignore[import-not-found]

            log.addHandler(JournalHandler(SYSLOG_IDENTIFIER="backupd"))
            return "journal"
        except ImportError:
            pass
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_FieldsFormatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    return "stderr"
