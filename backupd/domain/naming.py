"""Object keys of stored backups (DESIGN §6).

``<job>/<job>_<YYYYmmddTHHMMSSZ>_<execution>_<database>.<ext>[.zst|.gz|.br][.bkd]``

The design's key has no slot for the database; a job may dump several databases in one
execution, so the (sanitised) database name is appended after the execution id. The sidecar
holds the exact name.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

SIDECAR_SUFFIX = ".meta.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_KEY = re.compile(
    r"^(?P<job>[a-z0-9][a-z0-9_.-]{0,63})/(?P=job)_(?P<ts>\d{8}T\d{6}Z)_(?P<execution>\d+)_(?P<db>[^/]+?)\."
)


def safe_component(name: str) -> str:
    """Given a database name, return a form safe as part of a file name (never empty)."""
    cleaned = _UNSAFE.sub("_", name).strip(".") or "_"
    return cleaned[:100]


def timestamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def object_key(job: str, when: datetime, execution_id: int, database: str, extension: str) -> str:
    """Given the parts, return the object key; ``extension`` includes every suffix and its dots."""
    return f"{job}/{job}_{timestamp(when)}_{execution_id}_{safe_component(database)}{extension}"


def sidecar_key(key: str) -> str:
    return key + SIDECAR_SUFFIX


def is_sidecar(key: str) -> bool:
    return key.endswith(SIDECAR_SUFFIX)


def data_key_of(sidecar: str) -> str:
    return sidecar[: -len(SIDECAR_SUFFIX)]


def parse_key(key: str) -> dict[str, str] | None:
    """Return job, ts, execution and db of a backupd key, or None for a foreign name."""
    m = _KEY.match(key)
    return m.groupdict() if m else None
