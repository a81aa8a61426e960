"""Fixed journald MESSAGE_IDs, one per event type that an administrator may want to find or
explain (DESIGN §11).

Each id is a random 128-bit value written once and never changed: ``journalctl
MESSAGE_ID=<id>`` and the catalog file ``systemd/backupd.catalog`` (installed as
``/usr/lib/systemd/catalog/backupd.catalog``) depend on it, and
``tests/system/test_units.py`` checks that both list the same ids. A new event type gets a
new id here and a new section in the catalog; an id is never reused for another meaning.

The catalog text fills in ``@JOB@``, ``@EXECUTION_ID@``, ``@STEP@`` and ``@DESTINATION@``
from the entry's fields, so an entry carrying one of these ids should carry those fields
where they apply.
"""

from __future__ import annotations

from typing import Final

# A backup execution began (fields: JOB, EXECUTION_ID).
STARTED: Final = "84afe55befe24633b3314b6830f32c62"
# A backup execution stored its backup at every destination (JOB, EXECUTION_ID).
SUCCEEDED: Final = "8baa6357ae904a62807c539785369cb4"
# A backup execution failed; STEP names the step (JOB, EXECUTION_ID, STEP).
FAILED: Final = "d44fd9c1c7694364a21f36a008c1d118"
# Some destinations stored the backup and some did not (JOB, EXECUTION_ID, DESTINATION).
PARTIAL: Final = "345721603e984bb0a37fe89d0b1590e4"
# A run missed while the daemon was down fires once at start (JOB).
CATCH_UP: Final = "f0bb43acb41f4726b7180f9c5a9759bc"
# A reload found a bad configuration and kept the previous one.
RELOAD_FAILED: Final = "20789a0dd1e9402eb5f01d4c4468860d"
# A stored backup failed verification (JOB, DESTINATION).
INTEGRITY_FAILED: Final = "c8b1f22690894f3c9c9357620ba0961d"
# Retention did not delete what the policy selected, to protect the backups (JOB, DESTINATION).
RETENTION_SKIPPED: Final = "b8164e9446584d56bf51e2976c456fa7"
# The daemon finished starting and accepts requests.
DAEMON_STARTED: Final = "7b479d00ba0f42768267c35fe2af566c"
# At start, executions left running by a daemon that did not stop cleanly became interrupted.
UNCLEAN_STOP: Final = "9ebff7dfdf234c649297384ffd247839"

MESSAGE_IDS: Final[dict[str, str]] = {
    "STARTED": STARTED,
    "SUCCEEDED": SUCCEEDED,
    "FAILED": FAILED,
    "PARTIAL": PARTIAL,
    "CATCH_UP": CATCH_UP,
    "RELOAD_FAILED": RELOAD_FAILED,
    "INTEGRITY_FAILED": INTEGRITY_FAILED,
    "RETENTION_SKIPPED": RETENTION_SKIPPED,
    "DAEMON_STARTED": DAEMON_STARTED,
    "UNCLEAN_STOP": UNCLEAN_STOP,
}
