"""Object keys: the layout of DESIGN §6 plus the database, safe for any database name."""

from __future__ import annotations

from datetime import UTC, datetime

from backupd.domain.naming import data_key_of, object_key, parse_key, safe_component, sidecar_key


def test_key_layout_and_round_trip() -> None:
    key = object_key("nightly-pg", datetime(2026, 12, 4, 2, 30, tzinfo=UTC), 42, "app", ".pgdump.zst.bkd")
    assert key == "nightly-pg/nightly-pg_20261204T023000Z_42_app.pgdump.zst.bkd"
    assert parse_key(key) == {"job": "nightly-pg", "ts": "20261204T023000Z", "execution": "42", "db": "app"}
    assert data_key_of(sidecar_key(key)) == key
    assert parse_key("other/file.txt") is None


def test_unsafe_database_names() -> None:
    assert safe_component("../../etc/passwd") == "_.._etc_passwd"  # no "/" left: one path component
    assert safe_component("名前 with spaces") == "_with_spaces"
    assert safe_component("..") == "_"
